"""DICOM files through `esrgan upscale` (esrgan.dicom): real photographs as CT, MR-like and ultrasound images,
written by pydicom as scanners' exports are laid out, upscaled by the CLI with a tiny x2 model, read back by pydicom.

What must hold: the stored values stretched from their range for the model and back (MONOCHROME1 inverted for the
model only), the dataset kept (patient, study) and updated (size, spacing, derived image type, a new series and
instance UID derived from the old ones, the source referenced, stale elements dropped), other outputs only where
the values fit, and one-line refusals for what is not supported. Compressed, YCbCr, palette and multi-frame files
come from pydicom's own test files (real scanner and toolkit exports, read from the installed package).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli

pydicom = pytest.importorskip("pydicom")
skdata = pytest.importorskip("skimage.data")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from esrgan.checkpoints import save_model  # noqa: E402
from esrgan.errors import ImageError  # noqa: E402
from esrgan.generator import RRDBNet  # noqa: E402
from esrgan.imageio import read_image, write_image  # noqa: E402
from esrgan.upscale import Upscaler  # noqa: E402

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_file(name: str) -> Path:
    """One of the DICOM files pydicom installs with itself (never downloaded)."""
    path = PYDICOM_FILES / name
    if not path.is_file():
        pytest.skip(f"pydicom {pydicom.__version__} does not install {name}")
    return path


H, W, S = 40, 48, 2
STEPS = 2 / 65535  # the stored values are held as 16 bits of their range between the mapping and the model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = RRDBNet(num_feat=16, num_block=1, num_grow=8, scale=2, image_residual=True)
    with torch.no_grad():
        model.conv_last.weight.mul_(3.0)  # random texture on top of the bicubic image: mappings tell apart
    return save_model(tmp_path_factory.mktemp("model") / "tiny_x2.safetensors", model.eval())


@pytest.fixture(scope="module")
def upscaler(model_file: Path) -> Upscaler:
    return Upscaler.from_file(model_file, device="cpu", precision="fp32", tile=0)


def stretched(up: Upscaler, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[lo, hi] -> [0, 1], the model, and back (lo > hi: inverted), float64."""
    unit = (x.astype(np.float64) - lo) / (hi - lo)
    return lo + up.upscale(np.ascontiguousarray(unit, dtype=np.float32)).astype(np.float64) * (hi - lo)


def dicom_file(path: Path, pixels: np.ndarray, **elements: Any) -> Path:
    """pixels (HxW or HxWx3) as a DICOM Part 10 file (explicit VR little endian) with a CT-like header."""
    sop_class = elements.pop("SOPClassUID", CTImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = elements.pop("TransferSyntaxUID", ExplicitVRLittleEndian)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Phantom^Test", "0001", "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SeriesDescription = "abdomen"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = pixels.shape[:2]
    colour = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelSpacing = [0.5, 0.625]
    ds.SmallestImagePixelValue = 0
    ds.LargestImagePixelValue = 1
    data = pixels
    if colour:
        ds.PlanarConfiguration = elements.pop("PlanarConfiguration", 0)
        data = np.moveaxis(pixels, -1, 0) if ds.PlanarConfiguration == 1 else pixels
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    syntax = meta.TransferSyntaxUID
    if (
        not syntax.is_transfer_syntax
    ):  # one pydicom does not know: its UID written over explicit VR little endian's
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
        old, new = (f"{uid}\0".encode() for uid in (ExplicitVRLittleEndian, syntax))
        assert len(old) == len(new)
        path.write_bytes(path.read_bytes().replace(old, new, 1))
        return path
    if syntax.is_compressed:  # a header that says JPEG over bytes that are not
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_values() -> np.ndarray:
    """A CT slice's stored values (int16, HU with intercept 0): the cameraman as -1000..1040 HU."""
    return (skdata.camera()[120 : 120 + H, 200 : 200 + W].astype(np.int16) * 8 - 1000).astype(np.int16)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dicom")
    folder = root / "in"
    folder.mkdir()
    ct = ct_values()
    series = generate_uid()
    dicom_file(folder / "ct1.dcm", ct, RescaleSlope=1, RescaleIntercept=0, SeriesInstanceUID=series,
               WindowCenter=40, WindowWidth=400)  # fmt: skip
    dicom_file(folder / "ct2.dcm", ct[::-1].copy(), SeriesInstanceUID=series)  # a second slice of the series
    xray = (skdata.camera()[300 : 300 + H, 100 : 100 + W].astype(np.uint16) * 16 + 100).astype(np.uint16)
    dicom_file(folder / "xray.dcm", xray, PhotometricInterpretation="MONOCHROME1", Modality="CR")
    us = np.ascontiguousarray(skdata.astronaut()[50 : 50 + H, 180 : 180 + W])
    dicom_file(
        folder / "us.dcm", us, PlanarConfiguration=1, Modality="US", SOPClassUID=SecondaryCaptureImageStorage
    )
    out = root / "out"
    r = run_cli("upscale", folder, "-o", out, "--model", model_file, "--precision", "fp32", "--device", "cpu",
                "--quiet", cwd=root)  # fmt: skip
    return {"in": folder, "out": out, "run": r, "ct": ct, "xray": xray, "us": us, "series": series}


def test_a_ct_slice_keeps_its_patient_and_study_and_becomes_a_derived_image(batch: dict[str, Any]) -> None:
    assert batch["run"].returncode == 0, batch["run"].stderr
    src = pydicom.dcmread(batch["in"] / "ct1.dcm")
    out = pydicom.dcmread(batch["out"] / "ct1_x2.dcm")
    assert (out.Rows, out.Columns) == (H * S, W * S)
    assert [float(v) for v in out.PixelSpacing] == [0.25, 0.3125]
    assert out.PatientName == src.PatientName and out.StudyInstanceUID == src.StudyInstanceUID
    assert list(out.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert "esrgan" in out.DerivationDescription
    assert (
        out.SOPInstanceUID != src.SOPInstanceUID
        and out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    )
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (
        "SmallestImagePixelValue" not in out and "LargestImagePixelValue" not in out
    )  # they described the old
    assert (float(out.WindowCenter), float(out.WindowWidth)) == (40.0, 400.0)  # same units: still right
    assert out.pixel_array.shape == (H * S, W * S)  # decodes


def test_the_slices_of_one_series_land_in_one_new_series(batch: dict[str, Any]) -> None:
    one, two = (pydicom.dcmread(batch["out"] / f"ct{k}_x2.dcm") for k in (1, 2))
    assert one.SeriesInstanceUID == two.SeriesInstanceUID != batch["series"]
    assert one.SOPInstanceUID != two.SOPInstanceUID
    assert one.SeriesDescription == "abdomen esrgan x2"


def test_ct_values_are_stretched_from_their_range_and_back(batch: dict[str, Any], upscaler: Upscaler) -> None:
    ct = batch["ct"]
    out = pydicom.dcmread(batch["out"] / "ct1_x2.dcm").pixel_array
    assert out.dtype == np.int16 and out.shape == (H * S, W * S)
    lo, hi = float(ct.min()), float(ct.max())
    expected = stretched(upscaler, ct, lo, hi)
    err = np.abs(out - expected)
    assert err.max() <= 1.0 + STEPS * (hi - lo), f"off by up to {err.max():.2f} HU"
    assert lo <= out.min() and out.max() <= hi


def test_monochrome1_is_inverted_for_the_model_only(batch: dict[str, Any], upscaler: Upscaler) -> None:
    """MONOCHROME1: low values are bright. The model sees the image as it is shown; the file keeps its values."""
    xray = batch["xray"]
    ds = pydicom.dcmread(batch["out"] / "xray_x2.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = ds.pixel_array
    lo, hi = float(xray.min()), float(xray.max())
    expected = stretched(upscaler, xray, hi, lo)  # hi -> 0 (black), lo -> 1 (white)
    not_inverted = stretched(upscaler, xray, lo, hi)
    assert np.abs(not_inverted - expected).max() > 20 * STEPS * (hi - lo)  # the model is not symmetric: shows
    err = np.abs(out - expected)
    assert err.max() <= 1.0 + STEPS * (hi - lo), f"off by up to {err.max():.2f}"


def test_a_planar_rgb_ultrasound_still_comes_back_interleaved(
    batch: dict[str, Any], upscaler: Upscaler
) -> None:
    us = batch["us"]
    ds = pydicom.dcmread(batch["out"] / "us_x2.dcm")
    assert ds.PlanarConfiguration == 0 and ds.SamplesPerPixel == 3
    out = ds.pixel_array
    assert out.shape == (H * S, W * S, 3) and out.dtype == np.uint8
    # 8-bit samples are a screen's values: upscaled as the same pixels in a PNG, not stretched from their range
    assert us.min() > 0 and us.max() < 255  # (a stretch would show)
    assert np.array_equal(out, upscaler.upscale(us))


def test_a_rerun_gives_the_same_uids(batch: dict[str, Any], model_file: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    r = run_cli("upscale", batch["in"] / "ct1.dcm", "-o", again / "ct1.dcm", "--model", model_file,
                "--precision", "fp32", "--device", "cpu", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    first, second = pydicom.dcmread(batch["out"] / "ct1_x2.dcm"), pydicom.dcmread(again / "ct1.dcm")
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        second.SOPInstanceUID,
        second.SeriesInstanceUID,
    )


def test_other_outputs_only_where_the_values_fit(tmp_path: Path, model_file: Path) -> None:
    """int16 CT: TIFF keeps it (int16), PNG cannot; a TIFF cannot become DICOM; an unsigned MONOCHROME2 image may
    become a 16-bit PNG."""
    folder = tmp_path / "in"
    folder.mkdir()
    dicom_file(folder / "ct.dcm", ct_values())
    mr = (skdata.camera()[:H, :W].astype(np.uint16) * 100).astype(np.uint16)
    dicom_file(folder / "mr.dcm", mr, Modality="MR")
    r = run_cli(
        "upscale", folder, "-o", tmp_path / "png", "--format", "png", "--model", model_file, "--quiet"
    )
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "ct.dcm" in errors[0] and "TIFF" in errors[0], r.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["mr_x2.png"]
    png = read_image(tmp_path / "png" / "mr_x2.png")
    assert (png.bit_depth, png.channels) == (16, 1)
    r = run_cli("upscale", folder / "ct.dcm", "-o", tmp_path / "ct.tif", "--model", model_file, "--quiet")
    assert r.returncode == 0, r.stderr
    tifffile = pytest.importorskip("tifffile")
    assert tifffile.imread(tmp_path / "ct.tif").dtype == np.int16
    tif = read_image(tmp_path / "ct.tif", measurements=True)
    with pytest.raises(ImageError, match=r"only a DICOM input can be written as DICOM"):
        write_image(tmp_path / "back.dcm", tif)
    assert not (tmp_path / "back.dcm").exists()


def test_what_is_not_supported_is_refused_in_one_line(tmp_path: Path) -> None:
    ct = ct_values()
    cases = {
        "compressed": dicom_file(tmp_path / "jpeg.dcm", ct, TransferSyntaxUID=JPEGBaseline8Bit),
        "too many pixels": dicom_file(tmp_path / "huge.dcm", ct, Rows=60000, Columns=60000),
        "too many frames": dicom_file(tmp_path / "frames.dcm", ct, NumberOfFrames=40000),
        "1-bit": pydicom_file("liver_1frame.dcm"),
        "YBR_PARTIAL_420": dicom_file(
            tmp_path / "ybr.dcm",
            np.dstack([ct.view(np.uint16) >> 8] * 3).astype(np.uint8),
            PhotometricInterpretation="YBR_PARTIAL_420",
        ),
        "whole slide": dicom_file(
            tmp_path / "wsi.dcm",
            ct,
            SOPClassUID="1.2.840.10008.5.1.4.1.1.77.1.6",
            TotalPixelMatrixRows=4 * H,
            TotalPixelMatrixColumns=4 * W,
        ),
        "unknown syntax": dicom_file(tmp_path / "new.dcm", ct, TransferSyntaxUID="1.2.840.10008.1.2.9"),
        # hostile header values with line breaks (tools/fuzz_images.py, session 35): still one line
        "photometric with a line break": dicom_file(
            tmp_path / "nl.dcm", ct, PhotometricInterpretation="MONO\nHROME2"
        ),
        "syntax with a line break": dicom_file(
            tmp_path / "nl2.dcm", ct, TransferSyntaxUID="1.2.840.\n0008.1.2.1"
        ),
    }
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(cases["compressed"].read_bytes()[:200])
    words = {
        "compressed": "cannot decode the DICOM pixel data",  # JPEG markers around zeros
        "too many pixels": "exceeds",
        "too many frames": "48x40 x 40000 frames = 76800000",
        "1-bit": "a 1-bit DICOM",
        "YBR_PARTIAL_420": "DICOM YBR_PARTIAL_420 with 3 samples per pixel is not supported",
        "whole slide": "a tiled whole-slide image: its tiles would be upscaled apart",
        "unknown syntax": "DICOM in transfer syntax 1.2.840.10008.1.2.9, which pydicom does not know",
        "photometric with a line break": "DICOM MONO\\nHROME2 with 1 samples per pixel is not supported",
        "syntax with a line break": "DICOM in transfer syntax 1.2.840.\\n0008.1.2.1, which pydicom does not know",
    }
    for kind, path in cases.items():
        with pytest.raises(ImageError) as caught:
            read_image(path, measurements=True)
        text = str(caught.value)
        assert text.startswith(f"{path}: ") and "\n" not in text and words[kind] in text, text
    with pytest.raises(ImageError) as caught:
        read_image(truncated, measurements=True)
    assert str(caught.value).startswith(f"{truncated}: "), caught.value
    with pytest.raises(
        ImageError,
        match=r"a DICOM file: `esrgan upscale`, training and `esrgan evaluate` read it, this does not",
    ):
        read_image(cases["compressed"])  # the photograph readers (`esrgan prepare`, the web page)


def test_values_stay_within_the_bits_stored(tmp_path: Path, upscaler: Upscaler) -> None:
    """12 bits stored in 16: a --value-range reaching one above 12 bits (0:4096) lets the model's brightest output
    map to 4096, which a 12-bit image cannot hold; the written values stay within 0..4095."""
    crop = skdata.camera()[:H, :W].astype(np.float64)
    xray = np.rint((crop - crop.min()) / (crop.max() - crop.min()) * 4095).astype(np.uint16)  # 0..4095
    src = dicom_file(tmp_path / "cr.dcm", xray, BitsStored=12, HighBit=11, Modality="CR")
    image = read_image(src, measurements=True, value_range=(0.0, 4096.0))
    unclipped = stretched(upscaler, xray, 0.0, 4096.0)
    assert unclipped.max() > 4095.5  # the case is real
    write_image(tmp_path / "cr_x2.dcm", upscaler.upscale_image(image))
    ds = pydicom.dcmread(tmp_path / "cr_x2.dcm")
    # the stored bytes: pixel_array masks the bits above BitsStored away, and would hide a 4096 as a 0
    out = np.frombuffer(ds.PixelData, "<u2").reshape(H * S, W * S)
    assert out.max() <= 4095
    inside = unclipped <= 4095
    assert np.abs(out[inside] - unclipped[inside]).max() <= 1.0 + STEPS * 4096


def test_slices_named_without_dcm_are_found_in_a_folder_and_stay_dicom(
    tmp_path: Path, model_file: Path
) -> None:
    """Scanners and PACS exports name slices IM0001 or by their UID (1.2.840....6): found by content in a folder,
    written as DICOM under their whole name (two UIDs that differ only after the last dot do not collide); other
    files of unknown names are left alone, and a FIFO among them is not opened."""
    import os

    folder = tmp_path / "series"
    folder.mkdir()
    ct = ct_values()
    dicom_file(folder / "IM0001", ct)
    dicom_file(folder / "1.2.826.0.1.3680043.8.498.6", ct[::-1].copy())
    dicom_file(folder / "1.2.826.0.1.3680043.8.498.7", ct[:, ::-1].copy())
    (folder / "DICOMDIR.txt").write_text("not an image\n")
    (folder / "NOTES").write_text("a file without a suffix, not DICOM\n")
    os.mkfifo(folder / "pipe")
    out = tmp_path / "out"
    r = run_cli("upscale", folder, "-o", out, "--model", model_file, "--quiet", timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "1.2.826.0.1.3680043.8.498.6_x2.dcm",
        "1.2.826.0.1.3680043.8.498.7_x2.dcm",
        "IM0001_x2.dcm",
    ]
    assert pydicom.dcmread(out / "IM0001_x2.dcm").Rows == H * S


def test_positions_and_ultrasound_calibration_follow_the_new_grid(tmp_path: Path, upscaler: Upscaler) -> None:
    """ImagePositionPatient is the centre of the first pixel: on the x2 grid it moves half an old pixel less half a
    new one up and left (-0.25 of the old spacing along each image axis). Ultrasound regions are in pixels: their
    bounds scale, their physical size per pixel halves. (Both were copied unchanged: measurements off by the factor
    and a half-pixel misregistration.)"""
    region = pydicom.Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 2, 1
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 20, 30
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.05, 0.04
    region.ReferencePixelX0 = 10
    src = dicom_file(
        tmp_path / "us.dcm", ct_values(), ImagePositionPatient=[-100, -100, 0],
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0], SequenceOfUltrasoundRegions=[region],
    )  # fmt: skip
    write_image(tmp_path / "us_x2.dcm", upscaler.upscale_image(read_image(src, measurements=True)))
    out = pydicom.dcmread(tmp_path / "us_x2.dcm")
    assert [float(v) for v in out.ImagePositionPatient] == [
        -100.15625,
        -100.125,
        0.0,
    ]  # 0.625 and 0.5 mm pixels
    r = out.SequenceOfUltrasoundRegions[0]
    assert (r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1) == (
        4,
        2,
        41,
        61,
    )
    assert (float(r.PhysicalDeltaX), float(r.PhysicalDeltaY)) == (0.025, 0.02)
    assert r.ReferencePixelX0 == 20


def test_another_model_makes_another_series_and_instance(tmp_path: Path, upscaler: Upscaler) -> None:
    """The new UIDs came from the source's and the factor only: two models' different pixels got one SOP Instance
    UID, which a PACS takes for one image."""
    src = dicom_file(tmp_path / "ct.dcm", ct_values())
    torch.manual_seed(1)
    other = Upscaler(
        RRDBNet(num_feat=16, num_block=1, num_grow=8, scale=2).eval(), device="cpu", precision="fp32"
    )
    uids = {}
    for name, up in (("a", upscaler), ("b", other), ("a_again", upscaler)):
        write_image(tmp_path / f"{name}.dcm", up.upscale_image(read_image(src, measurements=True)))
        ds = pydicom.dcmread(tmp_path / f"{name}.dcm")
        uids[name] = (ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert uids["a"] == uids["a_again"]
    assert uids["a"][0] != uids["b"][0] and uids["a"][1] != uids["b"][1]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> dict[str, Any]:
    """pydicom's real files through the CLI in one batch: compressed twins of one MR slice, colour as YCbCr and as
    a palette, and multi-frame (an RT dose grid of 15 frames, a 30-frame YCbCr JPEG cine)."""
    root = tmp_path_factory.mktemp("foreign")
    folder = root / "in"
    folder.mkdir()
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm",
             "MR_small_bigendian.dcm", "SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm", "examples_palette.dcm",
             "rtdose_rle.dcm", "examples_ybr_color.dcm", "image_dfl.dcm"]  # fmt: skip
    for name in names:
        (folder / name).write_bytes(pydicom_file(name).read_bytes())
    out = root / "out"
    r = run_cli("upscale", folder, "-o", out, "--model", model_file, "--precision", "fp32", "--device", "cpu",
                "--quiet", cwd=root)  # fmt: skip
    return {"in": folder, "out": out, "run": r}


def output(foreign: dict[str, Any], name: str) -> Any:
    assert foreign["run"].returncode == 0, foreign["run"].stderr
    return pydicom.dcmread(foreign["out"] / name.replace(".dcm", "_x2.dcm"))


def test_compressed_files_give_what_their_uncompressed_twins_give(foreign: dict[str, Any]) -> None:
    """One MR slice stored five ways (explicit and implicit VR, big endian, RLE, lossless JPEG 2000): the same
    stored values, so the same upscaled values, written uncompressed; a deflated file decodes too."""
    plain = output(foreign, "MR_small.dcm")
    assert plain.pixel_array.shape == (128, 128)
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
    ):
        ds = output(foreign, name)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert np.array_equal(ds.pixel_array, plain.pixel_array), name
    assert output(foreign, "image_dfl.dcm").pixel_array.shape == (1024, 1024)


def test_ycbcr_and_palette_colour_come_back_as_rgb(foreign: dict[str, Any], upscaler: Upscaler) -> None:
    """A YBR_FULL JPEG is decoded to RGB and written as RGB: its output is that of the same picture stored as RGB
    (lossless RLE) to within the JPEG's own error; a palette image becomes RGB of its tables' depth, the tables
    dropped, each pixel the upscale of its looked-up colour."""
    ybr = output(foreign, "SC_rgb_dcmtk_+eb+cy+n1.dcm")
    rgb = output(foreign, "SC_rgb_rle.dcm")
    assert ybr.PhotometricInterpretation == "RGB" and ybr.SamplesPerPixel == 3
    diff = np.abs(ybr.pixel_array.astype(float) - rgb.pixel_array.astype(float)).mean()
    src_diff = np.abs(
        pydicom.dcmread(pydicom_file("SC_rgb_dcmtk_+eb+cy+n1.dcm")).pixel_array.astype(float)
        - pydicom.dcmread(pydicom_file("SC_rgb_rle.dcm")).pixel_array.astype(float)
    ).mean()
    assert src_diff < 4 and diff < 2 * src_diff + 1  # read as YCbCr it would be tens of levels off
    assert str(ybr.LossyImageCompression) == "01"
    palette = output(foreign, "examples_palette.dcm")
    assert palette.PhotometricInterpretation == "RGB" and palette.SamplesPerPixel == 3
    assert (palette.BitsAllocated, palette.BitsStored, palette.PixelRepresentation) == (16, 16, 0)
    assert not any("Palette" in e.keyword for e in palette)
    from pydicom.pixels import apply_color_lut

    src = pydicom.dcmread(pydicom_file("examples_palette.dcm"))
    colours = apply_color_lut(src.pixel_array, src)
    lo, hi = float(colours.min()), float(colours.max())
    err = np.abs(palette.pixel_array - stretched(upscaler, colours, lo, hi))
    assert err.max() <= 1.0 + STEPS * (hi - lo)


def test_every_frame_of_a_multi_frame_file_is_upscaled_alone(
    foreign: dict[str, Any], upscaler: Upscaler
) -> None:
    """An RT dose grid (15 frames of uint32) and a YCbCr JPEG cine (30 RGB frames): every frame of the output is the
    upscale of that frame alone, the dose's frames mapped through one range, the cine's 8-bit frames as the same
    pixels in a PNG (not stretched: this cine spans 0..220, review of session 35); the frame count, the grid's
    spacing (halved) and its frame offsets kept."""
    for name, colour in (("rtdose_rle.dcm", False), ("examples_ybr_color.dcm", True)):
        src = pydicom.dcmread(pydicom_file(name))
        frames = src.pixel_array
        ds = output(foreign, name)
        out = ds.pixel_array
        assert int(ds.NumberOfFrames) == len(frames) and out.shape[0] == len(frames)
        assert out.shape[1:3] == (frames.shape[1] * S, frames.shape[2] * S) and out.dtype == frames.dtype
        lo, hi = float(frames.min()), float(frames.max())
        for k in (0, len(frames) // 2, len(frames) - 1):
            if frames.dtype == np.uint8:
                assert hi < 255 and np.array_equal(out[k], upscaler.upscale(frames[k])), f"{name} frame {k}"
                continue
            err = np.abs(out[k] - stretched(upscaler, frames[k], lo, hi))
            assert err.max() <= 1.0 + STEPS * (hi - lo), f"{name} frame {k}: off by up to {err.max():.2f}"
        assert not np.array_equal(out[0], out[len(frames) // 2])  # the frames differ: each is its own
        if colour:
            assert ds.PhotometricInterpretation == "RGB"
        else:
            assert [float(v) for v in ds.PixelSpacing] == [float(v) / S for v in src.PixelSpacing]
            assert list(ds.GridFrameOffsetVector) == list(src.GridFrameOffsetVector)


def test_a_multi_frame_file_becomes_dicom_only(tmp_path: Path, model_file: Path) -> None:
    src = pydicom_file("rtdose_rle.dcm")
    for fmt in ("png", "tiff"):
        r = run_cli("upscale", src, "-o", tmp_path / f"dose.{fmt}", "--model", model_file, "--quiet")
        assert r.returncode == 1
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines == [f"esrgan: error: {src}: a multi-frame DICOM (15 frames): only a DICOM output keeps the "
                         f"frames, not {fmt.upper()} (drop --format: the output is then DICOM)"]  # fmt: skip
        assert not (tmp_path / f"dose.{fmt}").exists()


def test_a_lossy_jpeg_source_stays_marked_lossy(tmp_path: Path, model_file: Path, upscaler: Upscaler) -> None:
    """A JPEG baseline DICOM (a real photo through Pillow's encoder, encapsulated) whose header does not say it is
    lossy: the uncompressed output says so (DICOM requires it of anything derived), with the method and ratio."""
    import io

    from PIL import Image

    photo = np.ascontiguousarray(skdata.astronaut()[100 : 100 + H, 150 : 150 + W])
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=80)
    path = dicom_file(tmp_path / "us.dcm", photo, Modality="US", SOPClassUID=SecondaryCaptureImageStorage)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"  # what Pillow's JPEG holds
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    r = run_cli("upscale", path, "-o", tmp_path / "out.dcm", "--model", model_file, "--precision", "fp32",
                "--device", "cpu", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert (
        out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and out.PhotometricInterpretation == "RGB"
    )
    assert str(out.LossyImageCompression) == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"
    ratio = H * W * 3 / len(pydicom.dcmread(path).PixelData)
    assert abs(float(out.LossyImageCompressionRatio) - ratio) < 0.01 * ratio and ratio > 2
    rgb = pydicom.dcmread(path).pixel_array  # decoded to RGB (pydicom's JPEG decoding: Pillow's)
    assert np.abs(rgb.astype(float) - photo).mean() < 4  # it is the photo, not its YCbCr planes
    lo, hi = float(rgb.min()), float(rgb.max())
    assert np.abs(out.pixel_array - stretched(upscaler, rgb, lo, hi)).max() <= 1.0


def test_a_compression_without_its_decoder_names_the_package(tmp_path: Path) -> None:
    """JPEG-LS needs a pydicom plugin (pyjpegls); 12-bit JPEG is beyond Pillow (pylibjpeg-libjpeg): one line each
    naming what to install, no traceback."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    for name, words in (("MR_small_jpeg_ls_lossless.dcm", "which no installed decoder reads (pip install pyjpegls;"),
                        ("JPEG-lossy.dcm", "); pip install pylibjpeg pylibjpeg-libjpeg may")):  # fmt: skip
        path = pydicom_file(name)
        with pytest.raises(ImageError) as caught:
            read_image(path, measurements=True)
        text = str(caught.value)
        assert text.startswith(f"{path}: ") and "\n" not in text and words in text, text


def jpeg_dicom(path: Path, pictures: list[np.ndarray], **elements: Any) -> Path:
    """Pillow JPEGs (quality 80) encapsulated as a JPEG baseline DICOM, one fragment per picture, with the header of
    the first picture (elements override it, e.g. a NumberOfFrames that is not the fragments' count)."""
    import io

    from PIL import Image

    streams = []
    for picture in pictures:
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format="JPEG", quality=80)
        streams.append(buf.getvalue())
    dicom_file(path, pictures[0], Modality="US", SOPClassUID=SecondaryCaptureImageStorage)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"  # what Pillow's JPEG holds
    ds.PixelData = encapsulate(streams)
    ds["PixelData"].VR = "OB"
    for name, value in elements.items():
        if name == "LossyImageCompressionRatio":  # raw, so that a malformed value can be written as it is
            ds[0x00282112] = pydicom.dataelem.RawDataElement(
                pydicom.tag.Tag(0x00282112), "DS", len(value), value.encode(), 0, False, True
            )
        else:
            setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_codestream_bigger_than_its_header_or_excess_frames_are_not_decoded(tmp_path: Path) -> None:
    """Pillow decodes the size a JPEG says, whatever Rows/Columns: a 16x16 header over a 400x400 JPEG is refused
    before decoding; fragments beyond NumberOfFrames (a small file with many) are not decoded at all."""
    photo = skdata.astronaut()
    big = jpeg_dicom(tmp_path / "big.dcm", [photo[:400, :400].copy()], Rows=16, Columns=16)
    with pytest.raises(ImageError) as caught:
        read_image(big, measurements=True)
    assert str(caught.value) == f"{big}: frame 0's codestream is 400x400, the header says 16x16"
    pictures = [photo[k * 40 : k * 40 + H, :W].copy() for k in range(5)]
    excess = jpeg_dicom(tmp_path / "excess.dcm", pictures)  # NumberOfFrames absent: 1
    image = read_image(excess, measurements=True, max_pixels=H * W)
    assert image.extra is None and image.pixels.shape == (H, W, 3)
    single = read_image(jpeg_dicom(tmp_path / "one.dcm", pictures[:1]), measurements=True)
    assert np.array_equal(image.pixels, single.pixels)


def test_lossy_marks_for_jpeg_2000_and_malformed_histories(tmp_path: Path, model_file: Path) -> None:
    """A JPEG 2000 source with the irreversible 9-7 wavelet is lossy whatever its header says (pydicom's
    JPEG2000.dcm, its lossy marks removed); a reversible one is not marked (MR_small_jp2klossless.dcm). A ratio
    without its method, or an unreadable ratio, does not survive as a broken pair of lists."""
    lossy = pydicom.dcmread(pydicom_file("JPEG2000.dcm"))
    for name in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if name in lossy:
            delattr(lossy, name)
    lossy.save_as(tmp_path / "j2k.dcm")
    (tmp_path / "lossless.dcm").write_bytes(pydicom_file("MR_small_jp2klossless.dcm").read_bytes())
    photo = np.ascontiguousarray(skdata.astronaut()[:H, :W])
    jpeg_dicom(tmp_path / "ratio_only.dcm", [photo], LossyImageCompressionRatio="9.25")
    jpeg_dicom(tmp_path / "bad_ratio.dcm", [photo], LossyImageCompressionRatio="abcd",
               LossyImageCompressionMethod="ISO_10918_1")  # fmt: skip
    out = tmp_path / "out"
    r = run_cli("upscale", tmp_path, "-o", out, "--model", model_file, "--quiet")
    assert r.returncode == 0, r.stderr
    j2k = pydicom.dcmread(out / "j2k_x2.dcm")
    assert str(j2k.LossyImageCompression) == "01" and j2k.LossyImageCompressionMethod == "ISO_15444_1"
    assert str(pydicom.dcmread(out / "lossless_x2.dcm").get("LossyImageCompression", "")) != "01"
    ratio_only = pydicom.dcmread(out / "ratio_only_x2.dcm")
    assert ratio_only.LossyImageCompressionMethod == "ISO_10918_1"
    assert not isinstance(ratio_only.LossyImageCompressionRatio, pydicom.multival.MultiValue)  # one: ours
    bad = pydicom.dcmread(out / "bad_ratio_x2.dcm")
    assert str(bad.LossyImageCompression) == "01"


def test_each_frame_moves_on_its_own_plane(tmp_path: Path, model_file: Path) -> None:
    """An enhanced multi-frame image (a localiser: frames in the axial, sagittal and coronal planes), spacing in the
    shared functional groups: each frame's ImagePositionPatient moves along its own rows and columns by half an
    old pixel less half a new one; each frame's FrameType becomes DERIVED\\SECONDARY as the ImageType does; an
    extended offset table of the compressed source is not carried to the uncompressed output."""
    from pydicom.dataset import Dataset

    planes = {"axial": [1, 0, 0, 0, 1, 0], "sagittal": [0, 1, 0, 0, 0, -1], "coronal": [1, 0, 0, 0, 0, -1]}
    frames = []
    for orientation in planes.values():
        group = Dataset()
        group.PlanePositionSequence = [Dataset()]
        group.PlanePositionSequence[0].ImagePositionPatient = [10, 20, 30]
        group.PlaneOrientationSequence = [Dataset()]
        group.PlaneOrientationSequence[0].ImageOrientationPatient = orientation
        group.MRImageFrameTypeSequence = [Dataset()]
        group.MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        frames.append(group)
    shared = Dataset()
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [1.0, 2.0]  # rows 1 mm apart, columns 2 mm: not the top's
    ct = ct_values()
    path = dicom_file(tmp_path / "loc.dcm", np.concatenate([ct, ct[::-1], ct[:, ::-1]]), Rows=H, NumberOfFrames=3,
                      SharedFunctionalGroupsSequence=[shared], PerFrameFunctionalGroupsSequence=frames,
                      ExtendedOffsetTable=bytes(24), ExtendedOffsetTableLengths=bytes(24))  # fmt: skip
    r = run_cli("upscale", path, "-o", tmp_path / "out.dcm", "--model", model_file, "--quiet")
    assert r.returncode == 0, r.stderr
    out = pydicom.dcmread(tmp_path / "out.dcm")
    half = 0.5 / S - 0.5  # in old pixels
    for group, orientation in zip(out.PerFrameFunctionalGroupsSequence, planes.values(), strict=True):
        row, col = np.array(orientation[:3]), np.array(orientation[3:])
        expected = np.array([10, 20, 30]) + row * 2.0 * half + col * 1.0 * half
        moved = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(moved, expected), (orientation, moved, expected)
        assert list(group.MRImageFrameTypeSequence[0].FrameType) == ["DERIVED", "SECONDARY", "M", "NONE"]
    assert [
        float(v) for v in out.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    ] == [0.5, 1.0]
    assert "ExtendedOffsetTable" not in out and "ExtendedOffsetTableLengths" not in out
    assert int(out.NumberOfFrames) == 3 and out.pixel_array.shape == (3, H * S, W * S)


def test_a_grey_model_trains_on_ct_slices_as_the_upscaler_stretches_them(tmp_path: Path) -> None:
    """A training folder of DICOM slices and a float TIFF (measurements): each read as `esrgan upscale` reads it for
    the model (stretched from its [min, max], MONOCHROME1 inverted) and reduced to 8 bits; a grey model trains on
    them and on another such folder as validation."""
    tifffile = pytest.importorskip("tifffile")
    from esrgan.config import config_from_dict
    from esrgan.data import PatchDataset
    from esrgan.train import train

    folder, val = tmp_path / "ct", tmp_path / "val"
    folder.mkdir()
    val.mkdir()
    values = ct_values()
    dicom_file(folder / "slice1.dcm", values)
    dicom_file(folder / "slice2", np.ascontiguousarray(values[::-1]))  # no suffix: not a training file
    dicom_file(folder / "slice3.dcm", values, PhotometricInterpretation="MONOCHROME1")
    tifffile.imwrite(folder / "dose.tif", values.astype(np.float32) / 7.5)
    dicom_file(val / "slice.dcm", np.ascontiguousarray(values[:, ::-1]))
    data = PatchDataset(folder, scale=4, patch_size=32, channels=1)
    assert [p.name for p in data.hr_files] == ["dose.tif", "slice1.dcm", "slice3.dcm"]
    lo, hi = float(values.min()), float(values.max())
    want = np.round(np.rint((values - lo) * (65535.0 / (hi - lo))) / 257.0).astype(
        np.uint8
    )  # 16 bits, then 8
    assert data.cache is not None
    for (hr, _), expected in zip(data.cache, (want, want, 255 - want), strict=True):
        assert hr.shape == (H, W, 1) and np.array_equal(hr[:, :, 0], expected)
    raw = {"output_dir": str(tmp_path / "runs"), "name": "ct",
           "model": {"num_in_ch": 1, "num_out_ch": 1, "num_feat": 8, "num_block": 1, "num_grow": 4},
           "data": {"hr_dir": str(folder), "patch_size": 32, "batch_size": 2, "num_workers": 0},
           "train": {"total_steps": 2, "threads": 1}, "validation": {"dir": str(val), "every": 2},
           "logging": {"progress": False}}  # fmt: skip
    result = train(config_from_dict(raw))
    assert result.step == 2 and (result.run_dir / "model.safetensors").is_file()


def test_every_frame_of_a_multi_frame_dicom_is_a_training_image(tmp_path: Path) -> None:
    """A real 30-frame YCbCr JPEG ultrasound cine (pydicom's examples_ybr_color.dcm) beside a grey CT slice: each
    frame is an image of the training set (it trained on the first frame alone), held as `esrgan upscale` reads
    the file for the model (RGB, all frames through one mapping) at the data's depth; the sampler visits every
    frame; reading per sample gives the cached frames; hr_downscale multiplies frames by factors; paired LR folders
    refuse a multi-frame file in one line."""
    from esrgan.data import InfiniteSampler, PatchDataset
    from esrgan.errors import ConfigError

    folder = tmp_path / "us"
    folder.mkdir()
    cine = folder / "cine.dcm"
    cine.write_bytes(pydicom_file("examples_ybr_color.dcm").read_bytes())
    dicom_file(folder / "slice.dcm", ct_values())  # sorts after cine.dcm
    image = read_image(cine, measurements=True)
    frames = [np.asarray(image.pixels)] + [image.extra[:, :, 3 * k : 3 * k + 3] for k in range(29)]
    deep = PatchDataset(folder, scale=4, patch_size=32, bits=16)
    assert len(deep) == 31 and deep.cache is not None
    for k in (0, 1, 17, 29):
        assert np.array_equal(deep.cache[k][0], frames[k][:240, :320])
    assert not np.array_equal(deep.cache[0][0], deep.cache[17][0])  # the frames differ
    assert deep.cache[30][0].shape == (H, W, 3)  # the CT slice after the 30 frames
    eight = PatchDataset(folder, scale=4, patch_size=32)
    assert eight.cache is not None and len(eight) == 31
    assert np.array_equal(eight.cache[17][0], np.round(frames[17] / 257.0).astype(np.uint8))
    sampler = iter(InfiniteSampler(len(deep), seed=0))
    assert {next(sampler)[0] for _ in range(31)} == set(range(31))  # one pass: every frame once
    per_sample = PatchDataset(folder, scale=4, patch_size=32, bits=16, cache_max_mb=0)
    assert per_sample.cache is None
    for key in ((17, 3), (29, 4), (30, 5)):
        assert all(torch.equal(a, b) for a, b in zip(deep[key], per_sample[key], strict=True))
    multi = PatchDataset(folder, scale=4, patch_size=16, hr_downscale=[1.0, 2.0])
    assert len(multi) == 62 and multi.cache is not None
    assert multi.cache[2 * 17 + 1][0].shape == (120, 160, 3)  # frame 17 shrunk 2x
    assert np.array_equal(multi.cache[2 * 17][0], eight.cache[17][0])
    lr = tmp_path / "lr"
    lr.mkdir()
    with pytest.raises(
        ConfigError, match=r"cine\.dcm: 30 frames; paired LR folders \(data\.lr_dir\) take single"
    ):
        PatchDataset(folder, scale=4, patch_size=32, lr_dir=lr)


def test_one_value_range_maps_every_slice_alike(tmp_path: Path) -> None:
    """Each slice stretched from its own [min, max] puts one CT value at different levels in different slices (a
    slice with bone beside one without); `data.value_range` maps every slice from one range, as `esrgan upscale
    --value-range` does: the same value, the same level, in training and in validation; outside, clipped with a
    warning; a bad range is refused at load."""
    from esrgan.config import config_from_dict
    from esrgan.data import PatchDataset
    from esrgan.errors import ConfigError
    from esrgan.imagedata import ImageWarning
    from esrgan.train import _load_validation

    folder = tmp_path / "ct"
    folder.mkdir()
    values = ct_values()  # -1000..1040 HU
    bone = values.copy()
    bone[0, 0] = 3000  # one bright pixel widens this slice's own range
    dicom_file(folder / "a.dcm", values)
    dicom_file(folder / "b.dcm", bone)
    own = PatchDataset(folder, scale=4, patch_size=32, bits=16, channels=1)
    one = PatchDataset(folder, scale=4, patch_size=32, bits=16, channels=1, value_range=(-1024.0, 3071.0))
    assert own.cache is not None and one.cache is not None
    same = (slice(1, None), slice(None))  # every pixel but the bright one's row
    assert not np.array_equal(own.cache[0][0][same], own.cache[1][0][same])  # one HU, two levels
    assert np.array_equal(one.cache[0][0][same], one.cache[1][0][same])  # one HU, one level
    want = np.rint((values.astype(np.float64) + 1024) * (65535.0 / 4095.0))
    assert np.array_equal(one.cache[0][0][:, :, 0], want)
    validation = _load_validation(str(folder), 4, 0, None, 1, 16, [-1024.0, 3071.0])
    assert np.array_equal(validation[0][1][:, :, 0], want[: H // 4 * 4, : W // 4 * 4])
    with pytest.warns(ImageWarning, match="clipped|outside"):
        narrow = PatchDataset(folder, scale=4, patch_size=32, channels=1, value_range=(-500.0, 500.0))
    assert narrow.cache is not None and narrow.cache[0][0].max() == 255 and narrow.cache[0][0].min() == 0
    for wrong in ([100, -100], [1, 2, 3], [-1e308, 1e308]):
        with pytest.raises(ConfigError, match=r"data\.value_range: must be \[lo, hi\] with lo < hi"):
            config_from_dict({"data": {"hr_dir": str(folder), "value_range": wrong}})


def test_the_value_range_reaches_every_reading_path_and_spares_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data.value_range reaches per-sample reads (warning once per file, not once per sample), paired LR files and,
    through train(), the training set and the validation images; a georeferenced 8-bit photograph (read as a
    measurement by `esrgan upscale`) and plain photos are read as they are; a paired LR file with frames is
    refused; a DICOM volume beyond what training reads from one file is refused from its header."""
    import warnings

    import tifffile

    import esrgan.train as train_module
    from esrgan.config import config_from_dict
    from esrgan.data import MAX_VOLUME_PIXELS, PatchDataset
    from esrgan.errors import ConfigError
    from esrgan.imagedata import ImageData, ImageWarning
    from esrgan.resize import imresize_np

    folder, lr_dir = tmp_path / "ct", tmp_path / "lr"
    folder.mkdir()
    lr_dir.mkdir()
    values = ct_values()
    dicom_file(folder / "a.dcm", values)
    lr_hu = np.clip(np.floor(imresize_np(values.astype(np.float64), scale=0.25) + 0.5), -32768, 32767)
    dicom_file(lr_dir / "a.dcm", lr_hu.astype(np.int16))
    vr = (-1024.0, 3071.0)

    def mapped(v: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((v.astype(np.float64) - vr[0]) * (65535.0 / (vr[1] - vr[0]))), 0, 65535)

    cached = PatchDataset(folder, scale=4, patch_size=32, bits=16, channels=1, value_range=vr)
    per_sample = PatchDataset(
        folder, scale=4, patch_size=32, bits=16, channels=1, value_range=vr, cache_max_mb=0
    )
    assert per_sample.cache is None
    for key in ((0, 1), (0, 2), (0, 3)):
        assert all(torch.equal(a, b) for a, b in zip(cached[key], per_sample[key], strict=True))
    paired = PatchDataset(folder, scale=4, patch_size=32, bits=16, channels=1, value_range=vr, lr_dir=lr_dir)
    assert paired.cache is not None and np.array_equal(paired.cache[0][1][:, :, 0], mapped(lr_hu))
    narrow = PatchDataset(
        folder, scale=4, patch_size=32, channels=1, value_range=(-500.0, 500.0), cache_max_mb=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(6):
            narrow[(0, seed)]
    clipped = [w for w in caught if issubclass(w.category, ImageWarning)]
    assert len(clipped) == 1 and "outside the value range -500:500 (--value-range, data.value_range)" in str(
        clipped[0].message
    )

    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = np.ascontiguousarray(skdata.astronaut()[100:140, 200:248])
    geo_tags = [(33550, "d", 3, (1.0, 1.0, 0.0), False),
                (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), False),
                (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 1), False)]  # fmt: skip
    tifffile.imwrite(photos / "ortho.tif", rgb, photometric="rgb", extratags=geo_tags)
    write_image(photos / "deep.png", ImageData(pixels=rgb.astype(np.uint16) * np.uint16(257), bit_depth=16))
    as_is = PatchDataset(photos, scale=4, patch_size=32)
    ranged = PatchDataset(photos, scale=4, patch_size=32, value_range=vr)
    assert as_is.cache is not None and ranged.cache is not None
    for (a, _), (b, _) in zip(as_is.cache, ranged.cache, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, rgb)

    dicom_file(lr_dir / "b.dcm", np.stack([lr_hu.astype(np.int16)] * 2), NumberOfFrames=2)
    dicom_file(folder / "b.dcm", values)
    with pytest.raises(
        ConfigError, match=r"b\.dcm: 2 frames; paired LR folders \(data\.lr_dir\) take single-frame"
    ):
        PatchDataset(folder, scale=4, patch_size=32, lr_dir=lr_dir)
    (folder / "b.dcm").unlink()

    # train(): the value range reaches the training set and the validation images
    seen: dict[str, Any] = {}
    real_dataset, real_validation = train_module.PatchDataset, train_module._load_validation

    def dataset_spy(*args: Any, **kwargs: Any) -> Any:
        seen["train"] = kwargs.get("value_range")
        return real_dataset(*args, **kwargs)

    def validation_spy(*args: Any) -> Any:
        seen["validation"] = args[6]
        return real_validation(*args)

    monkeypatch.setattr(train_module, "PatchDataset", dataset_spy)
    monkeypatch.setattr(train_module, "_load_validation", validation_spy)
    raw = {"output_dir": str(tmp_path / "runs"), "name": "ct",
           "model": {"num_in_ch": 1, "num_out_ch": 1, "num_feat": 8, "num_block": 1, "num_grow": 4},
           "data": {"hr_dir": str(folder), "patch_size": 32, "batch_size": 2, "num_workers": 0,
                    "value_range": list(vr)},
           "train": {"total_steps": 1, "threads": 1}, "validation": {"dir": str(folder), "every": 1},
           "logging": {"progress": False}}  # fmt: skip
    train_module.train(config_from_dict(raw))
    assert seen == {"train": vr, "validation": list(vr)}

    big = tmp_path / "big"
    big.mkdir()
    header_only = dicom_file(big / "volume.dcm", values)
    assert MAX_VOLUME_PIXELS < 48 * 40 * 140_000
    ds = pydicom.dcmread(header_only)
    ds.NumberOfFrames = 140_000  # the header claims a volume the pixel data does not hold: refused from it
    ds.save_as(header_only)
    with pytest.raises(ImageError, match=r"volume\.dcm: 48x40 x 140000 frames is more than training reads"):
        PatchDataset(big, scale=4, patch_size=32)


def test_evaluate_scores_ct_slices_as_training_reads_them(tmp_path: Path, model_file: Path) -> None:
    """`esrgan evaluate` on a folder of DICOM slices (it listed none before, and read_image refused them): each
    read as training and upscale read it (stretched to 16 bits from its own [min, max], or from --value-range), the
    protocol then as for photos; paired DICOM LR files need --value-range (each from its own range, they are not on
    the HR's scale): without it their image fails in one line, with it they are scored."""
    from esrgan.evaluate import evaluate
    from esrgan.metrics import psnr
    from esrgan.resize import imresize_np

    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    values = ct_values()
    bone = values.copy()
    bone[0, 0] = 3000
    slices = {"a": values, "b": bone}
    for name, v in slices.items():
        dicom_file(hr_dir / f"{name}.dcm", v)
        lr_hu = np.clip(np.floor(imresize_np(v.astype(np.float64), scale=0.5) + 0.5), -32768, 32767)
        dicom_file(lr_dir / f"{name}.dcm", lr_hu.astype(np.int16))

    def matlab16(x: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(x + 0.5), 0, 65535)

    def mapped(v: np.ndarray, lo: float, hi: float) -> np.ndarray:  # the stretch, in 16-bit levels, RGB
        return np.repeat(np.clip(np.rint((v.astype(np.float64) - lo) * (65535.0 / (hi - lo))), 0, 65535)[:, :, None],
                         3, axis=2)  # fmt: skip

    own = evaluate(hr_dir, [str(model_file)], bit_depth=16, niqe=False)
    assert [im.name for im in own.images] == ["a", "b"] and not own.failed
    for item, v in zip(own.images, slices.values(), strict=True):
        hr = mapped(v, float(v.min()), float(v.max()))
        bicubic = matlab16(imresize_np(matlab16(imresize_np(hr, scale=0.5)), scale=2))
        assert item.scores["bicubic"].psnr == pytest.approx(
            psnr(bicubic / 257, hr / 257, crop_border=2), abs=1e-9
        )
    ranged = evaluate(hr_dir, [str(model_file)], bit_depth=16, niqe=False, value_range=(-1024.0, 3071.0))
    assert ranged.to_dict()["protocol"]["value_range"] == [-1024.0, 3071.0]
    hr_a = mapped(values, -1024.0, 3071.0)
    bic_a = matlab16(imresize_np(matlab16(imresize_np(hr_a, scale=0.5)), scale=2))
    assert ranged.images[0].scores["bicubic"].psnr == pytest.approx(
        psnr(bic_a / 257, hr_a / 257, crop_border=2), abs=1e-9
    )
    unpaired = evaluate(hr_dir, lr_dir=lr_dir, scale=2, bit_depth=16, niqe=False)
    assert not unpaired.images and len(unpaired.failed) == 2
    assert "a measurement file as LR: stretched from its own [min, max]" in unpaired.failed[0][1]
    assert "--value-range LO:HI" in unpaired.failed[0][1]
    paired = evaluate(hr_dir, lr_dir=lr_dir, scale=2, bit_depth=16, niqe=False, value_range=(-1024.0, 3071.0))
    assert len(paired.images) == 2 and not paired.failed
    lr_a = np.clip(np.floor(imresize_np(values.astype(np.float64), scale=0.5) + 0.5), -32768, 32767)
    bic_paired = matlab16(imresize_np(mapped(lr_a, -1024.0, 3071.0), scale=2))
    assert paired.images[0].scores["bicubic"].psnr == pytest.approx(
        psnr(bic_paired / 257, hr_a / 257, crop_border=2), abs=1e-9
    )
    eight = evaluate(hr_dir, [str(model_file)], niqe=False)  # the 8-bit protocol reads them too, reduced
    assert (
        len(eight.images) == 2
        and eight.images[0].scores["bicubic"].psnr != own.images[0].scores["bicubic"].psnr
    )
    # the CLI: a range that starts below zero is one value (argparse took "-1024:3071" for an option)
    from esrgan.cli import main

    assert main(["evaluate", "--hr", str(hr_dir), "--lr", str(lr_dir), "--scale", "2", "--bit-depth", "16",
                 "--no-niqe", "--value-range", "-1024:3071", "--json", str(tmp_path / "r.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text())["protocol"]["value_range"] == [-1024.0, 3071.0]
    assert main(["upscale", str(hr_dir / "a.dcm"), "-o", str(tmp_path / "a_x2.dcm"), "--model", str(model_file),
                 "--value-range", "-1024:3071"]) == 0  # fmt: skip
    assert (tmp_path / "a_x2.dcm").is_file()


def test_evaluate_takes_8_bit_dicom_pairs_without_a_range(tmp_path: Path) -> None:
    """8-bit DICOM (an ultrasound still) is over 0..255, as a PNG of it: a paired LR needs no --value-range, and it
    is scored exactly as the same pixels in PNG files are. It was refused ("stretched from its own [min, max]"),
    which had become false. Review of session 35."""
    from PIL import Image

    from esrgan.evaluate import evaluate
    from esrgan.resize import imresize_np

    us = np.ascontiguousarray(skdata.astronaut()[50 : 50 + H, 180 : 180 + W])
    lr = np.clip(np.floor(imresize_np(us.astype(np.float64), scale=0.5) + 0.5), 0, 255).astype(np.uint8)
    for kind in ("dcm", "png"):
        for name, pixels in (("hr", us), ("lr", lr)):
            (tmp_path / kind / name).mkdir(parents=True)
            if kind == "dcm":
                dicom_file(tmp_path / kind / name / "us.dcm", pixels, Modality="US")
            else:
                Image.fromarray(pixels).save(tmp_path / kind / name / "us.png")
    scores = {}
    for kind in ("dcm", "png"):
        report = evaluate(tmp_path / kind / "hr", lr_dir=tmp_path / kind / "lr", scale=2, niqe=False)
        assert len(report.images) == 1 and not report.failed, report.failed
        scores[kind] = report.images[0].scores["bicubic"]
    assert (scores["dcm"].psnr, scores["dcm"].ssim) == (scores["png"].psnr, scores["png"].ssim)
