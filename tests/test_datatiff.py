"""Measurement TIFFs (satellite, elevation, scientific rasters) through `esrgan upscale`, as a user runs it.

Inputs are real photographs (scikit-image's samples) turned into the rasters such files hold: a 6-band uint16
GeoTIFF, an int16 elevation model with a nodata hole (PixelIsPoint), float32 temperatures with NaNs, float64 NDVI,
uint32 counts, RGB + NIR, planar multi-band, float RGBA with associated alpha. They are written with rasterio (GDAL)
and tifffile, upscaled by the CLI in a subprocess with a tiny x2 model, and checked against what
docs/measurements.md promises: same samples, dtype, layout and ExtraSamples; georeferencing scaled; nodata and NaN
where the nearest-neighbour upscale of the invalid mask says; every band of more than 8 bits stretched from its own
[min, max] (the RGB bands jointly) to [0, 1] for the model and back, 8-bit bands over 0..255 as a PNG's, and the
values what upscaling each band alone (or the RGB bands together) as a one-band (or RGB) raster gives.

Three CLI runs in all (one batch per output format, one for the sample-count guard): each costs seconds of start-up.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli

rasterio = pytest.importorskip("rasterio")
tifffile = pytest.importorskip("tifffile")
skdata = pytest.importorskip("skimage.data")

from affine import Affine  # noqa: E402  (rasterio's dependency)
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from esrgan.checkpoints import save_model  # noqa: E402
from esrgan.errors import ImageError  # noqa: E402
from esrgan.generator import RRDBNet  # noqa: E402
from esrgan.imageio import ImageData, read_image, write_image  # noqa: E402
from esrgan.upscale import Upscaler  # noqa: E402

H, W, S = 48, 40, 2  # input size (small: the model runs on 2 CPU cores) and the model's scale
UTM = CRS.from_epsg(32633)
GRID = from_origin(500000, 4200000, 10, 10)


# --- the model ------------------------------------------------------------------------------------------------------
def tiny_x2() -> RRDBNet:
    """A tiny x2 RRDBNet: the bicubic upscale of its input (image residual) plus the random texture of its body, so
    outputs look like the input (value checks are not vacuous) and depend non-linearly on it (a wrong value mapping
    shows)."""
    torch.manual_seed(0)
    model = RRDBNet(num_feat=16, num_block=1, num_grow=8, scale=2, image_residual=True)
    with torch.no_grad():
        model.conv_last.weight.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "tiny_x2.safetensors", tiny_x2())


@pytest.fixture(scope="module")
def upscaler(model_file: Path) -> Upscaler:
    """The same model in this process, for references of float data (fp32, one tile, as the CLI runs it here)."""
    return Upscaler.from_file(model_file, device="cpu", precision="fp32", tile=0)


def model_on_unit(up: Upscaler, x: np.ndarray) -> np.ndarray:
    """The model's output for float data already in [0, 1] (HxW grey or HxWx3 colour), float64, clamped to [0, 1]."""
    return up.upscale(np.ascontiguousarray(x, dtype=np.float32)).astype(np.float64)


STEPS = 2 / 65535
"""Tolerance of stretched values, as a fraction of the band's range: the spec does not say how precisely the
[0, 1] data is held between the mapping and the model, and the implementation holds it as uint16 (its docstring);
two steps of 1/65535 cover the rounding before and after the model (whose gain is about 1)."""


def stretched(up: Upscaler, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """What a band (or the RGB bands, jointly) becomes: [lo, hi] -> [0, 1], the model, and back."""
    unit = (x.astype(np.float64) - lo) / (hi - lo)
    return lo + model_on_unit(up, unit) * (hi - lo)


# --- photographs as rasters --------------------------------------------------------------------------------------------
def crops() -> dict[str, np.ndarray]:
    """HxW(x3) uint8 crops of real photographs (face, coffee cup, cameraman, cat)."""
    return {
        "face": np.ascontiguousarray(skdata.astronaut()[60 : 60 + H, 180 : 180 + W]),
        "cup": np.ascontiguousarray(skdata.coffee()[100 : 100 + H, 300 : 300 + W]),
        "camera": np.ascontiguousarray(skdata.camera()[200 : 200 + H, 200 : 200 + W]),
        "camera2": np.ascontiguousarray(skdata.camera()[80 : 80 + H, 240 : 240 + W]),
        "cat": np.ascontiguousarray(skdata.chelsea()[100 : 100 + H, 150 : 150 + W]),
    }


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def six_bands(c: dict[str, np.ndarray]) -> np.ndarray:
    """6xHxW uint16 (never 0, the nodata value): face R G B, the cup's red as 'NIR', the cameraman, a derived plane."""
    face, cup = c["face"].astype(np.float64), c["cup"].astype(np.float64)
    planes = [
        face[:, :, 0] * 257,
        face[:, :, 1] * 257,
        face[:, :, 2] * 240 + 900,
        cup[:, :, 0] * 200 + 5000,
        c["camera"].astype(np.float64) * 257,
        (face[:, :, 0] + cup[:, :, 2]) * 120 + 300,
    ]
    return np.clip(np.rint(np.stack(planes)), 1, 65535).astype(np.uint16)


def nir8(c: dict[str, np.ndarray]) -> np.ndarray:
    """An 8-bit 'near infrared' plane with dark and bright parts (as alpha it would hide or dim much of the RGB)."""
    return np.ascontiguousarray(c["cat"][:, :, 1])


def rgb16_photo(c: dict[str, np.ndarray]) -> np.ndarray:
    return np.rint(c["face"].astype(np.float64) * 257 * 0.9 + 3000).astype(np.uint16)


def write_geotiff(
    path: Path, bands: np.ndarray, *, crs: CRS = UTM, transform: Affine = GRID, **options: Any
) -> Path:
    """bands (CxHxW) as a GeoTIFF through GDAL; options: nodata, photometric, tags (dict), descriptions (list)."""
    tags = options.pop("tags", None)
    descriptions = options.pop("descriptions", None)
    with rasterio.open(
        path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=bands.shape[0],
        dtype=bands.dtype.name, crs=crs, transform=transform, **options,
    ) as dst:  # fmt: skip
        dst.write(bands)
        if tags:
            dst.update_tags(**tags)
        for k, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(k, text)
    return path


def nn_up(mask: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upscale of a mask: output (y, x) takes input (y // S, x // S)."""
    return np.repeat(np.repeat(mask, S, axis=0), S, axis=1)


def tiff_bands(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A TIFF's first page as CxHxW (whatever its planar configuration) and its layout tags."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        array = page.asarray()
        layout = {
            "photometric": int(page.photometric),
            "planarconfig": int(page.planarconfig),
            "extrasamples": tuple(int(e) for e in page.extrasamples),
            "samples": int(page.samplesperpixel),
            "dtype": array.dtype,
            "tags": {tag.code for tag in page.tags},
        }
    if layout["samples"] == 1:
        array = array.reshape(1, *array.shape[-2:])
    elif layout["planarconfig"] == 1:
        array = np.moveaxis(array, -1, 0)
    return np.ascontiguousarray(array), layout


def geo(path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return {
                "transform": src.transform,
                "crs": src.crs,
                "nodata": src.nodata,
                "tags": src.tags(),
                "descriptions": src.descriptions,
                "size": (src.height, src.width),
                "count": src.count,
            }


def assert_transform(out: Affine, expected: Affine) -> None:
    got, want = tuple(out)[:6], tuple(expected)[:6]
    for g, e in zip(got, want, strict=True):
        assert abs(g - e) <= 1e-9 * max(abs(e), 1.0), f"transform {got} != expected {want}"


def scaled(transform: Affine) -> Affine:
    return transform @ Affine.scale(W / (W * S), H / (H * S))


def errors_about(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if name in line]


# --- batch A: every kind of measurement TIFF, plus the single-band references, in one CLI run to TIFF ---------------
def make_inputs(folder: Path) -> dict[str, Any]:
    """Write the measurement TIFFs and the reference images into folder; return the arrays they hold."""
    c = crops()
    data: dict[str, Any] = {}

    # 6-band uint16 GeoTIFF (GDAL: minisblack, five unspecified extra samples), nodata=0 (no pixel is 0), metadata
    ms = six_bands(c)
    data["ms"] = ms
    write_geotiff(
        folder / "ms.tif", ms, nodata=0, tags={"SENSOR": "esrgan-test", "PROCESSING": "L2A"},
        descriptions=["red", "green", "blue", "nir", "pan", "index"],
    )  # fmt: skip
    for k in range(6):  # each band alone, as a one-band GeoTIFF: what band k of the output must equal
        write_geotiff(folder / f"ms_band{k}.tif", ms[k : k + 1])

    # the first three of those bands again, planar ("separate"), minisblack with two unspecified extra samples
    tifffile.imwrite(
        folder / "planar.tif", ms[:3], photometric="minisblack", planarconfig="separate", extrasamples=[0, 0]
    )

    # 2-band uint16 with nodata=0 in a block of both bands (values elsewhere far from 0)
    u16 = np.stack([grey(c["face"]) * 100 + 10000, c["camera2"].astype(np.float64) * 100 + 12000])
    u16 = np.rint(u16).astype(np.uint16)
    u16_invalid = np.zeros((H, W), bool)
    u16_invalid[5:15, 20:33] = True
    u16_invalid[40, 3] = True
    u16[:, u16_invalid] = 0
    data["u16nd"], data["u16nd_invalid"] = u16, u16_invalid
    write_geotiff(folder / "u16nd.tif", u16, nodata=0)

    # int16 elevation model, -500..3000 m, nodata -9999 in a hole and one pixel, PixelIsPoint
    dem = np.rint(-500 + c["camera"].astype(np.float64) / 255 * 3500).astype(np.int16)
    dem_invalid = np.zeros((H, W), bool)
    dem_invalid[30:40, 20:35] = True
    dem_invalid[5, 5] = True
    dem[dem_invalid] = -9999
    data["dem"], data["dem_invalid"] = dem, dem_invalid
    write_geotiff(folder / "dem.tif", dem[None], nodata=-9999, tags={"AREA_OR_POINT": "Point"})

    # int16 without invalid pixels and without georeferencing (signed samples alone make it a measurement TIFF)
    dem_full = np.rint(-500 + c["camera2"].astype(np.float64) / 255 * 3500).astype(np.int16)
    data["dem_full"] = dem_full
    tifffile.imwrite(folder / "dem_full.tif", dem_full, photometric="minisblack")

    # float32 temperatures in kelvin (250-320) with a NaN block and one NaN pixel, georeferenced
    kelvin = (250 + grey(c["cup"]) / 255 * 70).astype(np.float32)
    kelvin_invalid = np.zeros((H, W), bool)
    kelvin_invalid[10:20, 5:15] = True
    kelvin_invalid[30, 30] = True
    kelvin[kelvin_invalid] = np.nan
    data["kelvin"], data["kelvin_invalid"] = kelvin, kelvin_invalid
    write_geotiff(folder / "kelvin.tif", kelvin[None])

    # float64 NDVI in -1..1 on a geographic grid, nodata -9999 in a block
    face = c["face"].astype(np.float64)
    ndvi = (c["cup"][:, :, 0] - face[:, :, 0]) / (c["cup"][:, :, 0] + face[:, :, 0] + 1.0)
    ndvi_invalid = np.zeros((H, W), bool)
    ndvi_invalid[20:26, 0:9] = True
    ndvi[ndvi_invalid] = -9999.0
    data["ndvi"], data["ndvi_invalid"] = ndvi, ndvi_invalid
    write_geotiff(
        folder / "ndvi.tif", ndvi[None], crs=CRS.from_epsg(4326), transform=from_origin(12.0, 46.0, 0.001, 0.001),
        nodata=-9999.0,
    )  # fmt: skip

    # float32 already in [0, 1] (but spanning only 0.2..0.7): stretched all the same
    unit = (0.2 + 0.5 * c["camera"].astype(np.float64) / 255).astype(np.float32)
    data["unit"] = unit
    tifffile.imwrite(folder / "unit.tif", unit, photometric="minisblack")

    # float32 RGB radiances with different ranges per colour band: mapped jointly
    rgbf = np.stack(
        [face[:, :, 0] / 255 * 1000, 200 + face[:, :, 1] / 255 * 400, 100 + face[:, :, 2] / 255 * 200], axis=2
    ).astype(np.float32)
    data["rgbf"] = rgbf
    tifffile.imwrite(folder / "rgbf.tif", rgbf, photometric="rgb")

    # uint32 counts up to ~3.9e9
    counts = (100000 + c["camera2"].astype(np.float64) * 1.5e7).astype(np.uint32)
    data["u32"] = counts
    tifffile.imwrite(folder / "u32.tif", counts, photometric="minisblack")

    # more sample types: float16 (a NaN pixel), int8, int32
    celsius = (-20 + c["camera2"].astype(np.float64) / 255 * 65).astype(np.float16)
    celsius[7, 9] = np.nan
    data["f16"] = celsius
    tifffile.imwrite(folder / "f16.tif", celsius, photometric="minisblack")
    data["i8"] = np.rint(-100 + grey(c["cat"]) / 255 * 200).astype(np.int8)
    tifffile.imwrite(folder / "i8.tif", data["i8"], photometric="minisblack")
    data["i32"] = np.rint(-1e6 + grey(c["face"]) / 255 * 2e9).astype(np.int32)
    tifffile.imwrite(folder / "i32.tif", data["i32"], photometric="minisblack")

    # a tiled GeoTIFF (as cloud-optimised ones are), 16x16 blocks
    write_geotiff(folder / "tiled.tif", ms[3:5], tiled=True, blockxsize=16, blockysize=16)

    # uint16 with a rotated grid (ModelTransformation tag instead of pixel scale + tiepoint)
    data["rot_transform"] = Affine(10, 2, 500000, 1, -10, 4200000)
    write_geotiff(folder / "rot.tif", ms[4:5], transform=data["rot_transform"])

    # uint8 RGB + NIR (an unspecified extra sample, not alpha), with the RGB and the NIR alone as GeoTIFFs
    rgb, nir = c["face"], nir8(c)
    data["rgbnir"] = np.dstack([rgb, nir])
    tifffile.imwrite(folder / "rgbnir.tif", data["rgbnir"], photometric="rgb", extrasamples=[0])
    write_geotiff(folder / "rgb_geo.tif", np.moveaxis(rgb, -1, 0), photometric="RGB")
    write_geotiff(folder / "nir_geo.tif", nir[None])

    # a 16-bit RGB GeoTIFF (an orthophoto): batch B writes it as PNG, which must hold the same pixels as this TIFF
    write_geotiff(folder / "rgb16geo.tif", np.moveaxis(rgb16_photo(c), -1, 0), photometric="RGB")

    # float32 RGBA with associated (premultiplied) alpha, alpha 0.3..1 (no fully transparent pixel)
    straight = c["cat"].astype(np.float32) / 255
    alpha = (0.3 + 0.7 * c["camera"].astype(np.float32) / 255).astype(np.float32)
    data["assoc_straight"], data["assoc_alpha"] = straight, alpha
    tifffile.imwrite(folder / "assoc.tif", np.dstack([straight * alpha[:, :, None], alpha]), photometric="rgb",
                     extrasamples=[1])  # fmt: skip
    return data


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("batch")
    folder = root / "in"
    folder.mkdir()
    data = make_inputs(folder)
    out = root / "out"
    r = run_cli(
        "upscale", folder, "-o", out, "--model", model_file, "--precision", "fp32", "--device", "cpu", "--quiet",
        cwd=root,
    )  # fmt: skip
    return {"in": folder, "out": out, "run": r, "data": data}


def output(batch: dict[str, Any], name: str) -> Path:
    path = batch["out"] / f"{name}_x{S}.tif"
    assert path.is_file(), f"{path.name} not written; stderr:\n{batch['run'].stderr}"
    return path


def test_the_batch_upscales_every_measurement_tiff(batch: dict[str, Any]) -> None:
    r = batch["run"]
    assert r.returncode == 0, r.stderr
    assert not [line for line in r.stderr.splitlines() if "error" in line.lower()], r.stderr
    names = sorted(p.name for p in batch["out"].iterdir())
    assert [n for n in names if n.startswith(".")] == []  # no temporary files left
    for name in ("ms", "planar", "u16nd", "dem", "dem_full", "kelvin", "ndvi", "unit", "rgbf", "u32", "rot",
                 "rgbnir", "rgb_geo", "nir_geo", "rgb16geo", "assoc", "f16", "i8", "i32", "tiled"):  # fmt: skip
        assert f"{name}_x{S}.tif" in names, names


def test_multiband_uint16_geotiff_keeps_layout_georeferencing_and_metadata(batch: dict[str, Any]) -> None:
    src, dst = batch["in"] / "ms.tif", output(batch, "ms")
    bands, layout = tiff_bands(dst)
    _, layout_in = tiff_bands(src)
    assert bands.shape == (6, H * S, W * S) and bands.dtype == np.uint16
    assert layout["photometric"] == layout_in["photometric"] == 1  # minisblack
    assert layout["planarconfig"] == layout_in["planarconfig"] == 1
    assert layout["extrasamples"] == layout_in["extrasamples"] == (0, 0, 0, 0, 0)
    g_in, g_out = geo(src), geo(dst)
    assert g_out["size"] == (H * S, W * S) and g_out["count"] == 6
    assert_transform(g_out["transform"], scaled(g_in["transform"]))
    assert g_out["crs"] == g_in["crs"] == UTM
    assert g_out["nodata"] == 0
    tags = g_out["tags"]  # GDAL_METADATA
    assert tags.get("SENSOR") == "esrgan-test" and tags.get("PROCESSING") == "L2A", tags
    assert g_out["descriptions"] == ("red", "green", "blue", "nir", "pan", "index")


def test_each_band_of_a_multiband_file_equals_that_band_upscaled_alone(batch: dict[str, Any]) -> None:
    """A minisblack multi-band file is six grey images: band k == band k alone as a one-band GeoTIFF, upscaled (each
    stretched from its own range)."""
    bands, _ = tiff_bands(output(batch, "ms"))
    for k in range(6):
        alone, _ = tiff_bands(output(batch, f"ms_band{k}"))
        assert alone.shape == (1, H * S, W * S) and alone.dtype == np.uint16
        diff = np.abs(bands[k].astype(np.int64) - alone[0].astype(np.int64))
        assert diff.max() == 0, f"band {k}: {np.count_nonzero(diff)} values differ, by up to {diff.max()}"
    # the bands are really different images (the check above is not comparing one plane with itself)
    assert np.abs(bands[0].astype(np.int64) - bands[4]).mean() > 1000


def test_planar_multiband_file_keeps_its_planar_configuration(batch: dict[str, Any]) -> None:
    bands, layout = tiff_bands(output(batch, "planar"))
    assert layout["planarconfig"] == 2 and layout["photometric"] == 1
    assert layout["extrasamples"] == (0, 0)
    assert bands.shape == (3, H * S, W * S) and bands.dtype == np.uint16
    for k in range(3):
        alone, _ = tiff_bands(output(batch, f"ms_band{k}"))
        diff = np.abs(bands[k].astype(np.int64) - alone[0])
        assert diff.max() == 0, f"band {k}: {np.count_nonzero(diff)} values differ, by up to {diff.max()}"


def test_uint16_nodata_pixels_stay_nodata_exactly_where_they_were(batch: dict[str, Any]) -> None:
    bands, _ = tiff_bands(output(batch, "u16nd"))
    assert bands.shape == (2, H * S, W * S) and bands.dtype == np.uint16
    invalid = nn_up(batch["data"]["u16nd_invalid"])
    for k in range(2):
        assert np.array_equal(bands[k] == 0, invalid), (
            f"band {k}: {np.count_nonzero((bands[k] == 0) != invalid)} pixels disagree with the upscaled mask"
        )
    assert geo(output(batch, "u16nd"))["nodata"] == 0


def test_int16_elevation_with_nodata_and_pixel_is_point(batch: dict[str, Any]) -> None:
    src, dst = batch["in"] / "dem.tif", output(batch, "dem")
    g_in, g_out = geo(src), geo(dst)
    assert g_in["tags"]["AREA_OR_POINT"] == "Point"  # the input is what the test says
    assert_transform(g_out["transform"], scaled(g_in["transform"]))
    assert g_out["crs"] == UTM and g_out["nodata"] == -9999
    bands, layout = tiff_bands(dst)
    assert bands.shape == (1, H * S, W * S) and bands.dtype == np.int16 and layout["photometric"] == 1
    dem, invalid = batch["data"]["dem"], batch["data"]["dem_invalid"]
    out_invalid = nn_up(invalid)
    got = bands[0]
    assert np.array_equal(got == -9999, out_invalid), (
        f"{np.count_nonzero((got == -9999) != out_invalid)} pixels disagree with the upscaled nodata mask"
    )
    lo, hi = int(dem[~invalid].min()), int(dem[~invalid].max())
    valid = got[~out_invalid]
    assert lo <= valid.min() and valid.max() <= hi, f"[{valid.min()}, {valid.max()}] outside [{lo}, {hi}]"


def test_int16_values_are_stretched_from_their_range_and_back(
    batch: dict[str, Any], upscaler: Upscaler
) -> None:
    dem = batch["data"]["dem_full"]
    bands, layout = tiff_bands(output(batch, "dem_full"))
    assert (
        bands.dtype == np.int16
        and bands.shape == (1, H * S, W * S)
        and layout["tags"].isdisjoint({33550, 33922})
    )
    lo, hi = float(dem.min()), float(dem.max())
    expected = stretched(upscaler, dem, lo, hi)
    err = np.abs(bands[0].astype(np.float64) - expected)
    assert err.max() <= 1.0, (
        f"off by up to {err.max():.2f} m (mean {err.mean():.3f}) from the stretched upscale"
    )
    assert lo <= bands[0].min() and bands[0].max() <= hi


def test_float32_nan_pixels_stay_nan_exactly_where_they_were(batch: dict[str, Any]) -> None:
    src, dst = batch["in"] / "kelvin.tif", output(batch, "kelvin")
    bands, _ = tiff_bands(dst)
    assert bands.shape == (1, H * S, W * S) and bands.dtype == np.float32
    kelvin, invalid = batch["data"]["kelvin"], batch["data"]["kelvin_invalid"]
    out_invalid = nn_up(invalid)
    got = bands[0]
    assert np.array_equal(np.isnan(got), out_invalid), (
        f"{np.count_nonzero(np.isnan(got) != out_invalid)} pixels disagree with the upscaled NaN mask"
    )
    valid = got[~out_invalid]
    assert np.isfinite(valid).all()
    lo, hi = float(np.nanmin(kelvin)), float(np.nanmax(kelvin))
    assert lo <= valid.min() and valid.max() <= hi, f"[{valid.min()}, {valid.max()}] outside [{lo}, {hi}]"
    assert valid.std() > 5  # a picture of the temperatures, not a constant
    assert_transform(geo(dst)["transform"], scaled(geo(src)["transform"]))


def test_float64_ndvi_with_nodata_on_a_geographic_grid(batch: dict[str, Any]) -> None:
    src, dst = batch["in"] / "ndvi.tif", output(batch, "ndvi")
    g_in, g_out = geo(src), geo(dst)
    assert g_out["crs"] == CRS.from_epsg(4326) and g_out["nodata"] == -9999.0
    assert_transform(g_out["transform"], scaled(g_in["transform"]))
    bands, _ = tiff_bands(dst)
    assert bands.dtype == np.float64 and bands.shape == (1, H * S, W * S)
    ndvi, invalid = batch["data"]["ndvi"], batch["data"]["ndvi_invalid"]
    out_invalid = nn_up(invalid)
    assert np.array_equal(bands[0] == -9999.0, out_invalid)
    valid = bands[0][~out_invalid]
    lo, hi = ndvi[~invalid].min(), ndvi[~invalid].max()
    assert np.isfinite(valid).all() and lo <= valid.min() and valid.max() <= hi


def test_float_data_within_0_1_is_stretched_too(batch: dict[str, Any], upscaler: Upscaler) -> None:
    """Data in [0, 1] that uses little of it (0.2..0.7) is stretched like any other: the models do much worse on
    low-range data (docs/measurements.md, +2.7 dB on Set5 as reflectance)."""
    unit = batch["data"]["unit"]
    bands, _ = tiff_bands(output(batch, "unit"))
    assert bands.dtype == np.float32 and bands.shape == (1, H * S, W * S)
    lo, hi = float(unit.min()), float(unit.max())
    expected = stretched(upscaler, unit, lo, hi)
    as_is = model_on_unit(upscaler, unit)
    assert np.abs(as_is - expected).max() > 1e-2  # feeding the values as they are would show
    err = np.abs(bands[0] - expected)
    assert err.max() <= STEPS * (hi - lo), f"off by up to {err.max():.2e} from the stretched upscale"


def test_float_rgb_bands_are_mapped_jointly_as_colour(batch: dict[str, Any], upscaler: Upscaler) -> None:
    """R, G and B of a float RGB file span different ranges: one [min, max] for the three, through the model as
    colour. Compared where that lands inside each band's own range (clamping to it is the next test's)."""
    rgbf = batch["data"]["rgbf"]
    bands, layout = tiff_bands(output(batch, "rgbf"))
    assert layout["photometric"] == 2 and layout["extrasamples"] == () and bands.dtype == np.float32
    assert bands.shape == (3, H * S, W * S)
    lo, hi = float(rgbf.min()), float(rgbf.max())
    colour = stretched(upscaler, rgbf, lo, hi)  # HxWx3 through the model together
    per_band = np.stack(
        [stretched(upscaler, rgbf[:, :, k], rgbf[:, :, k].min(), rgbf[:, :, k].max()) for k in range(3)],
        axis=2,
    )
    tol = STEPS * (hi - lo)
    assert np.abs(per_band - colour).max() > 10 * tol  # the wrong mapping would show
    for k in range(3):
        inside = (colour[:, :, k] >= rgbf[:, :, k].min()) & (colour[:, :, k] <= rgbf[:, :, k].max())
        assert inside.mean() > 0.9
        err = np.abs(bands[k] - colour[:, :, k])[inside]
        assert err.max() <= tol, f"band {k}: off by up to {err.max():.4g} (tolerance {tol:.3g})"


def test_float_rgb_output_bands_stay_within_the_joint_colour_range(batch: dict[str, Any]) -> None:
    """The colour bands share one range: each output band stays within it (not within its own: sharpening may
    take green above the greenest input pixel, as in a photograph)."""
    rgbf = batch["data"]["rgbf"]
    bands, _ = tiff_bands(output(batch, "rgbf"))
    lo, hi = float(rgbf.min()), float(rgbf.max())
    for k in range(3):
        got_lo, got_hi = float(bands[k].min()), float(bands[k].max())
        assert lo <= got_lo <= got_hi <= hi, (
            f"band {k}: output [{got_lo:.2f}, {got_hi:.2f}] outside [{lo}, {hi}]"
        )


def test_uint32_counts_keep_their_dtype_and_range(batch: dict[str, Any], upscaler: Upscaler) -> None:
    counts = batch["data"]["u32"]
    bands, _ = tiff_bands(output(batch, "u32"))
    assert bands.dtype == np.uint32 and bands.shape == (1, H * S, W * S)
    lo, hi = float(counts.min()), float(counts.max())
    assert lo <= bands.min() and bands.max() <= hi
    expected = stretched(upscaler, counts, lo, hi)
    err = np.abs(bands[0].astype(np.float64) - expected)
    assert err.max() <= STEPS * (hi - lo), f"off by up to {err.max():.4g} of a range of {hi - lo:.4g}"
    top = float(np.iinfo(np.uint32).max)
    wrong = (
        model_on_unit(upscaler, counts / top) * top
    )  # stretched from the dtype's range instead: would show
    assert np.abs(wrong - expected).max() > 10 * STEPS * (hi - lo)


@pytest.mark.parametrize("name", ["f16", "i8", "i32"])
def test_other_sample_types_keep_their_type_and_range(
    batch: dict[str, Any], upscaler: Upscaler, name: str
) -> None:
    x = batch["data"][name]
    bands, _ = tiff_bands(output(batch, name))
    assert bands.dtype == x.dtype and bands.shape == (1, H * S, W * S)
    invalid = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    got = bands[0].astype(np.float64)
    assert np.array_equal(np.isnan(got), nn_up(invalid))
    valid = got[~nn_up(invalid)]
    lo, hi = float(np.nanmin(x.astype(np.float64))), float(np.nanmax(x.astype(np.float64)))
    assert lo <= valid.min() and valid.max() <= hi, f"[{valid.min()}, {valid.max()}] outside [{lo}, {hi}]"
    if not invalid.any():  # the values (the fill under invalid pixels is the implementation's choice)
        err = np.abs(got - stretched(upscaler, x, lo, hi))
        assert err.max() <= STEPS * (hi - lo) + 0.5, (
            f"off by up to {err.max():.4g} of a range of {hi - lo:.4g}"
        )


def test_a_tiled_geotiff_comes_back_tiled(batch: dict[str, Any]) -> None:
    with rasterio.open(batch["in"] / "tiled.tif") as src, rasterio.open(output(batch, "tiled")) as dst:
        assert src.block_shapes == [(16, 16)] * 2  # the input is what the test says
        assert dst.block_shapes == [(16, 16)] * 2, dst.block_shapes
        assert dst.count == 2 and dst.dtypes == ("uint16", "uint16")
        assert_transform(dst.transform, scaled(src.transform))


def test_complex_samples_are_refused_in_one_line_either_way(tmp_path: Path) -> None:
    """Complex samples (radar) hold no picture for a model: refused by both readers, before any model runs."""
    path = tmp_path / "slc.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, (rng.random((H, W)) + 1j * rng.random((H, W))).astype(np.complex64))
    for measurements in (False, True):
        with pytest.raises(ImageError) as caught:
            read_image(path, measurements=measurements)
        assert str(caught.value) == f"{path}: complex64 samples are not supported (save as 8 or 16-bit)"


def test_rotated_grid_model_transformation_is_scaled(batch: dict[str, Any]) -> None:
    g_in, g_out = geo(batch["in"] / "rot.tif"), geo(output(batch, "rot"))
    assert_transform(g_in["transform"], batch["data"]["rot_transform"])
    assert_transform(g_out["transform"], scaled(batch["data"]["rot_transform"]))
    assert g_out["crs"] == UTM
    bands, _ = tiff_bands(output(batch, "rot"))
    alone, _ = tiff_bands(output(batch, "ms_band4"))  # the same pixels as a GeoTIFF on a plain grid
    diff = np.abs(bands.astype(np.int64) - alone)
    assert diff.max() == 0, f"{np.count_nonzero(diff)} values differ, by up to {diff.max()}"


def test_rgb_plus_nir_is_colour_plus_a_grey_band_not_alpha(batch: dict[str, Any]) -> None:
    bands, layout = tiff_bands(output(batch, "rgbnir"))
    # the NIR band was once taken for alpha: colour premultiplied by it, written back with ExtraSamples 2
    assert layout["photometric"] == 2 and layout["extrasamples"] == (0,), layout
    assert bands.shape == (4, H * S, W * S) and bands.dtype == np.uint8
    rgb, _ = tiff_bands(output(batch, "rgb_geo"))
    nir, _ = tiff_bands(output(batch, "nir_geo"))
    diff = np.abs(bands[:3].astype(np.int16) - rgb)
    assert diff.max() == 0, (
        f"RGB differs from the RGB upscaled alone at {np.count_nonzero(diff)} values (max {diff.max()})"
    )
    assert np.array_equal(bands[3], nir[0]), "NIR differs from the NIR upscaled alone"


def test_associated_alpha_is_written_back_unpremultiplied(batch: dict[str, Any], upscaler: Upscaler) -> None:
    bands, layout = tiff_bands(output(batch, "assoc"))
    assert layout["photometric"] == 2 and layout["extrasamples"] == (2,), layout
    assert bands.shape == (4, H * S, W * S) and bands.dtype == np.float32
    straight, alpha = batch["data"]["assoc_straight"], batch["data"]["assoc_alpha"]
    lo, hi = float(straight.min()), float(straight.max())
    colour = stretched(upscaler, straight, lo, hi)  # straight colour, stretched jointly; alpha over [0, 1]
    premultiplied = stretched(upscaler, straight * alpha[:, :, None], lo, hi)
    assert np.abs(premultiplied - colour).max() > 0.05  # not un-premultiplying would show
    for k in range(3):
        err = np.abs(bands[k] - colour[:, :, k])
        assert err.max() <= STEPS * (hi - lo), f"colour {k}: off by up to {err.max():.2e}"
    from scipy import ndimage

    # the model's alpha is kept within the min..max of each input pixel's 3x3 neighbourhood
    a_lo, a_hi = (
        f(alpha, 3, mode="nearest").repeat(S, 0).repeat(S, 1)
        for f in (ndimage.minimum_filter, ndimage.maximum_filter)
    )
    err = np.abs(bands[3] - np.clip(model_on_unit(upscaler, alpha), a_lo, a_hi))
    assert err.max() <= STEPS, f"alpha: off by up to {err.max():.2e}"


# --- batch B: --format png ------------------------------------------------------------------------------------------
def test_png_output_only_where_the_values_fit(
    tmp_path: Path, batch: dict[str, Any], model_file: Path
) -> None:
    """float, extra bands and invalid pixels: one error line each, nothing written; 8/16-bit GeoTIFFs: written with a
    warning that the georeferencing is dropped; a plain PNG of the same batch: written."""
    c = crops()
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("kelvin.tif", "rgbnir.tif"):
        (folder / name).write_bytes((batch["in"] / name).read_bytes())
    nd1 = np.rint(grey(c["face"]) * 100 + 10000).astype(np.uint16)
    nd1[10:20, 10:20] = 0
    write_geotiff(folder / "nd1.tif", nd1[None], nodata=0)
    write_geotiff(folder / "geo8.tif", nir8(c)[None])  # the NIR plane as an 8-bit GeoTIFF
    rgb16 = rgb16_photo(c)
    write_geotiff(folder / "rgb16geo.tif", np.moveaxis(rgb16, -1, 0), photometric="RGB")
    write_image(folder / "rgb16.png", ImageData.from_array(rgb16))  # the same pixels as a plain 16-bit PNG
    out = tmp_path / "out"
    r = run_cli(
        "upscale", folder, "-o", out, "--format", "png", "--model", model_file, "--precision", "fp32",
        "--device", "cpu", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    for name in ("kelvin", "rgbnir", "nd1"):
        lines = errors_about(r.stderr, f"{name}.tif")
        assert len(lines) == 1, f"{name}: {lines}\n{r.stderr}"
        assert "tiff" in lines[0].lower(), lines[0]
        assert not (out / f"{name}_x{S}.png").exists()
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"geo8_x{S}.png", f"rgb16_x{S}.png", f"rgb16geo_x{S}.png"], (written, r.stderr)
    warned = [line for line in r.stderr.splitlines() if "georef" in line.lower()]
    assert warned and all("error" not in line.lower() for line in warned), r.stderr
    # the PNG holds what the TIFF output of the same GeoTIFF holds (batch A)
    geo8 = read_image(out / f"geo8_x{S}.png")
    nir, _ = tiff_bands(output(batch, "nir_geo"))
    assert (geo8.bit_depth, geo8.channels) == (8, 1)
    diff = np.abs(geo8.pixels[:, :, 0].astype(np.int32) - nir[0])
    assert diff.max() == 0, f"8-bit GeoTIFF as PNG: {np.count_nonzero(diff)} values differ (max {diff.max()})"
    colour = read_image(out / f"rgb16geo_x{S}.png")
    as_tiff, _ = tiff_bands(output(batch, "rgb16geo"))
    assert (colour.bit_depth, colour.channels, colour.alpha) == (16, 3, None)
    diff = np.abs(np.moveaxis(colour.pixels, -1, 0).astype(np.int32) - as_tiff)
    assert diff.max() == 0, (
        f"16-bit RGB GeoTIFF as PNG: {np.count_nonzero(diff)} values differ (max {diff.max()})"
    )


# --- batch C: the sample-count guard --------------------------------------------------------------------------------
def test_samples_per_pixel_count_against_the_pixel_limit(
    tmp_path: Path, batch: dict[str, Any], model_file: Path
) -> None:
    """--max-megapixels of 2400 pixels: 48x40 = 1920 pixels pass, but 6 samples each (11,520 > 4 x 2400) do not;
    RGB + NIR (7,680 samples) still does."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ms.tif", "ms_band0.tif", "rgbnir.tif"):
        (folder / name).write_bytes((batch["in"] / name).read_bytes())
    out = tmp_path / "out"
    r = run_cli(
        "upscale", folder, "-o", out, "--model", model_file, "--max-megapixels", str(2400 / 2**20),
        "--precision", "fp32", "--device", "cpu", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = errors_about(r.stderr, "ms.tif")
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"ms_band0_x{S}.tif", f"rgbnir_x{S}.tif"], r.stderr


# --- other readers: read_image without measurements=True ----------------------------------------------------------------
def test_read_image_still_refuses_measurement_tiffs_in_true_words(tmp_path: Path) -> None:
    c = crops()
    files = {
        "float32": tmp_path / "temperature.tif",
        "int16": tmp_path / "elevation.tif",
        "uint8x8": tmp_path / "eight_bands.tif",
        "uint16x6": tmp_path / "six_bands.tif",
        "geo16": tmp_path / "band.tif",  # a sensor's 16-bit band: a measurement, not a dark photograph
    }
    tifffile.imwrite(
        files["float32"], (250 + grey(c["cup"]) / 4).astype(np.float32), photometric="minisblack"
    )
    tifffile.imwrite(files["int16"], (c["camera"].astype(np.int16) * 10 - 500), photometric="minisblack")
    tifffile.imwrite(
        files["uint8x8"],
        np.dstack([c["face"], c["cup"], c["cat"][:, :, :2]]),
        photometric="minisblack",
        planarconfig="contig",
    )
    write_geotiff(files["uint16x6"], six_bands(c))
    write_geotiff(files["geo16"], six_bands(c)[:1])
    write_geotiff(tmp_path / "ortho.tif", np.moveaxis(c["face"], -1, 0), photometric="RGB")
    assert np.array_equal(read_image(tmp_path / "ortho.tif").pixels, c["face"])  # an 8-bit one: a photograph
    messages = {}
    for kind, path in files.items():
        with pytest.raises(ImageError) as caught:
            read_image(path)
        messages[kind] = str(caught.value)
        assert str(path) in messages[kind] and "\n" not in messages[kind], messages[kind]
    assert "float" in messages["float32"].lower()
    assert "32-bit" not in messages["int16"], messages["int16"]
    assert not re.search(r"16-bit (TIFF|image|sample|data)", messages["uint8x8"]), messages["uint8x8"]
    assert "georeferencing" in messages["geo16"] and "gdal_translate" in messages["geo16"], messages["geo16"]
    for path in files.values():  # the opt-in reads them all
        read_image(path, measurements=True)


# --- batch D: one range for the tiles of a mosaic ------------------------------------------------------------------
def test_value_range_maps_every_tile_of_a_mosaic_alike(
    tmp_path: Path, model_file: Path, upscaler: Upscaler
) -> None:
    """Two tiles of one float raster span different ranges: with --value-range both are mapped from it (not each
    from its own min and max), values outside it are clipped with a warning naming the file; a range that is not
    LO < HI is refused before any work."""
    c = crops()
    kelvin = (250 + grey(c["cup"]) / 255 * 70).astype(np.float64)
    tiles = {"west": kelvin[:, : W // 2], "east": kelvin[:, W // 2 :] + 30.0}  # the east tile is warmer
    folder = tmp_path / "in"
    folder.mkdir()
    for name, tile in tiles.items():
        tifffile.imwrite(folder / f"{name}.tif", tile.astype(np.float32), photometric="minisblack")
    lo, hi = 270.0, 345.0  # the west tile reaches below 270: clipped
    assert tiles["west"].min() < lo and tiles["east"].max() <= hi
    out = tmp_path / "out"
    r = run_cli(
        "upscale", folder, "-o", out, "--model", model_file, "--value-range", f"{lo:g}:{hi:g}",
        "--precision", "fp32", "--device", "cpu", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    clipped = [line for line in r.stderr.splitlines() if "clipped" in line]
    assert len(clipped) == 1 and "west.tif" in clipped[0] and "warning" in clipped[0], r.stderr
    for name, tile in tiles.items():
        bands, _ = tiff_bands(out / f"{name}_x{S}.tif")
        expected = stretched(upscaler, np.clip(tile, lo, hi), lo, hi)
        own = stretched(upscaler, tile, float(tile.min()), float(tile.max()))
        assert np.abs(own - expected).max() > 10 * STEPS * (hi - lo)  # its own range would show
        err = np.abs(bands[0] - expected)
        assert err.max() <= STEPS * (hi - lo), f"{name}: off by up to {err.max():.3g}"
        assert lo <= bands[0].min() and bands[0].max() <= hi
    bad = run_cli("upscale", folder, "-o", tmp_path / "bad", "--model", model_file, "--value-range", "5:1")
    assert bad.returncode == 2 and "--value-range takes LO:HI with LO < HI" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()


# --- batch E: 8-bit rasters hold a screen's values; 16-bit ones a sensor's -------------------------------------------
def test_an_8_bit_orthophoto_upscales_as_the_same_pixels_in_a_png(tmp_path: Path, model_file: Path) -> None:
    """A hazy photograph (levels 41..212) as a PNG, as an LZW-compressed RGB GeoTIFF and as the RGB of an RGB + NIR
    GeoTIFF: all three come out alike, at the default precision (computed at 8 bits as the PNG is). They were
    stretched from their own min and max (so the same pixels came out differently, and each tile of a mosaic got
    its own contrast) and computed in fp32. Training reads the GeoTIFF as the PNG. A 16-bit georeferenced band (a
    sensor's 12 bits) is still stretched from its range, in `esrgan upscale` and in training alike."""
    from esrgan.data import decode_frames

    c = crops()
    hazy = np.rint(40 + c["face"].astype(np.float64) * 0.69).astype(np.uint8)
    assert (hazy.min(), hazy.max()) == (41, 212)
    band12 = c["camera"].astype(np.uint16) * 12 + 300  # a 12-bit sensor: within 300..3360 of 0..65535
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "photo.png", ImageData.from_array(hazy))
    write_geotiff(folder / "ortho.tif", np.moveaxis(hazy, -1, 0), photometric="RGB", compress="LZW")
    tifffile.imwrite(folder / "rgbn.tif", np.dstack([hazy, nir8(c)]), photometric="rgb", extrasamples=[0])
    write_geotiff(folder / "band12.tif", band12[None])
    out = tmp_path / "out"
    r = run_cli(
        "upscale", folder, "-o", out, "--model", model_file, "--device", "cpu", "--quiet", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    photo = read_image(out / f"photo_x{S}.png").pixels
    ortho, _ = tiff_bands(out / f"ortho_x{S}.tif")
    rgbn, _ = tiff_bands(out / f"rgbn_x{S}.tif")
    assert np.array_equal(np.moveaxis(ortho, 0, -1), photo), "the GeoTIFF's output differs from the PNG's"
    assert np.array_equal(np.moveaxis(rgbn[:3], 0, -1), photo), "RGB + NIR's RGB differs from the PNG's"
    assert geo(out / f"ortho_x{S}.tif")["crs"] == UTM  # still georeferenced
    up = Upscaler.from_file(model_file, device="cpu")  # the CLI's default precision, in this process
    up.upscale_image(read_image(folder / "photo.png"))
    as_png = up.last_precision
    up.upscale_image(read_image(folder / "ortho.tif", measurements=True))
    assert up.last_precision == as_png, "the orthophoto was computed in another precision than the PNG"
    # the stretch, for scale: what the old mapping gave differs by far more than rounding
    fp32 = Upscaler.from_file(model_file, device="cpu", precision="fp32", tile=0)
    lo, hi = float(hazy.min()), float(hazy.max())
    assert np.abs(stretched(fp32, hazy, lo, hi) - photo).max() > 3
    # training reads what upscaling reads
    assert np.array_equal(decode_frames(folder / "ortho.tif")[0], hazy)
    sensor = read_image(folder / "band12.tif", measurements=True)
    assert sensor.pixels.max() == 65535 and sensor.pixels.min() == 0  # stretched from its own range
    assert np.array_equal(decode_frames(folder / "band12.tif")[0], sensor.pixels)
    band, _ = tiff_bands(out / f"band12_x{S}.tif")
    lo, hi = float(band12.min()), float(band12.max())
    err = np.abs(band[0] - stretched(fp32, band12, lo, hi))
    assert err.max() <= 1 + STEPS * (hi - lo), f"16-bit band off by up to {err.max():.3g}"


def test_an_8_bit_band_never_comes_back_as_its_nodata_value(tmp_path: Path, model_file: Path) -> None:
    """Over 0..255 an 8-bit band's output can reach its nodata value (stretched from its valid [min, max], it never
    could): a dark grey GeoTIFF with nodata 0, a bright one with nodata 255, each with a hole, and an RGB orthophoto
    with GDAL's internal mask (which Pillow could not count the pages of: "corrupt or truncated image"). Valid
    pixels stay data (one step off the nodata value), the hole stays the hole. Review of session 35."""
    c = crops()
    dark = np.rint(c["camera"] * (11 / 255) + 1).astype(np.uint8)  # 1..12: the model's output reaches 0
    dark[10:20, 10:20] = 0
    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "in" / "nd0.tif", dark[None], nodata=0)
    write_geotiff(tmp_path / "in" / "nd255.tif", (255 - dark)[None], nodata=255)
    rgb = np.moveaxis(c["face"], -1, 0)
    mask = np.full((H, W), 255, np.uint8)
    mask[5:12, 5:15] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        tmp_path / "in" / "masked.tif", "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8", crs=UTM,
        transform=GRID, photometric="RGB",
    ) as dst:  # fmt: skip
        dst.write(rgb)
        dst.write_mask(mask)
    out = tmp_path / "out"
    r = run_cli("upscale", tmp_path / "in", "-o", out, "--model", model_file, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    hole = nn_up(dark == 0)
    for name, nodata in (("nd0", 0), ("nd255", 255)):
        with rasterio.open(out / f"{name}_x{S}.tif") as src:
            band, valid = src.read(1), src.read_masks(1) > 0
        assert np.array_equal(valid, ~hole), f"{name}: the hole moved"
        assert np.count_nonzero(band[~hole] == nodata) == 0, f"{name}: data came back as nodata {nodata}"
        assert np.abs(band[~hole].astype(int) - nodata).min() == 1  # it did reach it: moved one step off
    with rasterio.open(out / f"masked_x{S}.tif") as src:
        assert src.count == 3 and src.crs == UTM
        assert np.array_equal(src.read_masks(1) > 0, nn_up(mask > 0)), "the mask was not kept"


def test_8_bit_rasters_plan_and_report_8_bit_precision(tmp_path: Path, model_file: Path) -> None:
    """An 8-bit orthophoto is computed at 8 bits (above): the memory plan, the tile and the precision reported
    before the work (the web page's, the batch's fp32 warning) say so too. They took its uint16 planes for 16-bit
    pixels: `--precision bf16` warned that it would be computed in fp32, and an fp32 copy of the weights was made.
    Review of session 35."""
    c = crops()
    write_geotiff(tmp_path / "ortho.tif", np.moveaxis(c["face"], -1, 0), photometric="RGB")
    image = read_image(tmp_path / "ortho.tif", measurements=True)
    assert image.pixels.dtype == np.uint16 and Upscaler.computed_dtype(image) == np.uint8
    up = Upscaler.from_file(model_file, device="cpu", precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "16-bit and float images are computed in fp32"
        up.plan_memory(image, 1 << 30)
        up.upscale_image(image)
    assert up.last_precision == up.precision_for(Upscaler.computed_dtype(image)) == up.precision_for(np.uint8)
    assert up._fp32_runner is None or up.runner.dtype == torch.float32  # no second copy of the weights
    tifffile.imwrite(
        tmp_path / "rgbn.tif", np.dstack([c["face"], nir8(c)]), photometric="rgb", extrasamples=[0]
    )
    for given, computed in ((None, np.uint8), ((0.0, 300.0), np.uint16)):  # a range given: not 0..255
        rgbn = read_image(tmp_path / "rgbn.tif", measurements=True, value_range=given)
        assert Upscaler.computed_dtype(rgbn) == computed, given


def test_a_paired_set_of_16_bit_rasters_needs_one_value_range(tmp_path: Path) -> None:
    """Paired LR/HR training on 16-bit georeferenced bands (a 20 m LR band beside its 10 m HR): each stretched from
    its own [min, max] they are not on one scale (the LR's brightest pixel is averaged away), so the set is refused
    in one line naming the file and data.value_range; with the range both sides agree. 8-bit rasters (over
    0..255) need none. Review of session 35 (`esrgan evaluate` refused the same already)."""
    from esrgan.data import PatchDataset
    from esrgan.errors import ConfigError

    c = crops()
    hr = c["camera"].astype(np.uint16) * 12 + 300  # a 12-bit sensor
    hr[0, 0] = 4000  # one bright pixel
    lr = np.rint(hr.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3))).astype(np.uint16)
    for name, bands, res in (("hr", hr, 10), ("lr", lr, 20)):
        (tmp_path / name).mkdir()
        write_geotiff(
            tmp_path / name / "b04.tif", bands[None], transform=from_origin(500000, 4200000, res, res)
        )
    common = {"scale": 2, "patch_size": 16, "lr_dir": tmp_path / "lr", "channels": 1, "bits": 16}
    with pytest.raises(ConfigError) as refused:
        PatchDataset(tmp_path / "hr", **common)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "b04.tif" in message and "data.value_range" in message and "\n" not in message, message
    ds = PatchDataset(tmp_path / "hr", value_range=(0.0, 4095.0), **common)  # type: ignore[arg-type]
    hr_read, lr_read = (a[:, :, 0].astype(np.float64) for a in ds._load(0))
    mean_of_hr = hr_read.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3))
    assert np.abs(lr_read - mean_of_hr).max() <= 257  # one scale: within an 8-bit level of the 2x2 mean
    for name, bands in (("hr", c["face"]), ("lr", c["face"][::2, ::2])):  # 8-bit orthophotos: no range needed
        write_geotiff(tmp_path / name / "b04.tif", np.moveaxis(bands, -1, 0), photometric="RGB")
    PatchDataset(tmp_path / "hr", scale=2, patch_size=16, lr_dir=tmp_path / "lr")


def test_a_georeferenced_raster_with_an_orientation_tag_is_upscaled_as_shown(
    tmp_path: Path, model_file: Path
) -> None:
    """An 8-bit orthophoto with Orientation 3 and a 16-bit raster with Orientation 6 (not square): the photograph
    reader turned their pixels, the tag was written back (so every reader turned the output once more: 225 levels
    off) and the 6 was refused ("unsupported TIFF layout"). Now the raster is held as stored (the georeferencing
    maps its rows and columns), the model sees it as shown, and the output is stored with its tag: shown, it is
    what the same pixels in a plain TIFF give. Session 35's format audit."""
    c = crops()
    folder = tmp_path / "in"
    folder.mkdir()
    rect = np.ascontiguousarray(c["cup"])  # 48 x 40
    rect16 = rect.astype(np.uint16) * 200 + 1000  # a 16-bit raster (stretched from its range)
    geotags = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (33922, "d", 6, (0.0, 0.0, 0.0, 5e5, 4.2e6, 0.0), True),
               (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True)]  # fmt: skip
    xmp6 = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
            b"</rdf:RDF></x:xmpmeta>")  # fmt: skip
    cases = {
        "geo8": (rect, 3, geotags),
        "plain8": (rect, 3, []),
        "geo16": (rect16, 6, geotags),
        "geoxmp": (rect, 6, geotags),  # its orientation in its XMP only (Pillow's load turns it by that)
        "plain6": (rect, 6, []),
    }
    for name, (pixels, turn, tags) in cases.items():
        said = [(700, 1, len(xmp6), xmp6, True)] if name == "geoxmp" else [(274, "H", 1, turn, True)]
        tifffile.imwrite(folder / f"{name}.tif", pixels, photometric="rgb", extratags=[*tags, *said])
    out = tmp_path / "out"
    r = run_cli("upscale", folder, "-o", out, "--model", model_file, "--precision", "fp32", "--device", "cpu",
                "--quiet", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    from esrgan.evaluate import evaluate
    from esrgan.imagedata import orient

    shown = {}
    for name, (_, turn, _) in cases.items():
        with tifffile.TiffFile(out / f"{name}_x{S}.tif") as tif:
            tag = tif.pages.first.tags.get(274)
            stored = tif.pages.first.asarray()
        assert (tag.value if tag else 1) == (turn if name.startswith("geo") else 1), name
        shown[name] = orient(stored, tag.value if tag else 1)  # as a viewer shows it
    assert np.array_equal(shown["geo8"], shown["plain8"]), (
        "the orthophoto, shown, differs from the plain TIFF's"
    )
    assert np.array_equal(shown["geoxmp"], shown["plain6"]), (
        "the XMP-turned one differs from the plain TIFF's"
    )
    assert shown["geo16"].shape[:2] == (W * S, H * S)  # turned 90 degrees to be shown
    assert geo(out / f"geo16_x{S}.tif")["size"] == (
        H * S,
        W * S,
    )  # stored: the raster the georeferencing maps
    plain16 = Upscaler.from_file(model_file, device="cpu", precision="fp32", tile=0)
    lo, hi = float(rect16.min()), float(rect16.max())
    expected = stretched(plain16, np.rot90(rect16, -1), lo, hi)  # the model saw it as shown
    assert np.abs(shown["geo16"] - expected).max() <= 1 + STEPS * (hi - lo)
    # esrgan evaluate scores the model on what upscale runs it on: the tagged raster as its untagged, turned twin
    for name, pixels, said in (
        ("tagged", rect16, [(274, "H", 1, 6, True)]),
        ("twin", np.rot90(rect16, -1), []),
    ):
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "b.tif", pixels, photometric="rgb", extratags=[*geotags, *said])
    scores = [
        evaluate(tmp_path / name, [str(model_file)], bit_depth=16, niqe=False).images[0].scores["tiny_x2"]
        for name in ("tagged", "twin")
    ]
    assert (scores[0].psnr, scores[0].ssim) == pytest.approx((scores[1].psnr, scores[1].ssim), abs=1e-6)
    # a paired LR as GDAL makes it (georeferenced, no orientation tag): compared where the georeferencing agrees,
    # as stored (helper-92: the HR turned and the LR not scored 14 dB, or a non-square pair was refused)
    (tmp_path / "lr").mkdir()
    tifffile.imwrite(tmp_path / "lr" / "b.tif", rect16[::2, ::2], photometric="rgb", extratags=geotags)
    paired = evaluate(tmp_path / "tagged", [str(model_file)], lr_dir=tmp_path / "lr", scale=2, bit_depth=16,
                      niqe=False, value_range=(0.0, 65535.0))  # fmt: skip
    assert not paired.failed and paired.images[0].scores["bicubic"].psnr > 30, paired.failed


# --- what a review found: compressed orthophotos, GDAL's internal mask, per-band no-data in colour -------------------
def test_compressed_orthophotos_keep_their_georeferencing(tmp_path: Path, model_file: Path) -> None:
    """GDAL writes orthophotos LZW- or JPEG(YCbCr)-compressed, tiled: their pixels come through the photograph
    reader (Pillow decodes them; tifffile would need imagecodecs), their georeferencing through ours (it was
    refused, or silently dropped for YCbCr). A float raster that only imagecodecs could decode is one line with the
    remedy, and the batch goes on."""
    c = crops()
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = np.moveaxis(c["face"], -1, 0)
    write_geotiff(folder / "lzw.tif", rgb, photometric="RGB", compress="LZW")
    write_geotiff(folder / "jpeg.tif", rgb, photometric="YCBCR", compress="JPEG", tiled=True, blockxsize=16,
                  blockysize=16)  # fmt: skip
    write_geotiff(folder / "dem_lzw.tif", (grey(c["cup"]) * 10).astype(np.float32)[None], compress="LZW")
    out = tmp_path / "out"
    r = run_cli("upscale", folder, "-o", out, "--model", model_file, "--quiet", cwd=tmp_path)
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    try:
        import imagecodecs  # noqa: F401

        assert r.returncode == 0 and not errors, r.stderr
    except ImportError:
        assert r.returncode == 1 and len(errors) == 1 and "dem_lzw.tif" in errors[0], r.stderr
        assert "pip install imagecodecs" in errors[0], errors[0]
    for name in ("lzw", "jpeg"):
        g_in, g_out = geo(folder / f"{name}.tif"), geo(out / f"{name}_x{S}.tif")
        assert g_out["crs"] == UTM and g_out["count"] == 3, name
        assert_transform(g_out["transform"], scaled(g_in["transform"]))


def test_gdals_internal_mask_marks_pixels_without_data_in_the_output_too(
    tmp_path: Path, model_file: Path
) -> None:
    """GDAL_TIFF_INTERNAL_MASK: a 1-bit mask page instead of a nodata value. It was taken for a second image
    ("2 full-size pages") and dropped: masked pixels came back as data."""
    c = crops()
    bands = np.stack([c["camera"], c["camera2"]]).astype(np.uint16) * 100 + 7
    mask = np.full((H, W), 255, np.uint8)
    mask[10:20, 5:25] = 0
    src = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        src, "w", driver="GTiff", width=W, height=H, count=2, dtype="uint16", crs=UTM, transform=GRID
    ) as dst:  # fmt: skip
        dst.write(bands)
        dst.write_mask(mask)
    r = run_cli("upscale", src, "-o", tmp_path / "out.tif", "--model", model_file, "--quiet")
    assert r.returncode == 0 and "pages" not in r.stderr, r.stderr
    with rasterio.open(tmp_path / "out.tif") as got:
        assert got.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
        assert np.array_equal(got.dataset_mask() == 0, nn_up(mask == 0))
        assert_transform(got.transform, scaled(GRID))


def test_a_colour_band_keeps_its_values_where_another_has_none(tmp_path: Path) -> None:
    """Per-band no-data in an RGB raster: green is NaN in a block where red holds 0.9; red must come out 0.9
    there (it came out 0.2, filled from its neighbours as if red had no data either), green NaN."""
    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=1, num_grow=4, scale=2, image_residual=True)
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()  # output = the bicubic upscale of the input: values are easy to predict
    up = Upscaler(model.eval(), device="cpu", precision="fp32", tile=0)
    rgb = np.full((16, 16, 3), 0.5, np.float32)
    rgb[..., 0] = 0.2
    rgb[4:12, 4:12, 0] = 0.9
    rgb[4:12, 4:12, 1] = np.nan
    tifffile.imwrite(tmp_path / "r.tif", rgb, photometric="rgb")
    write_image(tmp_path / "r_x2.tif", up.upscale_image(read_image(tmp_path / "r.tif", measurements=True)))
    out, _ = tiff_bands(tmp_path / "r_x2.tif")
    block = (slice(12, 20), slice(12, 20))  # the middle of the upscaled block, away from bicubic's reach
    assert np.isnan(out[1][block]).all() and not np.isnan(out[0]).any()
    assert np.abs(out[0][block] - 0.9).max() < 0.01, out[0][block].min()


def test_a_class_map_is_refused_with_what_to_do_instead(tmp_path: Path) -> None:
    """A land-cover map (class numbers with a colour table, as GDAL writes it): a network would blend classes 1
    and 3 into a 2 that means something else. It was upscaled as a grey band and its colour table dropped."""
    path = tmp_path / "landcover.tif"
    classes = (crops()["camera"] // 52).astype(np.uint8)[None]  # 0..4
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=1, dtype="uint8", crs=UTM,
                       transform=GRID) as dst:  # fmt: skip
        dst.write(classes)
        dst.write_colormap(
            1, {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}
        )
    for measurements in (False, True):
        with pytest.raises(ImageError) as caught:
            read_image(path, measurements=measurements)
        assert str(caught.value) == (
            f"{path}: a class map (a colour table): a network would blend its classes; resample it with nearest "
            "neighbour (gdalwarp -r near)"
        )


def gdal_overviews(path: Path, tmp: Path, factors: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """GDAL's own "average" overviews of the full raster of `path` (copied with its nodata, mask and alpha):
    the reference for ours, level by level, as (data, dataset mask)."""
    copy = tmp / "gdal_reference.tif"
    with rasterio.open(path) as got:
        profile = {k: got.profile[k] for k in ("driver", "width", "height", "count", "dtype", "nodata", "crs",
                                                 "transform")}  # fmt: skip
        data, mask, interp = got.read(), got.dataset_mask(), got.colorinterp
        masked = got.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
    from rasterio.enums import Resampling

    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(copy, "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = interp
        if masked:
            dst.write_mask(mask)
        dst.build_overviews(factors, Resampling.average)
    levels = []
    for level in range(len(factors)):
        with rasterio.open(copy, overview_level=level) as small:
            levels.append((small.read(), small.dataset_mask()))
    return levels


KINDS = ["uint16 nodata, tiled", "float32 NaN", "internal mask", "one band, planar", "RGBA"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_source_with_overviews_gives_an_output_with_overviews(
    tmp_path: Path, model_file: Path, kind: str
) -> None:
    """A GeoTIFF with internal overviews at 2 and 4 (as gdaladdo or a cloud-optimised GeoTIFF has them), of an odd
    size (47x37: no level divides evenly): the output has overviews at 2 and 4 and on to 8 (its smallest as small
    as the source's), which GDAL lists and reads, equal to GDAL's own "average" overviews of the upscaled raster
    (fractional windows, nodata / NaN / masked pixels and colour under alpha 0 left out; empty windows stay
    nodata / NaN / masked); the full raster is unchanged by them."""
    from rasterio.enums import Resampling

    h, w = H - 1, W - 3
    c = {k: v[:h, :w] for k, v in crops().items()}
    src = tmp_path / "src.tif"
    hole = (slice(7, 23), slice(3, 21))  # input pixels without data: whole and partial windows at every level
    options: dict[str, Any] = {}
    mask = None
    if kind == "internal mask":
        bands = np.stack([c["camera"], c["camera2"]]).astype(np.uint16) * 100 + 7
        mask = np.full((h, w), 255, np.uint8)
        mask[hole] = 0
    elif kind == "float32 NaN":
        bands = (c["camera"].astype(np.float32) / 255 * 0.4)[None]
        bands[0][hole] = np.nan
        options = {"nodata": float("nan")}
    elif kind == "one band, planar":
        bands = c["camera"].astype(np.int16)[None] * 9 - 700
        bands[0][hole] = -9999
        options = {"nodata": -9999, "interleave": "band"}
    elif kind == "RGBA":
        alpha = np.full((h, w), 255, np.uint8)
        alpha[hole] = 0
        bands = np.concatenate([np.moveaxis(c["face"], -1, 0), alpha[None]])
        options = {"photometric": "RGB", "alpha": "YES"}  # GDAL: unassociated alpha
    else:
        bands = six_bands(c)[:3].copy()
        bands[:, hole[0], hole[1]] = 0
        options = {"nodata": 0, "tiled": True, "blockxsize": 16, "blockysize": 16}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        src, "w", driver="GTiff", height=h, width=w, count=bands.shape[0], dtype=bands.dtype.name, crs=UTM,
        transform=GRID, **options,
    ) as dst:  # fmt: skip
        dst.write(bands)
        if mask is not None:
            dst.write_mask(mask)
        dst.build_overviews([2, 4], Resampling.average)
    with rasterio.open(src) as got:
        assert got.overviews(1) == [2, 4]
    out = tmp_path / "out.tif"
    r = run_cli("upscale", src, "-o", out, "--model", model_file, "--precision", "fp32", "--quiet")
    assert r.returncode == 0 and "pages" not in r.stderr, r.stderr
    with rasterio.open(out) as got:
        # GDAL lists each level by round(width / its width): 74 px over 10 reads as 7 for the factor 8 level
        listed = [round(w * S / -(-w * S // f)) for f in (2, 4, 8)]
        assert listed == [2, 4, 7] and [got.overviews(b) for b in got.indexes] == [listed] * got.count
        assert got.read().shape == (bands.shape[0], h * S, w * S)
        if kind == "uint16 nodata, tiled":
            assert got.block_shapes[0] == (16, 16)
    reference = gdal_overviews(out, tmp_path, [2, 4, 8])
    for level, (factor, (expected, expected_mask)) in enumerate(zip((2, 4, 8), reference, strict=True)):
        with rasterio.open(out, overview_level=level) as small:
            data, data_mask = small.read(), small.dataset_mask()
        assert data.shape[1:] == (-(-h * S // factor), -(-w * S // factor))
        if kind == "float32 NaN":
            assert np.array_equal(np.isnan(data), np.isnan(expected))
            assert np.allclose(data, expected, equal_nan=True, rtol=1e-5, atol=1e-6)
        else:
            gap = np.abs(data.astype(np.int64) - expected.astype(np.int64))
            assert gap.max() <= 1, (
                f"{kind}, factor {factor}: up to {gap.max()} from GDAL's average"
            )  # fractional windows: a level at most
        assert np.array_equal(data_mask == 0, expected_mask == 0), f"{kind}, factor {factor}: masks differ"
        assert (expected_mask == 0).any() or kind == "RGBA"  # the hole leaves windows without data


def test_a_source_without_overviews_gives_none(tmp_path: Path, model_file: Path) -> None:
    src = write_geotiff(tmp_path / "plain.tif", six_bands(crops())[:2])
    r = run_cli("upscale", src, "-o", tmp_path / "out.tif", "--model", model_file, "--quiet")
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert len(tif.pages) == 1


def test_overview_levels_follow_the_source_whatever_it_claims() -> None:
    """The output's levels: the source's factors, each at least twice the one before (a crafted file's hundreds of
    reduced pages give a handful), then doubling until the smallest level is no larger than the source's smallest
    in both directions (a long strip too), never past a 1-pixel side, at most MAX_OVERVIEWS."""
    from esrgan.datatiff import MAX_OVERVIEWS, SampleMap, overview_factors

    def levels(size: tuple[int, int], overviews: tuple[int, ...], out: tuple[int, int]) -> tuple[int, ...]:
        sm = SampleMap(dtype=np.dtype(np.uint16), ranges=((0.0, 1.0),), photometric=1, planar=1, extrasamples=(),
                       tags=(), nodata=None, size=size, overviews=overviews)  # fmt: skip
        return overview_factors(sm, *out)

    assert levels((1024, 1024), (2, 4), (4096, 4096)) == (2, 4, 8, 16)
    assert levels((1024, 1024), (), (4096, 4096)) == ()
    assert levels((1000, 1000), tuple(range(2, 500)), (2000, 2000)) == tuple(2**k for k in range(1, 10))
    assert levels((100, 100000), tuple(2**k for k in range(1, 10)), (400, 400000)) == tuple(
        2**k for k in range(1, 12)
    )  # the strip's smallest level: 1 x 196 px, as its source's
    assert levels((3, 3), (2,), (6, 6)) == (2, 4)
    assert len(levels((1, 1), (2,), (2**26, 2**26))) == MAX_OVERVIEWS  # 26 halvings to 1 px: capped
