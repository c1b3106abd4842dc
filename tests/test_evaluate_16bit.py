"""`esrgan evaluate --bit-depth 16`: the protocol at 16 bits for models trained on 16-bit images.

The HR images are real: scikit-image photos MATLAB-bicubic shrunk in float64 and kept with 16 bits (sub-8-bit detail
in every pixel), and one 8-bit photo; the model is a tiny x4 RRDBNet that reproduces the picture with a perturbation.
PSNR, SSIM and NIQE are recomputed here from the saved 16-bit results and the protocol's definition; paired LR
files and SR folders are read at 16 bits; the report's crop is chosen on the 16-bit data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_preserving_rrdb
from PIL import Image

from esrgan.checkpoints import load_model, save_model
from esrgan.cli import main
from esrgan.device import PrecisionWarning
from esrgan.errors import ConfigError
from esrgan.evaluate import evaluate
from esrgan.imagedata import ImageData
from esrgan.imageio import read_image, write_image
from esrgan.metrics import psnr, ssim
from esrgan.niqe import niqe
from esrgan.resize import imresize_np
from esrgan.upscale import Upscaler

skdata = pytest.importorskip("skimage.data")


def deep(img: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(imresize_np(img, scale=0.5) * 257.0 + 0.5), 0, 65535).astype(np.uint16)


def matlab16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """16-bit RGB photos, a 16-bit grey one and an 8-bit one, each with two 96x96 NIQE blocks after the crop."""
    root = tmp_path_factory.mktemp("deep_eval")
    hr = root / "hr"
    hr.mkdir()
    write_image(hr / "rocket.png", ImageData(pixels=np.ascontiguousarray(deep(skdata.rocket())[:, :300]),
                                             bit_depth=16))  # fmt: skip
    write_image(hr / "coffee.png", ImageData(pixels=deep(skdata.coffee()), bit_depth=16))
    write_image(hr / "camera.png", ImageData(pixels=np.ascontiguousarray(deep(skdata.camera())[:, :210, None]),
                                             bit_depth=16))  # fmt: skip
    Image.fromarray(skdata.astronaut()[40:252, 150:362]).save(hr / "face.png")  # an 8-bit file among them
    model = save_model(root / "model.safetensors", photo_preserving_rrdb(3))
    return {"root": root, "hr": hr, "model": model}


def hr16(path: Path) -> np.ndarray:
    """The HR as the 16-bit protocol reads it, independently: 16 bits (8-bit levels x 257), RGB, cut to x4."""
    pixels = read_image(path).pixels
    hr = pixels if pixels.dtype == np.uint16 else pixels.astype(np.uint16) * np.uint16(257)
    hr = np.repeat(hr, 3, axis=2) if hr.shape[2] == 1 else hr
    return hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]


def test_16_bit_evaluation_scores_16_bit_results_at_16_bit_precision(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import esrgan.report

    out, report = folders["root"] / "saved", folders["root"] / "report"
    crops: list[np.dtype] = []
    choose = esrgan.report.choose_crop

    def spy(hr: np.ndarray, baseline: np.ndarray, size: int, border: int = 0) -> tuple[int, int]:
        crops.append(hr.dtype)
        return choose(hr, baseline, size, border)

    monkeypatch.setattr(esrgan.report, "choose_crop", spy)
    with pytest.warns(PrecisionWarning, match="16-bit and float images are computed in fp32"):
        result = evaluate(folders["hr"], [str(folders["model"])], bit_depth=16, save_images=out,
                          report_dir=report, precision="bf16")  # fmt: skip
    assert result.bit_depth == 16 and not result.failed and len(result.images) == 4
    assert crops == [np.dtype(np.uint16)] * 4  # the report's crop is chosen on the 16-bit data
    assert result.loaded["model"].precision == "fp32"  # bf16 asked: 16-bit images are computed in fp32
    assert all(im.inference["model"].precision == "fp32" for im in result.images)
    up = Upscaler(load_model(folders["model"]), device="cpu", precision="fp32")
    up.keep_grey = False  # as evaluate's: a grey HR is scored on the model's own RGB output
    for item in result.images:
        hr = hr16(item.file)
        lr = matlab16(imresize_np(hr.astype(np.float64), scale=0.25))
        bicubic = matlab16(imresize_np(lr.astype(np.float64), scale=4))
        model_out = up.upscale(lr)
        assert model_out.dtype == np.uint16
        for method, want in (("bicubic", bicubic), ("model", model_out)):
            saved = read_image(out / method / f"{item.name}.png").pixels
            assert saved.dtype == np.uint16  # a 16-bit PNG, as scored
            assert np.abs(saved.astype(int) - want.astype(int)).max() <= 1  # float sums at a .5 boundary
            assert (saved != want).mean() < 1e-3
            scores = item.scores[method]
            assert scores.psnr == pytest.approx(psnr(saved / 257.0, hr / 257.0, crop_border=4), abs=1e-9)
            assert scores.ssim == pytest.approx(ssim(saved / 257.0, hr / 257.0, crop_border=4), abs=1e-12)
            # NIQE with Y on 16-bit levels (MATLAB's rgb2ycbcr of a uint16 image), not rounded to integers
            assert scores.niqe == pytest.approx(niqe(saved / 257.0, crop_border=4, bits=16), abs=1e-9)
            assert scores.niqe != pytest.approx(niqe(saved / 257.0, crop_border=4), abs=1e-6)
        assert item.hr_niqe == pytest.approx(niqe(hr / 257.0, crop_border=4, bits=16), abs=1e-9)
        # the 16-bit results hold levels between the 8-bit ones: 16 bits were scored, not 8 in disguise
        assert len(np.unique(read_image(out / "model" / f"{item.name}.png").pixels % 257)) > 100

    # the same LR given as 16-bit files (--lr) and the saved outputs as a folder of results (--sr)
    lr_dir = folders["root"] / "lr"
    lr_dir.mkdir()
    for item in result.images:
        lr = matlab16(imresize_np(hr16(item.file).astype(np.float64), scale=0.25))
        write_image(lr_dir / f"{item.name}.png", ImageData(pixels=lr, bit_depth=16))
    paired = evaluate(folders["hr"], sr_dirs=[out / "model"], lr_dir=lr_dir, bit_depth=16, niqe=False)
    for a, b in zip(result.images, paired.images, strict=True):
        assert b.scores["model"].psnr == a.scores["model"].psnr  # the saved 16-bit outputs, read at 16 bits
        bicubic = matlab16(
            imresize_np(read_image(lr_dir / f"{a.name}.png").pixels.astype(np.float64), scale=4)
        )
        hr = hr16(a.file)
        assert b.scores["bicubic"].psnr == pytest.approx(
            psnr(bicubic / 257.0, hr / 257.0, crop_border=4), abs=1e-9
        )
    # the 8-bit protocol on the same folder is another measurement (rounded to 8 bits)
    eight = evaluate(folders["hr"], [str(folders["model"])], niqe=False)
    assert eight.bit_depth == 8
    assert all(
        a.scores["bicubic"].psnr != b.scores["bicubic"].psnr
        for a, b in zip(result.images, eight.images, strict=True)
    )


def test_the_cli_records_the_depth_and_refuses_rounded_y(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    code = main(["evaluate", "--hr", str(folders["hr"]), "--model", str(folders["model"]), "--bit-depth", "16",
                 "--no-niqe", "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"),
                 "--report", str(report)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "at 16-bit precision" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["protocol"]["bit_depth"] == 16
    assert data["protocol"]["lr"] == "MATLAB bicubic downscale of HR, rounded to uint16"
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert rows and all(r["bit_depth"] == "16" for r in rows)
    with Image.open(next(report.glob("*_mosaic.png"))) as mosaic:
        assert mosaic.mode == "RGB"  # an 8-bit preview
    index = (report / "index.html").read_text()
    assert "rounded to uint16" in index and "at 16-bit precision" in index
    code = main(["evaluate", "--hr", str(folders["hr"]), "--bit-depth", "16", "--round-y"])
    _, err = capsys.readouterr()
    assert code != 0 and "--round-y rounds Y to integers" in err and len(err.strip().splitlines()) == 1
    for wrong in (12, 16.0):
        with pytest.raises(ConfigError, match=f"bit depth must be 8 or 16, got {wrong}"):
            evaluate(folders["hr"], bit_depth=wrong)  # type: ignore[arg-type]
