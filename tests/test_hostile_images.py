"""Hostile image files: mutated real photos of every accepted format and crafted ones (bombs, absurd or zero sizes,
truncations, wrong extensions, animations, unusual modes) end in an ImageData or one ImageError line naming the file.

The short Hypothesis run is CI; `tools/fuzz_images.py` runs the same property (same seeds, same mutations) for tens
of thousands of cases in a worker under RLIMIT_AS, and coverage-guided with atheris (counts: docs/reliability.md).
Already covered elsewhere and not repeated: PNG header bombs, half-truncated PNG/JPEG, text/empty files, animated
GIF, float TIFF, CMYK JPEG (tests/test_imageio.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, tiny_rrdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from esrgan.errors import ImageError
from esrgan.imageio import ImageWarning, read_image

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("skimage.data")
import fuzz_images  # noqa: E402  (tools/ is on pytest's pythonpath: the fuzzer and these tests share seeds and mutations)

SEEDS = fuzz_images.seed_images()
CASE_SECONDS = 10


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """A hang fails the case instead of stalling CI (the long run enforces this from a watching parent)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"read_image took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(path: Path) -> str:
    with time_limit(CASE_SECONDS):
        return fuzz_images.read_or_refuse(path)


def refusal(path: Path) -> str:
    """The ImageError message for path, checked to be one line that starts with the path."""
    with time_limit(CASE_SECONDS), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageError) as info:
            read_image(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    return msg


# --- mutation fuzz (short) ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEEDS))
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 2**32), st.integers(0, 2**32)), min_size=1, max_size=4
    )
)
def test_mutated_images_decode_or_fail_cleanly(
    tmp_path: Path, name: str, ops: list[tuple[int, int, int]]
) -> None:
    path = tmp_path / name
    path.write_bytes(fuzz_images.apply_ops(SEEDS[name], ops))
    assert outcome(path) in ("decoded", "refused")


def test_every_seed_is_a_real_image_of_its_format(tmp_path: Path) -> None:
    """The fuzz starts from valid files: each decodes, the float and other measurement TIFFs as `esrgan upscale`
    reads them (outcome() reads both ways)."""
    for name, data in SEEDS.items():
        (tmp_path / name).write_bytes(data)
        assert outcome(tmp_path / name) == "decoded", name


@pytest.mark.slow
def test_long_run_tool_under_a_memory_limit() -> None:
    """The long-run tool itself, briefly: a worker under RLIMIT_AS 2 GB, per-case time limit, no findings."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "fuzz_images.py"), "mutate", "--cases", "600", "--first", "100000",
         "--memory-mb", "2048", "--timeout", "20"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FINDING" not in proc.stdout and "decoded" in proc.stdout and "refused" in proc.stdout


# --- findings of the long run (each was a TypeError escaping read_image) -------------------------------------------------


def _tiff_entries(data: bytes, ifd: int) -> list[tuple[int, int, int]]:
    """(entry offset, tag, type) of one little-endian IFD."""
    count = struct.unpack_from("<H", data, ifd)[0]
    return [(ifd + 2 + 12 * i, *struct.unpack_from("<HH", data, ifd + 2 + 12 * i)) for i in range(count)]


def _first_ifd(data: bytes) -> int:
    return int(struct.unpack_from("<I", data, 4)[0])


def test_16bit_tiff_whose_width_tag_holds_two_values(tmp_path: Path) -> None:
    data = bytearray(SEEDS["rgb16.tif"])
    for offset, tag, _ in _tiff_entries(data, _first_ifd(data)):
        if tag == 256:
            struct.pack_into("<I", data, offset + 4, 2)  # count 2: tifffile and Pillow see a tuple
    (tmp_path / "a.tif").write_bytes(bytes(data))
    refusal(tmp_path / "a.tif")


def test_multipage_tiff_whose_second_page_has_no_width(tmp_path: Path) -> None:
    """Pillow raises TypeError('Missing dimensions') while counting the pages."""
    _, grey = fuzz_images._photos()
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "TIFF", save_all=True, append_images=[Image.fromarray(grey)])
    data = bytearray(buf.getvalue())
    first = _first_ifd(data)
    count = struct.unpack_from("<H", data, first)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * count)[0]
    for offset, tag, _ in _tiff_entries(data, second):
        if tag == 256:
            struct.pack_into("<H", data, offset, 0x9999)  # an unknown private tag instead of ImageWidth
    (tmp_path / "a.tif").write_bytes(bytes(data))
    assert "corrupt" in refusal(tmp_path / "a.tif")


def test_tiff_with_zero_width_is_called_zero_sized(tmp_path: Path) -> None:
    """It was refused as '0x24 = 0 pixels exceeds the limit' (the bomb message)."""
    for seed in ("rgb8.tif", "rgb16.tif", "grey16.tif"):
        path = tmp_path / seed
        path.write_bytes(_tiff_size(SEEDS[seed], 0, 24))
        assert "zero size" in refusal(path), seed


def test_16bit_tiff_with_zero_rows_per_strip(tmp_path: Path) -> None:
    """Found by atheris: tifffile divides by RowsPerStrip, and ZeroDivisionError escaped read_image."""
    data = bytearray(SEEDS["rgb16.tif"])
    for offset, tag, kind in _tiff_entries(data, _first_ifd(data)):
        if tag == 278:
            struct.pack_into("<H" if kind == 3 else "<I", data, offset + 8, 0)
    (tmp_path / "a.tif").write_bytes(bytes(data))
    assert "16-bit TIFF" in refusal(tmp_path / "a.tif")


def test_malformed_tiff_tags_do_not_reach_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """tifffile logs each bad tag at ERROR level, which a CLI user saw as a dozen lines above the one-line error."""
    tifffile = pytest.importorskip("tifffile")
    data = bytearray(SEEDS["rgb16.tif"])
    for offset, tag, _ in _tiff_entries(data, _first_ifd(data)):
        if tag in (282, 283, 296):  # resolution tags: invalid data type 0
            struct.pack_into("<H", data, offset + 2, 0)
    path = tmp_path / "a.tif"
    path.write_bytes(bytes(data))
    with caplog.at_level("DEBUG"):
        with tifffile.TiffFile(path):  # the file does make tifffile complain
            pass
        assert any(r.name == "tifffile" for r in caplog.records)
        caplog.clear()
        with contextlib.suppress(ImageError):
            read_image(path)
    assert [r for r in caplog.records if r.name == "tifffile"] == []


# --- crafted: bombs in every format -------------------------------------------------------------------------------------


def _tiff_size(data: bytes, width: int, height: int) -> bytes:
    buf = bytearray(data)
    for offset, tag, kind in _tiff_entries(buf, _first_ifd(buf)):
        if tag in (256, 257):
            struct.pack_into("<H" if kind == 3 else "<I", buf, offset + 8, width if tag == 256 else height)
    return bytes(buf)


def _jpeg_size(data: bytes, width: int, height: int) -> bytes:
    buf = bytearray(data)
    sof = buf.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    struct.pack_into(">HH", buf, sof + 5, height, width)
    return bytes(buf)


def _webp_lossless_size(data: bytes, width: int, height: int) -> bytes:
    buf = bytearray(data)
    at = buf.index(b"VP8L") + 9  # after chunk id, chunk size and the 0x2f signature: 14-bit width-1, height-1
    bits = struct.unpack_from("<I", buf, at)[0] & ~((1 << 28) - 1)
    struct.pack_into("<I", buf, at, bits | (width - 1) | (height - 1) << 14)
    return bytes(buf)


def _webp_lossy_size(data: bytes, width: int, height: int) -> bytes:
    buf = bytearray(data)
    at = buf.index(b"VP8 ") + 14  # after chunk header (8), frame tag (3) and start code 9d 01 2a (3)
    struct.pack_into("<HH", buf, at, width, height)
    return bytes(buf)


def _gif_size(data: bytes, width: int, height: int) -> bytes:
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def _bmp_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


# width x height = 100M pixels: over our 64M default, under Pillow's own hard limit, so our guard must say it
BOMBS = {
    "jpeg.jpg": lambda: _jpeg_size(SEEDS["rgb.jpg"], 10_000, 10_000),
    "webp-lossless.webp": lambda: _webp_lossless_size(SEEDS["lossless.webp"], 10_000, 10_000),
    "webp-lossy.webp": lambda: _webp_lossy_size(SEEDS["lossy.webp"], 10_000, 10_000),
    "tiff8.tif": lambda: _tiff_size(SEEDS["rgb8.tif"], 10_000, 10_000),
    "tiff16.tif": lambda: _tiff_size(SEEDS["rgb16.tif"], 10_000, 10_000),
    "tiff16-grey.tif": lambda: _tiff_size(SEEDS["grey16.tif"], 10_000, 10_000),
    "cmyk.tif": lambda: _tiff_size(SEEDS["cmyk.tif"], 10_000, 10_000),
    "gif.gif": lambda: _gif_size(SEEDS["grey.gif"], 10_000, 10_000),
    "bmp.bmp": lambda: _bmp_size(SEEDS["rgb.bmp"], 10_000, 10_000),
    "bmp-top-down.bmp": lambda: _bmp_size(SEEDS["rgb.bmp"], 10_000, -10_000),
    "ppm.ppm": lambda: b"P6\n10000 10000\n255\n" + b"\0" * 64,
    "ppm16.ppm": lambda: b"P6\n10000 10000\n65535\n" + b"\0" * 64,
}


@pytest.mark.parametrize("name", sorted(BOMBS))
@pytest.mark.parametrize("pillow_limit", ["pillow-default", "pillow-unlimited"])
def test_decompression_bombs_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, pillow_limit: str
) -> None:
    if pillow_limit == "pillow-unlimited":  # our guard must not depend on Pillow's global
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / name
    path.write_bytes(BOMBS[name]())
    assert path.stat().st_size < 10_000
    assert "100000000 pixels exceeds the limit" in refusal(path)


# 20000 x 10000 = 200M pixels: over Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS = 179M), which Image.open
# enforces before our check sees the size; the refusal must still be ours (and name the flag), not Pillow's text
HUGE_BOMBS = {
    "jpeg.jpg": lambda: _jpeg_size(SEEDS["rgb.jpg"], 20_000, 10_000),
    "tiff16.tif": lambda: _tiff_size(SEEDS["rgb16.tif"], 20_000, 10_000),
    "bmp.bmp": lambda: _bmp_size(SEEDS["rgb.bmp"], 20_000, 10_000),
    "ppm.ppm": lambda: b"P6\n20000 10000\n255\n" + b"\0" * 64,
}


@pytest.mark.parametrize("name", sorted(HUGE_BOMBS))
def test_bombs_over_pillows_hard_limit_get_our_message(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(HUGE_BOMBS[name]())
    message = refusal(path)
    assert message == (
        f"{path}: 200000000 pixels exceeds the limit of 67108864 (64 megapixels, a decompression-bomb guard; "
        "--max-megapixels raises it)"
    )


@pytest.mark.parametrize(
    "name,data",
    [
        ("jpeg.jpg", lambda: _jpeg_size(SEEDS["rgb.jpg"], 65_500, 65_500)),
        ("gif.gif", lambda: _gif_size(SEEDS["grey.gif"], 65_535, 65_535)),
        ("bmp.bmp", lambda: _bmp_size(SEEDS["rgb.bmp"], 24, -(2**31))),
        ("tiff.tif", lambda: _tiff_size(SEEDS["rgb8.tif"], 2**32 - 1, 2**32 - 1)),
        ("ppm.ppm", lambda: b"P6\n4294967295 4294967295\n255\n"),
    ],
    ids=["jpeg", "gif", "bmp-min-int-height", "tiff-u32-max", "ppm-u32-max"],
)
def test_absurd_dimensions(tmp_path: Path, name: str, data: object) -> None:
    assert callable(data)
    (tmp_path / name).write_bytes(data())
    refusal(tmp_path / name)


def test_real_inflating_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 12000x12000 PNG of zeros: a 140 kB file that would decode to 432 MB."""
    Image.new("RGB", (12_000, 12_000)).save(tmp_path / "zeros.png", optimize=True)
    assert (tmp_path / "zeros.png").stat().st_size < 1_000_000
    assert "exceeds the limit" in refusal(tmp_path / "zeros.png")


# --- crafted: tiny, zero-sized, truncated, misnamed -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("TIFF", "tif"),
                                     ("BMP", "bmp"), ("GIF", "gif"), ("PPM", "ppm")])  # fmt: skip
def test_one_pixel_images(tmp_path: Path, fmt: str, ext: str) -> None:
    path = tmp_path / f"one.{ext}"
    Image.new("RGB", (1, 1), (200, 100, 50)).save(
        path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {})
    )
    image = read_image(path)
    assert image.pixels.shape[:2] == (1, 1)
    if fmt not in ("JPEG", "GIF"):
        assert image.pixels.reshape(-1).tolist() == [200, 100, 50]


@pytest.mark.parametrize(
    "name,data",
    [
        ("zero.jpg", lambda: _jpeg_size(SEEDS["rgb.jpg"], 24, 0)),
        ("zero.bmp", lambda: _bmp_size(SEEDS["rgb.bmp"], 0, 32)),
        ("zero.ppm", lambda: b"P6\n0 0\n255\n"),
        ("zero.webp", lambda: _webp_lossy_size(SEEDS["lossy.webp"], 0, 0)),
        ("zero-cmyk.tif", lambda: _tiff_size(SEEDS["cmyk.tif"], 24, 0)),
    ],
)
def test_zero_sized_images(tmp_path: Path, name: str, data: object) -> None:
    assert callable(data)
    (tmp_path / name).write_bytes(data())
    refusal(tmp_path / name)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_truncated_streams(tmp_path: Path, name: str) -> None:
    """Cut inside the header, in the middle and one byte short: never anything but a decode or a clean error, and
    a file cut in half never decodes silently (except GIF and TIFF strips, whose decoders stop at the data's end)."""
    data = SEEDS[name]
    path = tmp_path / name
    for keep in (1, 8, 20, len(data) // 4, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:keep])
        result = outcome(path)
        if keep <= len(data) // 2 and name.split(".")[1] not in ("gif", "tif"):
            assert result == "refused", (name, keep)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_wrong_extensions_do_not_matter(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(SEEDS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageWarning)
        right = outcome(tmp_path / name)
        for ext in ("png", "jpg", "webp", "tif", "bmp", "gif", "ppm", "txt", ""):
            wrong = tmp_path / f"misnamed-{name.replace('.', '-')}.{ext}".rstrip(".")
            wrong.write_bytes(SEEDS[name])
            assert outcome(wrong) == right
            if right == "decoded":
                # as outcome() decoded it: the measurement TIFFs only that way
                np.testing.assert_array_equal(
                    read_image(wrong, measurements=True).pixels,
                    read_image(tmp_path / name, measurements=True).pixels,
                )


# --- crafted: animations and unusual modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["animated.png", "animated.webp", "animated.gif"])
def test_animations_give_the_first_frame_with_a_warning(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(SEEDS[name])
    with pytest.warns(ImageWarning, match=r"animated .* 2 frames; only the first"):
        image = read_image(path)
    with Image.open(path) as im:
        first = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(image.pixels, first)


def _tifffile_bytes(array: np.ndarray, **kw: object) -> bytes:
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


def test_unusual_tiff_modes(tmp_path: Path) -> None:
    """CMYK, palette, grey+alpha, 1-bit, 16-bit grey (+alpha): decoded to our four layouts; float, half-float and
    32-bit integer: refused in one line."""
    rgb, grey = fuzz_images._photos()
    im = Image.fromarray(rgb)
    deep = grey.astype(np.uint16) * 257
    cases: dict[str, tuple[bytes, tuple[int, bool, int] | None]] = {
        "cmyk": (fuzz_images._pil_bytes(im.convert("CMYK"), "TIFF"), (3, False, 8)),
        "palette": (fuzz_images._pil_bytes(im.convert("P"), "TIFF"), (3, False, 8)),
        "la": (fuzz_images._pil_bytes(im.convert("LA"), "TIFF"), (1, True, 8)),
        "bilevel": (fuzz_images._pil_bytes(im.convert("1"), "TIFF"), (1, False, 8)),
        "grey16": (_tifffile_bytes(deep), (1, False, 16)),
        "grey16-alpha": (
            _tifffile_bytes(np.dstack([deep, deep]), photometric="minisblack", extrasamples=[2]),
            (1, True, 16),
        ),
        "float32": (_tifffile_bytes(grey.astype(np.float32) / 255), None),
        "float16": (_tifffile_bytes(np.dstack([grey] * 3).astype(np.float16) / 255, photometric="rgb"), None),
        "int32": (_tifffile_bytes(grey.astype(np.int32) * 1000), None),
    }
    for label, (data, expected) in cases.items():
        path = tmp_path / f"{label}.tif"
        path.write_bytes(data)
        if expected is None:
            refusal(path)
            continue
        image = read_image(path)
        assert (image.channels, image.alpha is not None, image.bit_depth) == expected, label
        assert image.pixels.shape[:2] == grey.shape[:2] or image.pixels.shape[:2] == rgb.shape[:2], label
        if label == "grey16":
            np.testing.assert_array_equal(image.pixels[:, :, 0], deep)


# --- end to end: a batch with hostile files in it ---------------------------------------------------------------------


def test_upscale_batch_with_hostile_files(tmp_path: Path) -> None:
    """`esrgan upscale` over a folder mixing real photos and hostile files: one line per bad file, the good ones
    upscaled, exit code 1, no traceback and no tifffile log lines. (A float TIFF was among the bad files until
    `esrgan upscale` learnt to read measurement TIFFs: now it is written back as one.)"""
    from esrgan.checkpoints import save_model

    model = save_model(tmp_path / "tiny.safetensors", tiny_rrdb(scale=2))
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("rgb8.png", "rgb.jpg", "animated.gif", "float.tif"):
        (folder / name).write_bytes(SEEDS[name])
    bad = {
        "bomb.jpg": BOMBS["jpeg.jpg"](),
        "truncated.png": SEEDS["rgba16.png"][:200],
        "zero.bmp": _bmp_size(SEEDS["rgb.bmp"], 0, 32),
        "text.png": b"not a picture\n",
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    tags = bytearray(SEEDS["rgb16.tif"])
    for offset, tag, _ in _tiff_entries(tags, _first_ifd(tags)):
        if tag in (273, 279):  # strip offsets and byte counts: invalid type
            struct.pack_into("<H", tags, offset + 2, 0)
    (folder / "tags.tif").write_bytes(bytes(tags))
    bad["tags.tif"] = bytes(tags)
    proc = run_cli("upscale", folder, "-o", tmp_path / "out", "--model", model, "--quiet")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("esrgan: error: ")]
    assert all(line.startswith("esrgan: ") for line in lines), proc.stderr  # warnings and errors only
    assert sorted(next(name for name in bad if name in line) for line in errors) == sorted(bad)
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    # an animated GIF stays one (esrgan.animation: tests/test_animation.py)
    assert outputs == ["animated_x2.gif", "float_x2.tif", "rgb8_x2.png", "rgb_x2.jpg"]


# --- not files at all: FIFOs and devices -------------------------------------------------------------------------------


def special_files(folder: Path) -> dict[str, Path]:
    """A FIFO (open() on it waits for a writer: for ever) and a link to a device that never ends, image-named."""
    folder.mkdir(exist_ok=True)
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    zero = folder / "zero.png"
    zero.symlink_to("/dev/zero")
    return {"named pipe": fifo, "device": zero}


def test_fifos_and_devices_are_refused_without_being_opened(tmp_path: Path) -> None:
    """read_image hung for ever on a FIFO named on the command line; it must refuse it from stat(), at once."""
    for kind, path in special_files(tmp_path).items():
        assert refusal(path) == f"{path}: not a regular file (a {kind})"


def test_upscale_batch_with_a_fifo_and_a_device_goes_on(tmp_path: Path) -> None:
    """`esrgan upscale pipe.png zero.png good.png`: one line for each special file, the photo upscaled, exit 1.
    The old code waited on the FIFO for ever (here: until the subprocess timeout)."""
    from esrgan.checkpoints import save_model

    model = save_model(tmp_path / "tiny.safetensors", tiny_rrdb(scale=2))
    special = special_files(tmp_path / "in")
    good = tmp_path / "in" / "good.png"
    good.write_bytes(SEEDS["rgb8.png"])
    out = tmp_path / "out"
    proc = run_cli("upscale", special["named pipe"], special["device"], good, "-o", out, "--model", model,
                   "--quiet", timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"esrgan: error: {special['named pipe']}: not a regular file (a named pipe)",
        f"esrgan: error: {special['device']}: not a regular file (a device)",
    ]
    assert [p.name for p in out.iterdir()] == ["good_x2.png"]


def test_a_fifo_given_as_the_model_is_refused(tmp_path: Path) -> None:
    """The model loaders open the file to sniff its format: a FIFO there hung `info` and `upscale --model`."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    good = tmp_path / "good.png"
    good.write_bytes(SEEDS["rgb8.png"])
    for args in (["info", fifo], ["upscale", good, "-o", tmp_path / "out", "--model", fifo]):
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"esrgan: error: {fifo}: not a regular file (a named pipe); give a model file or a model name"
        ]
    assert not (tmp_path / "out").exists()


# --- warnings from inside the decoders name the file -------------------------------------------------------------------


def test_pillow_warnings_name_the_file_every_time(tmp_path: Path) -> None:
    """Pillow warns "Corrupt EXIF data..." without saying which file, and Python shows one text once per process:
    two JPEGs with the same broken EXIF gave one anonymous line. Now each file gets its line, naming it."""
    from esrgan.checkpoints import save_model

    model = save_model(tmp_path / "tiny.safetensors", tiny_rrdb(scale=2))
    exif = b"Exif\x00\x00II*\x00" + struct.pack(
        "<IH", 8, 0xFFFF
    )  # an IFD claiming 65535 entries, holding none
    photo = Image.open(io.BytesIO(SEEDS["rgb8.png"])).convert("RGB")
    paths = [tmp_path / "in" / name for name in ("one.jpg", "two.jpg")]
    paths[0].parent.mkdir()
    for path in paths:
        photo.save(path, exif=exif)
    proc = run_cli("upscale", *paths, "-o", tmp_path / "out", "--model", model, "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    for line, path in zip(lines, paths, strict=True):
        assert line.startswith(f"esrgan: warning: {path}: Corrupt EXIF data"), line
