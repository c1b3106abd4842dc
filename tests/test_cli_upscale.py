"""`esrgan upscale` and `esrgan demo` as a user runs them: a subprocess over real photo files in a temp folder."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_preserving_rrdb, run_cli
from PIL import Image, ImageCms

from esrgan.checkpoints import save_model
from esrgan.generator import RRDBNet


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny x4 model files (a photo-preserving one, a sibling to interpolate with, and an incompatible one)."""
    folder = tmp_path_factory.mktemp("models")
    other = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=1, num_grow=8, scale=4)
    return {
        "tiny": save_model(folder / "tiny.safetensors", photo_preserving_rrdb(0)),
        "sibling": save_model(folder / "sibling.safetensors", photo_preserving_rrdb(5, spread=0.2)),
        "wider": save_model(folder / "wider.safetensors", other),
    }


@pytest.fixture
def photos(tmp_path: Path, photo: np.ndarray) -> Path:
    """A folder of three real photo crops (PNG, JPEG, grey PNG)."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo[60:108, 180:220]).save(folder / "face.png")
    Image.fromarray(photo[300:340, 100:148]).save(folder / "suit.jpg", quality=92)
    Image.fromarray(photo[0:32, 0:40]).convert("L").save(folder / "grey.png")
    return folder


def test_folder_with_a_corrupt_file(tmp_path: Path, photos: Path, models: dict[str, Path]) -> None:
    (photos / "broken.png").write_bytes(Image.open(photos / "face.png").tobytes()[:500])  # not a PNG at all
    out = tmp_path / "out"
    r = run_cli("upscale", photos, "-o", out, "--model", models["tiny"], cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert "3 upscaled, 0 skipped (output exists), 1 failed" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["face_x4.png", "grey_x4.png", "suit_x4.jpg"]
    with Image.open(out / "face_x4.png") as im:
        assert im.size == (160, 192) and im.mode == "RGB"
    with Image.open(out / "grey_x4.png") as im:
        assert im.mode == "L" and im.size == (160, 128)  # grey in -> grey out
    with Image.open(out / "suit_x4.jpg") as im:
        assert im.format == "JPEG" and im.size == (192, 160)


def test_existing_output_skipped_then_replaced(tmp_path: Path, photos: Path, models: dict[str, Path]) -> None:
    src = photos / "face.png"
    dst = tmp_path / "face_big.png"
    assert run_cli("upscale", src, "-o", dst, "--model", models["tiny"], cwd=tmp_path).returncode == 0
    first = dst.read_bytes()
    os.utime(dst, (1_000_000_000, 1_000_000_000))
    r = run_cli("upscale", src, "-o", dst, "--model", models["sibling"], cwd=tmp_path)
    assert r.returncode == 0 and "skip" in r.stdout and "1 skipped" in r.stdout
    assert dst.stat().st_mtime == 1_000_000_000 and dst.read_bytes() == first
    r = run_cli("upscale", src, "-o", dst, "--model", models["sibling"], "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert dst.stat().st_mtime != 1_000_000_000 and dst.read_bytes() != first  # the other model's output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.mark.parametrize(
    ("fmt", "magic"),
    [
        ("jpg", b"\xff\xd8\xff"),
        ("webp", b"RIFF"),
        ("tiff", b"II*\x00"),
        ("JPEG", b"\xff\xd8\xff"),
        ("tif", b"II*\x00"),
    ],
)
def test_format_and_quality(
    tmp_path: Path, photos: Path, models: dict[str, Path], fmt: str, magic: bytes
) -> None:
    """Each format, under the names people type too (JPEG, tif: one file extension each, .jpg and .tiff)."""
    ext = {"JPEG": "jpg", "tif": "tiff"}.get(fmt, fmt)
    sizes = []
    for quality in ("30", "95"):
        out = tmp_path / f"q{quality}"
        extra = ["--quality", quality] if ext != "tiff" else []
        r = run_cli(
            "upscale",
            photos / "face.png",
            "-o",
            out,
            "--format",
            fmt,
            *extra,
            "--model",
            models["tiny"],
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        assert [p.name for p in out.iterdir()] == [f"face_x4.{ext}"]
        path = out / f"face_x4.{ext}"
        assert path.read_bytes()[:4].startswith(magic)
        sizes.append(path.stat().st_size)
    if ext != "tiff":
        assert sizes[0] < sizes[1]  # --quality reaches the encoder


def test_name_pattern_and_recursive(
    tmp_path: Path, photos: Path, models: dict[str, Path], photo: np.ndarray
) -> None:
    sub = photos / "trip" / "day1"
    sub.mkdir(parents=True)
    Image.fromarray(photo[200:232, 200:240]).save(sub / "hat.png")
    out = tmp_path / "out"
    r = run_cli(
        "upscale", photos, "-o", out, "--recursive", "--name", "{model}-{name}@{scale}x.{ext}",
        "--model", models["tiny"], "--outscale", "2", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (out / "trip" / "day1" / "tiny-hat@2x.png").is_file()  # sub-folders kept
    assert {p.name for p in out.iterdir() if p.is_file()} == {
        "tiny-face@2x.png",
        "tiny-suit@2x.jpg",
        "tiny-grey@2x.png",
    }
    with Image.open(out / "tiny-face@2x.png") as im:
        assert im.size == (80, 96)  # --outscale 2 on a 40x48 photo
    bad = run_cli(
        "upscale", photos, "-o", out, "--name", "{nope}.png", "--model", models["tiny"], cwd=tmp_path
    )
    assert bad.returncode == 1 and "--name" in bad.stderr


@pytest.mark.parametrize("outscale", ["2.5", "0.5"])
def test_outscale(tmp_path: Path, photos: Path, models: dict[str, Path], outscale: str) -> None:
    dst = tmp_path / "o.png"
    r = run_cli(
        "upscale",
        photos / "face.png",
        "-o",
        dst,
        "--outscale",
        outscale,
        "--model",
        models["tiny"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    with Image.open(dst) as im:
        assert im.size == (round(40 * float(outscale)), round(48 * float(outscale)))


def test_16bit_grey_exif_icc_kept(tmp_path: Path, photo: np.ndarray, models: dict[str, Path]) -> None:
    deep = photo[60:108, 180:220, 1].astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "esrgan-test-camera"
    Image.fromarray(photo[60:108, 180:220]).save(
        tmp_path / "tagged.jpg", quality=95, icc_profile=icc, exif=exif
    )
    for name in ("deep.png", "tagged.jpg"):
        r = run_cli(
            "upscale", tmp_path / name, "-o", tmp_path / "out", "--model", models["tiny"], cwd=tmp_path
        )
        assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "out" / "deep_x4.png") as im:
        assert im.mode.startswith("I") and im.size == (160, 192)  # 16-bit in -> 16-bit out
        values = np.asarray(im)
        assert values.max() > 255 and len(np.unique(values % 257)) > 1  # real 16-bit levels
    with Image.open(tmp_path / "out" / "tagged_x4.jpg") as im:
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x010F) == "esrgan-test-camera"


def test_interpolate(tmp_path: Path, photos: Path, models: dict[str, Path]) -> None:
    src = photos / "face.png"
    outs = {}
    for alpha in ("0", "0.5", "1"):
        dst = tmp_path / f"a{alpha}.png"
        r = run_cli(
            "upscale",
            src,
            "-o",
            dst,
            "--model",
            models["tiny"],
            "--interpolate",
            models["sibling"],
            "--alpha",
            alpha,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        outs[alpha] = np.asarray(Image.open(dst)).astype(int)
    assert not np.array_equal(outs["0"], outs["1"]) and not np.array_equal(outs["0.5"], outs["0"])
    bad = run_cli(
        "upscale",
        src,
        "-o",
        tmp_path / "x.png",
        "--model",
        models["tiny"],
        "--interpolate",
        models["wider"],
        "--alpha",
        "0.5",
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "different architectures" in bad.stderr
    lonely = run_cli(
        "upscale", src, "-o", tmp_path / "y.png", "--model", models["tiny"], "--alpha", "0.5", cwd=tmp_path
    )
    assert lonely.returncode == 2 and "--interpolate" in lonely.stderr


def test_model_not_available_names_the_remedy(tmp_path: Path, photos: Path) -> None:
    r = run_cli(
        "upscale",
        photos / "face.png",
        "-o",
        tmp_path / "o.png",
        "--model",
        "realesrgan-x2plus",
        cwd=tmp_path,
        env={"ESRGAN_HOME": str(tmp_path / "empty-cache")},
    )
    assert r.returncode == 1
    assert r.stderr.startswith("esrgan: error:") and "realesrgan-x2plus" in r.stderr
    assert "esrgan models --download realesrgan-x2plus" in r.stderr  # the remedy, as a command to paste
    assert "empty-cache" in r.stderr  # and where a hand-downloaded file goes
    assert not (tmp_path / "o.png").exists()


def test_demo_writes_three_pngs_and_keeps_them(tmp_path: Path, models: dict[str, Path]) -> None:
    out = tmp_path / "demo"
    r = run_cli("demo", "-o", out, "--model", models["tiny"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = ["chelsea.png", "chelsea_x4.png", "comparison.png"]
    for name in names:
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    with Image.open(out / "chelsea.png") as a, Image.open(out / "chelsea_x4.png") as b:
        assert (b.width, b.height) == (4 * a.width, 4 * a.height)
    stamps = {n: (out / n).stat().st_mtime_ns for n in names}
    again = run_cli("demo", "-o", out, "--model", models["tiny"], cwd=tmp_path)
    assert again.returncode == 0 and "already there" in again.stdout
    assert {n: (out / n).stat().st_mtime_ns for n in names} == stamps
    # a folder holding one of the demo's names (the user's own comparison.png) is not written into unasked
    own = tmp_path / "own"
    own.mkdir()
    (own / "comparison.png").write_bytes(b"mine")
    r = run_cli("demo", "-o", own, "--model", models["tiny"], cwd=tmp_path)
    assert (
        r.returncode == 1 and "comparison.png: already there" in r.stderr and len(r.stderr.splitlines()) == 1
    )
    assert (own / "comparison.png").read_bytes() == b"mine" and not (own / "chelsea.png").exists()
    # an x2 model's output is named for x2 (it was chelsea_x4.png whatever the scale)
    from conftest import tiny_rrdb

    from esrgan.checkpoints import save_model

    x2 = save_model(tmp_path / "x2.safetensors", tiny_rrdb(scale=2))
    r = run_cli("demo", "-o", tmp_path / "two", "--model", x2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in (tmp_path / "two").iterdir()) == [
        "chelsea.png",
        "chelsea_x2.png",
        "comparison.png",
    ]


def test_globs_reruns_and_argument_errors(tmp_path: Path, photos: Path, models: dict[str, Path]) -> None:
    tiny = models["tiny"]
    two = run_cli(
        "upscale",
        photos / "face.png",
        photos / "grey.png",
        "-o",
        tmp_path / "one.png",
        "--model",
        tiny,
        cwd=tmp_path,
    )
    assert two.returncode == 1 and "-o names a file but there are 2 inputs" in two.stderr
    assert not (tmp_path / "one.png").exists()
    # a glob (quoted, as from a shell that does not expand it), output folder inside the input folder
    out = photos / "out"
    r = run_cli("upscale", str(photos / "*.png"), "-o", out, "--model", tiny, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["face_x4.png", "grey_x4.png"]  # the .jpg is not matched
    # rerun over the folder: its own outputs are not picked up as inputs, and finished files are skipped
    again = run_cli("upscale", photos, "-o", out, "--model", tiny, cwd=tmp_path)
    assert again.returncode == 0 and "1 upscaled, 2 skipped" in again.stdout
    assert sorted(p.name for p in out.iterdir()) == ["face_x4.png", "grey_x4.png", "suit_x4.jpg"]
    missing = run_cli("upscale", tmp_path / "nothing.png", "--model", tiny, cwd=tmp_path)
    assert missing.returncode == 1 and "nothing.png: no such file or folder" in missing.stderr


def test_exif_orientation_applied(tmp_path: Path, photo: np.ndarray, models: dict[str, Path]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(photo[100:140, 0:48]).save(
        tmp_path / "phone.jpg", quality=95, exif=exif
    )  # stored 48 wide
    r = run_cli(
        "upscale", tmp_path / "phone.jpg", "-o", tmp_path / "big.png", "--model", models["tiny"], cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "big.png") as im:
        assert im.size == (160, 192)  # upright: 40 wide, 48 high, x4
        assert im.getexif().get(0x0112, 1) == 1  # and not rotated a second time by viewers


@pytest.mark.parametrize("mode", ["model", "bicubic"])
def test_rgba_png_keeps_alpha(tmp_path: Path, photo: np.ndarray, models: dict[str, Path], mode: str) -> None:
    from test_upscale import circle_rgba

    rgba = circle_rgba(np.ascontiguousarray(photo[40:104, 170:234]), under=0)
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    dst = tmp_path / "cut_x4.png"
    r = run_cli(
        "upscale",
        tmp_path / "cut.png",
        "-o",
        dst,
        "--alpha-mode",
        mode,
        "--model",
        models["tiny"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    with Image.open(dst) as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
        alpha = np.asarray(im)[:, :, 3]
    # corners clear and middle opaque, exactly: the model's alpha is kept within each input neighbourhood's
    # min..max (helper-72's audit, session 30: ringing had left alpha up to 8 in the clear corners)
    assert alpha[:8, :8].max() == 0 and alpha[120:136, 120:136].min() == 255


def test_black_and_white_jpegs_and_grey_gifs_come_back_grey(
    tmp_path: Path, photo: np.ndarray, models: dict[str, Path]
) -> None:
    """helper-72's audit (session 30): a black-and-white JPEG (decoded R == G == B) and a grey GIF (a palette, read
    as RGB) went through the colour model as colour and came back tinted. Now RGB with R == G == B exactly, each
    channel the output of the same grey as an L PNG, written whole and streamed (--stream)."""
    grey = np.asarray(Image.fromarray(np.ascontiguousarray(photo[40:104, 170:234])).convert("L"))
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.dstack([grey] * 3)).save(folder / "bw.jpg", quality=90)
    with Image.open(folder / "bw.jpg") as im:
        decoded = np.asarray(im.convert("RGB"))
    assert np.array_equal(decoded[:, :, 0], decoded[:, :, 1]) and np.array_equal(
        decoded[:, :, 1], decoded[:, :, 2]
    )
    Image.fromarray(decoded[:, :, 0]).save(folder / "bw_l.png")  # the JPEG's grey, as grey
    Image.fromarray(grey).convert("P").save(folder / "pal.gif")
    Image.fromarray(grey).save(folder / "pal_l.png")
    for stream in ((), ("--stream",)):
        out = tmp_path / f"out{len(stream)}"
        r = run_cli(
            "upscale", folder, "-o", out, "--format", "png", "--model", models["tiny"], *stream, cwd=tmp_path
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        for name in ("bw", "pal"):
            with Image.open(out / f"{name}_l_x4.png") as im:
                assert im.mode == "L"
                expected = np.asarray(im)
            with Image.open(out / f"{name}_x4.png") as im:
                assert im.mode == "RGB", name
                written = np.asarray(im)
            assert np.array_equal(written[:, :, 0], written[:, :, 1]), name
            assert np.array_equal(written[:, :, 1], written[:, :, 2]), name
            assert np.array_equal(written[:, :, 0], expected), name


WRITE_AND_DIE = """
import os, signal, sys
from esrgan.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(300_000))  # half an output
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("writing", flush=True)
    sys.stdin.read()  # a live writer: holds its temporary file until told to go on
"""


def test_rerun_removes_the_temporary_files_of_killed_writes_and_nothing_else(
    tmp_path: Path, photos: Path, models: dict[str, Path]
) -> None:
    """kill -9 during an output's write leaves `.NAME.XXXXXXXX.part`; a rerun writing that output removes it and
    says so. Files of live writers, of other names, or of other patterns are left alone."""
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", WRITE_AND_DIE, str(out / "face_x4.png"), "kill"], timeout=60
    )
    assert killed.returncode == -9
    (leftover,) = out.glob(".face_x4.png.*.part")
    assert leftover.stat().st_size > 300_000
    live = subprocess.Popen(
        [sys.executable, "-c", WRITE_AND_DIE, str(out / "grey_x4.png"), "live"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout is not None and live.stdout.readline() == "writing\n"
        (live_part,) = out.glob(".grey_x4.png.*.part")
        decoys = [out / name for name in (".face_x4.png.notours.part", ".other_x4.png.abcdefgh.part",
                                          "notes.part", ".face_x4.png.abcdefgh.part.bak", "face_x4.png.abcdefgh.part")]  # fmt: skip
        for decoy in decoys:
            decoy.write_bytes(b"not ours")
        r = run_cli("upscale", photos, "-o", out, "--model", models["tiny"], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"removed 1 leftover temporary file of an interrupted run (0.3 MB): {leftover}" in r.stdout
        assert not leftover.exists() and live_part.exists() and all(d.exists() for d in decoys)
        assert {"face_x4.png", "grey_x4.png", "suit_x4.jpg"} <= {p.name for p in out.iterdir()}
    finally:
        live.kill()  # a real kill -9 of the live writer: its temporary file becomes a leftover too
        live.wait(timeout=60)
    r = run_cli("upscale", photos, "-o", out, "--model", models["tiny"], cwd=tmp_path)
    assert (
        r.returncode == 0 and "removed 1 leftover temporary file" in r.stdout and str(live_part) in r.stdout
    )
    assert not live_part.exists() and all(d.exists() for d in decoys) and "3 skipped" in r.stdout


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--tile", "17", "--tile must be 0 (no tiling) or 32-4096, not 17"),  # was 2,304 tiles for 64x64
        ("--tile", "8", "--tile must be 0 (no tiling) or 32-4096, not 8"),
        ("--outscale", "0.001", "--outscale must be 0.25-16, not 0.001"),  # was a 1x1 result
        ("--outscale", "100", "--outscale must be 0.25-16, not 100"),
        ("--outscale", "16.0000000001", "--outscale must be 0.25-16, not 16.0000000001"),  # was "not 16"
        ("--quality", "101", "--quality must be 0-100, not 101"),  # was found per file, after the model
        ("--width", "0", "--width must be 1-1048576, not 0"),
    ],
)
def test_out_of_range_options_are_refused_before_any_work(
    tmp_path: Path, photos: Path, models: dict[str, Path], flag: str, value: str, message: str
) -> None:
    out = tmp_path / "out"
    r = run_cli("upscale", photos, "-o", out, "--model", models["tiny"], flag, value, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, f"esrgan: error: {message}\n")
    assert not out.exists()


def test_the_pixel_limit_flag_is_max_megapixels_and_the_refusal_names_it(
    tmp_path: Path, photos: Path, models: dict[str, Path]
) -> None:
    """One name for the limit, on the CLI and in the server (`--max-megapixels`); the old `--max-pixels` still works."""
    face = photos / "face.png"  # 40x48 = 1920 pixels
    for args in (("--max-megapixels", "0.001"), ("--max-pixels", "1049")):
        r = run_cli("upscale", face, "-o", tmp_path / "out", "--model", models["tiny"], *args, cwd=tmp_path)
        assert r.returncode == 1
        assert r.stderr == (
            f"esrgan: error: {face}: 40x48 = 1920 pixels exceeds the limit of 1049 (0.001 megapixels, a "
            "decompression-bomb guard; --max-megapixels raises it)\n"
        )
    assert "--max-megapixels" in run_cli("upscale", "--help", cwd=tmp_path).stdout


def test_the_summary_says_the_precision_really_used(
    tmp_path: Path, photos: Path, photo: np.ndarray, models: dict[str, Path]
) -> None:
    """fp16 on a CPU becomes bf16 (forced here, so that it does on any CPU) or fp32: the summary says which, and
    16-bit images are computed in fp32, the summary and a warning saying so too (it used to report nothing)."""
    Image.fromarray(photo[0:32, 40:80, 1].astype(np.uint16) * 257).save(photos / "deep.png")
    out = tmp_path / "out"
    args = ("upscale", photos, "-o", out, "--model", models["tiny"], "--device", "cpu", "--precision", "fp16")
    r = run_cli(*args, cwd=tmp_path, env={"ESRGAN_CPU_BF16": "1"})
    assert r.returncode == 0, r.stderr
    assert "esrgan: warning: fp16 is not supported well on this CPU; using bf16" in r.stderr
    assert "esrgan: warning: 16-bit and float images are computed in fp32" in r.stderr
    assert r.stdout.splitlines()[-1] == (
        "esrgan upscale: 4 upscaled, 0 skipped (output exists), 0 failed; "
        "computed on cpu in fp32 (1 file), bf16 (3 files)"
    )
    r = run_cli(*args, "--overwrite", cwd=tmp_path, env={"ESRGAN_CPU_BF16": "0"})
    assert r.returncode == 0, r.stderr
    assert "esrgan: warning: fp16 is not supported well on this CPU; using fp32" in r.stderr
    assert r.stdout.splitlines()[-1].endswith("0 failed; computed on cpu in fp32")


def test_a_folder_that_is_also_the_output_folder_says_why_nothing_is_done(
    tmp_path: Path, photos: Path, models: dict[str, Path]
) -> None:
    """`esrgan upscale in -o in`: the images are skipped as outputs of the run; it said "folder has no images (use
    --recursive)", which is false and sends the user the wrong way."""
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    r = run_cli("upscale", photos, "-o", photos, "--model", models["tiny"], cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"esrgan: error: {photos}: its images are all in the output folder {photos.resolve()}, so they are not "
        "inputs; give another -o",
        "esrgan: error: nothing to upscale",
    ]
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


@pytest.mark.parametrize("name", ["", "  ", "{model}/"])
def test_a_name_pattern_giving_no_file_name_is_refused(
    tmp_path: Path, photos: Path, models: dict[str, Path], name: str
) -> None:
    """--name "" made the output folder itself every destination (failing with a confusing error per file)."""
    out = tmp_path / "out"
    r = run_cli(
        "upscale", photos / "face.png", "-o", out, "--model", models["tiny"], "--name", name, cwd=tmp_path
    )
    assert r.returncode in (1, 2) and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("esrgan: error: ") and "--name" in r.stderr
    assert not out.exists()


def test_an_output_file_we_cannot_write_is_refused_before_anything_is_made(
    tmp_path: Path, photos: Path, models: dict[str, Path]
) -> None:
    """`-o x.gif` (when GIF was read but not written; now `-o x.ppm`): the name was taken for a folder,
    "x.gif/face_x4.png", exit 0. A named output must be a file of the input's kind (an image for an image, a video
    for a video)."""
    from esrgan.errors import EsrganError
    from esrgan.pipeline import output_folder, plan_jobs

    before = sorted(tmp_path.iterdir())
    r = run_cli("upscale", photos / "face.png", "-o", "x.ppm", "--model", models["tiny"], cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "esrgan: error: -o x.ppm: esrgan does not write .ppm files; name a .png, .jpg, .webp, .tif, .bmp or .gif image, "
        "a .mp4, .mkv, .mov, .webm or .avi video, or a folder"
    ]
    assert sorted(tmp_path.iterdir()) == before  # no folder x.ppm/
    (tmp_path / "old.ppm").mkdir()  # an existing folder keeps its name, whatever its suffix
    assert output_folder(tmp_path / "old.ppm") == tmp_path / "old.ppm"
    assert output_folder(tmp_path / "out.v2") == tmp_path / "out.v2"  # not a media suffix: a folder
    for src, dst, message in [
        ("a.png", "b.mp4", "-o b.mp4 names a video but a.png is an image; name a .png, .jpg"),
        ("a.mov", "b.png", "-o b.png names an image but a.mov is a video; name a .mp4, .mkv"),
    ]:
        with pytest.raises(EsrganError, match="^" + message.replace(".", r"\.")):
            plan_jobs([(Path(src), None)], Path(dst), scale=4)
    assert [j.dst for j in plan_jobs([(Path("a.mov"), None)], Path("b.mkv"), scale=4)] == [Path("b.mkv")]
    with pytest.raises(
        EsrganError, match=r"^-o b\.jpg names a JPEG file but --format is png; make them agree"
    ):
        plan_jobs([(Path("a.png"), None)], Path("b.jpg"), format="png", scale=4)  # was: PNG bytes in b.jpg
    assert plan_jobs([(Path("a.png"), None)], Path("b.jpeg"), format="jpg", scale=4)[0].dst == Path("b.jpeg")


def test_outputs_too_large_for_their_format_fail_before_the_model_runs(
    tmp_path: Path, photo: np.ndarray, models: dict[str, Path]
) -> None:
    """A 4200-pixel-wide real photo strip at --outscale 16 is 67200 pixels wide: past WebP's 16383 and JPEG's 65500
    (libjpeg's JPEG_MAX_DIMENSION). Each is one line naming the file, the size and the way out, said when the file
    is read (no output, no temporary file); the batch goes on and --format png writes it."""
    folder = tmp_path / "in"
    folder.mkdir()
    strip = np.ascontiguousarray(np.tile(photo[200:203], (1, 9, 1))[:, :4200])  # 4200 x 3
    Image.fromarray(strip).save(folder / "strip.webp", lossless=True)
    Image.fromarray(strip).save(folder / "strip.jpg", quality=95)
    Image.fromarray(np.ascontiguousarray(photo[200:203, :500])).save(folder / "short.webp", lossless=True)
    out = tmp_path / "out"
    r = run_cli("upscale", folder, "-o", out, "--outscale", "16", "--model", models["tiny"], cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    errors = sorted(line for line in r.stderr.splitlines() if line.startswith("esrgan: error:"))
    assert errors == [
        f"esrgan: error: {folder / name}: the output would be 67200x48, larger than {fmt} allows ({limit} pixels a "
        "side); use --format png or tiff, or a smaller --outscale (or --width / --height)"
        for name, fmt, limit in [("strip.jpg", "JPEG", 65500), ("strip.webp", "WebP", 16383)]
    ]
    assert sorted(p.name for p in out.iterdir()) == ["short_x16.webp"]  # 8000 pixels: fits
    r = run_cli(
        "upscale", folder / "strip.webp", "-o", out, "--outscale", "16", "--format", "png",
        "--model", models["tiny"], cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with Image.open(out / "strip_x16.png") as im:
        assert im.size == (67200, 48)


def test_a_target_width_or_box_instead_of_a_scale(
    tmp_path: Path, photos: Path, models: dict[str, Path]
) -> None:
    """--width 120: every real photo 120 wide, its height by its aspect ratio, named _120w; --width and --height:
    within the box, named _120x100; a photo that would need more than x16 is one line and the others go on;
    with --outscale: refused before any work."""
    out = tmp_path / "out"
    r = run_cli("upscale", photos, "-o", out, "--width", "120", "--model", models["tiny"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"face_120w.png": (120, 144), "suit_120w.jpg": (120, 100), "grey_120w.png": (120, 96)}
    r = run_cli(
        "upscale", photos, "-o", out, "--width", "120", "--height", "100", "--model", models["tiny"], cwd=tmp_path
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    boxed = {p.name: Image.open(p).size for p in out.glob("*_120x100.*")}
    assert boxed == {
        "face_120x100.png": (83, 100),
        "suit_120x100.jpg": (120, 100),
        "grey_120x100.png": (120, 96),
    }
    r = run_cli("upscale", photos, "-o", out, "--height", "600", "--model", models["tiny"], cwd=tmp_path)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error:")]
    assert errors == [
        f"esrgan: error: {photos / 'grey.png'}: a 40x32 image within anyx600 would be scaled by 18.8: outside "
        "0.25-16 (the range --outscale allows)"
    ]
    assert "2 upscaled, 0 skipped (output exists), 1 failed" in r.stdout
    r = run_cli("upscale", photos, "-o", out, "--width", "120", "--outscale", "2", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == (
        "esrgan: error: --width / --height and --outscale exclude each other: give a size or a scale"
    )


def _exif_with_a_tag_past_its_end() -> bytes:
    """A TIFF-style EXIF block whose ImageDescription claims 5000 bytes past the block's end: Pillow warns "Tag data
    larger than file" whenever it parses it, here while the TIFF writer sorts the EXIF, on the writing thread."""
    entries = [(271, 2, 4, b"Cam\0"), (270, 2, 5000, struct.pack("<I", 38))]
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def test_odd_file_names_and_write_time_warnings_stay_one_named_line(
    tmp_path: Path, photo: np.ndarray, models: dict[str, Path]
) -> None:
    """A newline in a file name made every line naming it two (error, progress, summary); a name that is not UTF-8
    ended the batch in a traceback (UnicodeEncodeError) under a strict UTF-8 locale (en_US.UTF-8; here
    PYTHONIOENCODING=utf-8:strict) after its output was written; a warning Pillow raised while a file was written
    did not name the file. Each is now one line naming the file, escaped as Python writes it."""
    src = tmp_path / "in"
    src.mkdir()
    newline, foreign = "a\nb.png", os.fsdecode(b"\xff\xfe.png")
    Image.fromarray(photo[60:92, 180:212]).save(src / newline, exif=_exif_with_a_tag_past_its_end())
    Image.fromarray(photo[0:32, 0:32]).save(src / foreign)
    (src / "bad\nname.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    r = run_cli(
        "upscale", src, "-o", out, "--model", models["tiny"], "--format", "tiff",
        env={"PYTHONIOENCODING": "utf-8:strict"},
    )  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == sorted(["a\nb_x4.tiff", os.fsdecode(b"\xff\xfe_x4.tiff")])
    errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error:")]
    warnings_ = [line for line in r.stderr.splitlines() if line.startswith("esrgan: warning:")]
    assert len(r.stderr.splitlines()) == len(errors) + len(warnings_) == 2, (
        r.stderr
    )  # no line without its prefix
    assert errors[0].startswith(f"esrgan: error: {src}/bad\\nname.png: ")
    assert warnings_ == [f"esrgan: warning: {out}/a\\nb_x4.tiff: Tag data larger than file. Skipping tag 270"]
    progress = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert sorted(p.split("] ", 1)[1].split(" -> ")[0] for p in progress) == [
        f"{src}/\\xff\\xfe.png",
        f"{src}/a\\nb.png",
    ]
    assert r.stdout.splitlines()[-1].startswith(
        "esrgan upscale: 2 upscaled, 0 skipped (output exists), 1 failed: "
    )
    assert f"{src}/bad\\nname.png" in r.stdout.splitlines()[-1]


def test_a_grey_model_file_upscales_grey_colour_and_alpha_images(photo: np.ndarray, tmp_path: Path) -> None:
    """A grey model in BasicSR's layout (`params_ema`, 1 channel in and out) was "a model with 1 input and 1 output
    channels" and nothing was upscaled. Now a folder of a colour JPEG, a grey PNG and an RGBA PNG is done: each
    keeps its mode, and the pixels are the Python API's (fp32), also with --stream (the colour PNG is then written
    whole: a grey model takes its channels one at a time)."""
    import torch

    from esrgan import Upscaler

    model = photo_preserving_rrdb(channels=1)
    model_path = tmp_path / "grey_x4.pth"
    torch.save({"params_ema": model.state_dict()}, model_path)
    src = tmp_path / "in"
    src.mkdir()
    crop = photo[96:160, 160:240]
    Image.fromarray(crop).save(src / "colour.jpg", quality=95)
    Image.fromarray(crop[:, :, 1]).save(src / "grey.png")
    Image.fromarray(crop).convert("RGBA").save(src / "alpha.png")
    Image.fromarray(crop).save(src / "colour.png")
    up = Upscaler(model, device="cpu", precision="fp32")
    for extra in ((), ("--stream",)):
        out = tmp_path / f"out{len(extra)}"
        r = run_cli(
            "upscale", src, "-o", out, "--model", model_path, "--precision", "fp32", "--quiet", *extra
        )
        assert r.returncode == 0 and r.stderr == "", r.stderr
        for name, mode in (("colour_x4.jpg", "RGB"), ("grey_x4.png", "L"), ("alpha_x4.png", "RGBA")):
            with Image.open(out / name) as im:
                assert (im.mode, im.size) == (mode, (320, 256)), name
        with Image.open(out / "colour_x4.png") as im:
            got = np.asarray(im)
        np.testing.assert_array_equal(got, up.upscale(crop))
        with Image.open(out / "grey_x4.png") as im:
            np.testing.assert_array_equal(np.asarray(im), up.upscale(np.ascontiguousarray(crop[:, :, 1])))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--denoise", "1.5"], "--denoise must be in [0, 1], not 1.5"),
        (["--quality", "101"], "--quality must be 0-100, not 101"),
        (["--width", "64", "--outscale", "2"], "--width / --height and --outscale exclude each other"),
        (["--interpolate", "m.pth"], "--interpolate and --alpha go together"),
    ],
)
def test_option_errors_that_need_no_model_come_before_torch_is_imported(
    tmp_path: Path, args: list[str], error: str
) -> None:
    """A typo in an option that needs no model ended the command only after torch was imported (1.7 s of a 2-core
    Zen 4 for one error line). These are said first now: the process never imports torch."""
    code = (
        "import sys\nfrom esrgan.cli import main\nstatus = main(sys.argv[1:])\n"
        "print('torch' in sys.modules, status)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "upscale", "in.png", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.stdout.split() == ["False", "2"], (proc.stdout, proc.stderr)
    assert proc.stderr.startswith(f"esrgan: error: {error}"), proc.stderr


def test_metadata_reaches_the_outputs_of_a_batch(
    tmp_path: Path, photo: np.ndarray, models: dict[str, Path]
) -> None:
    """helper-72's audit: a phone JPEG's XMP (rights), comment and 300 dpi, a Stable Diffusion PNG's parameters and
    gamma left `esrgan upscale` without a word, and the EXIF still gave the input's size and a thumbnail on its
    side. Through the batch's two writers (a JPEG whole, a PNG row by row with --stream): all of it kept, the
    sizes the output's; --png-compression on a JPEG output says it is ignored, as --quality on a PNG does."""
    from test_imageio import _XMP, _exif_with_thumbnail, _png_chunk_list, _png_with_text, _thumbnail_of

    folder = tmp_path / "in"
    folder.mkdir()
    turn = _XMP.replace(
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/">',
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="6">',
    )
    Image.fromarray(photo[100:140, 0:48]).save(
        folder / "phone.jpg",
        quality=95,
        exif=_exif_with_thumbnail(6),
        xmp=turn,
        comment=b"Kodachrome",
        dpi=(300, 300),
    )
    chunks = _png_with_text(folder / "sd.png", np.ascontiguousarray(photo[60:108, 180:220]))
    out = tmp_path / "out"
    r = run_cli(
        "upscale",
        folder,
        "-o",
        out,
        "--model",
        models["tiny"],
        "--png-compression",
        "9",
        "--stream",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "phone_x4.jpg: PNG compression applies to PNG only; ignored for JPEG" in r.stderr
    assert "input's" not in r.stderr  # nothing dropped
    with Image.open(out / "phone_x4.jpg") as im:
        assert im.size == (160, 192)  # 40 x 48, turned upright, x4
        assert im.info["dpi"] == (300, 300) and im.info["comment"] == b"Kodachrome"
        assert b'tiff:Orientation="1"' in im.info["xmp"] and b"(c) 2024 A. Photographer" in im.info["xmp"]
        assert b"<exif:PixelXDimension>160</exif:PixelXDimension>" in im.info["xmp"]
        exif = im.getexif()
        assert exif[0x0112] == 1 and not _thumbnail_of(im.info["exif"])
        assert (exif.get_ifd(0x8769)[0xA002], exif.get_ifd(0x8769)[0xA003]) == (160, 192)
    kept = [
        c for c in _png_chunk_list(out / "sd_x4.png") if c[0] in (b"tEXt", b"zTXt", b"iTXt", b"gAMA", b"cHRM")
    ]
    assert sorted(kept) == sorted(chunks)
