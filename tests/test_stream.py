"""Outputs written as they are computed: Upscaler.upscale_rows -> imageio.write_image_rows, and the batch choosing it
when a whole output would not fit in memory (before: the kernel's OOM killer ended the batch without a word)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import in_a_memory_cgroup, needs_memory_cgroups, photo_preserving_rrdb, run_cli
from PIL import Image, ImageCms

from esrgan.checkpoints import save_model
from esrgan.compact import CompactConfig, SRVGGNetCompact
from esrgan.errors import EsrganError, ImageError
from esrgan.generator import RRDBNet
from esrgan.imageio import ImageData, read_image, write_image, write_image_rows
from esrgan.upscale import Upscaler
from esrgan.zoo import load_model

ESRGAN = (sys.executable, "-m", "esrgan.cli")


def _compact(scale: int = 4, seed: int = 0) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    model = SRVGGNetCompact(CompactConfig(num_feat=8, num_conv=4, scale=scale))
    model.init_weights(last_scale=1.0)
    return model.eval()


def _x2_unshuffle(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_grow=4, scale=2).eval()


CASES = {
    "rgb, blended tiles": (lambda: photo_preserving_rrdb(0), lambda p: p[:150, :130], 64),
    "grey": (lambda: photo_preserving_rrdb(0), lambda p: p[100:190, 50:200, :1], 48),
    "16-bit": (lambda: photo_preserving_rrdb(0), lambda p: p[:90, :110].astype(np.uint16) * 257 + 3, 48),
    "x2 unshuffle, odd size": (_x2_unshuffle, lambda p: p[:97, :83], 48),
    "compact, exact tiles": (_compact, lambda p: p[200:330, 100:360], 128),
    "one tile": (lambda: photo_preserving_rrdb(0), lambda p: p[:40, :30], 0),
    "a batch of tiles over tile rows": (lambda: photo_preserving_rrdb(0), lambda p: p[:150, :130], -64),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rows_are_the_whole_images_pixels(photo: np.ndarray, case: str) -> None:
    """upscale_rows gives, band by band, exactly the pixels upscale_image gives (same tiles, same blend), on crops
    of a real photo: colour, grey, 16-bit, a pixel-unshuffle model at an odd size (padded), exact tiles; the rows
    really come in bands (the whole output is never one array) except where one tile is the image, also when a
    batch of tiles spans tile rows (each tile row's rows come as soon as it is done, not when the batch ends)."""
    make, crop, tile = CASES[case]
    pixels = np.ascontiguousarray(crop(photo))
    image = ImageData(pixels=pixels, bit_depth=16 if pixels.dtype == np.uint16 else 8)
    batch = (
        7 if tile < 0 else None
    )  # 12 tiles in rows of 3 or 4: the first batch spans two tile rows and more
    up = Upscaler(make(), device="cpu", precision="fp32", tile=abs(tile), batch=batch)
    whole = up.upscale_image(image).pixels
    seen: list[tuple[int, int]] = []
    bands, progress_at_first = [], None
    for band in up.upscale_rows(image, on_tile=lambda done, total: seen.append((done, total))):
        progress_at_first = seen[-1] if progress_at_first is None else progress_at_first
        bands.append(band)
    if batch is not None:  # the first tile rows' rows came out before the batch of 7 tiles was counted done
        assert progress_at_first is not None and progress_at_first[0] == 0 and seen[1][0] == 7 < seen[1][1]
    assert np.array_equal(np.concatenate(bands), whole) and bands[0].dtype == whole.dtype
    assert all(b.shape[1:] == whole.shape[1:] for b in bands)
    assert (len(bands) == 1) == (tile == 0) and seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 0


@pytest.mark.parametrize("bits", [8, 16])
def test_a_grey_image_stored_as_rgb_streams_as_the_whole_image_grey(photo: np.ndarray, bits: int) -> None:
    """helper-72's audit (session 30): a grey image stored as RGB (R == G == B: a black-and-white JPEG) took the
    colour path and came back tinted. Streamed, as whole, it takes the grey path: the rows are the whole image's,
    R == G == B, the grey image's own rows in each channel (a real photo made grey, tiled rows)."""
    grey = np.asarray(Image.fromarray(np.ascontiguousarray(photo[:150, :130])).convert("L"))[:, :, None]
    if bits == 16:
        grey = grey.astype(np.uint16) * 257 + 3
    rgb = np.repeat(grey, 3, axis=2)
    up = Upscaler(photo_preserving_rrdb(1, spread=0.3), device="cpu", precision="fp32", tile=64)
    image = ImageData(pixels=rgb, bit_depth=bits)
    assert up.stream_reason(image) is None
    bands = list(up.upscale_rows(image))
    assert len(bands) > 1 and all(b.shape[2] == 3 and b.dtype == rgb.dtype for b in bands)
    streamed = np.concatenate(bands)
    assert np.array_equal(streamed, up.upscale_image(image).pixels)
    assert np.array_equal(streamed[:, :, 0], streamed[:, :, 1]) and np.array_equal(
        streamed[:, :, 1], streamed[:, :, 2]
    )
    alone = np.concatenate(list(up.upscale_rows(ImageData(pixels=grey, bit_depth=bits))))
    assert np.array_equal(streamed[:, :, :1], alone)


def test_what_cannot_be_streamed_says_why(photo: np.ndarray) -> None:
    """Alpha is a second pass and a resize needs the rows around each output row: stream_reason says so, and
    upscale_rows refuses them in those words."""
    model = photo_preserving_rrdb(0)
    pixels = np.ascontiguousarray(photo[:32, :32])
    up = Upscaler(model, device="cpu", precision="fp32")
    assert up.stream_reason(ImageData(pixels=pixels)) is None
    alpha = ImageData(pixels=pixels, alpha=np.full((32, 32), 200, np.uint8))
    assert up.stream_reason(alpha) == "it has an alpha channel"
    with pytest.raises(EsrganError, match="cannot upscale row by row: it has an alpha channel"):
        next(up.upscale_rows(alpha))
    half = Upscaler(model, device="cpu", precision="fp32", outscale=2)
    assert half.stream_reason(ImageData(pixels=pixels)) == "its output is not at the model's own scale (4x)"


def _bands(pixels: np.ndarray, heights: list[int]) -> Iterator[np.ndarray]:
    start = 0
    for h in heights:
        yield pixels[start : start + h]
        start += h
    if start < len(pixels):
        yield pixels[start:]


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_rows_written_as_they_come_read_back_as_the_whole_image(
    tmp_path: Path, photo: np.ndarray, ext: str
) -> None:
    """write_image_rows on bands of any height (none, 1 row, 7, more than a TIFF tile, the rest, none: an empty
    last band left the PNG stream without its final block) writes the file
    write_image writes from the whole image, pixel for pixel and with its ICC profile (and EXIF, in PNG): 8-bit
    colour and 16-bit grey; the TIFF is tiled, which GDAL-style readers read by tile."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    colour = np.ascontiguousarray(np.concatenate([photo, photo[::-1]], axis=0)[:, :300])  # 1024 x 300
    grey = np.ascontiguousarray(colour[:, :, 1:2].astype(np.uint16) * 257)
    for name, pixels, icc in [("colour", colour, srgb), ("grey", grey, None)]:
        like = ImageData(
            pixels=pixels[:8, :8],  # only its channels, bit depth and metadata count
            bit_depth=16 if pixels.dtype == np.uint16 else 8,
            icc_profile=icc,
            exif=exif.tobytes() if ext == "png" else None,
        )
        streamed = write_image_rows(
            tmp_path / f"{name}.{ext}", like, pixels.shape[:2], _bands(pixels, [0, 1, 7, 300, 0, 2, 714, 0])
        )
        whole = write_image(
            tmp_path / f"{name}-whole.{ext}", ImageData(**{**like.__dict__, "pixels": pixels})
        )
        a, b = read_image(streamed), read_image(whole)
        assert np.array_equal(a.pixels, pixels) and np.array_equal(a.pixels, b.pixels)
        assert a.icc_profile == icc and a.bit_depth == b.bit_depth and (a.exif is not None) == (ext == "png")
        with Image.open(streamed) as im:
            im.load()  # the whole stream decodes (Pillow checks CRCs and the zlib stream's end)
        if ext == "tif":
            with tifffile.TiffFile(streamed) as tif:
                assert tif.pages[0].is_tiled and tif.pages[0].tilewidth == 256


def test_a_png_with_alpha_written_as_rows_come_is_the_whole_image(tmp_path: Path, photo: np.ndarray) -> None:
    """Alpha as the last channel of each band (the web page's previews of an RGBA upload, made in bands since
    session 27): the PNG write_image writes, pixel for pixel, 8-bit RGBA and 16-bit grey + alpha."""
    rgb = np.ascontiguousarray(photo[:300, :200])
    alpha = np.linspace(0, 255, 200, dtype=np.uint8)[None, :].repeat(300, 0)
    grey16 = np.ascontiguousarray(rgb[:, :, :1].astype(np.uint16) * 257)
    for name, pixels, a in [("rgba", rgb, alpha), ("la16", grey16, alpha.astype(np.uint16) * 257)]:
        like = ImageData(pixels=pixels[:4, :4], alpha=a[:4, :4], bit_depth=16 if a.dtype == np.uint16 else 8)
        planes = np.dstack([pixels, a])
        streamed = write_image_rows(
            tmp_path / f"{name}.png", like, (300, 200), _bands(planes, [0, 1, 64, 235])
        )
        back = read_image(streamed)
        assert (
            np.array_equal(back.pixels, pixels) and back.alpha is not None and np.array_equal(back.alpha, a)
        )


def test_a_failure_while_rows_come_leaves_nothing(tmp_path: Path, photo: np.ndarray) -> None:
    """The rows are the model's: an exception between bands (a NaN tile, Ctrl-C) leaves no file and no temporary
    file; too few rows is an error too, not a short image; JPEG, alpha and an existing file are refused before
    anything is written."""
    pixels = np.ascontiguousarray(photo[:200, :200])
    like = ImageData(pixels=pixels[:4, :4])

    def failing() -> Iterator[np.ndarray]:
        yield pixels[:100]
        raise RuntimeError("a tile failed")

    for ext in ("png", "tif"):
        with pytest.raises(RuntimeError, match="a tile failed"):
            write_image_rows(tmp_path / f"a.{ext}", like, (200, 200), failing())
        with pytest.raises(ValueError, match="100 rows given for an image 200 high"):
            write_image_rows(tmp_path / f"b.{ext}", like, (200, 200), iter([pixels[:100]]))
        with pytest.raises(
            ValueError, match="do not fit a 200-wide 3-channel uint8 image"
        ):  # 300 came back 44
            write_image_rows(tmp_path / f"e.{ext}", like, (200, 200), iter([pixels.astype(np.uint16) * 2]))
    assert os.listdir(tmp_path) == []
    with pytest.raises(
        ImageError, match=r"c\.jpg: only PNG and TIFF \(without alpha: PNG\) are written row by"
    ):
        write_image_rows(tmp_path / "c.jpg", like, (200, 200), iter([pixels]))
    with pytest.raises(ImageError, match="not TIFF with alpha"):
        write_image_rows(tmp_path / "c.tif", ImageData(pixels=pixels, alpha=pixels[:, :, 0]), (200, 200), [])
    (tmp_path / "d.png").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        write_image_rows(tmp_path / "d.png", like, (200, 200), iter([pixels]))
    assert (tmp_path / "d.png").read_bytes() == b"keep" and sorted(os.listdir(tmp_path)) == ["d.png"]


def test_the_cli_streams_png_and_tiff_when_asked_and_writes_the_same_pixels(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """`--stream` writes PNG and TIFF row by row ("written as computed") with the pixels of the default path; a
    JPEG, which Pillow encodes whole, and an image with alpha are written the usual way."""
    model = save_model(tmp_path / "m.safetensors", photo_preserving_rrdb(0))
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo[:120, :140]).save(src / "a.png")
    Image.fromarray(photo[200:300, 100:260]).save(src / "b.tif")
    Image.fromarray(photo[300:380, 300:380]).save(src / "c.jpg", quality=95)
    rgba = np.dstack([photo[:50, :60], np.full((50, 60), 180, np.uint8)])
    Image.fromarray(rgba).save(src / "d.png")
    outs = {}
    for mode in ("whole", "stream"):
        extra = ["--stream"] if mode == "stream" else []
        r = run_cli("upscale", src, "-o", tmp_path / mode, "--model", model, "--tile", "48", *extra)
        assert r.returncode == 0, r.stderr
        outs[mode] = r.stdout
    streamed = sorted(
        line.split("] ")[1].split(" ->")[0] for line in outs["stream"].splitlines() if "as computed" in line
    )
    assert streamed == [str(src / "a.png"), str(src / "b.tif")] and "as computed" not in outs["whole"]
    for name in ("a_x4.png", "b_x4.tif", "c_x4.jpg", "d_x4.png"):
        a, b = read_image(tmp_path / "whole" / name), read_image(tmp_path / "stream" / name)
        assert np.array_equal(a.pixels, b.pixels), name


# --- a real memory limit ------------------------------------------------------------------------------------------
@needs_memory_cgroups
def test_an_output_too_large_for_the_memory_is_streamed_not_killed(tmp_path: Path, photo: np.ndarray) -> None:
    """In a container whose memory holds neither the whole output nor a copy of it: before, the kernel's OOM
    killer ended `esrgan upscale` (signal 9, no word, seen with a 4352x2448 photo at x4 in 900 MiB). Now a PNG output
    is written row by row and comes out whole; a JPEG output, which needs the whole image, is refused in one line
    before the model runs. The limit is set from what the command itself takes on a small image here."""
    torch.manual_seed(0)
    model = save_model(tmp_path / "m.safetensors", SRVGGNetCompact(CompactConfig(num_feat=4, num_conv=1)))
    # 2048 x 1536, the real photo four by three: the x4 output is 151 MB. Held whole (without the streaming, as
    # before) the run peaks at ~440 MiB over the small image's and the OOM killer ends it; streamed it fits in 360
    big = np.tile(photo, (4, 3, 1))
    Image.fromarray(big).save(tmp_path / "big.png", compress_level=1)
    Image.fromarray(photo[:64, :64]).save(tmp_path / "small.png")
    r, baseline = in_a_memory_cgroup(None, *ESRGAN, "upscale", tmp_path / "small.png", "-o", tmp_path / "s.png",
                                     "--model", model)  # fmt: skip
    assert r.returncode == 0, r.stderr
    limit = baseline + 360 * 2**20  # the output is 151 MB: whole, with its copy, it does not fit

    def upscale(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return in_a_memory_cgroup(limit, *ESRGAN, "upscale", *args, "--model", model)[0]

    r = upscale(tmp_path / "big.png", "-o", tmp_path / "big_x4.png")
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "written as computed" in r.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a large output: ours, on purpose
        with Image.open(tmp_path / "big_x4.png") as im:
            assert im.size == (6144, 8192)
            im.load()
    # what cannot be streamed: one line each, before the model, with the way out that applies
    refused = tmp_path / "refused"
    refused.mkdir()
    (refused / "big.png").hardlink_to(tmp_path / "big.png")
    Image.fromarray(np.dstack([big, big[:, :, 1]])).save(refused / "rgba.png", compress_level=1)
    r = upscale(refused, "-o", tmp_path / "out", "--format", "jpg")
    r2 = upscale(tmp_path / "big.png", "-o", tmp_path / "half.png", "--outscale", "2")
    assert r.returncode == r2.returncode == 1 and not (tmp_path / "out").exists()
    assert not (tmp_path / "half.png").exists()
    lines = [line for line in (r.stderr + r2.stderr).splitlines() if line.strip()]  # big.png, rgba.png, half
    assert len(lines) == 3 and all(line.startswith("esrgan: error: ") for line in lines), lines
    assert lines[0].startswith(f"esrgan: error: {refused / 'big.png'}: the 6144x8192 output needs about ")
    assert lines[0].endswith(": JPEG is encoded from the whole image; try --format png or tiff, which are written "
                             "as they are computed, or a smaller --outscale")  # fmt: skip
    assert lines[1].startswith(f"esrgan: error: {refused / 'rgba.png'}: the 6144x8192 output")
    assert lines[1].endswith(": it has an alpha channel; try a smaller --outscale (or --width / --height)")
    assert lines[2].startswith(f"esrgan: error: {tmp_path / 'big.png'}: the 3072x4096 output")
    assert lines[2].endswith(
        "its output is not at the model's own scale (4x); try no --outscale / --width / --height: at the model's "
        "own scale it is written as it is computed"
    )


def panorama_in_a_container(
    tmp_path: Path, photo: np.ndarray, rows: int, tile: int
) -> tuple[subprocess.CompletedProcess[str], int, int, Path, np.ndarray]:
    """`esrgan upscale` of a panorama (`rows` x 4096 pixels of the photo tiled) at `--tile tile` in fp32, with a
    tiny compact x4 model, in a v1 memory cgroup of the command's own use (a 64x64 run's peak) + 400 MiB: (the run,
    its peak, the limit, the model, the panorama)."""
    torch.manual_seed(0)
    model = save_model(tmp_path / "m.safetensors", SRVGGNetCompact(CompactConfig(num_feat=4, num_conv=1)))
    wide = np.tile(photo, (rows // photo.shape[0], 4096 // photo.shape[1], 1))
    Image.fromarray(wide).save(tmp_path / "wide.png", compress_level=1)
    Image.fromarray(photo[:64, :64]).save(tmp_path / "small.png")
    r, baseline = in_a_memory_cgroup(None, *ESRGAN, "upscale", tmp_path / "small.png", "-o", tmp_path / "s.png",
                                     "--model", model)  # fmt: skip
    assert r.returncode == 0, r.stderr
    limit = baseline + 400 * 2**20
    r, used = in_a_memory_cgroup(limit, *ESRGAN, "upscale", tmp_path / "wide.png", "-o", tmp_path / "wide_x4.png",
                                 "--model", model, "--tile", str(tile), "--precision", "fp32")  # fmt: skip
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    return r, used, limit, model, wide


def assert_the_pixels_of_a_run_with_all_the_memory(written: Path, model: Path, wide: np.ndarray) -> None:
    """The file holds what the same model makes with no memory limit: this model's tiles are exact (any tile
    gives the same output, but for fp32 rounding: measured 1 in 8 bits on 1e-6 of the samples)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pixels = read_image(written).pixels
    reference = Upscaler(load_model(model), device="cpu", precision="fp32", tile=512).upscale(wide)
    diff = np.abs(pixels.astype(np.int16) - reference)  # fp32 convolutions of other shapes round a few apart
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-5


@needs_memory_cgroups
def test_an_output_that_fits_only_beside_smaller_tiles_gets_them(tmp_path: Path, photo: np.ndarray) -> None:
    """A 1024x4096 panorama at x4 (a 201 MB output) at `--tile 1024` in a container of the command's own use + 400
    MiB: held whole it does not fit, and written as it is computed at the tile fitted to half of what is free its
    pass, band and rows in flight do not either (~430 MB). Counting the pass beside them (session 32), the batch
    refused it ("... try a smaller --outscale"), where tiles small enough to leave the rows' memory out fit
    (`Upscaler.plan_memory`'s reserve): it is written, as computed, with one foreseen warning naming the file,
    well under the limit, with the pixels of a run with all the memory (this model's tiles are exact)."""
    r, used, limit, model, wide = panorama_in_a_container(tmp_path, photo, 1024, 1024)
    notes = [line for line in r.stderr.splitlines() if "foreseen" in line]
    assert len(notes) == 1 and str(tmp_path / "wide.png") in notes[0], r.stderr
    assert "MB more is set aside beside the pass); tiles of at most " in notes[0], notes
    assert "written as computed" in r.stdout and used <= limit - 48 * 2**20, (used >> 20, limit >> 20)
    assert_the_pixels_of_a_run_with_all_the_memory(tmp_path / "wide_x4.png", model, wide)


@needs_memory_cgroups
def test_a_tile_whose_band_does_not_fit_is_made_smaller_not_refused(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """A wide photo (512x4096, a panorama's shape) at `--tile 512` in a container: the tiling's float32 band of a
    tile row of output is 402 MB, more than the container has free. Before, the batch refused the file before the
    model ran ("... try a smaller --tile"); now the tile is made smaller for it, as for a pass that would not fit
    (one foreseen OutOfMemoryWarning naming the file), and the PNG is written (as it is computed: whole, its output
    beside the smaller tiles' pass would not fit), within the limit with room to spare, with the pixels of the same
    model run with no memory limit."""
    # 512 x 4096: the x4 output is 2048 x 16384, 100 MB; at --tile 512 the band alone (402 MB) is over the 400
    # MiB; a tile of ~250 needs about half of it
    r, used, limit, model, wide = panorama_in_a_container(tmp_path, photo, 512, 512)
    # the plan leaves room: the output held whole (358 MB) beside the 168-pixel tiles' pass (65 MB) is more than
    # the 393 MB free, so it streams. Counting the output but not the pass, it peaked at 518-555 MiB of a 555 MiB
    # limit (killed in CI); streamed, 470-473 (2-core AMD EPYC Zen 4)
    assert used <= limit - 48 * 2**20, (used >> 20, limit >> 20)
    notes = [line for line in r.stderr.splitlines() if "foreseen" in line]
    assert len(notes) == 1 and str(tmp_path / "wide.png") in notes[0], r.stderr
    assert "out of memory with tiles of 512x512 pixels on cpu, foreseen" in notes[0]
    assert_the_pixels_of_a_run_with_all_the_memory(tmp_path / "wide_x4.png", model, wide)
