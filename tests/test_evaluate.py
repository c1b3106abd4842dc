"""`esrgan evaluate` end to end on Set5: the bicubic column reproduces the literature protocol's numbers, the model
column is what the model really produces, and the table, JSON, CSV and visual report agree.

Models are tiny RRDBNets saved with esrgan.checkpoints.save_model: one whose weights make it an exact
nearest-neighbour x4 upscaler (so its scores can be computed independently here), one randomly initialised.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_preserving_rrdb, run_cli, tiny_rrdb
from PIL import Image
from test_lpips import make_files

from esrgan.checkpoints import save_model
from esrgan.cli import main
from esrgan.evaluate import bicubic_down, bicubic_up, crop, mod_crop
from esrgan.lpips import load_lpips
from esrgan.metrics import psnr, ssim
from esrgan.report import choose_crop
from esrgan.zoo import lpips_available

# shared/data/README.md: bicubic x4, Y-PSNR dB / Y-SSIM per image
SET5 = {
    "baby": (31.787, 0.8577),
    "bird": (30.186, 0.8738),
    "butterfly": (22.100, 0.7374),
    "head": (31.617, 0.7548),
    "woman": (26.467, 0.8326),
}
SET5_MEAN = (28.431, 0.8113)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    random = tiny_rrdb(1)
    return {
        # spread 0: the body's output is multiplied by zero, so the model is exactly nearest-neighbour upscaling
        "nearest": save_model(d / "nearest.safetensors", photo_preserving_rrdb(spread=0.0)),
        "random": save_model(d / "random.safetensors", random),
    }


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("evaluate", *args)


def _run_here(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """The same command in this process (torch is already imported: saves seconds per call)."""
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _table(stdout: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (by first cell) of the printed table; Δ cells may be empty only when NIQE is absent."""
    lines = stdout.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = {}
    for line in lines[1:]:
        if line.startswith("x4,"):
            break
        if line.startswith("-"):
            continue
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return header, rows


@pytest.fixture(scope="module")
def set5_run(
    shared_dir: Path, models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One evaluation of Set5 with both models, JSON, CSV and report: the tests below read its outputs."""
    out = tmp_path_factory.mktemp("eval")
    proc = _run(
        "--model", models["nearest"], "--model", models["random"],
        "--hr", shared_dir / "data" / "benchmarks" / "Set5",
        "--json", out / "r.json", "--csv", out / "r.csv", "--report", out / "report",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_bicubic_column_reproduces_the_reference(
    set5_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    header, rows = _table(set5_run[0].stdout)
    ip, iss = header.index("bicubic PSNR"), header.index("bicubic SSIM")
    for name, (ref_psnr, ref_ssim) in SET5.items():
        assert float(rows[name][ip]) == pytest.approx(ref_psnr, abs=0.01), name
        assert float(rows[name][iss]) == pytest.approx(ref_ssim, abs=0.001), name
    assert float(rows["mean (5)"][ip]) == pytest.approx(SET5_MEAN[0], abs=0.01)
    assert float(rows["mean (5)"][iss]) == pytest.approx(SET5_MEAN[1], abs=0.001)


def test_model_column_is_what_the_model_produces(
    shared_dir: Path, set5_run: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    """The nearest model's scores equal nearest-neighbour upscaling of the protocol's LR, computed here."""
    data = json.loads((set5_run[1] / "r.json").read_text())
    for item in data["images"]:
        hr = mod_crop(
            np.asarray(Image.open(shared_dir / "data" / "benchmarks" / "Set5" / f"{item['name']}.png")), 4
        )
        nearest = np.repeat(np.repeat(bicubic_down(hr, 4), 4, axis=0), 4, axis=1)
        got = item["scores"]["nearest"]
        assert got["psnr"] == pytest.approx(psnr(nearest, hr, crop_border=4), abs=1e-9)
        assert got["ssim"] == pytest.approx(ssim(nearest, hr, crop_border=4), abs=1e-9)
        # nearest neighbour is worse than bicubic in PSNR on every one of these photos
        assert got["psnr"] < item["scores"]["bicubic"]["psnr"]


def test_two_models_side_by_side(set5_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    header, rows = _table(set5_run[0].stdout)
    assert [h for h in header if h.endswith("PSNR")] == ["bicubic PSNR", "nearest PSNR", "random PSNR"]
    for name in SET5:
        p_near = float(rows[name][header.index("nearest PSNR")])
        p_rand = float(rows[name][header.index("random PSNR")])
        assert p_near != p_rand
        # the Δ column right after a model's PSNR is model - bicubic
        delta = float(rows[name][header.index("nearest PSNR") + 1])
        assert delta == pytest.approx(p_near - float(rows[name][header.index("bicubic PSNR")]), abs=0.0015)


def test_json_and_csv_hold_the_table_numbers(set5_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = set5_run
    header, rows = _table(proc.stdout)
    data = json.loads((out / "r.json").read_text())
    with (out / "r.csv").open() as fh:
        csv_rows = {(r["image"], r["method"]): r for r in csv.DictReader(fh)}
    assert data["methods"] == ["bicubic", "nearest", "random"]
    assert [im["name"] for im in data["images"]] == list(SET5)
    entries = [(im["name"], im["name"], im["scores"]) for im in data["images"]]
    entries.append(("mean (5)", "mean", data["mean"]))
    checked = 0
    for table_name, csv_name, scores in entries:
        for method, s in scores.items():
            for key, digits in (("psnr", 3), ("ssim", 4), ("niqe", 3)):
                cell = rows[table_name][header.index(f"{method} {key.upper()}")]
                csv_cell = csv_rows[(csv_name, method)][key]
                if s[key] is None:  # the random model's flat output has no NIQE
                    assert cell == "-" and csv_cell == ""
                    continue
                assert cell == f"{s[key]:.{digits}f}"
                assert float(csv_cell) == s[key]
                checked += 1
    assert checked >= 6 * 3 * 2
    assert data["protocol"]["crop_border"] == 4 and data["failed"] == []


def test_report_files_show_every_image_and_its_numbers(
    set5_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = set5_run[1]
    data = json.loads((out / "r.json").read_text())
    report = out / "report"
    html = (report / "index.html").read_text()
    md = (report / "index.md").read_text()
    for item in data["images"]:
        mosaic = report / f"{item['name']}_mosaic.png"
        with Image.open(mosaic) as im:
            im.load()
            # overview + bicubic + 2 models + HR in one row of 288-pixel panels
            assert im.width >= 5 * 288 and im.height > 288
        for page in (html, md):
            assert f"{item['name']}_mosaic.png" in page
            for method, s in item["scores"].items():
                assert f"{s['psnr']:.3f}" in page, (method, item["name"])
                assert f"{s['ssim']:.4f}" in page, (method, item["name"])
    assert f"{data['mean']['bicubic']['psnr']:.3f}" in html


def test_corrupt_file_is_reported_and_the_rest_evaluated(
    shared_dir: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    for name in ("bird", "butterfly"):
        shutil.copy(shared_dir / "data" / "benchmarks" / "Set5" / f"{name}.png", hr)
    good = (hr / "bird.png").read_bytes()
    (hr / "broken.png").write_bytes(good[: len(good) // 3])  # a truncated download
    (hr / "notes.txt").write_text("not an image, not listed")
    # a grey image (as Set14's bridge.png): RGB of equal channels; the nearest model's output keeps them equal
    Image.open(hr / "bird.png").convert("L").save(hr / "grey.png")
    proc = _run("--model", models["nearest"], "--hr", hr, "--no-niqe", "--json", tmp_path / "r.json")
    assert proc.returncode == 1
    assert "broken.png" in proc.stderr and "notes.txt" not in proc.stderr + proc.stdout
    _, rows = _table(proc.stdout)
    assert set(rows) == {"bird", "butterfly", "grey", "mean (3)"}
    grey = mod_crop(np.asarray(Image.open(hr / "grey.png"))[:, :, None], 4)
    nearest = np.repeat(np.repeat(bicubic_down(grey, 4), 4, axis=0), 4, axis=1)
    grey_scores = json.loads((tmp_path / "r.json").read_text())["images"][2]["scores"]
    assert grey_scores["bicubic"]["psnr"] == pytest.approx(
        psnr(bicubic_up(bicubic_down(grey, 4), 4), grey, crop_border=4)
    )
    assert grey_scores["nearest"]["psnr"] == pytest.approx(psnr(nearest, grey, crop_border=4))
    data = json.loads((tmp_path / "r.json").read_text())
    assert [Path(f["file"]).name for f in data["failed"]] == ["broken.png"]


def test_paired_lr_folder_is_used(
    shared_dir: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--lr: LR files paired by name (with the usual x4 suffix) replace the MATLAB downscale; a wrong size fails.
    --save-images writes exactly the images that were scored."""
    src = shared_dir / "data" / "benchmarks" / "Set5"
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    expected, lrs = {}, {}
    for name in ("bird", "butterfly"):
        shutil.copy(src / f"{name}.png", hr_dir)
        hr = mod_crop(np.asarray(Image.open(src / f"{name}.png")), 4)
        # a different degradation (nearest-neighbour decimation) so that using the file visibly changes the numbers
        lr = np.ascontiguousarray(hr[1::4, 1::4])
        Image.fromarray(lr).save(lr_dir / f"{name}x4.png")
        lrs[name] = lr
        expected[name] = psnr(bicubic_up(lr, 4), hr, crop_border=4)
    shutil.copy(src / "head.png", hr_dir)
    Image.new("RGB", (10, 10)).save(lr_dir / "head.png")  # wrong size for head's 280x280 HR
    code, out, err = _run_here(
        capsys, "--model", models["nearest"], "--hr", hr_dir, "--lr", lr_dir, "--no-niqe",
        "--save-images", tmp_path / "out",
    )  # fmt: skip
    assert code == 1
    # one line naming the HR and the LR file once each (the HR path was written twice)
    assert (
        f"  {hr_dir / 'head.png'}: LR {lr_dir / 'head.png'} is 10x10, expected 70x70 (HR cut to a multiple of 4, "
        "divided by 4)\n" in err
    )
    assert err.count(str(hr_dir / "head.png")) == 2  # the progress line and the summary line
    header, rows = _table(out)
    for name, value in expected.items():
        got = float(rows[name][header.index("bicubic PSNR")])
        assert got == pytest.approx(value, abs=0.0005)
        assert abs(got - SET5[name][0]) > 0.05  # not the numbers of the MATLAB-downscaled LR
        saved_bicubic = np.asarray(Image.open(tmp_path / "out" / "bicubic" / f"{name}.png"))
        saved_nearest = np.asarray(Image.open(tmp_path / "out" / "nearest" / f"{name}.png"))
        np.testing.assert_array_equal(saved_bicubic, bicubic_up(lrs[name], 4))
        np.testing.assert_array_equal(saved_nearest, np.repeat(np.repeat(lrs[name], 4, axis=0), 4, axis=1))
    assert not (tmp_path / "out" / "bicubic" / "head.png").exists()


def test_lr_and_baseline_round_halves_away_from_zero_as_matlab(shared_dir: Path) -> None:
    """MATLAB's imresize of a uint8 image converts its double sums with round-half-away; np.round (half to even)
    put some x2 LR and bicubic-baseline pixels of real photos one level off (review 57). Set5's baby at x2: 48
    LR sums and 61 upscale sums are exact halves."""
    from esrgan.resize import imresize_np

    hr = np.asarray(Image.open(shared_dir / "data" / "benchmarks" / "Set5" / "baby.png"))
    exact_lr = imresize_np(hr, scale=0.5)
    lr = bicubic_down(hr, 2)
    exact_up = imresize_np(lr, scale=2)
    for exact, got in ((exact_lr, lr), (exact_up, bicubic_up(lr, 2))):
        assert int((exact - np.floor(exact) == 0.5).sum()) > 10  # ties exist: the test is not vacuous
        np.testing.assert_array_equal(got, np.clip(np.floor(exact + 0.5), 0, 255).astype(np.uint8))


def test_scale_mismatch_is_a_clear_error(
    shared_dir: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    set5 = shared_dir / "data" / "benchmarks" / "Set5"
    code, _, err = _run_here(capsys, "--model", models["nearest"], "--hr", set5, "--scale", "2")
    assert code == 1
    assert err.startswith("esrgan: error:") and "x4" in err and "--scale is 2" in err
    # a scale no model can have is said as such, not as a mismatch with the model (review 58)
    for bad in ("0", "-3"):
        code, out, err = _run_here(capsys, "--model", models["nearest"], "--hr", set5, "--scale", bad)
        assert (code, out) == (1, "")
        assert err == f"esrgan: error: scale must be >= 1, got {bad}\n"


def test_crop_goes_where_bicubic_loses_most(photo: np.ndarray) -> None:
    """On a real photo: the chosen window covers the one region where the 'baseline' differs from HR."""
    baseline = photo.copy()
    baseline[300:340, 100:140] = 128  # a flat grey patch: all detail lost there
    top, left = choose_crop(photo, baseline, 64, border=4)
    assert top <= 300 and top + 64 >= 340 and left <= 100 and left + 64 >= 140
    # the window stays inside the border even when the damage touches it
    baseline = photo.copy()
    baseline[:20, :20] = 0
    top, left = choose_crop(photo, baseline, 64, border=4)
    assert (top, left) == (4, 4)


def test_lpips_without_weights_is_skipped_with_one_line(
    shared_dir: Path,
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--lpips on a machine without its weights: one stderr line saying why and how to get them, the rest as usual."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    assert not lpips_available("alex")  # nor an installed lpips package nor the hub cache provides them
    hr = tmp_path / "hr"
    hr.mkdir()
    shutil.copy(shared_dir / "data" / "benchmarks" / "Set5" / "bird.png", hr)
    code, out, err = _run_here(
        capsys, "--model", models["nearest"], "--hr", hr, "--no-niqe", "--lpips",
        "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv",
    )  # fmt: skip
    assert code == 0, err
    skipped = [line for line in err.splitlines() if "LPIPS" in line]
    assert len(skipped) == 1 and skipped[0].startswith("LPIPS skipped: LPIPS (alex) weights missing:")
    assert "alexnet-owt-7be5be79.pth" in skipped[0] and str(tmp_path / "empty_torch_home") in skipped[0]
    # the command line's own flags (it named the Python keywords, backbone_weights=PATH, to CLI users)
    assert "pass --lpips-backbone PATH" in skipped[0] and "pass --lpips-lin PATH" in skipped[0]
    header, rows = _table(out)
    assert not any("LPIPS" in h for h in header) and "bird" in rows
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["protocol"]["lpips"] is None and "lpips" not in data["images"][0]["scores"]["nearest"]
    assert "lpips" not in (tmp_path / "r.csv").read_text().splitlines()[0]


def test_lpips_column_with_weights_given(
    shared_dir: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--lpips-backbone/--lpips-lin (random weights in the published formats): an LPIPS column for bicubic and the
    model, computed on the border-cropped region, in the table, JSON and CSV, with the delta to bicubic."""
    backbone, lin = make_files(tmp_path / "lpips", "alex")
    set5 = shared_dir / "data" / "benchmarks" / "Set5"
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for name in ("bird", "head"):
        shutil.copy(set5 / f"{name}.png", hr_dir)
    code, out, err = _run_here(
        capsys, "--model", models["nearest"], "--hr", hr_dir, "--no-niqe", "--lpips", "alex",
        "--lpips-backbone", backbone, "--lpips-lin", lin,
        "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv",
    )  # fmt: skip
    assert code == 0, err
    assert "LPIPS skipped" not in err
    header, rows = _table(out)
    il_b, il_n = header.index("bicubic LPIPS"), header.index("nearest LPIPS")
    assert header[il_n + 1] == "Δ"
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["protocol"]["lpips"] == "alex"
    metric = load_lpips("alex", backbone_weights=backbone, lin_weights=lin)
    hr = mod_crop(np.asarray(Image.open(hr_dir / "bird.png")), 4)
    lr = bicubic_down(hr, 4)
    nearest = np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)
    expected = {
        "bicubic": metric(crop(bicubic_up(lr, 4), 4), crop(hr, 4)),
        "nearest": metric(crop(nearest, 4), crop(hr, 4)),
    }
    bird = data["images"][0]
    assert bird["name"] == "bird"
    for method, value in expected.items():
        assert value > 0
        assert bird["scores"][method]["lpips"] == pytest.approx(value, rel=1e-5), method
    # the border crop matters: the uncropped images give another number
    assert metric(nearest, hr) != pytest.approx(expected["nearest"], rel=1e-5)
    with (tmp_path / "r.csv").open() as fh:
        csv_rows = {(r["image"], r["method"]): r for r in csv.DictReader(fh)}
    for table_name, csv_name, scores in [
        ("bird", "bird", bird["scores"]),
        ("head", "head", data["images"][1]["scores"]),
        ("mean (2)", "mean", data["mean"]),
    ]:
        b, n = scores["bicubic"]["lpips"], scores["nearest"]["lpips"]
        assert rows[table_name][il_b] == f"{b:.4f}" and rows[table_name][il_n] == f"{n:.4f}"
        assert float(rows[table_name][il_n + 1]) == pytest.approx(n - b, abs=1.5e-4)
        assert float(csv_rows[(csv_name, "nearest")]["lpips"]) == n
        assert float(csv_rows[(csv_name, "nearest")]["lpips_delta"]) == pytest.approx(n - b)
    assert data["mean"]["nearest"]["lpips"] == pytest.approx(
        (bird["scores"]["nearest"]["lpips"] + data["images"][1]["scores"]["nearest"]["lpips"]) / 2
    )


# --- bad arguments fail before the work, in one line -------------------------------------------------------------------


@pytest.fixture
def hr_photos(tmp_path: Path, photo: np.ndarray) -> Path:
    """An HR folder of two 64x64 real photo crops (a few milliseconds to evaluate with a tiny model)."""
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo[40:104, 180:244]).save(hr / "face.png")
    Image.fromarray(photo[300:364, 100:164]).save(hr / "suit.png")
    return hr


@pytest.mark.parametrize(
    ("flag", "target", "message"),
    [
        ("--json", "folder", "is a folder; --json takes the name of a file to write"),
        ("--csv", "folder", "is a folder; --csv takes the name of a file to write"),
        ("--csv", "file/r.csv", "{tmp}/file is a file, not a folder (--csv)"),
        ("--report", "file", "is a file; --report takes a folder"),
        ("--save-images", "file", "is a file; --save-images takes a folder"),
    ],
)
def test_unwritable_outputs_are_refused_before_any_image_is_scored(
    tmp_path: Path,
    hr_photos: Path,
    models: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    flag: str,
    target: str,
    message: str,
) -> None:
    """`--json DIR` scored every image, then died with an IsADirectoryError traceback: the work was lost."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("an earlier file, kept")
    code, out, err = _run_here(
        capsys, "--model", models["nearest"], "--hr", hr_photos, "--no-niqe", flag, tmp_path / target
    )
    assert code == 1
    assert out == ""  # nothing scored, no table
    assert err == f"esrgan: error: {tmp_path / target}: {message.format(tmp=tmp_path)}\n"
    assert (tmp_path / "file").read_text() == "an earlier file, kept"
    assert list((tmp_path / "folder").iterdir()) == []


def test_an_empty_hr_folder_is_an_error(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed an empty table and exited 0, as if the evaluation had been done."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    code, out, err = _run_here(capsys, "--model", models["nearest"], "--hr", empty)
    assert code == 1 and out == ""
    assert (
        err.startswith(f"esrgan: error: {empty}: folder has no images (looked for .bmp, ")
        and err.count("\n") == 1
    )


def test_warnings_are_esrgan_lines_naming_the_file(
    tmp_path: Path, hr_photos: Path, models: dict[str, Path], photo: np.ndarray
) -> None:
    """Warnings came out in Python's raw format (path.py:123: ImageWarning: ... and a source line)."""
    frames = [Image.fromarray(photo[40:104, 180:244]), Image.fromarray(photo[300:364, 100:164])]
    gif = hr_photos / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    proc = _run("--model", models["nearest"], "--hr", hr_photos, "--no-niqe")
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert warned == [f"esrgan: warning: {gif}: animated GIF with 2 frames; only the first is used"]
    assert "ImageWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


def test_set14_through_evaluate_reproduces_the_reference(shared_dir: Path) -> None:
    """Set14 holds images that are not multiples of 4 (comic, flowers, zebra, ppt3): the whole path of `esrgan
    evaluate` (mod-crop from the top left, LR, bicubic, Y, border) gives the reference numbers image by image."""
    from test_protocol import REFERENCE, SET_MEANS

    from esrgan.evaluate import evaluate

    result = evaluate(shared_dir / "data" / "benchmarks" / "Set14", [], scale=4, niqe=False)
    assert len(result.images) == 14 and not result.failed
    assert any(im.hr_size != tuple(Image.open(im.file).size[::-1]) for im in result.images)  # some were cut
    for im in result.images:
        ref_psnr, ref_ssim = REFERENCE["Set14", im.name]
        assert im.scores["bicubic"].psnr == pytest.approx(ref_psnr, abs=0.001), im.name
        assert im.scores["bicubic"].ssim == pytest.approx(ref_ssim, abs=0.0001), im.name
    mean = result.mean("bicubic")
    assert (mean.psnr, mean.ssim) == (pytest.approx(SET_MEANS["Set14"][0], abs=0.001),
                                      pytest.approx(SET_MEANS["Set14"][1], abs=0.0001))  # fmt: skip


def test_means_cover_the_same_images_for_every_method() -> None:
    """A model without NIQE on one image (a flat output) and an exact reconstruction (infinite PSNR): each metric's
    mean covers the images every method has a finite score for, so its Δ compares like with like, and the table
    says how many; the JSON holds the counts."""
    from esrgan.results import EvalResult, ImageResult, Scores, format_table

    result = EvalResult(hr_dir=Path("hr"), lr_dir=None, scale=4, crop_border=4, round_y=False, niqe=True,
                        methods=["bicubic", "m"], sources={"m": "m.pth"})  # fmt: skip
    result.images = [
        ImageResult(
            "a", Path("a.png"), (8, 8), {"bicubic": Scores(20.0, 0.5, 8.0), "m": Scores(21.0, 0.6, None)}, 6.0
        ),
        ImageResult(
            "b", Path("b.png"), (8, 8), {"bicubic": Scores(24.0, 0.7, 4.0), "m": Scores(25.0, 0.8, 5.0)}, 3.0
        ),
        ImageResult(
            "c",
            Path("c.png"),
            (8, 8),
            {"bicubic": Scores(float("inf"), 1.0, 7.0), "m": Scores(30.0, 0.9, 7.5)},
            7.0,
        ),
    ]
    bic, m = result.mean("bicubic"), result.mean("m")
    assert (bic.psnr, m.psnr) == (22.0, 23.0)  # a and b: c's bicubic is exact
    assert (bic.ssim, m.ssim) == (pytest.approx(0.7333333), pytest.approx(0.7666667))  # all three
    assert (bic.niqe, m.niqe) == (
        5.5,
        6.25,
    )  # b and c: the model has none for a (it was +1 worse on b, not -1)
    assert result.mean_hr_niqe() == 5.0
    assert result.mean_counts() == {"psnr": 2, "ssim": 3, "niqe": 2}
    assert result.to_dict()["mean_images"] == {"psnr": 2, "ssim": 3, "niqe": 2}
    table = format_table(result)
    assert "means: PSNR over 2 of 3, NIQE over 2 of 3 images" in table
    assert "inf" not in table.splitlines()[-3]  # the mean row


def test_odd_folders_score_what_can_be_scored(tmp_path: Path, photo: np.ndarray) -> None:
    """Two files of one stem (a.png, a.bmp) and one named mean.png keep their file names as row names (no two rows,
    mosaics or saved images alike, none taken for the summary row); an exact reconstruction (a flat image) is left
    out of the PSNR mean with a word, not an infinite mean; a 1x1 image is one line saying it is too small."""
    from esrgan.evaluate import evaluate
    from esrgan.results import format_table, write_csv

    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo[:200, :200]).save(hr / "a.png")
    Image.fromarray(photo[200:400, 100:300]).save(hr / "a.bmp")
    Image.fromarray(photo[300:500, 300:500]).save(hr / "mean.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(hr / "flat.png")
    Image.fromarray(photo[:1, :1]).save(hr / "tiny.png")
    result = evaluate(hr, [], scale=4, niqe=True, save_images=tmp_path / "saved")
    assert sorted(im.name for im in result.images) == ["a.bmp", "a.png", "flat", "mean.png"]
    assert sorted(p.name for p in (tmp_path / "saved" / "bicubic").iterdir()) == [
        "a_bmp.png", "a_png.png", "flat.png", "mean_png.png"]  # fmt: skip
    [(path, reason)] = result.failed
    assert path.name == "tiny.png" and "1x1 is too small to score at x4" in reason and "\n" not in reason
    assert result.mean_counts()["psnr"] == 3 and np.isfinite(result.mean("bicubic").psnr)
    assert "means: PSNR over 3 of 4" in format_table(result)
    rows = list(csv.reader(write_csv(result, tmp_path / "r.csv").read_text().splitlines()))
    assert [r[0] for r in rows[1:]].count("mean") == 1  # the summary row; the image is "mean.png"
    assert "nan" not in " ".join(",".join(r) for r in rows)


def test_an_image_too_large_for_the_memory_fails_alone(tmp_path: Path, photo: np.ndarray) -> None:
    """Out of memory while scoring one image (numpy's MemoryError in the bicubic resize here: a real allocation
    failure under an address-space limit) is that image's one-line failure; the others are scored."""
    import sys

    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo[:96, :96]).save(hr / "small.png")
    Image.fromarray(np.tile(photo, (8, 8, 1))).save(hr / "huge.png")  # 4096x4096: ~1.6 GB of float64 resizing
    script = f"""
import json, resource, sys
from esrgan.evaluate import evaluate
size = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
limit = size + 600 * 2**20  # the interpreter and torch as loaded, plus 600 MB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
r = evaluate({str(hr)!r}, [], scale=4, niqe=False)
print(json.dumps({{"images": [im.name for im in r.images], "failed": [m for _, m in r.failed]}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["images"] == ["small"]
    [reason] = out["failed"]
    assert "huge.png: out of memory while scoring it" in reason and "\n" not in reason


def test_a_grey_image_scores_as_its_rgb_copy(tmp_path: Path) -> None:
    """The same pixels stored as grey or as RGB: the same PSNR, SSIM and NIQE (NIQE took grey values raw, and the
    Y of the equal-channel RGB otherwise: Set14's bridge 2.548 against 2.521)."""
    from esrgan.evaluate import evaluate

    skdata = pytest.importorskip("skimage.data")
    grey = skdata.camera()[:240, :240]
    for name, pixels in (("grey", grey), ("rgb", np.dstack([grey] * 3))):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "camera.png")
    a, b = (evaluate(tmp_path / name, [], scale=4).images[0] for name in ("grey", "rgb"))
    assert a.hr_niqe is not None and a.hr_niqe == pytest.approx(b.hr_niqe, abs=1e-9)
    for key in ("psnr", "ssim", "niqe"):
        assert getattr(a.scores["bicubic"], key) == pytest.approx(
            getattr(b.scores["bicubic"], key), abs=1e-9
        ), key


def test_save_images_never_replaces_files_unless_asked(
    tmp_path: Path, hr_photos: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--save-images replaced any file under its names without a word (an earlier evaluation's results, a model's
    outputs of another run). Now existing files are refused in one line naming the first, before any model is
    loaded or image scored; --overwrite replaces them (atomically, as every write)."""
    saved = tmp_path / "saved"
    first = ("--model", models["nearest"], "--hr", hr_photos, "--no-niqe", "--save-images", saved)
    code, _, err = _run_here(capsys, *first)
    assert code == 0, err
    made = {p.relative_to(saved).as_posix(): p.read_bytes() for p in sorted(saved.rglob("*.png"))}
    assert sorted(made) == ["bicubic/face.png", "bicubic/suit.png", "nearest/face.png", "nearest/suit.png"]
    # an earlier result under one of the names (another model's output, say): a real image, not this run's
    earlier = saved / "nearest" / "suit.png"
    Image.fromarray(np.full((256, 256, 3), 50, np.uint8)).save(earlier)
    kept = earlier.read_bytes()
    (saved / "bicubic" / "face.png").unlink()  # the first file it writes is gone: the refusal names the next
    code, out, err = _run_here(capsys, *first, "--json", tmp_path / "r.json")
    assert code == 1
    assert out == ""  # nothing scored
    assert err.count("\n") == 1 and "--overwrite" in err
    assert err.startswith(f"esrgan: error: {saved / 'nearest' / 'face.png'}: already exists")
    assert earlier.read_bytes() == kept and not (saved / "bicubic" / "face.png").exists()
    assert not (tmp_path / "r.json").exists()
    # asked: every file is this run's again
    code, _, err = _run_here(capsys, *first, "--overwrite")
    assert code == 0, err
    assert {p.relative_to(saved).as_posix(): p.read_bytes() for p in sorted(saved.rglob("*.png"))} == made
    assert not [p for p in saved.rglob("*") if p.name.startswith(".")]  # no temporary files left
    # two images whose results get one name (face.png beside face.bmp is saved as face_png, as face_png.png is):
    # one replaced the other, or was refused after scoring (found by a review); refused first now, even with
    # --overwrite
    clash = tmp_path / "clash"
    clash.mkdir()
    for name in ("face.png", "face.bmp", "face_png.png"):
        Image.open(hr_photos / "face.png").save(clash / name)
    both = ("--model", models["nearest"], "--hr", clash, "--no-niqe", "--save-images", tmp_path / "saved2")
    code, out, err = _run_here(capsys, *both, "--overwrite")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(
        f"esrgan: error: {clash / 'face.png'} and {clash / 'face_png.png'}: both would be saved"
    )
    assert not (tmp_path / "saved2").exists()


def test_models_sharing_a_file_name_are_told_apart_by_their_folders(
    tmp_path: Path, hr_photos: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every trained model is a model.safetensors: two runs' models were the columns `model` and `model#2`. Now a
    stem two models share takes as many parent folders as tell them apart (psnr/model, gan/model), in the table,
    the JSON and the --save-images folders; a stem of its own stays as it is; the same file twice is still #2."""
    for run, model in (("psnr", "nearest"), ("gan", "random")):
        (tmp_path / "runs" / run).mkdir(parents=True)
        shutil.copy(models[model], tmp_path / "runs" / run / "model.safetensors")
    psnr_model, gan_model = (tmp_path / "runs" / run / "model.safetensors" for run in ("psnr", "gan"))
    code, out, err = _run_here(
        capsys, "--model", psnr_model, "--model", gan_model, "--model", models["nearest"], "--hr", hr_photos,
        "--no-niqe", "--json", tmp_path / "r.json", "--save-images", tmp_path / "saved",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["methods"] == ["bicubic", "psnr/model", "gan/model", "nearest"]
    assert data["models"]["psnr/model"]["source"] == str(psnr_model)
    assert data["models"]["gan/model"]["source"] == str(gan_model)
    header, _ = _table(out)
    assert [h for h in header if h.endswith("PSNR")] == [
        "bicubic PSNR", "psnr/model PSNR", "gan/model PSNR", "nearest PSNR"
    ]  # fmt: skip
    assert (tmp_path / "saved" / "gan" / "model" / "face.png").is_file()
    # the same file twice: nothing tells them apart
    code, out, err = _run_here(
        capsys, "--model", psnr_model, "--model", psnr_model, "--hr", hr_photos, "--no-niqe"
    )
    assert code == 0, err
    assert [h for h in _table(out)[0] if h.endswith("PSNR")] == ["bicubic PSNR", "model PSNR", "model#2 PSNR"]


def test_json_csv_and_report_never_replace_files_unless_asked(
    tmp_path: Path, hr_photos: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json and --csv replaced an existing file (their help said so), --report DIR its mosaics and index pages,
    without a word: an earlier evaluation's numbers were lost. Now each such file is refused in one line naming it,
    before any model is loaded or image scored, and nothing at all is written; --overwrite replaces them
    (atomically). Other files in the report folder are no reason to refuse, and are left alone."""
    from esrgan.errors import EsrganError
    from esrgan.evaluate import evaluate

    base = ("--model", models["nearest"], "--hr", hr_photos, "--no-niqe")
    report_names = ["face_mosaic.png", "index.html", "index.md", "suit_mosaic.png"]
    # a first run into an empty report folder that exists: written as before
    (tmp_path / "first").mkdir()
    first = tmp_path / "first"
    code, _, err = _run_here(
        capsys, *base, "--json", first / "r.json", "--csv", first / "r.csv", "--report", first / "report"
    )
    assert code == 0, err
    assert sorted(p.name for p in (first / "report").iterdir()) == report_names

    earlier = b"an earlier evaluation, kept\n"
    fresh = tmp_path / "fresh"  # where the refused runs' other outputs would go
    others = {
        "--json": fresh / "r.json",
        "--csv": fresh / "r.csv",
        "--report": fresh / "report",
        "--save-images": fresh / "saved",
    }
    for flag, existing in [
        ("--json", tmp_path / "old_json" / "r.json"),
        ("--csv", tmp_path / "old_csv" / "r.csv"),
        ("--report", tmp_path / "old_report" / "suit_mosaic.png"),
        ("--report", tmp_path / "old_report2" / "index.md"),
    ]:
        existing.parent.mkdir(exist_ok=True)
        existing.write_bytes(earlier)
        target = existing.parent if flag == "--report" else existing
        outputs = [a for f, path in {**others, flag: target}.items() for a in (f, path)]
        code, out, err = _run_here(capsys, *base, *outputs)
        assert code == 1, (flag, err)
        assert out == ""  # nothing scored
        tail = (
            " (overwrite=True in Python), or give another folder"
            if flag == "--report"
            else ", or give another name"
        )
        assert err == (
            f"esrgan: error: {existing}: already exists; {flag} does not replace files unless --overwrite is given"
            f"{tail}\n"
        )
        assert existing.read_bytes() == earlier
        assert not fresh.exists() and list(existing.parent.iterdir()) == [existing]  # nothing else written
    # the Python API refuses the same, before any model is loaded
    with pytest.raises(
        EsrganError, match=re.escape(f"{tmp_path / 'old_report' / 'suit_mosaic.png'}: already exists")
    ):
        evaluate(hr_photos, [str(models["nearest"])], niqe=False, report_dir=tmp_path / "old_report")
    # a folder under one of the report's names: refused even with --overwrite (no file can replace it)
    (tmp_path / "blocked" / "index.html").mkdir(parents=True)
    code, out, err = _run_here(capsys, *base, "--report", tmp_path / "blocked", "--overwrite")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"esrgan: error: {tmp_path / 'blocked' / 'index.html'}: is a folder")

    # files in the report folder that the report does not write: no reason to refuse, left alone
    unrelated = tmp_path / "shared"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_bytes(earlier)
    shutil.copy(hr_photos / "face.png", unrelated / "face.png")  # an image, but no name the report writes
    (unrelated / "index").mkdir()
    code, _, err = _run_here(capsys, *base, "--report", unrelated)
    assert code == 0, err
    assert sorted(p.name for p in unrelated.iterdir()) == sorted(
        ["notes.txt", "face.png", "index", *report_names]
    )
    assert (unrelated / "notes.txt").read_bytes() == earlier
    assert (unrelated / "face.png").read_bytes() == (hr_photos / "face.png").read_bytes()

    # asked: replaced by this run's files, atomically (no temporary file left), the unrelated ones kept
    (tmp_path / "old_report" / "notes.txt").write_bytes(earlier)
    code, _, err = _run_here(
        capsys, *base, "--json", tmp_path / "old_json" / "r.json", "--csv", tmp_path / "old_csv" / "r.csv",
        "--report", tmp_path / "old_report", "--overwrite",
    )  # fmt: skip
    assert code == 0, err
    replaced, reference = (
        json.loads(path.read_text()) for path in (tmp_path / "old_json" / "r.json", first / "r.json")
    )
    assert replaced["mean"] == reference["mean"] and replaced["methods"] == ["bicubic", "nearest"]
    assert (tmp_path / "old_csv" / "r.csv").read_bytes() == (first / "r.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "old_report").iterdir()) == sorted(["notes.txt", *report_names])
    assert (tmp_path / "old_report" / "notes.txt").read_bytes() == earlier
    new_mosaic = (tmp_path / "old_report" / "suit_mosaic.png").read_bytes()
    assert new_mosaic != earlier and new_mosaic == (first / "report" / "suit_mosaic.png").read_bytes()
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left


def test_a_named_lpips_file_that_cannot_be_loaded_is_an_error(
    tmp_path: Path,
    hr_photos: Path,
    models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--lpips-backbone naming a missing file skipped LPIPS with a message and exit 0, as if the weights were an
    optional extra: the user asked for that file. Now a named file (backbone or lin) that cannot be loaded is one
    line and exit 1 before anything is scored, and a named file without --lpips is not silently ignored. Without
    named files the missing weights still only skip LPIPS (test_lpips_without_weights_is_skipped_with_one_line)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    backbone, lin = make_files(tmp_path / "lpips", "alex")
    missing = tmp_path / "nope.pth"
    base = ("--model", models["nearest"], "--hr", hr_photos, "--no-niqe", "--json", tmp_path / "r.json")
    for named, shown in [
        (("--lpips-backbone", missing, "--lpips-lin", lin), f"{missing} (--lpips-backbone"),
        (("--lpips-backbone", missing), f"{missing} (--lpips-backbone"),  # lin from the (empty) cache
        (("--lpips-backbone", backbone), "pass --lpips-lin PATH"),  # its lin layers are nowhere
        (("--lpips-backbone", backbone, "--lpips-lin", missing), f"{missing} (--lpips-lin"),
    ]:
        code, out, err = _run_here(capsys, *base, "--lpips", *named)
        assert code == 1, (named, err)
        assert out == "" and err.count("\n") == 1 and "skipped" not in err and shown in err
        assert err.startswith("esrgan: error: LPIPS (alex) weights missing")
        assert not (tmp_path / "r.json").exists()
    code, out, err = _run_here(capsys, *base, "--lpips-backbone", backbone, "--lpips-lin", lin)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("esrgan: error: --lpips-backbone/--lpips-lin without --lpips")
    # the files it names load: the LPIPS column is there
    code, out, err = _run_here(capsys, *base, "--lpips", "--lpips-backbone", backbone, "--lpips-lin", lin)
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["protocol"]["lpips"] == "alex"


def test_precision_device_engine_and_tile_are_recorded_everywhere(
    shared_dir: Path, tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The model's precision moves its scores (bf16 by up to 0.06 dB an image) and its tiles and engine by less,
    but none of them was written anywhere, and the default was the device's fastest precision (bf16 on this CPU):
    a table to be set beside papers' fp32 numbers. Now fp32 is the default and the precision as computed (not
    "auto"), the device, the engine and the tile are in the table's note, the JSON protocol, every CSV row of the
    model and the report's protocol line."""
    from esrgan.upscale import Upscaler

    hr = tmp_path / "hr"
    hr.mkdir()
    shutil.copy(shared_dir / "data" / "benchmarks" / "Set5" / "bird.png", hr)  # 288x288: LR 72x72
    runs = {
        "default": (),
        "auto": ("--precision", "auto"),
        "tiled": ("--tile", "32"),
    }
    for label, extra in runs.items():
        out = tmp_path / label
        code, stdout, err = _run_here(
            capsys, "--model", models["random"], "--hr", hr, "--no-niqe", *extra,
            "--json", tmp_path / f"{label}.json", "--csv", tmp_path / f"{label}.csv", "--report", out,
        )  # fmt: skip
        assert code == 0, err
        asked = "auto" if label == "auto" else "fp32"
        up = Upscaler.from_file(models["random"], precision=asked)
        precision = up.precision_for(np.uint8)  # what it resolves to on this machine
        engine = up.runner_for(np.dtype(np.uint8)).engine
        if label == "default":
            assert precision == "fp32"
        tile = "32 (at most 32)" if label == "tiled" else "whole image (automatic)"
        data = json.loads((tmp_path / f"{label}.json").read_text())
        expected = {"device": "cpu", "precision": precision, "engine": engine, "tile": tile}
        assert data["protocol"]["inference"] == {"random": expected}
        assert data["images"][0]["inference"]["random"]["precision"] == precision
        line = f"inference: random on cpu in {precision} ({engine} engine), tile {tile}"
        assert line in stdout.splitlines()
        with (tmp_path / f"{label}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            how = [row["device"], row["precision"], row["engine"], row["tile"]]
            if row["method"] == "bicubic":
                assert how == ["", "", "", ""]
            else:
                assert how == [
                    "cpu",
                    precision,
                    engine,
                    tile if row["image"] == "mean" else tile.split(" (")[0],
                ]
        assert (
            f"Inference: random on cpu in {precision} ({engine} engine), tile {tile}."
            in (out / "index.md").read_text()
        )


def test_a_grey_image_is_scored_on_the_models_rgb_output(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A grey HR went through the model as three equal channels and the output's channels were averaged back to
    grey before scoring. The literature's protocol (BasicSR's test: grey read as 3 equal channels, Y of the RGB
    output) scores the RGB output; a colour model's channels differ on a grey input (realesrgan-x4plus: by up to
    19 levels on Set14's bridge, 0.013 dB). Now the RGB output is scored, and --save-images writes it."""
    from esrgan.upscale import Upscaler

    skdata = pytest.importorskip("skimage.data")
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    grey = skdata.camera()[:200, :200]
    Image.fromarray(grey).save(hr_dir / "camera.png")
    code, _, err = _run_here(
        capsys, "--model", models["random"], "--hr", hr_dir, "--json", tmp_path / "r.json",
        "--save-images", tmp_path / "saved",
    )  # fmt: skip
    assert code == 0, err
    hr_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    lr = bicubic_down(hr_rgb, 4)
    up = Upscaler.from_file(models["random"], precision="fp32")
    assert np.array_equal(
        up.upscale(lr)[:, :, 0], up.upscale(lr)[:, :, 2]
    )  # `esrgan upscale` keeps grey grey
    up.keep_grey = False  # evaluate: the colour model's own output, as the literature's protocol scores it
    rgb_out = up.upscale(lr)
    assert rgb_out.shape == (200, 200, 3) and np.abs(rgb_out.astype(int) - rgb_out[:, :, :1]).max() > 10
    averaged = np.floor(rgb_out.mean(axis=2) + 0.5).astype(np.uint8)  # what was scored before
    scores = json.loads((tmp_path / "r.json").read_text())["images"][0]["scores"]["random"]
    assert scores["psnr"] == pytest.approx(psnr(rgb_out, hr_rgb, crop_border=4), abs=1e-9)
    assert scores["ssim"] == pytest.approx(ssim(rgb_out, hr_rgb, crop_border=4), abs=1e-9)
    assert abs(scores["psnr"] - psnr(averaged, grey, crop_border=4)) > 1e-3  # the change is visible
    with Image.open(tmp_path / "saved" / "random" / "camera.png") as saved:
        assert saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), rgb_out)
    # the bicubic baseline of equal channels keeps the grey's numbers
    bicubic = json.loads((tmp_path / "r.json").read_text())["images"][0]["scores"]["bicubic"]
    grey_lr = bicubic_down(grey[:, :, None], 4)
    assert bicubic["psnr"] == pytest.approx(
        psnr(bicubic_up(grey_lr, 4), grey[:, :, None], crop_border=4), abs=1e-9
    )


def test_without_a_model_the_bicubic_baseline_alone(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model was required, so the reference numbers needed a dummy model. Without one now: bicubic alone, at x4
    unless --scale says otherwise, and no inference line (nothing was inferred)."""
    code, out, err = _run_here(
        capsys,
        "--hr",
        shared_dir / "data" / "benchmarks" / "Set5",
        "--no-niqe",
        "--json",
        tmp_path / "r.json",
    )
    assert code == 0, err
    header, rows = _table(out)
    assert header == ["image", "bicubic PSNR", "bicubic SSIM"]
    for name, (ref_psnr, ref_ssim) in SET5.items():
        assert float(rows[name][1]) == pytest.approx(ref_psnr, abs=0.001), name
        assert float(rows[name][2]) == pytest.approx(ref_ssim, abs=0.0001), name
    assert "inference:" not in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert (
        data["methods"] == ["bicubic"]
        and data["protocol"]["inference"] == {}
        and data["protocol"]["scale"] == 4
    )


def test_a_folder_of_sr_results_is_scored_as_a_column(
    shared_dir: Path, tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """There was no way to score SR images made elsewhere (another tool's, an earlier run's) against HR. --sr DIR
    pairs them by name as --lr pairs LR files (plus Real-ESRGAN's _out), names the column by the folder, and scores
    them as a model's output: the outputs `esrgan upscale` wrote score exactly as evaluate's own run of that model.
    A missing or wrong-size SR image fails that image alone, in one line."""
    src = shared_dir / "data" / "benchmarks" / "Set5"
    hr_dir, lr_dir, sr_dir = tmp_path / "hr", tmp_path / "lr", tmp_path / "upscaled"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for name in ("bird", "butterfly", "head", "woman", "baby"):
        shutil.copy(src / f"{name}.png", hr_dir)
    for name in (
        "bird",
        "butterfly",
        "head",
    ):  # the protocol's LR (evaluate's own), saved as benchmark LR files
        hr = mod_crop(np.asarray(Image.open(src / f"{name}.png")), 4)
        Image.fromarray(bicubic_down(hr, 4)).save(lr_dir / f"{name}.png")
    code = main(["upscale", str(lr_dir), "-o", str(sr_dir), "--model", str(models["random"]), "--precision", "fp32",
                 "--quiet"])  # fmt: skip
    capsys.readouterr()
    assert code == 0
    assert sorted(p.name for p in sr_dir.iterdir()) == ["bird_x4.png", "butterfly_x4.png", "head_x4.png"]
    (sr_dir / "butterfly_x4.png").rename(sr_dir / "butterfly_out.png")  # Real-ESRGAN's inference names
    with Image.open(src / "baby.png") as baby:  # baby: an SR image of the wrong size; woman: none at all
        baby.resize((100, 100)).save(sr_dir / "baby.png")
    code, out, err = _run_here(
        capsys, "--model", models["random"], "--sr", sr_dir, "--hr", hr_dir, "--json", tmp_path / "r.json"
    )
    assert code == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["methods"] == ["bicubic", "random", "upscaled"]
    assert data["sr_dirs"] == {"upscaled": str(sr_dir)} and list(data["models"]) == ["random"]
    assert [im["name"] for im in data["images"]] == ["bird", "butterfly", "head"]
    for im in data["images"]:
        assert im["scores"]["upscaled"] == im["scores"]["random"], im["name"]  # every metric, NIQE included
    assert data["mean"]["upscaled"] == data["mean"]["random"]
    header, _ = _table(out)
    assert "upscaled PSNR" in header and header[header.index("upscaled PSNR") + 1] == "Δ"
    failed = {Path(f["file"]).name: f["error"] for f in data["failed"]}
    assert failed == {
        "baby.png": f"{hr_dir / 'baby.png'}: SR {sr_dir / 'baby.png'} is 100x100, expected 512x512 (the HR cut to "
        "a multiple of 4) or the HR's own 512x512",
        "woman.png": f"{hr_dir / 'woman.png'}: {sr_dir}: no SR image for 'woman' (looked for woman, womanx4, "
        "woman_x4, woman_LRBI_x4, woman_out, woman_SR, woman_x4_SR with an image suffix)",
    }
    # a folder that is not there: refused before anything is scored
    code, out, err = _run_here(capsys, "--sr", tmp_path / "nowhere", "--hr", hr_dir)
    assert (code, out) == (1, "")
    assert err == f"esrgan: error: {tmp_path / 'nowhere'}: not a folder (SR results)\n"


def test_sr_results_of_the_hr_files_own_size_are_cut_as_the_hr(tmp_path: Path, photo: np.ndarray) -> None:
    """An SR image the size of the HR file (a tool that upscaled to the original size) is cut to a multiple of the
    scale as the HR is; one of the cut size is taken as it is. Here the SR images are the HR itself: exact."""
    from esrgan.evaluate import evaluate

    for name in ("hr", "full", "cut"):
        (tmp_path / name).mkdir()
    hr = photo[100:166, 200:270]  # 70x66: not a multiple of 4
    Image.fromarray(hr).save(tmp_path / "hr" / "a.png")
    Image.fromarray(hr).save(tmp_path / "full" / "a_x4.png")
    Image.fromarray(mod_crop(hr, 4)).save(tmp_path / "cut" / "a.png")
    result = evaluate(tmp_path / "hr", sr_dirs=[tmp_path / "full", tmp_path / "cut"], niqe=False)
    assert not result.failed and result.methods == ["bicubic", "full", "cut"]
    for column in ("full", "cut"):
        assert result.images[0].scores[column].psnr == math.inf
        assert result.images[0].scores[column].ssim == pytest.approx(1.0)


def test_json_or_csv_naming_a_report_or_saved_file_is_refused_first(
    tmp_path: Path, hr_photos: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json REPORT/index.md scored every image and then failed ("already exists"), the JSON lost; with
    --overwrite the JSON replaced the report's index page without a word. Any --json/--csv naming a file (or
    folder) that --report or --save-images writes in the same run is refused in one line before any model is
    loaded, with or without --overwrite, as --json == --csv is."""
    base = ("--model", models["nearest"], "--hr", hr_photos, "--no-niqe")
    report, saved = tmp_path / "report", tmp_path / "saved"
    cases = [
        ("--json", report / "index.md", ("--report", report), "file", "--report"),
        ("--csv", report / "face_mosaic.png", ("--report", report), "file", "--report"),
        ("--json", report, ("--report", report), "folder", "--report"),
        ("--csv", saved / "nearest" / "suit.png", ("--save-images", saved), "file", "--save-images"),
        ("--json", saved / "bicubic", ("--save-images", saved), "folder", "--save-images"),
    ]
    for flag, path, other, what, by in cases:
        for overwrite in ((), ("--overwrite",)):
            code, out, err = _run_here(capsys, *base, *other, flag, path, *overwrite)
            assert (code, out) == (1, ""), (flag, path, overwrite)
            assert (
                err
                == f"esrgan: error: {path}: {flag} names a {what} that {by} writes in this run; give another name\n"
            )
            assert not report.exists() and not saved.exists()  # nothing written
    # after a run that wrote the report, --overwrite does not let the JSON replace its index page
    code, _, err = _run_here(capsys, *base, "--report", report)
    assert code == 0, err
    page = (report / "index.md").read_bytes()
    code, out, err = _run_here(
        capsys, *base, "--report", report, "--json", report / "index.md", "--overwrite"
    )
    assert (code, out) == (1, "") and "--json names a file that --report writes" in err
    assert (report / "index.md").read_bytes() == page
    # a JSON beside the report's files, not one of them: fine
    code, _, err = _run_here(capsys, *base, "--report", report, "--json", report / "r.json", "--overwrite")
    assert code == 0, err
    assert json.loads((report / "r.json").read_text())["methods"] == ["bicubic", "nearest"]


def test_sr_results_of_hr_images_sharing_a_stem_and_folders_never_written_into(
    tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """a.png and a.bmp (two HR images of one stem) with their SR results named as `esrgan upscale` names them
    (a_x4.png, a_x4.bmp): both HR took one of them, so a.bmp was scored against a.png's result without a word. Each
    now takes the SR file of its own suffix, or the name --save-images gives it (a_png); an SR folder holding only
    one of them fails the other in one line. --sr naming the HR folder (every image scored against itself: inf dB)
    and --save-images writing into a folder the evaluation reads (with --overwrite it replaced the SR inputs) are
    refused before any work."""
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    Image.fromarray(photo[:128, :128]).save(hr_dir / "a.png")
    Image.fromarray(photo[200:328, 240:368]).save(hr_dir / "a.bmp")
    Image.fromarray(photo[300:428, 100:228]).save(hr_dir / "c.png")
    saved = tmp_path / "saved"
    code, _, err = _run_here(capsys, "--hr", hr_dir, "--no-niqe", "--save-images", saved)
    assert code == 0, err
    assert sorted(p.name for p in (saved / "bicubic").iterdir()) == ["a_bmp.png", "a_png.png", "c.png"]
    sr_dir = tmp_path / "sr"
    sr_dir.mkdir()
    for src, dst in (("a_png.png", "a_x4.png"), ("a_bmp.png", "a_x4.bmp"), ("c.png", "c_x4.png")):
        Image.open(saved / "bicubic" / src).save(
            sr_dir / dst
        )  # the bicubic results: the column equals bicubic's
    for folder in (sr_dir, saved / "bicubic"):
        code, _, err = _run_here(capsys, "--hr", hr_dir, "--no-niqe", "--sr", folder, "--json", tmp_path / "r.json",
                                 "--overwrite")  # fmt: skip
        assert code == 0, err
        data = json.loads((tmp_path / "r.json").read_text())
        name = folder.name
        assert [im["name"] for im in data["images"]] == ["a.bmp", "a.png", "c"]
        for im in data["images"]:
            assert im["scores"][name] == im["scores"]["bicubic"], (folder, im["name"])
    (sr_dir / "a_x4.bmp").unlink()  # a.png's result alone: a.bmp has none (it took a_x4.png before)
    code, _, err = _run_here(capsys, "--hr", hr_dir, "--no-niqe", "--sr", sr_dir)
    assert code == 1
    assert err.splitlines()[0] == (
        f"[1/3] skipped {hr_dir / 'a.bmp'}: {sr_dir}: no SR image for 'a' (looked for a, ax4, a_x4, a_LRBI_x4, "
        "a_out, a_SR, a_x4_SR with the suffix .bmp, as another HR image has its stem)"
    ), err
    assert "a.png: bicubic 33.29 dB 0.9445 | sr 33.29 dB 0.9445" in err
    code, out, err = _run_here(capsys, "--hr", hr_dir, "--sr", hr_dir)
    assert (code, out) == (1, "")
    assert (
        err == f"esrgan: error: {hr_dir}: --sr is the HR folder: every image would be scored against itself\n"
    )
    before = {p.name: p.read_bytes() for p in (saved / "bicubic").iterdir()}
    code, out, err = _run_here(capsys, "--hr", hr_dir, "--sr", saved / "bicubic", "--save-images", saved,
                               "--overwrite")  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        f"esrgan: error: {saved / 'bicubic'}: --save-images would write into a folder this evaluation reads its "
        "images from; give another folder\n"
    )
    assert {p.name: p.read_bytes() for p in (saved / "bicubic").iterdir()} == before
    code, out, err = _run_here(
        capsys, "--hr", hr_dir, "--sr", sr_dir, "--save-images", sr_dir
    )  # the SR folder
    assert (code, out) == (1, "")
    assert err.startswith(
        f"esrgan: error: {sr_dir}: --save-images would write into a folder this evaluation"
    ), err
    assert not (sr_dir / "bicubic").exists()
