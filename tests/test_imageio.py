"""Image I/O on real photographs: every mode in and out, 16-bit kept exactly, metadata kept, hostile files refused."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps, PngImagePlugin

from esrgan.atomic import OutputExistsError
from esrgan.errors import ImageError
from esrgan.imageio import (
    ImageData,
    ImageWarning,
    _unfilter,
    from_float,
    list_images,
    read_frames,
    read_image,
    to_float,
    write_image,
)

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """A non-square real photo (300x451) so that rotations are visible in the shape."""
    return np.ascontiguousarray(skimage_data.chelsea())


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    """A real greyscale photo (512x512 uint8)."""
    return np.ascontiguousarray(skimage_data.camera())


@pytest.fixture(scope="module")
def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _deep16(photo8: np.ndarray) -> np.ndarray:
    """A 16-bit image from a real photo with meaningful low bytes, and some values below 256."""
    rng = np.random.default_rng(0)
    deep = photo8.astype(np.uint16) * 257 + rng.integers(-128, 128, photo8.shape)
    deep = np.clip(deep, 0, 65535).astype(np.uint16)
    deep[:8, :8] = np.arange(64, dtype=np.uint16).reshape(8, 8, *([1] * (photo8.ndim - 2)))  # 0..63
    return deep


def _exif(**tags: object) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "ESRGAN Test Camera"  # Make
    exif[0x0110] = "RRDB-1"  # Model
    for key, value in tags.items():
        exif[int(key.removeprefix("t"))] = value
    return exif


# --- listing folders -----------------------------------------------------------------------------------------------
def test_list_images_one_rule_for_every_command(tmp_path: Path, photo: np.ndarray) -> None:
    """The listing train, prepare, evaluate and upscale share: image suffixes in any case, sorted; hidden files
    (the .part temp files of atomic writes) and hidden folders skipped; sub-folders only when recursive."""
    data = photo[:16, :16]
    for name in ("b.png", "a.JPG", "c.tga", ".hidden.png", ".out.png.1234.part", "notes.txt", "sub/d.png",
                 ".cache/e.png", "out/f.png"):  # fmt: skip
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(data).save(tmp_path / name, format="PNG")
    (tmp_path / "folder.png").mkdir()
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "c.tga"]
    deep = list_images(tmp_path, recursive=True, exclude=(tmp_path / "out").resolve())
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == ["a.JPG", "b.png", "c.tga", "sub/d.png"]


def test_pillow_still_reads_16bit_colour_png_as_8bit(tmp_path: Path, photo: np.ndarray) -> None:
    """Why imageio keeps its own 16-bit PNG decoder: Pillow gives 8 bits for 16-bit RGB. When this fails, Pillow
    keeps 16 bits and _read_png16 can go (its other tests then say whether Pillow's result is exact)."""
    deep = _deep16(photo[:32, :48])
    write_image(tmp_path / "deep.png", ImageData(pixels=deep, bit_depth=16))
    with Image.open(tmp_path / "deep.png") as im:
        assert np.asarray(im).dtype == np.uint8
    assert np.array_equal(read_image(tmp_path / "deep.png").pixels, deep)


# --- reading every mode --------------------------------------------------------------------------------------------


def test_rgb_png_exact(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert (img.format, img.bit_depth, img.alpha, img.pixels.dtype) == ("PNG", 8, None, np.uint8)
    np.testing.assert_array_equal(img.pixels, photo)
    assert img.source == tmp_path / "a.png"


def test_rgba_grey_and_grey_alpha(tmp_path: Path, photo: np.ndarray, camera: np.ndarray) -> None:
    alpha = camera[:512, :512]
    Image.fromarray(np.dstack([photo, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(camera).save(tmp_path / "l.png")
    Image.fromarray(np.dstack([camera, 255 - camera]), "LA").save(tmp_path / "la.png")
    rgba, grey, la = (read_image(tmp_path / n) for n in ("rgba.png", "l.png", "la.png"))
    np.testing.assert_array_equal(rgba.pixels, photo)
    np.testing.assert_array_equal(rgba.alpha, alpha)
    assert grey.pixels.shape == (512, 512, 1) and grey.alpha is None
    np.testing.assert_array_equal(grey.pixels[:, :, 0], camera)
    assert la.pixels.shape == (512, 512, 1)
    np.testing.assert_array_equal(la.pixels[:, :, 0], camera)
    np.testing.assert_array_equal(la.alpha, 255 - camera)


def test_palette_with_and_without_transparency(tmp_path: Path, photo: np.ndarray) -> None:
    pal = Image.fromarray(photo).quantize(64)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    plain, transparent = read_image(tmp_path / "p.png"), read_image(tmp_path / "pt.png")
    expected = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(plain.pixels, expected)
    assert plain.alpha is None
    np.testing.assert_array_equal(transparent.pixels, expected)
    assert transparent.alpha is not None
    index = np.asarray(pal)
    assert (index == 0).any() and (index != 0).any()
    np.testing.assert_array_equal(transparent.alpha, np.where(index == 0, 0, 255))


def test_one_bit_becomes_grey(tmp_path: Path, camera: np.ndarray) -> None:
    Image.fromarray(camera).convert("1").save(tmp_path / "bw.png")
    img = read_image(tmp_path / "bw.png")
    assert img.pixels.shape == (512, 512, 1) and img.bit_depth == 8
    assert set(np.unique(img.pixels)) == {0, 255}


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    img = read_image(tmp_path / "c.jpg")
    assert img.pixels.shape == photo.shape and img.format == "JPEG"
    assert img.icc_profile is None  # no profile: Pillow's naive conversion, nothing claimed
    assert np.abs(img.pixels.astype(int) - photo).mean() < 4


def test_content_is_sniffed_not_the_extension(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).save(tmp_path / "really_png.jpg", format="PNG")
    img = read_image(tmp_path / "really_png.jpg")
    assert img.format == "PNG"
    np.testing.assert_array_equal(img.pixels, photo)


def test_animated_gif_first_frame_with_warning(tmp_path: Path, photo: np.ndarray) -> None:
    frames = [Image.fromarray(photo[:128, :128]), Image.fromarray(photo[128:256, :128])]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(ImageWarning, match="first"):
        img = read_image(tmp_path / "anim.gif")
    first = np.asarray(Image.open(tmp_path / "anim.gif").convert("RGB"))
    np.testing.assert_array_equal(img.pixels, first)


def test_float_tiff_refused(tmp_path: Path, camera: np.ndarray, photo: np.ndarray) -> None:
    """Outside `esrgan upscale` (which reads them: tests/test_datatiff.py), grey and colour float and 32-bit
    integer TIFFs are refused in one line that says what they hold (colour float was once "16-bit TIFF decoded as
    float32", a grey int16 one "32-bit integer"). A float image in another format keeps the old words."""
    tifffile = pytest.importorskip("tifffile")
    Image.fromarray(camera.astype(np.float32) / 255).save(tmp_path / "f.tif")
    tifffile.imwrite(tmp_path / "rgb_f.tif", photo[:64, :64].astype(np.float32) / 255, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb_i32.tif", photo[:64, :64].astype(np.uint32) * 65537, photometric="rgb")
    tifffile.imwrite(tmp_path / "i16.tif", camera.astype(np.int16) - 128)
    held = {"f.tif": "float32", "rgb_f.tif": "float32", "rgb_i32.tif": "uint32", "i16.tif": "int16"}
    for name, dtype in held.items():
        with pytest.raises(ImageError) as refused:
            read_image(tmp_path / name)
        assert str(refused.value) == (
            f"{tmp_path / name}: a measurement TIFF ({dtype} samples): `esrgan upscale`, training and `esrgan "
            "evaluate` read it, this does not "
            "(save it as 8 or 16-bit grey or RGB)"
        )
    Image.fromarray(camera.astype(np.float32) / 255).save(tmp_path / "f.pfm")
    with pytest.raises(ImageError) as refused:
        read_image(tmp_path / "f.pfm")
    assert str(refused.value) == (
        f"{tmp_path / 'f.pfm'}: 32-bit float images are not supported (their range is undefined; save as 16-bit)"
    )


# --- 16 bits, exactly ---------------------------------------------------------------------------------------------------


def test_16bit_grey_png_written_by_pillow(tmp_path: Path, camera: np.ndarray) -> None:
    deep = _deep16(camera)
    Image.fromarray(deep).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert (img.bit_depth, img.pixels.dtype, img.pixels.shape) == (16, np.uint16, (512, 512, 1))
    np.testing.assert_array_equal(img.pixels[:, :, 0], deep)


def test_a_tiff_writers_note_of_the_array_shape_is_not_carried(tmp_path: Path, photo: np.ndarray) -> None:
    """tifffile describes what it writes as '{"shape": [h, w, 3]}' (ImageJ as 'ImageJ=...'): carried to an upscaled
    output, that description is false (tifffile warned "shaped series shape does not match page shape" reading our
    output). A person's description is kept."""
    tifffile = pytest.importorskip("tifffile")
    crop = photo[:40, :48]
    tifffile.imwrite(tmp_path / "shaped16.tif", crop.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(tmp_path / "shaped8.tif", crop, photometric="rgb")
    tifffile.imwrite(
        tmp_path / "noted.tif", crop, photometric="rgb", description="scan of a 1962 print", metadata=None
    )
    for name in ("shaped16.tif", "shaped8.tif"):
        assert '{"shape"' in str(
            tifffile.TiffFile(tmp_path / name).pages.first.description
        )  # as the test says
        image = read_image(tmp_path / name)
        assert image.exif is None or 270 not in _exif_of(image.exif), name
        big = image.with_float(np.repeat(np.repeat(image.to_float(), 2, axis=0), 2, axis=1))
        write_image(tmp_path / f"big_{name}", big)
        with tifffile.TiffFile(tmp_path / f"big_{name}") as tif:
            assert tif.series[0].shape == (80, 96, 3), name
            assert "shape" not in str(tif.pages.first.description), name
    noted = read_image(tmp_path / "noted.tif")
    assert noted.exif is not None and _exif_of(noted.exif)[270] == "scan of a 1962 print"


def _exif_of(raw: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(raw)
    return exif


@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize("layout", ["grey", "grey+alpha", "rgb", "rgba"])
def test_16bit_round_trip_exact(tmp_path: Path, photo: np.ndarray, ext: str, layout: str) -> None:
    deep = _deep16(photo)
    pixels = deep[:, :, :1] if layout.startswith("grey") else deep
    alpha = _deep16(photo[:, :, 1]) if layout.endswith("alpha") else None
    out = write_image(tmp_path / f"x.{ext}", ImageData(pixels=pixels, alpha=alpha, bit_depth=16))
    back = read_image(out)
    assert (back.bit_depth, back.pixels.dtype) == (16, np.uint16)
    np.testing.assert_array_equal(back.pixels, pixels)
    if alpha is None:
        assert back.alpha is None
    else:
        np.testing.assert_array_equal(back.alpha, alpha)


def test_16bit_stays_16bit_when_all_values_are_small(tmp_path: Path, photo: np.ndarray) -> None:
    small = (photo // 2).astype(np.uint16)  # every value < 256: still a 16-bit file
    for ext in ("png", "tif"):
        back = read_image(write_image(tmp_path / f"s.{ext}", ImageData(pixels=small, bit_depth=16)))
        assert back.bit_depth == 16 and back.pixels.dtype == np.uint16
        np.testing.assert_array_equal(back.pixels, small)


def test_16bit_files_agree_with_independent_decoders(tmp_path: Path, photo: np.ndarray) -> None:
    """Our PNG encoder checked by Pillow (which keeps the high bytes) and our TIFF by tifffile (exact)."""
    tifffile = pytest.importorskip("tifffile")
    deep = _deep16(photo)
    alpha = _deep16(photo[:, :, 0])
    img = ImageData(pixels=deep, alpha=alpha, bit_depth=16)
    with Image.open(write_image(tmp_path / "x.png", img)) as pil:
        assert pil.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(pil), (np.dstack([deep, alpha]) >> 8).astype(np.uint8))
    np.testing.assert_array_equal(
        tifffile.imread(write_image(tmp_path / "x.tif", img)), np.dstack([deep, alpha])
    )


def test_16bit_tiff_written_by_tifffile_any_planar_config(tmp_path: Path, photo: np.ndarray) -> None:
    tifffile = pytest.importorskip("tifffile")
    deep = _deep16(photo)
    tifffile.imwrite(tmp_path / "contig.tif", deep, photometric="rgb")
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(deep, -1, 0), photometric="rgb", planarconfig="separate"
    )
    for name in ("contig.tif", "planar.tif"):
        img = read_image(tmp_path / name)
        assert img.bit_depth == 16
        np.testing.assert_array_equal(img.pixels, deep)
    tifffile.imwrite(tmp_path / "grey_be.tif", deep[:, :, 1], byteorder=">")  # Pillow's I;16B mode
    np.testing.assert_array_equal(read_image(tmp_path / "grey_be.tif").pixels[:, :, 0], deep[:, :, 1])


def test_png_unfilter_matches_pillow_on_all_filter_types(tmp_path: Path, photo: np.ndarray) -> None:
    """Pillow's encoder uses adaptive filtering (Paeth, Sub, Up...): our decoder must invert every row exactly."""
    Image.fromarray(photo).save(tmp_path / "a.png")
    idat = _idat((tmp_path / "a.png").read_bytes())
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(512, 1 + 512 * 3)
    assert len(set(rows[:, 0].tolist())) >= 2 and 4 in rows[:, 0]
    np.testing.assert_array_equal(_unfilter(rows, 512, 3, tmp_path).reshape(photo.shape), photo)


def _png(width: int, height: int, depth: int, colour_type: int, body: bytes, interlace: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(body))
        + chunk(b"IEND", b"")
    )


def _adam7_rows(image: np.ndarray, interlace: bool, pack: bool = False) -> bytes:
    """Filter-0 rows of an image (HxW[xC], uint8 or big-endian uint16), in Adam7's passes when interlaced; pack:
    1-bit samples."""
    passes = (
        (0, 0, 8, 8),
        (0, 4, 8, 8),
        (4, 0, 8, 4),
        (0, 2, 4, 4),
        (2, 0, 4, 2),
        (0, 1, 2, 2),
        (1, 0, 2, 1),
    )
    body = b""
    for y0, x0, dy, dx in passes if interlace else ((0, 0, 1, 1),):
        sub = image[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                body += b"\x00" + (np.packbits(row > 0).tobytes() if pack else row.tobytes())
    return body


def test_interlaced_16bit_png(tmp_path: Path, cat: np.ndarray) -> None:
    """Adam7 built by hand (filter 0 in each pass) from a real photo crop of odd size."""
    deep = _deep16(cat[:37, :53])
    (tmp_path / "i.png").write_bytes(_png(53, 37, 16, 2, _adam7_rows(deep.astype(">u2"), True), interlace=1))
    np.testing.assert_array_equal(read_image(tmp_path / "i.png").pixels, deep)


@pytest.mark.parametrize(
    ("kind", "interlace"), [("rgb", False), ("rgb", True), ("grey1", False), ("grey1", True)]
)
def test_a_png_whose_image_data_ends_early_is_refused(
    tmp_path: Path, cat: np.ndarray, kind: str, interlace: bool
) -> None:
    """Pillow decoded an 8-bit (or 1-bit) PNG whose zlib stream ends properly but early as a whole image, the missing
    rows black (a 1000-row PNG holding 3 rows: a black picture, no word). Whole data: read as it is; one row short:
    one ImageError naming the file and the bytes missing."""
    crop = cat[:37, :53] if kind == "rgb" else (cat[:37, :53, 0] > 128).astype(np.uint8) * 255
    depth, colour_type = (8, 2) if kind == "rgb" else (1, 0)
    body = _adam7_rows(crop, interlace, pack=kind == "grey1")
    whole, short = tmp_path / "whole.png", tmp_path / "short.png"
    whole.write_bytes(_png(53, 37, depth, colour_type, body, interlace=int(interlace)))
    got = read_image(whole).pixels
    np.testing.assert_array_equal(got.reshape(crop.shape), crop)
    row = (
        1 + (53 * 3 if kind == "rgb" else 7)
        if not interlace
        else 1 + (-(-53 // 2) * 3 if kind == "rgb" else 4)
    )
    short.write_bytes(_png(53, 37, depth, colour_type, body[:-row], interlace=int(interlace)))
    with pytest.raises(ImageError) as info:
        read_image(short)
    assert str(info.value) == f"{short}: truncated PNG (image data is {len(body) - row} of {len(body)} bytes)"


# --- orientation and metadata ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_applied_like_pillow(tmp_path: Path, cat: np.ndarray, orientation: int) -> None:
    Image.fromarray(cat).save(tmp_path / "o.png", exif=_exif(t274=orientation))
    img = read_image(tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as pil:
        reference = np.asarray(ImageOps.exif_transpose(pil))
    np.testing.assert_array_equal(img.pixels, reference)
    loaded = Image.Exif()
    loaded.load(img.exif)
    assert loaded[274] == 1 and loaded[0x010F] == "ESRGAN Test Camera"


@pytest.mark.parametrize("ext", ["jpg", "png16", "tif", "tif16"])
def test_orientation_6_and_8_rotate_the_pixels(tmp_path: Path, cat: np.ndarray, ext: str) -> None:
    for orientation, turns in ((6, -1), (8, 1)):  # 6: rotate 90 clockwise to display; 8: counter-clockwise
        exif = _exif(t274=orientation).tobytes()
        if ext == "png16":
            original = _deep16(cat)
            path = write_image(
                tmp_path / f"o{orientation}.png", ImageData(pixels=original, bit_depth=16, exif=exif)
            )
        elif ext == "tif16":
            tifffile = pytest.importorskip("tifffile")
            original = _deep16(cat)
            path = tmp_path / f"o{orientation}.tif"
            tifffile.imwrite(path, original, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
        else:
            original = cat
            path = tmp_path / f"o{orientation}.{ext}"
            Image.fromarray(cat).save(path, exif=exif, **({"quality": 100} if ext == "jpg" else {}))
            if ext == "jpg":
                with Image.open(path) as pil:
                    original = np.asarray(pil.convert("RGB"))  # the decoded (lossy) pixels, unrotated
        img = read_image(path)
        assert img.pixels.shape[:2] == (cat.shape[1], cat.shape[0])
        np.testing.assert_array_equal(img.pixels, np.rot90(original, turns))


@pytest.mark.parametrize(
    ("ext", "depth"), [("png", 8), ("jpg", 8), ("webp", 8), ("tif", 8), ("png", 16), ("tif", 16)]
)
def test_icc_and_exif_preserved(
    tmp_path: Path, cat: np.ndarray, srgb_icc: bytes, ext: str, depth: int
) -> None:
    exif = _exif(t306="2026:11:22 03:00:00").tobytes()
    pixels = _deep16(cat) if depth == 16 else cat
    img = ImageData(pixels=pixels, bit_depth=depth, icc_profile=srgb_icc, exif=exif)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = read_image(write_image(tmp_path / f"m.{ext}", img))
    assert back.icc_profile == srgb_icc
    assert not caught  # nothing dropped: make, model and date fit every format
    assert back.exif is not None
    loaded = Image.Exif()
    loaded.load(back.exif)
    assert loaded[0x010F] == "ESRGAN Test Camera" and loaded[0x0110] == "RRDB-1"
    assert loaded[306] == "2026:11:22 03:00:00"


# --- writing -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "tif", "webp"])
@pytest.mark.parametrize("layout", ["L", "LA", "RGB", "RGBA"])
def test_8bit_lossless_formats_round_trip(
    tmp_path: Path, photo: np.ndarray, camera: np.ndarray, ext: str, layout: str
) -> None:
    """Including colour under fully transparent pixels (the photo's blue channel has zeros) for WebP."""
    pixels = camera[:, :, None] if layout.startswith("L") else photo
    alpha = photo[:, :, 2].copy() if layout.endswith("A") else None
    assert alpha is None or (alpha == 0).any()
    back = read_image(write_image(tmp_path / f"a.{ext}", ImageData(pixels=pixels, alpha=alpha)))
    expected = (
        np.repeat(pixels, 3, axis=2) if ext == "webp" and pixels.shape[2] == 1 else pixels
    )  # no WebP grey
    np.testing.assert_array_equal(back.pixels, expected)
    if alpha is None:
        assert back.alpha is None
    else:
        np.testing.assert_array_equal(back.alpha, alpha)


def test_jpeg_flattens_alpha_on_white_with_warning(tmp_path: Path, photo: np.ndarray) -> None:
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :256] = 0
    with pytest.warns(ImageWarning, match="white"):
        back = read_image(write_image(tmp_path / "a.jpg", ImageData(pixels=photo, alpha=alpha)))
    assert back.alpha is None
    assert back.pixels[:, :240].min() >= 250  # transparent half became white
    assert np.abs(back.pixels[:, 272:].astype(int) - photo[:, 272:]).mean() < 3


def test_16bit_to_jpeg_rounds_to_8bit(tmp_path: Path, photo: np.ndarray) -> None:
    back = read_image(
        write_image(tmp_path / "a.jpg", ImageData(pixels=photo.astype(np.uint16) * 257, bit_depth=16))
    )
    assert back.bit_depth == 8
    assert np.abs(back.pixels.astype(int) - photo).mean() < 2


def test_overwrite_protection(tmp_path: Path, photo: np.ndarray, camera: np.ndarray) -> None:
    target = write_image(tmp_path / "a.png", ImageData(pixels=photo))
    before = target.read_bytes()
    with pytest.raises(OutputExistsError):
        write_image(target, ImageData(pixels=camera[:, :, None]))
    assert target.read_bytes() == before
    write_image(target, ImageData(pixels=camera[:, :, None]), overwrite=True)
    assert read_image(target).channels == 1


def test_unknown_extension_refused(tmp_path: Path, photo: np.ndarray) -> None:
    with pytest.raises(ImageError, match=r"\.xyz"):
        write_image(tmp_path / "a.xyz", ImageData(pixels=photo))
    assert write_image(tmp_path / "a.xyz", ImageData(pixels=photo), format="png").exists()


def test_write_into_path_whose_parent_is_a_file(tmp_path: Path, photo: np.ndarray) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ImageError, match="is a file, not a folder"):
        write_image(tmp_path / "file" / "a.png", ImageData(pixels=photo))
    with pytest.raises(ImageError, match="is a file, not a folder"):
        write_image(tmp_path / "file" / "deeper" / "a.png", ImageData(pixels=photo))
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    """A file-size limit makes the real write fail half way (root ignores permissions, not RLIMIT_FSIZE)."""
    script = f"""
import resource, signal, sys
import numpy as np
from esrgan.imageio import ImageData, write_image
from esrgan.errors import ImageError
from skimage import data
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
img = ImageData(pixels=data.astronaut().astype(np.uint16) * 257, bit_depth=16)
for name in ("big.png", "big.tif", "big8.png"):
    try:
        write_image({str(tmp_path)!r} + "/" + name, img if name != "big8.png" else ImageData(pixels=data.astronaut()))
    except ImageError as exc:
        print("ImageError:", exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all(
        line.startswith("ImageError:") and "cannot write" in line for line in lines
    )
    assert list(tmp_path.iterdir()) == []


# --- hostile and broken input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth,colour_type", [(8, 2), (16, 2)])
def test_decompression_bomb_refused_from_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int, colour_type: int
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # our guard does not depend on Pillow's global one
    bomb = _png(100_000, 100_000, depth, colour_type, b"\x00" * 64)
    (tmp_path / "bomb.png").write_bytes(bomb)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(tmp_path / "bomb.png")


def test_real_image_over_a_small_limit(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="262144 pixels exceeds the limit of 100000"):
        read_image(tmp_path / "a.png", max_pixels=100_000)
    assert read_image(tmp_path / "a.png", max_pixels=512 * 512).width == 512


@pytest.mark.parametrize("kind", ["png8", "png16", "jpg"])
def test_truncated_files(tmp_path: Path, photo: np.ndarray, kind: str) -> None:
    path = tmp_path / ("a.jpg" if kind == "jpg" else "a.png")
    if kind == "png16":
        write_image(path, ImageData(pixels=photo.astype(np.uint16) * 257, bit_depth=16))
    else:
        Image.fromarray(photo).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"truncated|corrupt") as info:
        read_image(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_corrupt_16bit_png_crc(tmp_path: Path, photo: np.ndarray) -> None:
    path = write_image(tmp_path / "a.png", ImageData(pixels=photo.astype(np.uint16), bit_depth=16))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt"):
        read_image(path)


def test_a_16bit_png_chunk_type_with_a_newline_is_still_one_line(tmp_path: Path, photo: np.ndarray) -> None:
    """A mutated chunk type held a newline; printed raw, it split the error in two (tools/fuzz_images.py case
    68585). Now escaped."""
    path = write_image(
        tmp_path / "a.png", ImageData(pixels=photo[:32, :32].astype(np.uint16) * 257, bit_depth=16)
    )
    data = bytearray(path.read_bytes())
    iend = (
        len(data) - 12
    )  # the last chunk, after the pixels: Pillow opens the file, our 16-bit decoder reads on
    data[iend : iend + 4] = (10**6).to_bytes(4, "big")  # a length past the end of the file
    data[iend + 4 : iend + 8] = b",|\n\xeb"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: truncated PNG (chunk ,|\\n\\xeb cut short)"


def test_not_images(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is a text file, not a picture\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for name, problem in [
        ("notes.png", "not an image"),
        ("empty.png", r"empty file \(0 bytes\)"),
        ("folder.png", "directory"),
        ("missing.png", "no such file"),
    ]:
        with pytest.raises(ImageError, match=problem) as info:
            read_image(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: ")


def test_zero_sized_png_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(_png(0, 10, 8, 2, b""))
    with pytest.raises(ImageError):
        read_image(tmp_path / "zero.png")


def test_no_file_descriptors_leak(tmp_path: Path, photo: np.ndarray) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    Image.fromarray(photo).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes((tmp_path / "ok.png").read_bytes()[:5000])
    write_image(tmp_path / "ok16.png", ImageData(pixels=photo.astype(np.uint16), bit_depth=16))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        for name in ("ok.png", "bad.png", "ok16.png"):
            with contextlib.suppress(ImageError):
                read_image(tmp_path / name)
    assert len(os.listdir("/proc/self/fd")) == before


# --- float helpers -------------------------------------------------------------------------------------------------------


def test_float_conversion_is_exact_for_every_code_value() -> None:
    for dtype, depth in ((np.uint8, 8), (np.uint16, 16)):
        values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
        np.testing.assert_array_equal(from_float(to_float(values), depth), values)
    np.testing.assert_array_equal(
        from_float(np.array([-0.5, 1.7, np.nan, 0.5 / 255, 0.49 / 255]), 8), [0, 255, 0, 1, 0]
    )


def test_with_float_keeps_metadata(cat: np.ndarray, srgb_icc: bytes) -> None:
    img = ImageData(
        pixels=_deep16(cat), alpha=_deep16(cat[:, :, 0]), bit_depth=16, icc_profile=srgb_icc, format="TIFF"
    )
    up = np.repeat(np.repeat(img.to_float(), 2, axis=0), 2, axis=1)
    alpha = img.alpha_to_float()
    assert alpha is not None
    big = img.with_float(up, alpha=np.repeat(np.repeat(alpha, 2, axis=0), 2, axis=1))
    assert (big.height, big.width, big.bit_depth, big.icc_profile, big.format) == (
        600,
        902,
        16,
        srgb_icc,
        "TIFF",
    )
    np.testing.assert_array_equal(big.pixels[::2, ::2], img.pixels)


def test_image_data_validates() -> None:
    with pytest.raises(ValueError):
        ImageData(pixels=np.zeros((4, 4, 3), np.uint16), bit_depth=8)
    with pytest.raises(ValueError):
        ImageData(pixels=np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        ImageData(pixels=np.zeros((4, 4, 3), np.uint8), alpha=np.zeros((4, 5), np.uint8))
    grey_alpha = ImageData.from_array(np.zeros((4, 5, 2), np.uint16))
    assert (grey_alpha.channels, grey_alpha.bit_depth, grey_alpha.alpha is not None) == (1, 16, True)


def test_16bit_tiff_warns_when_exif_is_dropped(tmp_path: Path, cat: np.ndarray) -> None:
    exif = _exif()
    exif.get_ifd(0x8769)[0x829A] = 0.01  # ExposureTime lives in the Exif sub-IFD, which tifffile cannot write
    img = ImageData(pixels=_deep16(cat), bit_depth=16, exif=exif.tobytes())
    with pytest.warns(ImageWarning, match="PNG"):
        back = read_image(write_image(tmp_path / "a.tif", img))
    assert back.exif is not None
    loaded = Image.Exif()
    loaded.load(back.exif)
    assert loaded[0x010F] == "ESRGAN Test Camera"
    back_png = read_image(write_image(tmp_path / "a.png", img))
    assert back_png.exif is not None
    loaded.load(back_png.exif)
    assert loaded.get_ifd(0x8769)[0x829A] == 0.01


def test_phone_mpo_is_read_as_its_first_jpeg_without_warning(tmp_path: Path, photo: np.ndarray) -> None:
    frames = [Image.fromarray(photo), Image.fromarray(photo[::2, ::2])]
    frames[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=frames[1:], quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = read_image(tmp_path / "phone.jpg")
    assert img.format == "JPEG" and img.pixels.shape == photo.shape


def test_16bit_png_single_transparent_colour(tmp_path: Path, cat: np.ndarray) -> None:
    deep = _deep16(cat[:40, :60])
    key = deep[5, 7].copy()
    body = b"".join(b"\x00" + row.tobytes() for row in deep.astype(">u2"))
    png = _png(60, 40, 16, 2, body)
    trns = key.astype(">u2").tobytes()
    chunk = struct.pack(">I", len(trns)) + b"tRNS" + trns + struct.pack(">I", zlib.crc32(b"tRNS" + trns))
    idat = png.index(b"IDAT") - 4
    (tmp_path / "t.png").write_bytes(png[:idat] + chunk + png[idat:])
    img = read_image(tmp_path / "t.png")
    assert img.alpha is not None
    np.testing.assert_array_equal(img.alpha, np.where((deep == key).all(axis=2), 0, 65535))
    assert img.alpha[5, 7] == 0 and (img.alpha == 65535).sum() > 2000


def test_16bit_tiff_premultiplied_alpha_is_unpremultiplied(tmp_path: Path, cat: np.ndarray) -> None:
    tifffile = pytest.importorskip("tifffile")
    deep = _deep16(cat)
    alpha = np.clip(_deep16(cat[:, :, 1]), 4096, 65535)
    premultiplied = np.rint(deep * (alpha[:, :, None] / 65535.0)).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "p.tif", np.dstack([premultiplied, alpha]), photometric="rgb", extrasamples=["assocalpha"]
    )
    img = read_image(tmp_path / "p.tif")
    np.testing.assert_array_equal(img.alpha, alpha)
    assert np.abs(img.pixels.astype(int) - deep).max() <= 65535 / 4096  # rounding of the premultiplied value


def test_lossy_webp_quality(tmp_path: Path, photo: np.ndarray) -> None:
    lossless = write_image(tmp_path / "a.webp", ImageData(pixels=photo))
    lossy = write_image(tmp_path / "b.webp", ImageData(pixels=photo), quality=80)
    assert lossy.stat().st_size < lossless.stat().st_size / 2
    assert 0 < np.abs(read_image(lossy).pixels.astype(int) - photo).mean() < 4
    with pytest.raises(ImageError, match="quality"):
        write_image(tmp_path / "c.jpg", ImageData(pixels=photo), quality=101)
    with pytest.warns(ImageWarning, match="quality"):
        write_image(tmp_path / "c.png", ImageData(pixels=photo), quality=90)


def test_pillow_global_limit_neither_needed_nor_leaking(
    tmp_path: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's own guard warns above MAX_IMAGE_PIXELS (ours decides instead) and errors at twice it (ImageError)."""
    Image.fromarray(photo).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # 262144 px: Pillow would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "a.png").width == 512
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # Pillow refuses outright
    with pytest.raises(ImageError, match="decompression"):
        read_image(tmp_path / "a.png")


def test_exif_without_prefix_and_unparsable_exif(tmp_path: Path, photo: np.ndarray) -> None:
    bare = _exif().tobytes().removeprefix(b"Exif\x00\x00")  # the TIFF structure alone, as PNG/WebP store it
    for ext in ("jpg", "png", "webp", "tif"):
        back = read_image(write_image(tmp_path / f"bare.{ext}", ImageData(pixels=photo, exif=bare)))
        assert back.exif is not None and back.exif.startswith(b"Exif\x00\x00")
        loaded = Image.Exif()
        loaded.load(back.exif)
        assert loaded[0x010F] == "ESRGAN Test Camera"
    with pytest.raises(ImageError, match="cannot encode as TIFF"):
        write_image(tmp_path / "bad.tif", ImageData(pixels=photo, exif=b"Exif\x00\x00garbage!"))
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".bad*"))


def test_imagemagick_raw_profile_exif_in_png(tmp_path: Path, cat: np.ndarray) -> None:
    """ImageMagick stores EXIF as hex in a text chunk; its orientation must be honoured too."""
    from PIL import PngImagePlugin

    data = _exif(t274=6).tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(data):8}\n{data.hex()}\n", zip=True)
    Image.fromarray(cat).save(tmp_path / "im.png", pnginfo=info)
    img = read_image(tmp_path / "im.png")
    np.testing.assert_array_equal(img.pixels, np.rot90(cat, -1))
    assert img.exif is not None
    loaded = Image.Exif()
    loaded.load(img.exif)
    assert loaded[274] == 1 and loaded[0x010F] == "ESRGAN Test Camera"


def test_profile_that_does_not_fit_the_pixels_is_dropped(
    tmp_path: Path, photo: np.ndarray, srgb_icc: bytes
) -> None:
    """A grey photo upscaled as RGB must not carry its grey profile (nor an RGB profile land on grey pixels)."""
    grey_icc = srgb_icc[:16] + b"GRAY" + srgb_icc[20:]  # only the header's colour space is consulted
    with pytest.warns(ImageWarning, match="GRAY ICC profile does not fit RGB"):
        back = read_image(write_image(tmp_path / "a.png", ImageData(pixels=photo, icc_profile=grey_icc)))
    assert back.icc_profile is None
    with pytest.warns(ImageWarning, match="RGB ICC profile does not fit grey"):
        write_image(tmp_path / "b.png", ImageData(pixels=photo[:, :, :1].copy(), icc_profile=srgb_icc))
    with pytest.warns(ImageWarning, match="GRAY"):  # WebP turns grey into RGB: the grey profile goes
        write_image(tmp_path / "c.webp", ImageData(pixels=photo[:, :, :1].copy(), icc_profile=grey_icc))


def test_bmp_is_8bit_without_alpha_or_metadata(tmp_path: Path, photo: np.ndarray, srgb_icc: bytes) -> None:
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:10] = 0
    img = ImageData(pixels=photo.astype(np.uint16) * 257, alpha=alpha.astype(np.uint16) * 257, bit_depth=16)
    with pytest.warns(ImageWarning, match="white"):
        back = read_image(write_image(tmp_path / "a.bmp", img))
    assert (back.format, back.bit_depth, back.alpha) == ("BMP", 8, None)
    np.testing.assert_array_equal(back.pixels[10:], photo[10:])
    assert (back.pixels[:10] == 255).all()
    with pytest.warns(ImageWarning, match="ICC"):
        write_image(tmp_path / "b.bmp", ImageData(pixels=photo, icc_profile=srgb_icc))
    np.testing.assert_array_equal(read_image(tmp_path / "b.bmp").pixels, photo)


@pytest.mark.parametrize("maxval", [65535, 4095])
def test_16bit_ppm_from_raw_converters(tmp_path: Path, photo: np.ndarray, maxval: int) -> None:
    """dcraw -6 writes 16-bit binary PPM; Pillow alone would keep 8 bits. Samples scale from maxval to 65535."""
    raw = np.rint(photo.astype(np.float64) / 255 * maxval).astype(">u2")
    raw[0, 0] = [0, 1, 2]
    (tmp_path / "a.ppm").write_bytes(b"P6\n512 512\n%d\n" % maxval + raw.tobytes())
    img = read_image(tmp_path / "a.ppm")
    assert (img.format, img.bit_depth) == ("PPM", 16)
    np.testing.assert_array_equal(img.pixels, np.floor(raw.astype(np.float64) * 65535 / maxval + 0.5))
    (tmp_path / "cut.ppm").write_bytes((tmp_path / "a.ppm").read_bytes()[:-10])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.ppm")


# --- the PNG writer: rows filtered and deflated in parallel blocks ------------------------------------------------


def _idat(data: bytes) -> bytes:
    pos, out = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            out += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    return out


def test_adler32_combine_equals_zlib_on_photo_bytes(photo: np.ndarray) -> None:
    from esrgan.imageio import _adler32_combine

    data = photo.tobytes()
    for cut in (0, 1, 5552, 65521, 65522, 300_001, len(data)):  # around zlib's NMAX and the modulus
        a, b = data[:cut], data[cut:]
        assert _adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data), cut


@pytest.mark.parametrize("kind", ["rgb", "rgba", "grey", "grey+alpha", "rgb16", "rgba16"])
def test_png_in_many_parallel_blocks_is_one_valid_stream(
    kind: str, tmp_path: Path, photo: np.ndarray, camera: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of ~5 rows each (instead of ~1 MiB): ~100 deflate streams joined by sync flushes. The IDAT data must
    be one zlib stream whose Adler-32 checks (zlib.decompress verifies it), Pillow and our reader must give back
    every pixel, and the file must be no larger than 1 % over a single-block encoding."""
    import esrgan.imageio

    wide = kind.endswith("16")
    base = _deep16(photo) if wide else photo
    pixels = base[:, :, :1] if kind.startswith("grey") else base
    alpha = None
    if kind in ("rgba", "grey+alpha", "rgba16"):
        alpha = _deep16(camera) if wide else camera
    image = ImageData(pixels=np.ascontiguousarray(pixels), alpha=alpha, bit_depth=16 if wide else 8)
    monkeypatch.setattr(esrgan.imageio, "PARALLEL_PNG_MIN_CORES", 1)  # ours whatever this machine's cores
    write_image(tmp_path / "one.png", image)
    monkeypatch.setattr(esrgan.imageio, "_PNG_BLOCK_BYTES", 5 * pixels.shape[1] * (image.channels + 1) * 2)
    write_image(tmp_path / "many.png", image)
    data = (tmp_path / "many.png").read_bytes()
    raw = zlib.decompress(_idat(data))  # raises on a broken join or a wrong Adler-32
    row = 1 + pixels.shape[1] * (image.channels + (alpha is not None)) * (2 if wide else 1)
    assert len(raw) == row * pixels.shape[0]
    back = read_image(tmp_path / "many.png")
    np.testing.assert_array_equal(back.pixels, image.pixels)
    if alpha is not None:
        np.testing.assert_array_equal(back.alpha, alpha)
    if not wide:
        with Image.open(tmp_path / "many.png") as im:
            np.testing.assert_array_equal(
                np.asarray(im).reshape(pixels.shape[0], pixels.shape[1], -1)[..., : image.channels],
                image.pixels,
            )
    assert len(data) <= 1.01 * (tmp_path / "one.png").stat().st_size


def test_png_writer_is_no_larger_than_pillows_at_the_same_level(
    tmp_path: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same filter heuristic as libpng/Pillow (smallest sum of |signed bytes| per row) and the same zlib strategy:
    no larger than Pillow's file (measured: the same bytes count on this photo)."""
    import esrgan.imageio

    monkeypatch.setattr(esrgan.imageio, "PARALLEL_PNG_MIN_CORES", 1)
    for level in (1, 6):
        write_image(
            tmp_path / f"ours{level}.png", ImageData(pixels=photo, bit_depth=8), png_compression=level
        )
        Image.fromarray(photo).save(tmp_path / f"pillow{level}.png", compress_level=level)
        ours, pillow = ((tmp_path / f"{n}{level}.png").stat().st_size for n in ("ours", "pillow"))
        assert ours <= 1.01 * pillow, (level, ours, pillow)


def test_sizes_past_a_formats_limits_are_refused_before_encoding(tmp_path: Path, photo: np.ndarray) -> None:
    """write_image refuses a size its format cannot hold in our words (libwebp and libjpeg say "encoding error 5"
    or "broken data stream" after the work): WebP at 16384 pixels, JPEG at 65501; their limits themselves are
    written. check_writable takes the size an image will have, so BMP's and DICOM's 4 GiB are checked without
    making the pixels."""
    from esrgan.imageio import MAX_SIDE, check_writable

    row = np.ascontiguousarray(np.tile(photo[100:101], (1, 130, 1)))  # 1 x 66560, a real photo's row repeated
    for fmt, limit in [("WEBP", 16383), ("JPEG", 65500)]:
        assert MAX_SIDE[fmt] == limit
        ext = ".webp" if fmt == "WEBP" else ".jpg"
        write_image(tmp_path / f"fits{ext}", ImageData(pixels=np.ascontiguousarray(row[:, :limit])))
        with Image.open(tmp_path / f"fits{ext}") as im:
            assert im.size == (limit, 1)
        with pytest.raises(
            ImageError, match=rf"would be {limit + 1}x1, larger than .* \({limit} pixels a side\)"
        ):
            write_image(tmp_path / f"over{ext}", ImageData(pixels=np.ascontiguousarray(row[:, : limit + 1])))
        assert not (tmp_path / f"over{ext}").exists() and not list(tmp_path.glob(".over*"))
    image = ImageData(pixels=photo[:8, :8])
    check_writable(image, "BMP", tmp_path / "a.bmp", size=(37000, 37000))  # 3.8 GiB: fits 32 bits
    with pytest.raises(ImageError, match=r"would be 38000x38000, 4\.0 GiB: more than BMP holds"):
        check_writable(image, "BMP", tmp_path / "a.bmp", size=(38000, 38000))
    grey = ImageData(pixels=photo[:8, :8, :1])
    check_writable(grey, "BMP", tmp_path / "a.bmp", size=(65000, 65000))  # 8 bits a pixel: 3.9 GiB
    check_writable(image, "PNG", tmp_path / "a.png", size=(200000, 200000))


@pytest.mark.parametrize("bits", [8, 16])
def test_a_tiff_past_4_gib_is_written_as_bigtiff(
    tmp_path: Path, photo: np.ndarray, bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classic TIFF's offsets end at 4 GiB and tifffile picks BigTIFF only for uncompressed data: past
    BIG_TIFF_BYTES of pixels ours are BigTIFF, 8-bit (otherwise Pillow's, classic only before Pillow 11.1) and
    16-bit. The threshold is lowered here so that a real photo crosses it; the pixels read back unchanged."""
    import tifffile

    from esrgan import imageio

    pixels = photo[:64, :96] if bits == 8 else photo[:64, :96].astype(np.uint16) * 257
    image = ImageData(pixels=np.ascontiguousarray(pixels), bit_depth=bits)
    write_image(tmp_path / "classic.tif", image)
    monkeypatch.setattr(imageio, "BIG_TIFF_BYTES", pixels.nbytes - 1)
    write_image(tmp_path / "big.tif", image)
    for name, big in [("classic.tif", False), ("big.tif", True)]:
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.is_bigtiff == big
        back = read_image(tmp_path / name)
        assert back.bit_depth == bits and np.array_equal(back.pixels, pixels)


def test_an_icc_profile_too_large_for_jpeg_is_dropped_with_a_warning_not_corrupted(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """JPEG holds an ICC profile in at most 255 APP2 segments (16,707,345 bytes); Pillow wrapped the segment count
    past that, so a larger profile was written corrupt and every reader dropped it without a word. Now one the size
    of the limit goes through exactly (read back whole), and one byte more is not written, with a warning; TIFF
    keeps it."""
    from PIL import ImageCms

    from esrgan.imageio import _JPEG_ICC_BYTES

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert _JPEG_ICC_BYTES == 16_707_345
    fits = srgb + bytes(_JPEG_ICC_BYTES - len(srgb))  # a real profile's bytes, padded (tag data readers skip)
    pixels = np.ascontiguousarray(photo[:32, :32])
    write_image(tmp_path / "fits.jpg", ImageData(pixels=pixels, icc_profile=fits))
    assert read_image(tmp_path / "fits.jpg").icc_profile == fits
    with pytest.warns(
        ImageWarning, match=r"over\.jpg: the ICC profile is 16707346 bytes, more than a JPEG holds"
    ):
        write_image(tmp_path / "over.jpg", ImageData(pixels=pixels, icc_profile=fits + b"\0"))
    assert read_image(tmp_path / "over.jpg").icc_profile is None
    write_image(tmp_path / "over.tif", ImageData(pixels=pixels, icc_profile=fits + b"\0"))
    assert read_image(tmp_path / "over.tif").icc_profile == fits + b"\0"


def test_an_8bit_png_with_a_profile_over_a_mib_is_read_with_it(tmp_path: Path, photo: np.ndarray) -> None:
    """Pillow inflates a PNG's iCCP chunk up to 1 MiB and refused the whole image past it ("corrupt or truncated
    image"), while a 16-bit PNG (our reader), JPEG and TIFF with the same profile were read: now 8-bit PNGs take
    profiles up to the same 16 MiB, kept on the way out; past that the image is still refused, not inflated."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big = srgb + bytes(2_000_000)  # a real profile, padded: as big as printer profiles with large LUTs get
    Image.fromarray(photo[:32, :32]).save(tmp_path / "in.png", icc_profile=big)
    image = read_image(tmp_path / "in.png")
    assert image.icc_profile == big and image.bit_depth == 8
    write_image(tmp_path / "out.png", image)
    assert read_image(tmp_path / "out.png").icc_profile == big
    Image.fromarray(photo[:32, :32]).save(tmp_path / "huge.png", icc_profile=srgb + bytes(17 * 2**20))
    with pytest.raises(ImageError, match=r"huge\.png: "):
        read_image(tmp_path / "huge.png")


# --- metadata beyond ICC and EXIF: XMP, PNG text and colour chunks, comments, resolution, EXIF sizes -------------------

_XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
    b' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/">'
    b'<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) 2024 A. Photographer</rdf:li></rdf:Alt></dc:rights>'
    b"<exif:PixelXDimension>80</exif:PixelXDimension><exif:PixelYDimension>60</exif:PixelYDimension>"
    b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def _xmp_of(path: Path) -> bytes | None:
    """The XMP packet of a file as Pillow reads it (info["xmp"]; TIFF: tag 700)."""
    with Image.open(path) as im:
        found = im.info.get("xmp")
        return found.encode() if isinstance(found, str) else found


def _save_with_xmp(path: Path, pixels: np.ndarray, xmp: bytes, **meta: object) -> None:
    """A real photo saved with an XMP packet the way each format's writers store it."""
    fmt = path.suffix[1:]
    if fmt == "tif":
        import tifffile

        tifffile.imwrite(path, pixels, photometric="rgb", extratags=[(700, 1, len(xmp), xmp, True)])
    elif fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
        Image.fromarray(pixels).save(path, pnginfo=info, **meta)  # type: ignore[arg-type]
    else:
        Image.fromarray(pixels).save(path, xmp=xmp, **meta)  # type: ignore[arg-type]


@pytest.mark.parametrize("src", ["jpg", "png", "webp", "tif"])
@pytest.mark.parametrize("dst", ["png", "jpg", "webp", "tiff"])
def test_xmp_is_kept_in_every_format(tmp_path: Path, cat: np.ndarray, src: str, dst: str) -> None:
    """XMP (rights, credits, ratings, captions) reached no output: it goes into each format's XMP container,
    with its record of the pixel size made the output's."""
    pixels = np.ascontiguousarray(cat[100:160, 150:230])  # 80 x 60
    _save_with_xmp(tmp_path / f"in.{src}", pixels, _XMP)
    image = read_image(tmp_path / f"in.{src}")
    assert image.xmp == _XMP
    bigger = replace(image, pixels=np.repeat(np.repeat(image.pixels, 2, axis=0), 2, axis=1))  # 160 x 120
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(tmp_path / f"out.{dst}", bigger)
    out = _xmp_of(tmp_path / f"out.{dst}")
    assert out is not None and b"(c) 2024 A. Photographer" in out
    assert b"<exif:PixelXDimension>160</exif:PixelXDimension>" in out
    assert b"<exif:PixelYDimension>120</exif:PixelYDimension>" in out
    assert read_image(tmp_path / f"out.{dst}").xmp == out


def test_xmp_orientation_is_reset_with_the_exif_one(tmp_path: Path, cat: np.ndarray) -> None:
    """A phone's JPEG says "turn 90 degrees" in EXIF and XMP alike: with the pixels turned, both say upright (a
    viewer reading XMP turned the upright output once more); unturned pixels leave the XMP alone."""
    pixels = np.ascontiguousarray(cat[100:160, 150:230])
    turn = _XMP.replace(
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/">',
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="6">',
    )
    # EXIF 1 with XMP 6: the EXIF wins (pixels unturned) and the XMP says 1 too, or a TIFF output (whose EXIF
    # holds no orientation) would be turned by its XMP when read again (session 35's review)
    for orientation, expected in ((6, b'tiff:Orientation="1"'), (1, b'tiff:Orientation="1"')):
        _save_with_xmp(tmp_path / "in.jpg", pixels, turn, exif=_exif(t274=orientation))
        image = read_image(tmp_path / "in.jpg")
        assert image.xmp is not None and expected in image.xmp
        write_image(tmp_path / "out.jpg", image, overwrite=True)
        assert expected in (_xmp_of(tmp_path / "out.jpg") or b"")
        assert Image.open(tmp_path / "out.jpg").getexif()[274] == 1
        write_image(tmp_path / "out.tif", image, overwrite=True)
        assert read_image(tmp_path / "out.tif").pixels.shape == image.pixels.shape  # shown as it was
    # a TIFF with no Orientation tag: Pillow >= 11 turns it by the XMP's (older ones do not); either way the XMP
    # then says what the pixels are
    _save_with_xmp(tmp_path / "in.tif", pixels, turn)
    image = read_image(tmp_path / "in.tif")
    turned = image.pixels.shape[:2] == (80, 60)
    assert (
        image.xmp is not None
        and (b'tiff:Orientation="1"' if turned else b'tiff:Orientation="6"') in image.xmp
    )


def test_an_xmp_orientation_alone_turns_every_format_alike(tmp_path: Path, cat: np.ndarray) -> None:
    """An XMP tiff:Orientation with no EXIF one (what some editors write): Pillow's load turned a TIFF by it, and
    PNG, WebP and JPEG were read unturned, so one photo came out two ways (session 35's format audit). Now every
    format is turned, as the Metadata Working Group and Pillow's exif_transpose read it, and the XMP then says 1."""
    pixels = np.ascontiguousarray(cat[100:160, 150:230])  # 60 rows x 80 columns
    turn = _XMP.replace(
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/">',
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="6">',
    )
    for fmt in ("tif", "png", "webp", "jpg"):
        options = {"lossless": True} if fmt == "webp" else {"quality": 100} if fmt == "jpg" else {}
        _save_with_xmp(tmp_path / f"in.{fmt}", pixels, turn, **options)
        image = read_image(tmp_path / f"in.{fmt}")
        assert image.pixels.shape[:2] == (80, 60), fmt
        if fmt != "jpg":  # lossless: exactly the pixels turned
            np.testing.assert_array_equal(image.pixels, np.rot90(pixels, -1), err_msg=fmt)
        assert image.xmp is not None and b'tiff:Orientation="1"' in image.xmp, fmt


def test_an_xmp_orientation_turns_16_bit_tiffs_and_every_frame_alike(tmp_path: Path, cat: np.ndarray) -> None:
    """The XMP's orientation (no EXIF one) read by every reader alike (session 35's review): a 16-bit RGB TIFF
    (tifffile's reader, which turned only by the tag), and an APNG whose XMP follows its first image data (the
    frame reader took its orientation before the first frame's load had seen the XMP: frames unturned, the XMP
    then said 1)."""
    tifffile = pytest.importorskip("tifffile")
    pixels = np.ascontiguousarray(cat[100:160, 150:230])  # 60 x 80
    turn = _XMP.replace(
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/">',
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="6">',
    )
    deep = _deep16(pixels)
    tifffile.imwrite(tmp_path / "d.tif", deep, photometric="rgb", extratags=[(700, 1, len(turn), turn, True)])
    np.testing.assert_array_equal(read_image(tmp_path / "d.tif").pixels, np.rot90(deep, -1))
    frames = [pixels, np.ascontiguousarray(pixels[::-1]), np.ascontiguousarray(255 - pixels)]
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", turn.decode())
    Image.fromarray(frames[0]).save(
        tmp_path / "a.png",
        save_all=True,
        append_images=[Image.fromarray(f) for f in frames[1:]],
        pnginfo=info,
    )
    blob, at, chunks = (tmp_path / "a.png").read_bytes(), 8, []
    while at < len(blob):
        n = struct.unpack(">I", blob[at : at + 4])[0]
        chunks.append((blob[at + 4 : at + 8], blob[at : at + 12 + n]))
        at += 12 + n
    late = [c for k, c in chunks if k not in (b"iTXt", b"IEND")] + [
        c for k, c in chunks if k in (b"iTXt", b"IEND")
    ]
    (tmp_path / "late.png").write_bytes(blob[:8] + b"".join(late))
    assert np.array_equal(read_image(tmp_path / "late.png").pixels, np.rot90(frames[0], -1))
    with read_frames(tmp_path / "late.png") as read:
        got = [frame.pixels for frame, _ in read]
    assert len(got) == 3
    for k, frame in enumerate(got):
        np.testing.assert_array_equal(frame, np.rot90(frames[k], -1), err_msg=f"frame {k}")
    # ImageMagick's "Raw profile type exif" text chunk: the frame reader took no EXIF from it (helper-92)
    exif6 = _exif(t274=6).tobytes()
    text = f"\nexif\n{len(exif6):8}\n{exif6.hex()}\n".encode()
    raw = b"Raw profile type exif\x00" + text
    raw_chunk = struct.pack(">I", len(raw)) + b"tEXt" + raw + struct.pack(">I", zlib.crc32(b"tEXt" + raw))
    plain = [c for k, c in chunks if k != b"iTXt"]
    (tmp_path / "raw.png").write_bytes(blob[:8] + plain[0] + raw_chunk + b"".join(plain[1:]))
    assert np.array_equal(read_image(tmp_path / "raw.png").pixels, np.rot90(frames[0], -1))
    with read_frames(tmp_path / "raw.png") as read:
        assert all(np.array_equal(f.pixels, np.rot90(frames[k], -1)) for k, (f, _) in enumerate(read))
    # a malformed XMP value Pillow reads as 6 ("60") and a two-valued tag: turned once, at 8 bits as at 16
    bad = turn.replace(b'tiff:Orientation="6"', b'tiff:Orientation="60"')
    tifffile.imwrite(
        tmp_path / "x60.tif", pixels, photometric="rgb", extratags=[(700, 1, len(bad), bad, True)]
    )
    np.testing.assert_array_equal(read_image(tmp_path / "x60.tif").pixels, np.rot90(pixels, -1))
    tifffile.imwrite(tmp_path / "t66.tif", deep, photometric="rgb", extratags=[(274, "H", 2, (6, 6), True)])
    np.testing.assert_array_equal(read_image(tmp_path / "t66.tif").pixels, np.rot90(deep, -1))


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_a_grey_tiff_turned_by_its_orientation_tag_is_not_scrambled(tmp_path: Path, orientation: int) -> None:
    """An uncompressed grey TIFF (8 or 16-bit, a portrait scan) with Orientation 5-8 and a non-square size:
    Pillow 13, opening it by path, memory-maps it and its load turns the size but not the pixels, so a scrambled
    image was upscaled (session 35's format audit). RGB, compressed and square TIFFs were right."""
    tifffile = pytest.importorskip("tifffile")
    grey = np.ascontiguousarray(skimage_data.camera()[100:148, 200:264])  # 48 x 64, as stored
    shown = {5: grey.T, 6: np.rot90(grey, -1), 7: grey.T[::-1, ::-1], 8: np.rot90(grey, 1)}[orientation]
    for bits, stored in ((8, grey), (16, grey.astype(np.uint16) * 257 + 3)):
        path = tmp_path / f"g{bits}.tif"
        tifffile.imwrite(path, stored, photometric="minisblack", extratags=[(274, "H", 1, orientation, True)])
        expected = shown if bits == 8 else shown.astype(np.uint16) * 257 + 3
        np.testing.assert_array_equal(read_image(path).pixels[:, :, 0], expected, err_msg=f"{bits}-bit")


def test_a_16_bit_min_is_white_tiff_is_read_as_shown(tmp_path: Path) -> None:
    """PhotometricInterpretation 0 (MinIsWhite: 0 is white), single-sample: Pillow inverts it at 8 bits, not at 16,
    so a 16-bit one was upscaled (and written, as MinIsBlack) as its own negative (session 35's format audit)."""
    tifffile = pytest.importorskip("tifffile")
    grey = np.ascontiguousarray(skimage_data.camera()[100:164, 200:264])
    deep = grey.astype(np.uint16) * 257 + 3
    tifffile.imwrite(tmp_path / "w8.tif", 255 - grey, photometric="miniswhite")
    tifffile.imwrite(tmp_path / "w16.tif", 65535 - deep, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "w8.tif").pixels[:, :, 0], grey)
    np.testing.assert_array_equal(read_image(tmp_path / "w16.tif").pixels[:, :, 0], deep)


def test_a_hostile_xmp_is_searched_in_linear_time(tmp_path: Path, cat: np.ndarray) -> None:
    """The XMP of a turned photo is patched by patterns, not parsed: the element's pattern held nested repeats
    (`\\s*\\d*\\s*`), and 200 KB of spaces in <tiff:Orientation> took 277 s to read. In a child with a time limit,
    which the old pattern overran by minutes; the value is replaced whatever spaces surround it."""
    xmp = _XMP.replace(
        b"</rdf:Description>",
        b"<tiff:Orientation>" + b" " * 200_000 + b"6 (turned)</tiff:Orientation></rdf:Description>",
    )
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    Image.fromarray(np.ascontiguousarray(cat[100:160, 150:230])).save(
        tmp_path / "in.png", pnginfo=info, exif=_exif(t274=6)
    )
    code = "import sys\nfrom esrgan.imageio import read_image\nsys.stdout.buffer.write(read_image(sys.argv[1]).xmp[-200:])"
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "in.png")], capture_output=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.endswith(
        b'<tiff:Orientation>1</tiff:Orientation></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def test_xmp_too_large_for_a_jpeg_is_named(tmp_path: Path, cat: np.ndarray) -> None:
    big = _XMP.replace(b"<?xpacket end", b" " * 70_000 + b"<?xpacket end")
    image = ImageData(pixels=np.ascontiguousarray(cat[:40, :40]), xmp=big)
    with pytest.warns(
        ImageWarning, match=r"big\.jpg: JPEG output: the input's XMP \(70\d+ bytes: a JPEG holds"
    ):
        write_image(tmp_path / "big.jpg", image)
    assert _xmp_of(tmp_path / "big.jpg") is None
    write_image(tmp_path / "big.png", image)  # PNG, WebP and TIFF hold it
    assert _xmp_of(tmp_path / "big.png") == big.replace(b">80<", b">40<").replace(b">60<", b">40<")


def _png_chunk_list(path: Path) -> list[tuple[bytes, bytes]]:
    data, pos, out = path.read_bytes(), 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def _insert_png_chunks(path: Path, chunks: list[tuple[bytes, bytes]], after_idat: bool = False) -> None:
    """Chunks put into a PNG Pillow wrote, after IHDR (or before IEND)."""
    data = path.read_bytes()
    body = b"".join(
        struct.pack(">I", len(b)) + k + b + struct.pack(">I", zlib.crc32(k + b)) for k, b in chunks
    )
    at = len(data) - 12 if after_idat else 33
    path.write_bytes(data[:at] + body + data[at:])


_SD_PARAMETERS = "a lighthouse at dusk, oil painting\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234"


def _png_with_text(path: Path, pixels: np.ndarray, gamma: int = 100000) -> list[tuple[bytes, bytes]]:
    """A PNG (8-bit by Pillow, 16-bit by ours) as Stable Diffusion UIs and editors leave them: text chunks of each
    kind (one after the image data), gAMA 1.0 with cHRM (a linear image, no ICC profile). Returns the text and
    colour chunks as written."""
    if pixels.dtype == np.uint16:
        write_image(path, ImageData(pixels=pixels, bit_depth=16))
    else:
        Image.fromarray(pixels).save(path)
    chrm = struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)
    before = [
        (b"gAMA", struct.pack(">I", gamma)),
        (b"cHRM", chrm),
        (b"tEXt", b"parameters\x00" + _SD_PARAMETERS.encode("latin-1")),
        (b"zTXt", b"Copyright\x00\x00" + zlib.compress(b"(c) 2024 A. Photographer")),
        (b"iTXt", b"Description\x00\x00\x00de\x00Beschreibung\x00" + "Leuchtturm in der Dämmerung".encode()),
    ]
    after = [(b"tEXt", b"Comment\x00written after the image data")]
    _insert_png_chunks(path, before)
    _insert_png_chunks(path, after, after_idat=True)
    return before + after


@pytest.mark.parametrize("writer", ["pillow", "parallel", "16-bit", "rows"])
def test_png_text_and_colour_chunks_are_kept_png_to_png(
    tmp_path: Path, cat: np.ndarray, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """A Stable Diffusion PNG lost its generation parameters, a PNG with gAMA 1.0 and no profile its gamma (it then
    showed darker): PNG to PNG, every text chunk and gAMA/cHRM/sRGB is copied byte for byte, by each PNG writer."""
    import esrgan.imageio

    pixels = np.ascontiguousarray(cat[100:160, 150:230])
    src = tmp_path / "in.png"
    chunks = _png_with_text(src, _deep16(pixels) if writer == "16-bit" else pixels)
    monkeypatch.setattr(esrgan.imageio, "PARALLEL_PNG_MIN_CORES", 1 if writer == "parallel" else 10**6)
    image = read_image(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if writer == "rows":
            esrgan.imageio.write_image_rows(tmp_path / "out.png", image, (60, 80), [image.pixels])
        else:
            write_image(tmp_path / "out.png", image)
    out = [
        (k, b)
        for k, b in _png_chunk_list(tmp_path / "out.png")
        if k in (b"tEXt", b"zTXt", b"iTXt", b"gAMA", b"cHRM")
    ]
    assert sorted(out) == sorted(chunks)
    with Image.open(tmp_path / "out.png") as im:
        im.load()
        assert im.text["parameters"] == _SD_PARAMETERS and im.info["gamma"] == 1.0


def test_png_text_and_a_non_srgb_gamma_are_named_when_the_output_cannot_hold_them(
    tmp_path: Path, cat: np.ndarray, srgb_icc: bytes
) -> None:
    pixels = np.ascontiguousarray(cat[100:160, 150:230])
    _png_with_text(tmp_path / "linear.png", pixels, gamma=100000)
    image = read_image(tmp_path / "linear.png")
    for ext in ("jpg", "webp", "tif"):
        with pytest.warns(ImageWarning) as caught:
            write_image(tmp_path / f"out.{ext}", image)
        lines = [str(w.message) for w in caught if "input's" in str(w.message)]
        assert len(lines) == 1, lines  # one warning naming all of it
        assert "PNG text (parameters, Copyright, Description and 1 more)" in lines[0]
        assert "PNG gamma (gAMA 1, not sRGB's 0.45455)" in lines[0]
    # sRGB's own gamma, or a profile that describes the colours, loses nothing that matters
    _png_with_text(tmp_path / "srgb.png", pixels, gamma=45455)
    for path, image in (
        (tmp_path / "srgb.png", read_image(tmp_path / "srgb.png")),
        (tmp_path / "linear.png", replace(read_image(tmp_path / "linear.png"), icc_profile=srgb_icc)),
    ):
        with pytest.warns(ImageWarning) as caught:
            write_image(tmp_path / "out.jpg", image, overwrite=True)
        assert [str(w.message) for w in caught if "gamma" in str(w.message)] == [], path


def test_jpeg_comment_kept_jpeg_to_jpeg_and_named_elsewhere(tmp_path: Path, cat: np.ndarray) -> None:
    pixels = np.ascontiguousarray(cat[100:160, 150:230])
    Image.fromarray(pixels).save(tmp_path / "in.jpg", comment=b"Scanned from a 1962 slide, Kodachrome")
    image = read_image(tmp_path / "in.jpg")
    write_image(tmp_path / "out.jpg", image)
    assert Image.open(tmp_path / "out.jpg").info["comment"] == b"Scanned from a 1962 slide, Kodachrome"
    with pytest.warns(ImageWarning, match=r"out\.png: PNG output: the input's comment not written"):
        write_image(tmp_path / "out.png", image)


def test_iptc_is_named_as_not_written(tmp_path: Path, cat: np.ndarray) -> None:
    """IPTC (a news photo's caption, credit, keywords) in Photoshop's APP13 segment: no writer keeps it, and the
    output says so instead of losing it without a word."""
    iptc = b"\x1c\x02\x00\x00\x02\x00\x04\x1c\x02\x78\x00\x0bA lighthouse"  # record version, caption
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc)) + iptc + b"\x00" * (len(iptc) % 2)
    segment = b"Photoshop 3.0\x00" + resource
    Image.fromarray(np.ascontiguousarray(cat[100:160, 150:230])).save(tmp_path / "plain.jpg")
    data = (tmp_path / "plain.jpg").read_bytes()
    app13 = b"\xff\xed" + struct.pack(">H", 2 + len(segment)) + segment
    (tmp_path / "news.jpg").write_bytes(data[:2] + app13 + data[2:])
    image = read_image(tmp_path / "news.jpg")
    for ext in ("jpg", "png", "tif"):
        with pytest.warns(
            ImageWarning, match=rf"out\.{ext}: \w+ output: the input's IPTC/Photoshop data not written"
        ):
            write_image(tmp_path / f"out.{ext}", image)


@pytest.mark.parametrize("src", ["jpg", "png", "tif", "tif-cm", "tif16"])
@pytest.mark.parametrize("dst", ["png", "jpg", "tiff", "bmp"])
def test_resolution_is_kept(tmp_path: Path, cat: np.ndarray, src: str, dst: str) -> None:
    """A 300 dpi scan came out with no resolution (PNG), JFIF's 1:1 "no unit" (JPEG) or 1/1 "no unit" (TIFF),
    while its EXIF still said 300 dpi. The resolution is kept as it is: the upscaled print is as many times larger
    as the pixels (Photoshop's resampling keeps the resolution too), and agrees with the EXIF."""
    import tifffile

    pixels = np.ascontiguousarray(cat[100:160, 150:230])
    path = tmp_path / f"in.{src[:3]}"
    if src == "tif-cm":  # 118.11 pixels per centimetre
        tifffile.imwrite(path, pixels, photometric="rgb", resolution=(118.11, 118.11), resolutionunit=3)
    elif src == "tif16":  # tifffile's reader
        tifffile.imwrite(
            path, pixels.astype(np.uint16) * 257, photometric="rgb", resolution=(300, 300), resolutionunit=2
        )
    else:
        Image.fromarray(pixels).save(path, dpi=(300, 300))
    image = read_image(path)
    assert image.dpi is not None and image.dpi == pytest.approx((300, 300), abs=0.01)
    if dst == "bmp":  # BMP is 8-bit, and holds no EXIF (tifffile's Software tag is one)
        image = replace(image, pixels=_to8(image.pixels), bit_depth=8, exif=None)
    write_image(tmp_path / f"out.{dst}", image)
    with Image.open(tmp_path / f"out.{dst}") as im:
        assert im.info.get("dpi") == pytest.approx((300, 300), abs=0.01)
    assert read_image(tmp_path / f"out.{dst}").dpi == pytest.approx((300, 300), abs=0.01)


def test_a_resolution_or_colour_chunk_an_output_cannot_hold_is_named(tmp_path: Path, cat: np.ndarray) -> None:
    """README: what an output cannot hold is named in one warning per file. A 300 dpi PNG without EXIF to WebP
    (which holds a resolution only in its EXIF), 70000 dpi to JPEG (JFIF's density is 16-bit), and a PNG's
    non-sRGB primaries (cHRM, no profile) to JPEG lost them without a word (helper-76's review)."""
    pixels = np.ascontiguousarray(cat[100:160, 150:230])
    Image.fromarray(pixels).save(tmp_path / "scan.png", dpi=(300, 300))
    scan = read_image(tmp_path / "scan.png")
    with pytest.warns(ImageWarning, match=r"WEBP output: the input's resolution \(300 dpi\) not written"):
        write_image(tmp_path / "scan.webp", scan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its EXIF carries the resolution: nothing lost
        Image.fromarray(pixels).save(
            tmp_path / "exif.png", dpi=(300, 300), exif=_exif(t282=300.0, t283=300.0)
        )
        write_image(tmp_path / "exif.webp", read_image(tmp_path / "exif.png"))
    with pytest.warns(ImageWarning, match=r"resolution \(70000 dpi: a JPEG holds 1-65535\) not written"):
        write_image(tmp_path / "fine.jpg", replace(scan, dpi=(70000.0, 70000.0)))
    wide = struct.pack(">8I", 31270, 32900, 73470, 26530, 11400, 82620, 15660, 1770)  # a wide-gamut set
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    _insert_png_chunks(tmp_path / "wide.png", [(b"cHRM", wide)])
    with pytest.warns(ImageWarning, match=r"the input's PNG chromaticities \(cHRM, not sRGB's\) not written"):
        write_image(tmp_path / "wide.jpg", read_image(tmp_path / "wide.png"))


def _to8(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.dtype == np.uint8 else (pixels // 257).astype(np.uint8)


def test_resolution_turns_with_the_pixels_and_is_not_made_up(tmp_path: Path, cat: np.ndarray) -> None:
    pixels = np.ascontiguousarray(cat[100:160, 150:230])
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", dpi=(300, 150), exif=_exif(t274=6))
    assert read_image(tmp_path / "turned.jpg").dpi == (150, 300)  # x and y swap with a quarter turn
    # an EXIF without a resolution: Pillow's info["dpi"] says 72, the file says nothing
    Image.fromarray(pixels).save(tmp_path / "none.jpg", exif=_exif())
    assert read_image(tmp_path / "none.jpg").dpi is None
    write_image(tmp_path / "none.tif", read_image(tmp_path / "none.jpg"))
    assert Image.open(tmp_path / "none.tif").tag_v2.get(296) == 1  # "no unit", as before
    # a JPEG without JFIF density takes its EXIF's resolution (what Pillow does too)
    Image.fromarray(pixels).save(tmp_path / "exif.jpg", exif=_exif(t282=240.0, t283=240.0, t296=2))
    assert read_image(tmp_path / "exif.jpg").dpi == (240, 240)


def _exif_with_thumbnail(orientation: int) -> bytes:
    """A camera's EXIF: IFD0 (make, model, orientation, the Exif IFD with PixelX/YDimension as SHORTs) linked to
    IFD1, whose JPEG thumbnail shows the pixels as stored (a 16x12 red picture here)."""
    exif = _exif(t274=orientation)
    exif.get_ifd(0x8769).update({0xA002: 80, 0xA003: 60, 0x9003: "2024:05:06 07:08:09"})
    raw = bytearray(exif.tobytes())  # Pillow writes no IFD1: appended here, and linked from IFD0
    order = "<" if raw[6:8] == b"II" else ">"
    thumb = io.BytesIO()
    Image.new("RGB", (16, 12), "red").save(thumb, "JPEG")
    ifd0 = 6 + struct.unpack(order + "I", raw[10:14])[0]
    link = ifd0 + 2 + 12 * struct.unpack(order + "H", raw[ifd0 : ifd0 + 2])[0]
    ifd1 = len(raw) - 6
    raw[link : link + 4] = struct.pack(order + "I", ifd1)
    entries = struct.pack(order + "HHIIHHII", 0x0201, 4, 1, ifd1 + 30, 0x0202, 4, 1, len(thumb.getvalue()))
    return bytes(raw) + struct.pack(order + "H", 2) + entries + bytes(4) + thumb.getvalue()


def _thumbnail_of(exif: bytes) -> bool:
    loaded = Image.Exif()
    loaded.load(exif)
    return bool(loaded.get_ifd(ExifTags.IFD.IFD1))


@pytest.mark.parametrize("orientation", [1, 6])
def test_exif_thumbnail_dropped_when_the_pixels_are_turned(
    tmp_path: Path, cat: np.ndarray, orientation: int
) -> None:
    """With the orientation applied, the EXIF thumbnail (IFD1) still showed the picture on its side, under
    Orientation 1: the link to it is cut. Unturned pixels keep it. Every other byte stays (maker notes)."""
    exif = _exif_with_thumbnail(orientation)
    assert _thumbnail_of(exif)
    Image.fromarray(np.ascontiguousarray(cat[100:160, 150:230])).save(tmp_path / "in.jpg", exif=exif)
    image = read_image(tmp_path / "in.jpg")
    assert image.exif is not None and len(image.exif) == len(exif)
    assert _thumbnail_of(image.exif) == (orientation == 1)
    assert _exif_of(image.exif)[274] == 1


@pytest.mark.parametrize("dst", ["jpg", "png", "webp", "rows.png"])
def test_exif_pixel_dimensions_are_the_outputs(tmp_path: Path, cat: np.ndarray, dst: str) -> None:
    """The Exif IFD's PixelXDimension / PixelYDimension said the input's size (80x60 stored, turned: 60x80)."""
    import esrgan.imageio

    Image.fromarray(np.ascontiguousarray(cat[100:160, 150:230])).save(
        tmp_path / "in.jpg", exif=_exif_with_thumbnail(6)
    )
    image = read_image(tmp_path / "in.jpg")  # 60 wide, 80 high once turned
    big = replace(image, pixels=np.repeat(np.repeat(image.pixels, 3, axis=0), 3, axis=1))  # 180 x 240
    if dst == "rows.png":
        esrgan.imageio.write_image_rows(tmp_path / dst, image, (240, 180), [big.pixels])
    else:
        write_image(tmp_path / f"out.{dst}", big)
        dst = f"out.{dst}"
    with Image.open(tmp_path / dst) as im:
        sub = im.getexif().get_ifd(0x8769)
        assert (sub[0xA002], sub[0xA003]) == im.size == (180, 240)
        assert sub[0x9003] == "2024:05:06 07:08:09"


def test_exif_pixel_dimensions_past_a_short_become_a_long() -> None:
    from esrgan.imageio import _exif_with_size

    exif = _exif_with_thumbnail(1)
    patched = _exif_with_size(exif, 70_000, 300)
    assert patched is not None and len(patched) == len(exif)
    sub = _exif_of(patched).get_ifd(0x8769)
    assert (sub[0xA002], sub[0xA003]) == (70_000, 300)


def test_metadata_size_limits_hold_for_xmp_and_png_text(tmp_path: Path, cat: np.ndarray) -> None:
    """A compressed XMP that inflates past 16 MiB (after the image data, where only our reader of 16-bit PNGs
    looks) is dropped with a warning, not inflated whole; text chunks past 16 MiB in all are dropped the same way."""
    pixels = _deep16(np.ascontiguousarray(cat[100:160, 150:230]))
    path = write_image(tmp_path / "in.png", ImageData(pixels=pixels, bit_depth=16))
    bomb = zlib.compress(b" " * (17 * 2**20), 9)
    _insert_png_chunks(path, [(b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + bomb)], after_idat=True)
    with pytest.warns(ImageWarning, match=r"in\.png: XMP of 16777217 bytes \(more than 16777216\) dropped"):
        assert read_image(path).xmp is None
    text = [(b"tEXt", b"notes\x00" + b"x" * (9 * 2**20)), (b"tEXt", b"more\x00" + b"y" * (9 * 2**20))]
    _insert_png_chunks(path, text, after_idat=True)
    with pytest.warns(ImageWarning) as caught:
        image = read_image(path)
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "PNG text past 16777216 bytes dropped (more and after)",
        "XMP of 16777217 bytes (more than 16777216) dropped",  # still there
    ]
    assert len(image.png_chunks) == 1


def test_upscale_file_keeps_the_metadata(tmp_path: Path, cat: np.ndarray) -> None:
    """The Python API's file to file (Upscaler.upscale_file) goes through the same reader and writer."""
    from conftest import photo_preserving_rrdb

    from esrgan import Upscaler

    Image.fromarray(np.ascontiguousarray(cat[100:130, 150:190])).save(
        tmp_path / "in.jpg", exif=_exif_with_thumbnail(1), xmp=_XMP, dpi=(300, 300)
    )
    with pytest.warns(ImageWarning, match="TIFF keeps only make/model"):  # the EXIF's camera settings
        Upscaler(photo_preserving_rrdb(0), device="cpu").upscale_file(
            tmp_path / "in.jpg", tmp_path / "out.tif"
        )
    with Image.open(tmp_path / "out.tif") as im:
        assert im.size == (160, 120) and im.info["dpi"] == (300, 300)
        assert b"<exif:PixelXDimension>160</exif:PixelXDimension>" in im.info["xmp"]


def test_png_compression_for_another_format_is_said_to_be_ignored(tmp_path: Path, cat: np.ndarray) -> None:
    """--quality on a PNG output warned that it was ignored, --png-compression on a JPEG or TIFF output did not."""
    import esrgan.imageio

    image = ImageData(pixels=np.ascontiguousarray(cat[100:160, 150:230]))
    for ext in ("jpg", "webp", "tif"):
        with pytest.warns(
            ImageWarning, match=rf"out\.{ext}: PNG compression applies to PNG only; ignored for \w+$"
        ):
            write_image(tmp_path / f"out.{ext}", image, png_compression=9)
    with pytest.warns(
        ImageWarning, match=r"rows\.tif: PNG compression applies to PNG only; ignored for TIFF"
    ):
        esrgan.imageio.write_image_rows(
            tmp_path / "rows.tif", image, (60, 80), [image.pixels], png_compression=9
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(tmp_path / "out.png", image, png_compression=9)
