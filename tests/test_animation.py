"""Animated GIF, APNG and WebP: every frame upscaled, with its display time, the loop count and transparency, written
back as an animation (esrgan.animation). The frames are a real photograph panned and a sprite cut out of it; the
references are each frame as Pillow composites it, upscaled alone by an Upscaler with the CLI's settings."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import photo_preserving_rrdb, psnr, run_cli, run_cli_in_address_space
from PIL import Image, ImageCms, ImageSequence

from esrgan import Upscaler
from esrgan.animation import upscale_animation
from esrgan.checkpoints import save_model
from esrgan.errors import EsrganError
from esrgan.imageio import AnimationWriter, ImageData, ImageWarning, read_frames
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
    # how many times it plays is kept: a GIF's loop count 3 is 4 plays (browsers play N + 1), APNG's and WebP's 3
    # are 3 (the audit of session 31: the count was copied as it was, one play off between the formats)
    plays = 4 if source == "gif" else 3
    assert (
        len(frames) == len(ORDER)
        and durations == DURATIONS
        and loop == (plays - 1 if dst.suffix == ".gif" else plays)
    )
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
    """Six frames, four different ones: four go through the model (the calls of its upscale_image, counted by a
    wrapper around the real one), and the
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


@pytest.mark.parametrize(("source", "fmt"), [("gif", "tiff"), ("webp", "jpg")])
def test_a_still_format_takes_the_first_frame_with_a_warning(
    tmp_path: Path, photo: np.ndarray, model: Path, upscaler: Upscaler, source: str, fmt: str
) -> None:
    """--format jpg (or tiff) holds one picture: the first frame, and one warning line saying so (an opaque
    animated WebP, which decodes as RGBA, also warned that JPEG has no alpha: "composited on white")."""
    src = save(tmp_path / f"pan.{source}", pan(photo), **({"lossless": True} if source == "webp" else {}))
    r = run_cli("upscale", src, "-o", tmp_path / "out", "--model", model, "--format", fmt, *SETTINGS)
    assert r.returncode == 0, r.stderr
    kind = source.upper()
    assert (
        r.stderr.strip() == f"esrgan: warning: {src}: animated {kind} with 6 frames; only the first is used"
    )
    with Image.open(tmp_path / "out" / f"pan_x4.{fmt}") as im:
        got = np.asarray(im.convert("RGB"))
    first = reference(upscaler, [shown(src)[0][0][:, :, :3]])[0]
    if fmt == "jpg":
        assert psnr(got, first[:, :, :3], peak=255) >= 35.0  # JPEG quality 95
    else:
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
    """510 MiB of address space beyond what torch takes, and 100 frames that at --outscale 16 are 1024x768 GIF
    frames (88 of them different): about 430 MB held and encoded, one line before any frame, saying what is
    needed and what would help, and nothing written. 100 frames of that size that cycle through 2 pictures are held
    twice, not 100 times: a decoding pass counts the different ones, and that animation is done (about 165 MB: it
    was refused as if every frame differed)."""
    folder = tmp_path / "in"
    folder.mkdir()
    views = pan(photo)
    for name, frames in [("long", [np.roll(views[k % 6], k, axis=1) for k in range(100)]),
                         ("cycle", [views[k % 2] for k in range(100)])]:  # fmt: skip
        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            folder / f"{name}.webp", save_all=True, append_images=images[1:], duration=50, lossless=True
        )
    out = tmp_path / "out"
    # ~250 MB free when the frames are planned: one frame's 189 MB fits (so the different ones are counted: at 450
    # MiB, 188.9 MB were free once in CI and the refusal came before the count), the 88 different ones do not
    r = run_cli_in_address_space(510 * 2**20, "upscale", folder, "-o", out, "--model", model, "--outscale", "16",
                                 "--format", "gif", *SETTINGS, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"esrgan: error: {folder / 'long.webp'}: the 100 frames of 1024x768 (88 different) need about "
    ), r.stderr
    assert "try a smaller --outscale (or --width / --height), or make it a video" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["cycle_x16.gif"]
    with Image.open(out / "cycle_x16.gif") as im:
        assert im.n_frames == 100 and im.size == (1024, 768)


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


# --- the audit of session 31 (helper-78): what a viewer sees, kept ------------------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _gif(width: int, height: int, frames: list[tuple[np.ndarray, int, int]], palette: np.ndarray) -> bytes:
    """A GIF written byte by byte (Pillow's writer cannot make these): frames of palette indices at (x, y), a
    global palette, loop for ever, 100 ms each (_gif_animation)."""
    return _gif_animation(
        width, height, [GifFrame(index, x, y, disposal=1) for index, x, y in frames], palette
    )


class GifFrame(NamedTuple):
    index: np.ndarray
    """palette indices, h x w"""
    x: int = 0
    y: int = 0
    disposal: int = 0
    transparency: int | None = None
    palette: np.ndarray | None = None
    """its own colour table (256 x 3), else the file's"""


def _gif_animation(width: int, height: int, frames: list[GifFrame], palette: np.ndarray) -> bytes:
    """A GIF written byte by byte: a global palette (256 x 3), loop for ever, each frame 100 ms at its place, with
    its disposal, transparent index and own colour table. LZW kept trivial: a clear code before every 250
    indices, 9-bit codes (what every decoder reads)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0))
    out += np.ascontiguousarray(palette, dtype=np.uint8).tobytes()
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for frame in frames:
        h, w = frame.index.shape
        flags = frame.disposal << 2 | (frame.transparency is not None)
        out += b"\x21\xf9\x04" + struct.pack("<BHB", flags, 10, frame.transparency or 0) + b"\x00"
        out += b"\x2c" + struct.pack("<HHHHB", frame.x, frame.y, w, h, 0 if frame.palette is None else 0x87)
        if frame.palette is not None:
            out += np.ascontiguousarray(frame.palette, dtype=np.uint8).tobytes()
        codes: list[int] = []
        for n, value in enumerate(frame.index.ravel()):
            if n % 250 == 0:
                codes.append(256)
            codes.append(int(value))
        codes.append(257)
        bits = nbits = 0
        data = bytearray()
        for code in codes:
            bits |= code << nbits
            nbits += 9
            while nbits >= 8:
                data.append(bits & 255)
                bits >>= 8
                nbits -= 8
        if nbits:
            data.append(bits & 255)
        out.append(8)
        for k in range(0, len(data), 255):
            out += bytes([len(data[k : k + 255])]) + data[k : k + 255]
        out.append(0)
    return bytes(out + b"\x3b")


def test_a_gif_has_one_palette_so_what_does_not_move_does_not_flicker(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler
) -> None:
    """A photo with a small square moving along its top: in the GIF, every pixel away from the square keeps its
    colour from frame to frame, as in the APNG (a palette made for each frame changed 40-75 % of them, by up to 22
    levels, and so the encoder could not leave them out: the GIF was larger than the lossless APNG)."""
    base = np.ascontiguousarray(photo[200:264, 180:244])
    frames = []
    for k in range(6):
        f = base.copy()
        f[2:10, 4 + 8 * k : 12 + 8 * k] = (230, 20, 20)
        frames.append(f)
    src = save(tmp_path / "square.png", frames)
    upscale_animation(upscaler, src, tmp_path / "square.gif")
    upscale_animation(upscaler, src, tmp_path / "square_x4.png")
    gif, _, _ = shown(tmp_path / "square.gif")
    apng, _, _ = shown(tmp_path / "square_x4.png")
    still = slice(80, 256)  # rows below the square's reach (its 8 rows at x4, and the model's margin)
    for k in range(1, 6):
        np.testing.assert_array_equal(apng[k][still], apng[0][still])
        np.testing.assert_array_equal(gif[k][still], gif[0][still])
        assert psnr(gif[k][:, :, :3], apng[k][:, :, :3], peak=255) >= 33.0


def test_plays_and_display_times_as_a_gif_holds_them(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler
) -> None:
    """An APNG that plays once becomes a GIF without a loop count (a count of 1 is two plays), and a GIF without
    one an APNG that plays once. Display times a GIF cannot hold (it counts hundredths; browsers show 10 ms and
    less as 100 ms): 15, 25, 35, 45 ms become 20, 20, 40, 40 (each frame starts at its time rounded: the length
    stays 120 ms, where cutting each to 10, 20, 30, 40 lost 17 %); a 60 fps APNG keeps its speed, frames under
    20 ms apart left out with one warning."""
    views = pan(photo)[:4]
    odd = [Image.fromarray(v) for v in views]
    odd[0].save(tmp_path / "odd.png", save_all=True, append_images=odd[1:], duration=[15, 25, 35, 45], loop=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        upscale_animation(upscaler, tmp_path / "odd.png", tmp_path / "odd.gif")
    assert [str(w.message) for w in seen] == []  # no frame left out
    frames, durations, loop = shown(tmp_path / "odd.gif")
    assert len(frames) == 4 and durations == [20, 20, 40, 40] and loop is None
    upscale_animation(upscaler, tmp_path / "odd.gif", tmp_path / "again.png")
    assert shown(tmp_path / "again.png")[2] == 1  # no loop count in the GIF: once
    fast = [Image.fromarray(np.roll(views[k % 4], k, axis=1)) for k in range(12)]
    fast[0].save(tmp_path / "fast.png", save_all=True, append_images=fast[1:], duration=1000 / 60, loop=0)
    with pytest.warns(ImageWarning, match=r"fast\.gif: GIF output: 4 of 12 frames shown for less than 20 ms"):
        upscale_animation(upscaler, tmp_path / "fast.png", tmp_path / "fast.gif")
    frames, durations, _ = shown(tmp_path / "fast.gif")
    assert len(frames) == 8 and min(durations) >= 20 and sum(durations) == 200  # 12 x 16.7 ms


def test_a_gif_frame_past_the_canvas_is_cut_to_it(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler
) -> None:
    """A later frame larger than the GIF's canvas, or placed partly outside it (common in files from the wild):
    browsers cut it to the canvas; the whole file failed ("frame 2 of 3 is 48x48, the first 32x32")."""
    q = Image.fromarray(np.ascontiguousarray(photo[100:164, 150:214])).quantize(256, dither=Image.Dither.NONE)
    palette = np.array(q.getpalette()[:768]).reshape(256, 3)
    index = np.asarray(q)
    frames = [(index[8:40, 8:40], 0, 0), (index[:48, :48], 0, 0), (index[40:56, 40:56], 24, 24)]
    (tmp_path / "wide.gif").write_bytes(_gif(32, 32, frames, palette))
    result = upscale_animation(upscaler, tmp_path / "wide.gif", tmp_path / "wide_x4.png")
    assert result.frames == 3
    out, _, _ = shown(tmp_path / "wide_x4.png")
    assert len(out) == 3 and all(f.shape == (128, 128, 4) for f in out)
    want = reference(upscaler, [palette[index[:32, :32]].astype(np.uint8)])[0]
    np.testing.assert_array_equal(out[1], want)  # the 48x48 frame's top-left 32x32: the same pixels


def test_a_corrupt_frame_count_and_16_bit_frames(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler
) -> None:
    """An APNG whose acTL claims 2^31 - 1 frames is called corrupt in one line (it asked for 316 TB of memory
    and suggested making it a video); a 16-bit APNG's two equal frames are one frame through the model (the first
    went through the 16-bit reader, the second through Pillow's 8 bits: both were upscaled, 1 level apart)."""
    save(tmp_path / "two.png", pan(photo)[:2])
    data = bytearray((tmp_path / "two.png").read_bytes())
    at = data.index(b"acTL")
    data[at + 4 : at + 8] = struct.pack(">I", 2**31 - 1)
    data[at + 12 : at + 16] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 12])))
    (tmp_path / "claims.png").write_bytes(bytes(data))
    with pytest.raises(
        EsrganError, match=r"claims\.png: corrupt APNG: it claims 2147483647 frames in \d+ bytes"
    ):
        upscale_animation(upscaler, tmp_path / "claims.png", tmp_path / "claims_x4.png")
    grey = (pan(photo)[0][:, :, 1].astype(np.uint16) * 257 + 3).astype(">u2")
    rows = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in grey))
    control = struct.pack(">IIIIIHHBB", 0, 64, 48, 0, 0, 1, 10, 0, 0)
    apng = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 16, 0, 0, 0, 0))
    apng += _chunk(b"acTL", struct.pack(">II", 2, 0)) + _chunk(b"fcTL", control) + _chunk(b"IDAT", rows)
    apng += _chunk(b"fcTL", struct.pack(">I", 1) + control[4:]) + _chunk(b"fdAT", struct.pack(">I", 2) + rows)
    (tmp_path / "deep.png").write_bytes(apng + _chunk(b"IEND", b""))
    result = upscale_animation(upscaler, tmp_path / "deep.png", tmp_path / "deep_x4.png")
    assert result.frames == 2 and result.upscaled == 1


def test_held_frames_turn_rgba_once_and_repeats_stay_one(photo: np.ndarray, tmp_path: Path) -> None:
    """APNG and WebP frames are held as the encoder takes them: when the first frame with alpha comes, those held
    become RGBA there and then, a repeated frame once (it was converted again for every repeat, and all frames
    were copied again at save: 12.5 bytes an output pixel where 9 were counted)."""
    view = pan(photo)[0]
    writer = AnimationWriter(tmp_path / "mixed.webp", ImageData(pixels=view))
    first = writer.add(ImageData(pixels=view), 50)
    writer.repeat(first, 50)
    clear = np.full(view.shape[:2], 255, np.uint8)
    clear[:, :8] = 0
    writer.add(ImageData(pixels=view, alpha=clear), 50)
    assert [f.mode for f in writer.frames] == ["RGBA"] * 3 and writer.frames[0] is writer.frames[1]
    writer.save()
    frames, durations, _ = shown(tmp_path / "mixed.webp")  # the encoder shows the repeat as one frame, longer
    assert (
        durations == [100, 50]
        and (frames[0][:, :, 3] == 255).all()
        and (frames[1][:, :, 3][:, :8] == 0).all()
    )


# --- GIF and APNG frames composited as browsers show them (helper-81's audit: Pillow's compositing differed) -----------
def read_rgba(path: Path) -> list[np.ndarray]:
    """Every frame read_frames gives, as RGBA (grey repeated, no alpha: opaque)."""
    out = []
    with read_frames(path) as frames:
        for image, _ in frames:
            pixels = image.pixels if image.pixels.shape[2] == 3 else np.repeat(image.pixels, 3, axis=2)
            alpha = np.full(pixels.shape[:2], 255, np.uint8) if image.alpha is None else image.alpha
            out.append(np.dstack([pixels, alpha]))
    return out


def gif_shown(width: int, height: int, frames: list[GifFrame], palette: np.ndarray) -> list[np.ndarray]:
    """What a browser (Chrome, Firefox) shows of a GIF: an RGBA canvas that starts transparent; each frame drawn at
    its place, cut to the canvas, its transparent index leaving the pixel under it; then disposal 2 clears its
    rectangle to transparent, 3 puts back what was there before it, 0 and 1 leave it."""
    canvas = np.zeros((height, width, 4), np.uint8)
    shown = []
    for f in frames:
        table = palette if f.palette is None else f.palette
        before = canvas.copy()
        h, w = f.index.shape
        for r in range(h):
            for c in range(w):
                value = int(f.index[r, c])
                if f.y + r < height and f.x + c < width and value != f.transparency:
                    canvas[f.y + r, f.x + c] = (*table[value], 255)
        shown.append(canvas.copy())
        if f.disposal == 2:
            canvas[f.y : f.y + h, f.x : f.x + w] = 0
        elif f.disposal == 3:
            canvas = before
    return shown


def indexed(view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A photo's view as palette indices and its palette of 200 colours (256 x 3; index 255 unused: transparent)."""
    q = Image.fromarray(view).quantize(200, dither=Image.Dither.NONE)
    palette = np.zeros((256, 3), np.uint8)
    palette[:200] = np.array(q.getpalette()[:600]).reshape(200, 3)
    return np.asarray(q).copy(), palette


def test_a_gif_area_disposed_to_background_is_transparent(tmp_path: Path, photo: np.ndarray) -> None:
    """An opaque first frame, then a frame with disposal 2 ("restore to background"): the frame after shows that
    area transparent, as browsers do (Pillow filled it with the background colour, opaque: the audit's case)."""
    base, palette = indexed(pan(photo)[0])
    second = base[::-1, ::-1]  # the view turned round, in the same colours
    frames = [
        GifFrame(base, disposal=1),
        GifFrame(second[8:28, 10:34], x=10, y=8, disposal=2),
        GifFrame(base[30:46, 40:56], x=40, y=24, disposal=1),
    ]
    (tmp_path / "cleared.gif").write_bytes(_gif_animation(64, 48, frames, palette))
    got, want = read_rgba(tmp_path / "cleared.gif"), gif_shown(64, 48, frames, palette)
    assert len(got) == 3 and (want[2][8:28, 10:34, 3] == 0).all() and (want[2][:8, :, 3] == 255).all()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_gif_frame_disposed_to_previous_is_undone_and_only_it(tmp_path: Path, photo: np.ndarray) -> None:
    """Disposal 3 puts back what was there before the frame, and a later frame whose disposal is 0 (none) stays,
    as browsers show it (Pillow kept the last disposal given for frames that give 0: it undid that one too); on
    the first frame, disposal 3 leaves the canvas as it started: transparent."""
    views = pan(photo)
    base, palette = indexed(views[0])
    other, local = indexed(np.ascontiguousarray(photo[300:348, 200:264]))  # a local colour table
    frames = [
        GifFrame(base[:24, :32], disposal=3),
        GifFrame(base, disposal=0),
        GifFrame(other[4:20, 6:30], x=6, y=4, disposal=3, palette=local),
        GifFrame(other[20:40, 30:50], x=30, y=20, disposal=0, palette=local),
        GifFrame(base[:16, :16], x=48, y=0, disposal=1),
    ]
    (tmp_path / "previous.gif").write_bytes(_gif_animation(64, 48, frames, palette))
    got, want = read_rgba(tmp_path / "previous.gif"), gif_shown(64, 48, frames, palette)
    assert len(got) == 5
    np.testing.assert_array_equal(want[4][20:40, 30:48, :3], local[other[20:40, 30:48]])  # frame 4 stayed
    np.testing.assert_array_equal(want[4][4:20, 6:30, :3], palette[base[4:20, 6:30]])  # frame 3 was undone
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_partial_gif_frames_with_transparency_over_earlier_ones(tmp_path: Path, photo: np.ndarray) -> None:
    """The canvas starts transparent: a first frame covering part of it leaves the rest clear (Pillow filled it
    with colour 0, opaque); later frames with a transparent index and their own colour tables show the frames
    before through their holes, one reaching past the canvas is cut to it."""
    views = pan(photo)
    base, palette = indexed(views[0])
    other, local = indexed(np.ascontiguousarray(photo[300:348, 200:264]))
    holes = other.copy()
    holes[10:30, 12:40] = 255
    sticker = base[::-1, ::-1].copy()
    sticker[:, ::3] = 255
    frames = [
        GifFrame(base[:40, :44], disposal=1),
        GifFrame(holes, transparency=255, palette=local, disposal=1),
        GifFrame(sticker[:24, :40], x=36, y=30, transparency=255, disposal=0),
        GifFrame(holes[::-1], transparency=255, palette=local, disposal=2),
        GifFrame(sticker, transparency=255, disposal=1),
    ]
    (tmp_path / "partial.gif").write_bytes(_gif_animation(64, 48, frames, palette))
    got, want = read_rgba(tmp_path / "partial.gif"), gif_shown(64, 48, frames, palette)
    assert len(got) == 5 and (want[0][:, 44:, 3] == 0).all() and (want[4][:, :, 3] == 0).any()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


class PngFrame(NamedTuple):
    rgba: np.ndarray
    x: int = 0
    y: int = 0
    dispose: int = 0
    """0 NONE, 1 BACKGROUND (clear to transparent black), 2 PREVIOUS"""
    blend: int = 0
    """0 SOURCE, 1 OVER"""


def _apng(width: int, height: int, frames: list[PngFrame]) -> bytes:
    """An RGBA APNG written chunk by chunk: the first frame is the IDAT image (the whole canvas), each frame at
    its place with its dispose and blend ops, 100 ms, loop for ever."""
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    out += _chunk(b"acTL", struct.pack(">II", len(frames), 0))
    seq = 0
    for k, f in enumerate(frames):
        h, w = f.rgba.shape[:2]
        out += _chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, f.x, f.y, 1, 10, f.dispose, f.blend))
        rows = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(f.rgba)))
        out += _chunk(b"IDAT", rows) if k == 0 else _chunk(b"fdAT", struct.pack(">I", seq + 1) + rows)
        seq += 1 if k == 0 else 2
    return out + _chunk(b"IEND", b"")


def apng_shown(width: int, height: int, frames: list[PngFrame]) -> list[np.ndarray]:
    """What the APNG specification shows: an RGBA canvas that starts transparent black; a frame drawn at its place
    by its blend op: SOURCE replaces, OVER composites (with s, d the source's and the canvas's alpha as fractions:
    alpha s + d (1 - s), colour (C_s s + C_d (d (1 - s))) / alpha, rounded; a clear source pixel changes
    nothing); then dispose BACKGROUND clears its rectangle to transparent black, PREVIOUS puts back what was
    there before it."""
    canvas = np.zeros((height, width, 4), np.uint8)
    shown = []
    for f in frames:
        before = canvas.copy()
        h, w = f.rgba.shape[:2]
        for r in range(h):
            for c in range(w):
                src, dst = f.rgba[r, c], canvas[f.y + r, f.x + c]
                if f.blend == 0:
                    canvas[f.y + r, f.x + c] = src
                elif src[3]:
                    s, d = src[3] / 255, dst[3] / 255
                    a = s + d * (1 - s)
                    colour = [round((int(src[i]) * s + int(dst[i]) * (d * (1 - s))) / a) for i in range(3)]
                    canvas[f.y + r, f.x + c] = (*colour, round(a * 255))
        shown.append(canvas.copy())
        if f.dispose == 1:
            canvas[f.y : f.y + h, f.x : f.x + w] = 0
        elif f.dispose == 2:
            canvas = before
    return shown


def with_alpha(view: np.ndarray, alpha: np.ndarray | int) -> np.ndarray:
    return np.dstack([view, np.broadcast_to(np.asarray(alpha, np.uint8), view.shape[:2])])


def test_an_apng_frame_blended_over_an_opaque_one_stays_opaque(tmp_path: Path, photo: np.ndarray) -> None:
    """Frames with partial alpha (a ramp 0-255, a half-transparent square) blended OVER an opaque frame: opaque, in
    the colours of the specification's alpha compositing (Pillow gave alpha 191 for the square)."""
    views = pan(photo)
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    frames = [
        PngFrame(with_alpha(views[0], 255)),
        PngFrame(with_alpha(views[1][:24, :32], ramp), x=20, y=12, blend=1),
        PngFrame(with_alpha(views[2][10:26, 20:36], 128), x=4, y=30, blend=1),
    ]
    (tmp_path / "over.png").write_bytes(_apng(64, 48, frames))
    got, want = read_rgba(tmp_path / "over.png"), apng_shown(64, 48, frames)
    assert len(got) == 3 and (want[2][:, :, 3] == 255).all()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_apng_frames_over_cleared_areas_disposed_and_placed(tmp_path: Path, photo: np.ndarray) -> None:
    """BACKGROUND clears to transparent black, PREVIOUS puts back what was there, frames sit at their offsets, a
    SOURCE frame with alpha 0 punches a hole, and partial alpha blended OVER a cleared area keeps its colour (Pillow
    darkened it, by up to 119 levels in the audit)."""
    views = pan(photo)
    ramp = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (20, 1))
    frames = [
        PngFrame(with_alpha(views[0], 255), dispose=0),
        PngFrame(with_alpha(views[1][:16, :16], 255), x=4, y=4, dispose=1),
        PngFrame(with_alpha(views[2][:20, :24], ramp), x=2, y=2, dispose=2, blend=1),
        PngFrame(with_alpha(views[3][:20, :24], 200), x=30, y=20, dispose=0, blend=1),
        PngFrame(with_alpha(views[0][:10, :12], 0), x=40, y=30, dispose=1, blend=0),
        PngFrame(with_alpha(views[1][:20, :24], ramp[:, ::-1]), x=36, y=24, dispose=0, blend=1),
    ]
    (tmp_path / "disposed.png").write_bytes(_apng(64, 48, frames))
    got, want = read_rgba(tmp_path / "disposed.png"), apng_shown(64, 48, frames)
    assert len(got) == 6 and (want[2][4:20, 4:20, 3] < 255).any() and (want[4][30:40, 40:52, 3] == 0).all()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_grey_gif_stays_grey_until_a_frame_brings_colour(tmp_path: Path, photo: np.ndarray) -> None:
    """A GIF whose colour tables are all grey (the identity: index i is grey i) gives grey frames; one whose later
    frame has a colour table of its own shows that frame in colour (Pillow read it as grey, its indices as levels)."""
    grey = np.asarray(Image.fromarray(pan(photo)[0]).convert("L")).copy()
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    other, local = indexed(np.ascontiguousarray(photo[300:348, 200:264]))
    frames = [GifFrame(grey, disposal=1), GifFrame(grey[::-1, ::-1][:24, :32], x=8, y=8, disposal=1)]
    (tmp_path / "grey.gif").write_bytes(_gif_animation(64, 48, frames, levels))
    with read_frames(tmp_path / "grey.gif") as read:
        assert [image.pixels.shape for image, _ in read] == [(48, 64, 1)] * 2
    np.testing.assert_array_equal(read_rgba(tmp_path / "grey.gif"), gif_shown(64, 48, frames, levels))
    frames.append(GifFrame(other[:20, :20], x=40, y=20, palette=local, disposal=1))
    (tmp_path / "colour.gif").write_bytes(_gif_animation(64, 48, frames, levels))
    got, want = read_rgba(tmp_path / "colour.gif"), gif_shown(64, 48, frames, levels)
    assert len(got) == 3 and (np.ptp(want[2][20:40, 40:60, :3].astype(int), axis=2) > 30).any()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_broken_apng_frame_is_named_after_the_frames_before_it(tmp_path: Path, photo: np.ndarray) -> None:
    """An APNG cut in its third frame's data, or with a wrong CRC there: the two frames before it are read, then
    one line naming the file, the frame and what is wrong with it."""
    frames = [PngFrame(with_alpha(view, 255)) for view in pan(photo)[:4]]
    whole = _apng(64, 48, frames)
    third = whole.index(b"fdAT", whole.index(b"fdAT") + 4)
    cut, crc = tmp_path / "cut.png", tmp_path / "crc.png"
    cut.write_bytes(whole[: third + 300])
    crc.write_bytes(whole[: third + 300] + bytes([whole[third + 300] ^ 1]) + whole[third + 301 :])
    for path, problem in ((cut, "truncated PNG (chunk fdAT cut short)"), (crc, "CRC mismatch in chunk fdAT")):
        seen = []
        with pytest.raises(EsrganError) as caught, read_frames(path) as read:
            seen.extend(read)
        assert len(seen) == 2 and str(caught.value).startswith(
            f"{path}: frame 3 of 4: corrupt or truncated image"
        )
        assert problem in str(caught.value) and "\n" not in str(caught.value)


# --- the review of session 31 (helper-80) ---------------------------------------------------------------------------------
def test_a_gif_palette_is_drawn_from_all_of_every_frame(tmp_path: Path, photo: np.ndarray) -> None:
    """64 frames of 512x512 whose colour changes across the width (a gradient under the photograph, as a sky has
    one): the GIF's one palette comes from pixels drawn all over them. Every 256th pixel, as it was, was columns 0
    and 256 of every frame: 2 colours, 8 dB (helper-80's finding); a palette for these frames alone gives 30+."""
    x = np.arange(512, dtype=np.float32)[None, :, None] / 511.0
    ramp = np.concatenate([x, 1.0 - x, np.abs(2.0 * x - 1.0)], axis=2) * 255.0
    picture = np.clip(0.6 * ramp + 0.4 * photo, 0, 255).astype(np.uint8)
    writer = AnimationWriter(tmp_path / "sky.gif", ImageData(pixels=picture))
    for k in range(64):
        writer.add(ImageData(pixels=np.roll(picture, 4 * k, axis=0)), 50)
    writer.save()
    frames, _, _ = shown(tmp_path / "sky.gif")
    assert len(frames) == 64 and psnr(frames[0][:, :, :3], picture, peak=255) >= 30.0


def test_times_a_format_cannot_hold_and_10_ms_frames(
    tmp_path: Path, photo: np.ndarray, upscaler: Upscaler
) -> None:
    """A frame shown longer than a GIF holds (655.35 s) is cut to it with a warning (Pillow's OverflowError was a
    traceback that ended the batch, after the model); an APNG of 10 ms frames keeps its speed as a GIF (10 ms was
    kept, which browsers play at 100); a GIF's own 10 ms stay 10 ms (its viewers play it as they did)."""
    views = [Image.fromarray(v) for v in pan(photo)[:4]]
    views[0].save(
        tmp_path / "long.png", save_all=True, append_images=views[1:2], duration=[700_000, 100], loop=0
    )
    with pytest.warns(
        ImageWarning, match=r"long\.gif: GIF output: 1 frame shown longer than GIF holds \(655\.35 s\)"
    ):
        upscale_animation(upscaler, tmp_path / "long.png", tmp_path / "long.gif")
    assert shown(tmp_path / "long.gif")[1] == [655_350, 100]
    fast = [Image.fromarray(np.roll(pan(photo)[k % 4], k, axis=1)) for k in range(12)]
    fast[0].save(tmp_path / "fast.png", save_all=True, append_images=fast[1:], duration=10, loop=0)
    with pytest.warns(ImageWarning, match=r"6 of 12 frames shown for less than 20 ms"):
        upscale_animation(upscaler, tmp_path / "fast.png", tmp_path / "fast.gif")
    frames, durations, _ = shown(tmp_path / "fast.gif")
    assert len(frames) == 6 and durations == [20] * 6
    upscale_animation(upscaler, tmp_path / "fast.gif", tmp_path / "again.gif")
    assert shown(tmp_path / "again.gif")[1] == [20] * 6
    fast[0].save(tmp_path / "own.gif", save_all=True, append_images=fast[1:], duration=10, loop=0)
    upscale_animation(upscaler, tmp_path / "own.gif", tmp_path / "own_x4.gif")
    assert shown(tmp_path / "own_x4.gif")[1] == [10] * 12


def test_frames_pillow_composites_are_held_to_the_pixel_limit(tmp_path: Path) -> None:
    """A GIF the frame walk does not follow (an empty extension before a frame) goes to Pillow's compositing, which
    grows the image to a later frame's size: that size is held to max_pixels before the frame is decoded (a 16x16
    GIF's 400x400 frame was decoded under a limit of 1,000; at the default limit a 1x1 GIF could ask ~0.85 GB)."""
    palette = np.random.default_rng(0).integers(0, 255, (256, 3), np.uint8)
    big = np.random.default_rng(1).integers(0, 200, (400, 400), np.uint8)
    data = _gif_animation(
        16, 16, [GifFrame(np.zeros((16, 16), np.uint8), disposal=1), GifFrame(big)], palette
    )
    second = data.index(b"\x21\xf9\x04", data.index(b"\x2c"))
    (tmp_path / "odd.gif").write_bytes(data[:second] + b"\x21\xfe\x00\x01\x00\x00" + data[second:])
    with read_frames(tmp_path / "odd.gif", max_pixels=1000) as frames:
        assert frames._composited is None  # Pillow's branch, the one this is about
        with pytest.raises(EsrganError, match=r"odd\.gif: frame 2 of 2: 400x400 = 160000 pixels exceeds"):
            list(frames)
