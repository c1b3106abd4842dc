"""Animated GIF, APNG and WebP: every frame upscaled, with its display time, the loop count and transparency, written
back as an animation (esrgan.animation). The frames are a real photograph panned and a sprite cut out of it; the
references are each frame as Pillow composites it, upscaled alone by an Upscaler with the CLI's settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import photo_preserving_rrdb, psnr, run_cli, run_cli_in_address_space
from PIL import Image, ImageCms, ImageSequence

from esrgan import Upscaler
from esrgan.animation import upscale_animation
from esrgan.checkpoints import save_model
from esrgan.imageio import ImageData
from esrgan.pipeline import plan_jobs

SETTINGS = ("--device", "cpu", "--precision", "fp32", "--quiet")
DURATIONS = [70, 120, 40, 200, 90, 60]
"""Display times in ms (each a multiple of 10: a GIF holds hundredths of a second)."""
ORDER = [0, 1, 2, 1, 0, 3]
"""Which of four pan positions each frame shows: frames 3 and 4 repeat 1 and 0."""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", photo_preserving_rrdb())


@pytest.fixture(scope="module")
def upscaler(model: Path) -> Upscaler:
    return Upscaler.from_file(model, device="cpu", precision="fp32")


def pan(photo: np.ndarray) -> list[np.ndarray]:
    """A camera pan over the photograph: 48x64 views, four positions in ORDER."""
    views = [
        np.ascontiguousarray(photo[60 + 6 * k : 108 + 6 * k, 180 + 9 * k : 244 + 9 * k]) for k in range(4)
    ]
    return [views[k] for k in ORDER]


def sprite(photo: np.ndarray) -> list[np.ndarray]:
    """RGBA frames: the pan's views cut to a disk that moves right, clear around it (a sticker)."""
    yy, xx = np.mgrid[:48, :64]
    frames = []
    for k, view in enumerate(pan(photo)):
        inside = (yy - 24) ** 2 + (xx - 18 - 6 * k) ** 2 < 16**2
        frames.append(np.dstack([view, np.where(inside, 255, 0).astype(np.uint8)]))
    return frames


def save(path: Path, frames: list[np.ndarray], **options: object) -> Path:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=DURATIONS, loop=3, **options)
    return path


def shown(path: Path) -> tuple[list[np.ndarray], list[float], object]:
    """What a viewer shows of an animation, read by Pillow: RGBA frames, display times and the loop count."""
    with Image.open(path) as im:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(im):
            frame.load()
            frames.append(np.asarray(frame.convert("RGBA")))
            durations.append(float(frame.info.get("duration", 0)))
        return frames, durations, im.info.get("loop")


def reference(upscaler: Upscaler, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Each frame upscaled alone (RGBA out)."""
    out = []
    for f in frames:
        alpha = np.ascontiguousarray(f[:, :, 3]) if f.shape[2] == 4 else None
        done = upscaler.upscale_image(ImageData(pixels=np.ascontiguousarray(f[:, :, :3]), alpha=alpha))
        a = np.full(done.pixels.shape[:2], 255, np.uint8) if done.alpha is None else done.alpha
        out.append(np.dstack([done.pixels, a]))
    return out


@pytest.mark.parametrize(
    ("source", "fmt"),
    [("gif", None), ("png", None), ("webp", None), ("gif", "png"), ("gif", "webp"), ("webp", "gif")],
)
def test_every_frame_is_upscaled_with_its_display_time_and_loop_count(
    tmp_path: Path, photo: np.ndarray, model: Path, upscaler: Upscaler, source: str, fmt: str | None
) -> None:
    """An animation through `esrgan upscale`: as many frames, each the frame a viewer saw upscaled on its own
    (bit for bit in APNG and lossless WebP; a GIF's 256 colours within 33 dB), the same display times and loop
    count, and out in the input's format unless --format says otherwise. Pillow writes a GIF's later frames as
    the part that changed: they are composited before the model sees them."""
    src = save(tmp_path / f"pan.{source}", pan(photo), **({"lossless": True} if source == "webp" else {}))
    seen, _, _ = shown(src)
    out = tmp_path / "out"
    r = run_cli("upscale", src, "-o", out, "--model", model, *SETTINGS, *(("--format", fmt) if fmt else ()))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    dst = out / f"pan_x4.{fmt or source}"
    assert sorted(p.name for p in out.iterdir()) == [dst.name]
    frames, durations, loop = shown(dst)
    assert len(frames) == len(ORDER) and durations == DURATIONS and loop == 3
    expected = reference(upscaler, [f[:, :, :3] for f in seen])
    for got, want in zip(frames, expected, strict=True):
        assert got.shape == (192, 256, 4) and (got[:, :, 3] == 255).all()
        if fmt == "gif" or (fmt is None and source == "gif"):
            assert psnr(got[:, :, :3], want[:, :, :3], peak=255) >= 33.0
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", ["gif", "png", "webp"])
def test_transparency_follows_each_frame(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler, fmt: str
) -> None:
    """A sticker (a disk of photo moving over a clear background): every frame's alpha is the upscaled frame's
    and so is its colour where it is not clear (exactly in APNG and WebP; GIF holds all or nothing: transparent
    where it is below half, its 256 colours within 33 dB), and what was
    opaque in one frame and clear in the next is clear: without a GIF disposal that clears each frame, the frame
    before showed through (seen when this was built)."""
    # a GIF sticker clears each frame before the next (disposal 2), or the disk would leave a trail
    options = {"webp": {"lossless": True}, "gif": {"disposal": 2}}.get(fmt, {})
    src = save(tmp_path / f"sticker.{fmt}", sprite(photo), **options)
    seen, _, _ = shown(src)
    dst = tmp_path / f"sticker_x4.{fmt}"
    result = upscale_animation(upscaler, src, dst)
    assert result.frames == result.upscaled == len(ORDER)  # the disk moves: every frame differs
    frames, _, _ = shown(dst)
    expected = reference(upscaler, seen)
    for k, (got, want) in enumerate(zip(frames, expected, strict=True)):
        if fmt == "gif":
            np.testing.assert_array_equal(got[:, :, 3] == 0, want[:, :, 3] < 128)
            visible = want[:, :, 3] >= 128
            assert psnr(got[:, :, :3][visible], want[:, :, :3][visible], peak=255) >= 33.0
        else:  # the colour under clear pixels is nobody's (WebP's animation decoder gives 0 there)
            np.testing.assert_array_equal(got[:, :, 3], want[:, :, 3])
            visible = want[:, :, 3] > 0
            np.testing.assert_array_equal(got[:, :, :3][visible], want[:, :, :3][visible])
        if k:  # where the disk was in the frame before and is not now
            left = (expected[k - 1][:, :, 3] == 255) & (want[:, :, 3] == 0)
            assert left.sum() > 100 and (got[:, :, 3][left] == 0).all()


def test_frames_seen_before_go_through_the_model_once(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler
) -> None:
    """Six frames, four different ones: four go through the model (counted by the tiles it reports), and the
    repeated frames come out the same as the first time. The summary says so."""
    src = save(tmp_path / "pan.png", pan(photo))
    tiles: list[int] = []
    frames_done: list[tuple[int, int | None]] = []
    counting = Upscaler(upscaler.model, device="cpu", precision="fp32")
    original = counting.upscale_image

    def counted(image: ImageData, **kw: object) -> ImageData:
        tiles.append(1)
        return original(image)

    counting.upscale_image = counted  # type: ignore[method-assign]
    result = upscale_animation(
        counting, src, tmp_path / "out.png", on_frame=lambda d, t: frames_done.append((d, t))
    )
    assert len(tiles) == 4 and result.upscaled == 4 and result.frames == 6
    assert frames_done == [(k, 6) for k in range(1, 7)]
    assert "6 frames, 2 repeated (upscaled once)" in result.summary()
    frames, _, _ = shown(tmp_path / "out.png")
    np.testing.assert_array_equal(frames[3], frames[1])
    np.testing.assert_array_equal(frames[4], frames[0])
    assert not np.array_equal(frames[5], frames[0])


def test_a_still_format_takes_the_first_frame_with_a_warning(
    tmp_path: Path, photo: np.ndarray, model: Path, upscaler: Upscaler
) -> None:
    """--format jpg (or tiff) holds one picture: the first frame, and one warning line saying so."""
    src = save(tmp_path / "pan.gif", pan(photo))
    r = run_cli("upscale", src, "-o", tmp_path / "out", "--model", model, "--format", "tiff", *SETTINGS)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"esrgan: warning: {src}: animated GIF with 6 frames; only the first is used"
    with Image.open(tmp_path / "out" / "pan_x4.tiff") as im:
        got = np.asarray(im.convert("RGB"))
    first = reference(upscaler, [shown(src)[0][0][:, :, :3]])[0]
    np.testing.assert_array_equal(got, first[:, :, :3])


def test_a_still_gif_becomes_a_png_unless_a_gif_is_asked_for(
    tmp_path: Path, photo: np.ndarray, model: Path, upscaler: Upscaler
) -> None:
    """A still GIF is written as a PNG by default (it gains every colour the model makes); `-o x.gif` writes a GIF
    of 256 colours. An animated GIF stays a GIF."""
    still = tmp_path / "still.gif"
    Image.fromarray(pan(photo)[0]).save(still)
    animated = save(tmp_path / "anim.gif", pan(photo))
    jobs = plan_jobs([(still, None), (animated, None)], tmp_path / "out", scale=4)
    assert [job.dst.name for job in jobs] == ["still_x4.png", "anim_x4.gif"]
    r = run_cli("upscale", still, "-o", tmp_path / "x.gif", "--model", model, *SETTINGS)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "x.gif") as im:
        assert im.format == "GIF" and not getattr(im, "is_animated", False)
        got = np.asarray(im.convert("RGB"))
    want = reference(upscaler, [np.asarray(Image.open(still).convert("RGB"))])[0]
    assert psnr(got, want[:, :, :3], peak=255) >= 33.0


def test_a_broken_frame_fails_its_file_alone_and_leaves_nothing(
    tmp_path: Path, photo: np.ndarray, model: Path
) -> None:
    """A GIF cut in its fourth frame: one line naming the file and the frame, no output and no temporary file;
    the next file of the batch is written."""
    folder = tmp_path / "in"
    folder.mkdir()
    whole = save(tmp_path / "whole.gif", pan(photo)).read_bytes()
    with Image.open(tmp_path / "whole.gif") as im:
        im.seek(3)
        start = im.fp.tell()  # type: ignore[union-attr]
    (folder / "cut.gif").write_bytes(whole[: start + 200])
    save(folder / "fine.gif", pan(photo)[:3])
    out = tmp_path / "out"
    r = run_cli("upscale", folder, "-o", out, "--model", model, *SETTINGS)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"esrgan: error: {folder / 'cut.gif'}: frame "), r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["fine_x4.gif"]


def test_a_stopped_animation_leaves_nothing(tmp_path: Path, photo: np.ndarray, upscaler: Upscaler) -> None:
    """Ctrl-C between two frames: no output, no temporary file (the file is written when every frame is done)."""
    src = save(tmp_path / "pan.webp", pan(photo), lossless=True)

    def stop(done: int, total: int | None) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_animation(upscaler, src, tmp_path / "out" / "pan.webp", on_frame=stop)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_frames_that_do_not_fit_in_memory_are_refused_before_the_model(
    tmp_path: Path, photo: np.ndarray, model: Path
) -> None:
    """450 MiB of address space beyond what torch takes, and 100 frames that at --outscale 16 are 1024x768 WebP
    frames: about 315 MB held and as much again for the encoder's copy: one line before any frame, saying what is
    needed and what would help, and nothing written; a smaller animation in the same batch is done."""
    folder = tmp_path / "in"
    folder.mkdir()
    frames = [np.roll(pan(photo)[k % 6], k, axis=1) for k in range(100)]
    images = [Image.fromarray(f) for f in frames]
    images[0].save(folder / "long.webp", save_all=True, append_images=images[1:], duration=50, lossless=True)
    save(folder / "short.webp", pan(photo)[:2], lossless=True)
    out = tmp_path / "out"
    r = run_cli_in_address_space(450 * 2**20, "upscale", folder, "-o", out, "--model", model, "--outscale", "16",
                                 *SETTINGS, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"esrgan: error: {folder / 'long.webp'}: the 100 frames of 1024x768 need about "
    ), r.stderr
    assert "try a smaller --outscale (or --width / --height), or make it a video" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["short_x16.webp"]


def test_metadata_and_the_apng_still_image_are_kept(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler
) -> None:
    """An animated WebP's ICC profile stays with it; a GIF's comment too. An APNG whose first image is the still
    shown by viewers without animation support (not a frame of the animation) keeps it as such; as a GIF it is
    left out, with the animation's frames and times."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    webp = save(tmp_path / "pan.webp", pan(photo), lossless=True, icc_profile=srgb)
    upscale_animation(upscaler, webp, tmp_path / "pan_x4.webp")
    with Image.open(tmp_path / "pan_x4.webp") as im:
        assert im.info.get("icc_profile") == srgb and im.n_frames == 6
    gif = save(tmp_path / "pan.gif", pan(photo), comment=b"made from the astronaut")
    upscale_animation(upscaler, gif, tmp_path / "pan_x4.gif")
    with Image.open(tmp_path / "pan_x4.gif") as im:
        assert im.info.get("comment") == b"made from the astronaut"
    apng = save(tmp_path / "still.png", pan(photo), default_image=True)  # frame 0 is the still image
    upscale_animation(upscaler, apng, tmp_path / "still_x4.png")
    upscale_animation(upscaler, apng, tmp_path / "still_x4.gif")
    with Image.open(tmp_path / "still_x4.png") as im:
        assert im.info.get("default_image") and im.n_frames == 6
        im.seek(1)
        im.load()
        assert im.info["duration"] == DURATIONS[0]
    frames, durations, _ = shown(tmp_path / "still_x4.gif")
    assert len(frames) == 5 and durations == DURATIONS[:5]
