"""`esrgan prepare`: sub-image cutting on real photos, matching LR images, bad files skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_atomic import one_line_error, read_only, unprivileged_cli

from esrgan.cli import main
from esrgan.prepare import crop_origins, prepare
from esrgan.resize import imresize_np


def test_crop_origins_grid_plus_flush_last_crop() -> None:
    assert crop_origins(1000, 480, 240) == [
        0,
        240,
        480,
        520,
    ]  # 40 px left uncovered -> a crop flush with the end
    assert crop_origins(960, 480, 240) == [0, 240, 480]  # grid ends exactly at the border
    assert crop_origins(1000, 480, 240, min_size=40) == [0, 240, 480]  # remainder not above the threshold
    assert crop_origins(1000, 480, 240, min_size=39) == [0, 240, 480, 520]
    assert crop_origins(480, 480, 240) == [0]
    assert crop_origins(479, 480, 240) == []
    # DIV2K 0001.png is 2040x1356: 8 x 5 = 40 sub-images, the count BasicSR's extract_subimages gives
    assert len(crop_origins(2040, 480, 240)) * len(crop_origins(1356, 480, 240)) == 40


@pytest.fixture
def hr_dir(tmp_path: Path, photo: np.ndarray) -> Path:
    """Real photos of several sizes (one not a multiple of 4), a grey one, a corrupt PNG and a non-image file."""
    d = tmp_path / "hr"
    d.mkdir()
    Image.fromarray(photo).save(d / "astronaut.png")
    Image.fromarray(photo[13:314, 40:450]).save(d / "crop.png")  # 301 x 410
    Image.fromarray(photo[:200, :300, 1]).save(d / "grey.png")
    (d / "broken.png").write_bytes((d / "astronaut.png").read_bytes()[:3000])  # truncated mid-stream
    (d / "notes.txt").write_text("not an image, not counted")
    return d


def _expected(shape: tuple[int, ...], size: int, step: int, scale: int = 1) -> int:
    h, w = shape[0] - shape[0] % scale, shape[1] - shape[1] % scale
    return len(crop_origins(h, size, step)) * len(crop_origins(w, size, step))


def test_prepare_with_lr(
    hr_dir: Path, tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    res = prepare(hr_dir, out, size=128, step=96, lr_scale=4, workers=1, progress=False)

    crop = photo[13:314, 40:450]
    counts = {
        "astronaut": _expected(photo.shape, 128, 96, 4),
        "crop": _expected(crop.shape, 128, 96, 4),
        "grey": _expected((200, 300), 128, 96, 4),
    }
    assert counts == {"astronaut": 25, "crop": 12, "grey": 6}
    assert res.images == 3 and res.crops == sum(counts.values()) and res.too_small == 0
    assert [p.name for p, _ in res.failed] == ["broken.png"]
    assert "broken.png" in res.failed[0][1]
    assert "skipped:" in capsys.readouterr().err

    hr_files = sorted(out.glob("*.png"))
    lr_files = sorted((out / "LR_x4").glob("*.png"))
    assert len(hr_files) == len(lr_files) == sum(counts.values())
    assert [p.name for p in hr_files] == [p.name for p in lr_files]
    assert [p.name for p in out.glob(".*")] == [".esrgan-prepare.json"]  # the settings; no temporary files

    # numbering is row by row; the last crop of the 301x410 image is flush with the mod-4 border (300x408)
    hr_last = np.asarray(Image.open(out / "crop_s012.png"))
    np.testing.assert_array_equal(hr_last, crop[300 - 128 : 300, 408 - 128 : 408])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "astronaut_s002.png")), photo[:128, 96:224])

    # LR crops are the whole-image MATLAB bicubic LR at the scaled position, rounded to uint8
    lr_whole = np.clip(np.round(imresize_np(crop[:300, :408], scale=0.25)), 0, 255).astype(np.uint8)
    lr_last = np.asarray(Image.open(out / "LR_x4" / "crop_s012.png"))
    assert lr_last.shape == (32, 32, 3)
    np.testing.assert_array_equal(lr_last, lr_whole[(300 - 128) // 4 : 75, (408 - 128) // 4 : 102])
    grey_lr = Image.open(out / "LR_x4" / "grey_s001.png")
    assert grey_lr.mode == "L" and grey_lr.size == (32, 32)


def test_cli_parallel_failures_and_overwrite(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["prepare", str(hr_dir), str(out), "--size", "200", "--step", "150", "--workers", "2"]
    assert main(args) == 1  # the corrupt file makes the run fail after doing everything else
    total = (
        _expected((512, 512), 200, 150) + _expected((301, 410), 200, 150) + _expected((200, 300), 200, 150)
    )
    assert len(list(out.glob("*.png"))) == total == 24  # 4x4 + 2x3 + 1x2
    captured = capsys.readouterr()
    assert f"3 images -> {total} sub-images" in captured.out and "1 failed" in captured.out
    assert "broken.png" in captured.err

    (hr_dir / "broken.png").unlink()
    # a rerun (after an interruption: some sub-images missing) writes what is missing and keeps the rest; it used
    # to refuse every existing file ("already exists") and end in failure
    made = {p.name: p.read_bytes() for p in out.glob("*.png")}
    for name in sorted(made)[::3]:
        (out / name).unlink()
    assert main(args[:-2]) == 0
    again = capsys.readouterr()
    assert (
        f"3 images -> 8 sub-images in {out}, 16 already there (kept; --overwrite replaces them); 0 failed"
        in (again.out)
    ), again
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == made and again.err.count("skipped") == 0
    # other settings would mix two grids under the same names: refused before anything is written
    assert main([*args[:-2], "--step", "100"]) == 1  # argparse: the last --step wins
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"esrgan: error: {out}: holds sub-images cut with --size 200 --step 150 --min-size 0, not --size 200 "
        "--step 100 --min-size 0; rerun with the same settings to finish it, --overwrite to replace them, or give "
        "another folder"
    ]
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == made
    assert main([*args[:-2], "--overwrite"]) == 0
    assert len(list(out.glob("*.png"))) == total


def test_images_smaller_than_a_sub_image_are_counted(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (hr_dir / "broken.png").unlink()
    assert main(["prepare", str(hr_dir), str(tmp_path / "o"), "--size", "256", "--lr-scale", "4"]) == 0
    # 512x512: 3x3 crops (0, 240 and the flush 256); 301x410 cut to 300x408: 2x2; 200x300 grey: none
    out = capsys.readouterr().out
    # the LR crops --lr-scale wrote are said too
    assert out == (
        f"3 images -> 13 sub-images in {tmp_path / 'o'} + 13 LR in {tmp_path / 'o' / 'LR_x4'} (1 smaller than "
        "--size: nothing cut); 0 failed\n"
    )
    assert main(["prepare", str(hr_dir), str(tmp_path / "o2"), "--size", "400"]) == 0
    assert "(2 smaller than --size: nothing cut)" in capsys.readouterr().out


def test_cli_rejects_lr_scale_not_dividing_size(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prepare", str(hr_dir), str(tmp_path / "o"), "--size", "130", "--lr-scale", "4"]) == 1
    assert "esrgan: error: --lr-scale 4 must divide" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "o")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_two_images_with_one_stem_do_not_overwrite_each_other(
    tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """a.jpg and a.png (two different photos) would both be cut into a_s001.png...: the second is refused, naming
    both, before anything is written; the first and the others are cut as usual and the run fails."""
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo[:64, :64]).save(hr / "a.jpg", quality=95)
    Image.fromarray(photo[200:264, 300:364]).save(hr / "a.png")
    Image.fromarray(photo[100:164, 100:164]).save(hr / "b.png")
    out = tmp_path / "out"
    assert main(["prepare", str(hr), str(out), "--size", "32", "--step", "32", "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert "2 images -> 8 sub-images" in captured.out and "1 failed" in captured.out
    clash = [line for line in captured.err.splitlines() if "skipped:" in line]
    assert len(clash) == 1 and str(hr / "a.png") in clash[0] and str(hr / "a.jpg") in clash[0]
    assert sorted(p.name for p in out.glob("*.png")) == [f"{s}_s00{n}.png" for s in "ab" for n in range(1, 5)]
    jpg = np.asarray(Image.open(hr / "a.jpg"))
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "a_s004.png")), jpg[32:, 32:]
    )  # a.jpg's, untouched
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b_s001.png")), photo[100:132, 100:132])


def test_no_images_or_an_output_that_is_a_file_is_one_clear_error(
    tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert main(["prepare", str(empty), str(tmp_path / "o")]) == 1
    assert f"esrgan: error: {empty}: no images" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing made for nothing

    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo[:64, :64]).save(hr / "a.png")
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"an earlier file")
    for out, problem in [
        (taken, "is a file, not a folder"),
        (taken / "sub", f"{taken} is a file, not a folder"),
    ]:
        assert main(["prepare", str(hr), str(out), "--size", "32"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"esrgan: error: {out}: ") and problem in err
    assert taken.read_bytes() == b"an earlier file"
    ro = read_only(tmp_path / "ro")
    one_line_error(
        unprivileged_cli("prepare", hr, ro / "sub"), f"{ro / 'sub'}: cannot create", "Permission denied"
    )


def test_the_image_folder_is_not_its_own_output(tmp_path: Path) -> None:
    """OUT = HR_DIR: a rerun read the sub-images back as images (rgb_s001_s001.png ...): refused in one line."""
    from esrgan.errors import EsrganError
    from esrgan.prepare import prepare

    (tmp_path / "hr").mkdir()
    Image.fromarray(np.zeros((500, 500, 3), np.uint8)).save(tmp_path / "hr" / "a.png")
    with pytest.raises(EsrganError, match="the output folder is the image folder"):
        prepare(tmp_path / "hr", tmp_path / "hr" / ".." / "hr", progress=False)
    assert sorted(p.name for p in (tmp_path / "hr").iterdir()) == ["a.png"]


def test_overwrite_with_other_settings_replaces_the_whole_grid(tmp_path: Path) -> None:
    """A real photo cut with --step 240 and LR x4, then again with --step 120 --overwrite, then back: each time the
    folder holds exactly the new grid, every LR crop the downscale of its HR crop (an old LR beside a new HR of the
    same name was a misaligned training pair; going back left the finer grid's extra crops)."""
    skdata = pytest.importorskip("skimage.data")
    hr = tmp_path / "hr"
    hr.mkdir()
    photo = skdata.astronaut()[:480]  # 480 x 512, widened to 480 x 720 with its own left part
    Image.fromarray(np.ascontiguousarray(np.concatenate([photo, photo[:, :208]], axis=1))).save(
        hr / "rgb.png"
    )
    out = tmp_path / "out"

    def crops() -> list[str]:
        return sorted(p.name for p in out.glob("rgb_s*.png"))

    prepare(hr, out, lr_scale=4, progress=False)
    first = crops()
    prepare(hr, out, step=120, lr_scale=4, overwrite=True, progress=False)
    finer = crops()
    assert len(finer) > len(first)
    for name in finer:
        with Image.open(out / name) as a, Image.open(out / "LR_x4" / name) as b:
            expected = np.clip(np.rint(imresize_np(np.asarray(a), scale=0.25)), 0, 255).astype(np.uint8)
            inner = (
                slice(4, -4),
                slice(4, -4),
            )  # away from the crop's edges, where the whole image's context differs
            assert np.abs(np.asarray(b).astype(int)[inner] - expected[inner]).max() <= 1, name
    prepare(hr, out, lr_scale=4, overwrite=True, progress=False)
    assert crops() == first and sorted(p.name for p in (out / "LR_x4").iterdir()) == first


def test_a_rerun_keeps_only_files_that_are_its_sub_images(
    tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun kept any file with a sub-image's name and counted it as done: a truncated file (our writes are
    atomic, so never ours), a crop of another size or an LR of another colour type went on into training. Each
    kept file is now checked from its PNG header and its last bytes (no decoding): one that is not the sub-image
    this run would write fails its image in one line naming the file, and is rewritten only with --overwrite."""
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo[:256, :256]).save(hr / "colour.png")
    Image.fromarray(photo[256:, 256:, 1]).save(hr / "grey.png")
    Image.fromarray(photo[100:228, 300:428]).save(hr / "third.png")
    out = tmp_path / "out"
    args = ["prepare", str(hr), str(out), "--size", "128", "--step", "128", "--lr-scale", "4"]
    assert main(args) == 0
    capsys.readouterr()

    def files() -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}

    made = files()
    assert len(made) == 2 * (4 + 4 + 1)
    truncated = out / "colour_s002.png"
    truncated.write_bytes(made["colour_s002.png"][:-200])  # its header intact
    Image.fromarray(photo[:64, :64]).save(out / "colour_s003.png")  # a whole PNG of another size
    Image.fromarray(photo[:32, :32]).save(out / "LR_x4" / "grey_s001.png")  # RGB where the grey LR goes
    (out / "grey_s004.png").unlink()  # missing: rewritten on a good rerun, not on this one
    foreign = files()
    assert main(args) == 1
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped:" in line]
    skipped.sort(key=lambda line: "grey" in line)  # colour.png's first
    assert len(skipped) == 2, captured.err
    assert f"{truncated}: truncated" in skipped[0] and "colour.png" in skipped[0]
    assert "1 more" in skipped[0] and "--overwrite" in skipped[0]  # colour_s003.png
    assert f"{out / 'LR_x4' / 'grey_s001.png'}: 8-bit RGB, not 8-bit grey" in skipped[1]
    assert f"1 image -> 0 sub-images in {out} + 0 LR in {out / 'LR_x4'}, 1 already there" in captured.out
    assert "2 failed" in captured.out
    assert files() == foreign  # nothing written for the failed images, nothing replaced
    (out / "colour_s003.png").unlink()
    Image.fromarray(photo[:128, :128]).save(out / "colour_s003.png")  # the right size and type: not decoded
    assert main(args) == 1
    assert f"{truncated}: truncated" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert files() == made
