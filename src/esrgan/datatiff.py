"""Measurement TIFFs: satellite, aerial, medical and scientific rasters through the same upscaler as photographs.

A TIFF is read here (by `esrgan upscale`, i.e. `read_image(..., measurements=True)`) instead of as a photograph
when its first page has float samples, signed or 32-bit integer samples, extra samples that are not alpha (GDAL
writes every band after the first of a multi-band raster as an "unspecified" extra sample), more than one extra
sample, or GeoTIFF georeferencing. Photo tools drop all of that, or worse: an RGB + near-infrared raster had its
infrared band taken for alpha (colour premultiplied by it, written back as alpha).

How the samples reach the model (esrgan.upscale.Upscaler.upscale_image):
- every band wider than 8 bits mapped linearly from [min, max] of its valid values onto [0, 1] (an RGB file's
  three colour bands jointly, so their balance stays; alpha keeps its type's full range), held as uint16 in between
  (1/65535 of the range: finer than the model's own error; 16-bit planes are computed in fp32) and mapped back, so
  outputs stay within each band's input range (the colour bands' joint one). Stretched because the models, trained
  on photographs that span the range, do much worse on dark low-range data: +2.7 dB on Set5 as reflectance x 0.25
  (docs/measurements.md). 8-bit bands are over 0..255 (a screen's values: an orthophoto comes out as the same
  pixels in a PNG do, computed at 8 bits), and data that reaches the nodata value moves one step off it;
- RGB colour bands through the model as colour, every other band alone as grey (the models know colour, not how
  a near-infrared band relates to red), alpha as in photographs;
- invalid pixels (NaN or GDAL's nodata value, per band) filled from their valid neighbours before the model (a
  hard edge against a fill value would ring into the data), and invalid again in the output where the nearest
  input pixel was.

What is written back (TIFF only: the values fit no other format): the same sample type, band count and order,
photometric interpretation, planar configuration, extra-sample meanings, ICC profile and orientation tag; GeoTIFF
georeferencing (pixel scale, tie points or transformation matrix, PixelIsArea or PixelIsPoint) scaled to the new
size, its keys and GDAL's nodata and metadata tags copied. Overviews (reduced-resolution pages, as a cloud-optimised
GeoTIFF or `gdaladdo` makes them): where the source had them, the output has them too, made from the upscaled
raster as `gdaladdo -r average` makes them (each level from the one before, fractional footprints, valid pixels
only), at the source's factors and on down to the source's smallest overview size, in the same layout (tiles,
mask).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import ImageError, one_line
from .imagedata import (
    BIG_TIFF_BYTES,
    ImageData,
    ImageWarning,
    orient,
    orientation_value,
    straighten,
    tifffile_quiet,
    too_many_pixels,
    unorient,
    xmp_orientation,
)

__all__ = [
    "SampleMap",
    "TiffKind",
    "as_photo",
    "measurement_kind",
    "read_measurements",
    "step_off",
    "stored_values",
    "stretch_planes",
    "write_measurements",
]

# ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)
GDAL_METADATA, GDAL_NODATA = 42112, 42113
_CARRIED = (*GEO_TAGS, GDAL_METADATA, GDAL_NODATA)
_ICC, _ORIENTATION, _XMP = 34675, 274, 700
_RASTER_TYPE_KEY, _PIXEL_IS_POINT = 1025, 2  # GTRasterTypeGeoKey
# Samples (all bands) per allowed pixel: a hyperspectral cube of hundreds of bands is refused at the pixel count of
# an RGBA photo unless the limit is raised (each band is a pass of the model, and held in memory in float64 once).
MAX_SAMPLES_PER_PIXEL = 4
_PHOTO_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclass(frozen=True)
class SampleMap:
    """How an ImageData's planes map back onto the samples of the measurement TIFF they came from.

    dtype: the file's sample type. ranges: per file sample, the (lo, hi) that 0 and 65535 of the uint16 planes
    stand for. extrasamples: the ExtraSamples codes to write
    (0 unspecified, 2 unassociated alpha). tags: (code, TIFF type, count, value) carried to the output (GeoTIFF,
    GDAL metadata and nodata). size: the source raster's (height, width), to scale the georeferencing.
    photometric: 0 (grey, white is low: DICOM's MONOCHROME1), 1 (grey) or 2 (RGB).
    """

    dtype: np.dtype[Any]
    ranges: tuple[tuple[float, float], ...]
    photometric: int
    planar: int
    extrasamples: tuple[int, ...]
    tags: tuple[tuple[int, int, int, Any], ...]
    nodata: float | None
    size: tuple[int, int]
    orientation: int = 1
    tile: tuple[int, int] | None = None
    masked: bool = False  # the source had a transparency mask (GDAL's internal mask): written back as one
    value_range: tuple[float, float] | None = None  # --value-range, if one was given
    derivation: str = ""  # what made the planes (Upscaler.fingerprint): DICOM derives its new UIDs from it
    # a multi-frame DICOM's frame count: the planes are frame after frame (each frame's colour planes together;
    # frames after the first are the ImageData's extra planes), written back as frames
    frames: int = 1
    overviews: tuple[int, ...] = ()  # the source's overview factors (its reduced-resolution pages: 2, 4, ...)
    dicom: Any = field(default=None, compare=False, repr=False)  # the source's pydicom Dataset (esrgan.dicom)

    @property
    def samples(self) -> int:
        """Planes in all: the samples of a pixel, times the frames."""
        return ((3 if self.photometric == 2 else 1) + len(self.extrasamples)) * self.frames

    @property
    def photo_compatible(self) -> bool:
        """Whether the planes are a photograph's (uint8/uint16 grey or RGB, maybe alpha): only the georeferencing
        and GDAL tags would be lost in another format."""
        return (
            self.dtype in _PHOTO_DTYPES
            and self.photometric in (1, 2)
            and all(code != 0 for code in self.extrasamples)
            and len(self.extrasamples) <= 1
            and self.frames == 1
        )

    def describe(self) -> str:
        if self.frames > 1:
            return f"{self.dtype.name} samples, {self.frames} frames"
        bands = f"{self.samples} bands" if self.samples > 1 else "1 band"
        return f"{self.dtype.name} samples, {bands}"


# --- which TIFFs --------------------------------------------------------------------------------------------------
GEO_PHOTO = "GeoTIFF georeferencing"
"""The kind of a georeferenced 8-bit photograph (grey or RGB, maybe alpha, or JPEG-YCbCr as GDAL writes
orthophotos): its pixels are decoded by the photograph reader (Pillow knows LZW, JPEG and YCbCr without
imagecodecs), its georeferencing kept from here, and its values are a photograph's (over 0..255, as the same
pixels in a PNG: GIS tools show a Byte raster unstretched too)."""

GEO_16 = "16-bit samples with GeoTIFF georeferencing"
"""The kind of a georeferenced 16-bit grey or RGB raster (maybe alpha): decoded as GEO_PHOTO is, but its values are
a sensor's (a satellite band's 10-14 bits, reflectance times 10,000), stretched from their range as other
measurements are (and as GIS tools show a UInt16 raster): over 0..65535 most would be near black."""


CLASS_MAP = "a class map (a colour table)"
"""A georeferenced palette raster, or a grey one with a colour table (as GDAL writes land-cover maps): its values
are class numbers, which a network would blend into numbers of other classes. Refused by every reader."""
_COLOR_MAP = 320
CLASS_MAP_ADVICE = "a network would blend its classes; resample it with nearest neighbour (gdalwarp -r near)"


def _kind(page: Any) -> str | None:
    """Why this first page is a measurement raster (None: a photograph, for the usual reader)."""
    dtype = page.dtype
    photometric = int(page.photometric)
    samples = int(page.samplesperpixel)
    colour = 3 if photometric in (2, 6) else 1
    georeferenced = any(code in page.tags for code in GEO_TAGS)
    if _COLOR_MAP in page.tags and (georeferenced or photometric == 1):
        return CLASS_MAP
    if photometric == 6 and georeferenced and samples == 3 and dtype == np.uint8:
        return GEO_PHOTO  # GDAL's JPEG-compressed orthophotos and cloud-optimised GeoTIFFs
    if dtype is None or photometric not in (1, 2) or samples < colour or int(page.bitspersample) == 1:
        return None  # palette, CMYK, YCbCr, bilevel, odd bit depths: the photograph reader's business
    dtype = np.dtype(dtype)
    if (
        dtype.kind not in "uif"
    ):  # complex, bool: no values to show a model (the photograph reader refuses them)
        return None
    extras = tuple(int(e) for e in page.extrasamples)
    if dtype not in _PHOTO_DTYPES:
        return f"{dtype.name} samples"
    if samples - colour > 1:
        return f"{samples} samples per pixel"
    if samples - colour == 1 and extras and extras[0] == 0:
        return "an extra sample that is not alpha"
    if georeferenced:
        return GEO_PHOTO if dtype == np.uint8 else GEO_16
    return None


class TiffKind(NamedTuple):
    """What makes a TIFF a measurement raster (measurement_kind)."""

    kind: str
    """Why (GEO_PHOTO, GEO_16, CLASS_MAP or a description: "float32 samples", "6 samples per pixel"...)."""
    readable: bool
    """Whether the photograph reader could still read its pixels (GEO_PHOTO, GEO_16)."""
    byte_samples: bool
    """Whether its samples are uint8: mapped over 0..255, not from their own range (stretch_planes)."""


def measurement_kind(path: Path) -> TiffKind | None:
    """What makes path a measurement TIFF, or None for a photograph (or a file tifffile cannot parse: the
    photograph reader then says what is wrong)."""
    import tifffile

    try:
        with tifffile_quiet(), tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            kind = _kind(page)
            if kind is None:
                return None
            return TiffKind(
                kind, kind in (GEO_PHOTO, GEO_16), page.dtype is not None and page.dtype == np.uint8
            )
    except (ValueError, KeyError, NotImplementedError, ArithmeticError, TypeError, IndexError, OSError):
        return None


# --- reading ------------------------------------------------------------------------------------------------------
def read_measurements(
    path: Path,
    max_pixels: int,
    value_range: tuple[float, float] | None = None,
    *,
    read_photo: Callable[[Path, int], ImageData],
) -> ImageData | None:
    """The first page of a measurement TIFF as an ImageData with a SampleMap; None if path is not one.

    value_range: the (lo, hi) every band but alpha is mapped from, instead of its own min and max (the same for
    every tile of a mosaic); valid values outside it are clipped, with a warning. read_photo(path, max_pixels):
    the photograph reader (esrgan.imageio's, which calls this function), for the pixels of a georeferenced
    photograph (LZW, JPEG, YCbCr: what Pillow decodes); its georeferencing is read here."""
    try:
        return _read(path, max_pixels, value_range, read_photo)
    except (
        ValueError,
        KeyError,
        NotImplementedError,
        ArithmeticError,
        TypeError,
        IndexError,
        ImportError,
    ) as exc:
        # tifffile's TiffFileError is a ValueError; NotImplementedError, ImportError: a compression it cannot
        # decode without a codec (LZW, ZSTD, LERC...: imagecodecs; ZSTD needs Python 3.14's compression.zstd too)
        why = one_line(exc)[:200]
        hint = "; pip install imagecodecs" if "imagecodecs" in why or isinstance(exc, ImportError) else ""
        raise ImageError(f"{path}: cannot decode this TIFF ({why}){hint}") from None


def _read(
    path: Path,
    max_pixels: int,
    value_range: tuple[float, float] | None,
    read_photo: Callable[[Path, int], ImageData],
) -> ImageData | None:
    import tifffile

    with tifffile_quiet(), tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        kind = _kind(page)
        if kind is None:
            return None
        if kind == CLASS_MAP:
            raise ImageError(f"{path}: {CLASS_MAP}: {CLASS_MAP_ADVICE}")
        height, width = int(page.imagelength), int(page.imagewidth)
        samples = int(page.samplesperpixel)
        if width == 0 or height == 0:
            raise ImageError(f"{path}: image has zero size ({width}x{height})")
        if width * height > max_pixels:
            raise too_many_pixels(path, f"{width}x{height} = {width * height}", max_pixels)
        if width * height * samples > MAX_SAMPLES_PER_PIXEL * max_pixels:
            raise ImageError(
                f"{path}: {width}x{height} with {samples} bands is more than {MAX_SAMPLES_PER_PIXEL} samples per "
                f"allowed pixel ({max_pixels}); raise --max-megapixels to upscale it"
            )
        photometric, planar = int(page.photometric), int(page.planarconfig)
        extras = tuple(int(e) for e in page.extrasamples)
        tags = _checked_tags(
            tuple(
                (code, int(page.tags[code].dtype), int(page.tags[code].count), page.tags[code].value)
                for code in _CARRIED
                if code in page.tags
            ),
            path,
        )
        icc = page.tags[_ICC].value if _ICC in page.tags else None
        # the tag, else the XMP's tiff:Orientation: what the photograph reader turns a georeferenced one by
        xmp = page.tags[_XMP].value if _XMP in page.tags else None
        orientation = (
            orientation_value(page.tags[_ORIENTATION].value)
            if _ORIENTATION in page.tags
            else xmp_orientation(xmp)
        )
        tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
        # reduced-resolution pages (overviews, bit 0): their factors, for the output's; a transparency mask (bit 2,
        # GDAL's internal mask) marks pixels without data
        others = [(p, int(getattr(p, "subfiletype", 0) or 0)) for p in tif.pages[1:]]
        overviews = tuple(
            sorted(
                {
                    max(2, round(width / int(getattr(p, "imagewidth", 0))))
                    for p, kind_bits in others
                    if kind_bits & 1 and not kind_bits & 4 and int(getattr(p, "imagewidth", 0)) > 0
                }
            )
        )
        full_pages = sum(1 for _, kind_bits in others if not kind_bits & 5)
        masks = [p for p, kind_bits in others if kind_bits & 4 and not kind_bits & 1]
        mask = masks[0].asarray() if masks and masks[0].shape[:2] == (height, width) else None
        if kind in (GEO_PHOTO, GEO_16):
            array, axes = None, ""
        else:
            array = page.asarray()
            axes = page.axes
    if full_pages:
        warnings.warn(
            f"{path}: TIFF with {full_pages + 1} full-size pages; only the first is upscaled", ImageWarning, 4
        )
    if array is None:  # a georeferenced photograph: the photograph reader decodes it (LZW, JPEG, YCbCr)
        photo = read_photo(path, max_pixels)
        array = photo.pixels if photo.alpha is None else np.dstack([photo.pixels, photo.alpha])
        # as stored, as tifffile reads the others: the georeferencing (and a mask) maps the stored rows and
        # columns, and the orientation tag is written back (the photograph reader had turned them)
        array = unorient(array, orientation)
        samples, photometric, planar = array.shape[2], 2 if photo.channels == 3 else 1, 1
        extras = (2,) if photo.alpha is not None else ()
        icc = photo.icc_profile
    if axes.startswith("S") and array.ndim == 3:  # planar configuration "separate": samples first
        array = np.moveaxis(array, 0, -1)
    elif array.ndim == 2:
        array = array[:, :, None]
    if array.shape != (height, width, samples):
        raise ImageError(f"{path}: unsupported TIFF layout {axes} {array.shape}")
    colour = 3 if photometric == 2 else 1
    # a missing ExtraSamples tag, or a code TIFF does not define: unspecified
    extras = tuple(e if e in (0, 1, 2) else 0 for e in (extras + (0,) * samples)[: samples - colour])
    nodata = _nodata(tags, path)
    valid = _valid(array, nodata)
    if mask is not None:  # GDAL's internal mask: 0 = no data, in every band
        masked = np.broadcast_to((np.asarray(mask).reshape(height, width) != 0)[:, :, None], array.shape)
        valid = masked.copy() if valid is None else valid & masked
    # alpha: uint8/uint16 over their range, float over [0, 1]; a signed or 32-bit "alpha" is left a band
    has_alpha = (
        bool(extras) and extras[0] in (1, 2) and (array.dtype in _PHOTO_DTYPES or array.dtype.kind == "f")
    )
    if has_alpha and extras[0] == 1:  # associated (premultiplied) alpha: straightened, written back as such
        array = array.copy()
        array[:, :, :colour] = straighten(array[:, :, :colour], array[:, :, colour])
        extras = (2, *extras[1:])
    # an 8-bit orthophoto's values over 0..255, as the same pixels in a PNG (GEO_PHOTO), not stretched from this
    # file's own min and max (which would also give each tile of a mosaic its own contrast)
    planes, ranges = stretch_planes(
        array, valid, colour, has_alpha, value_range, path, photo=kind == GEO_PHOTO
    )
    pixels = np.ascontiguousarray(planes[:, :, :colour])
    alpha = np.ascontiguousarray(planes[:, :, colour]) if has_alpha else None
    first_extra = colour + (1 if has_alpha else 0)
    extra = np.ascontiguousarray(planes[:, :, first_extra:]) if samples > first_extra else None
    return ImageData(
        pixels=pixels,
        alpha=alpha,
        bit_depth=16,
        icc_profile=bytes(icc) if icc else None,
        format="TIFF",
        source=path,
        extra=extra,
        valid=None if valid is None or valid.all() else valid,
        samples=SampleMap(
            dtype=array.dtype,
            ranges=ranges,
            photometric=photometric,
            planar=planar,
            extrasamples=extras,
            tags=tags,
            nodata=nodata,
            size=(height, width),
            orientation=orientation,
            tile=tile if tile and all(t > 0 and t % 16 == 0 for t in tile) else None,
            masked=mask is not None,
            overviews=overviews,
        ),
    )


def _checked_tags(
    tags: tuple[tuple[int, int, int, Any], ...], path: Path
) -> tuple[tuple[int, int, int, Any], ...]:
    """The carried tags, or without the georeferencing (with a warning) when one of its tags has a shape GeoTIFF
    does not allow: half of it, moved, would be worse than none."""

    def numbers(value: Any, sizes: Callable[[int], bool]) -> bool:
        return (
            isinstance(value, tuple)
            and sizes(len(value))
            and all(isinstance(v, (int, float)) and np.isfinite(v) for v in value)
        )

    shapes: dict[int, Callable[[Any], bool]] = {
        33550: lambda v: numbers(v, lambda n: n >= 2) and v[0] > 0 and v[1] > 0,
        33922: lambda v: numbers(v, lambda n: n >= 6 and n % 6 == 0),
        34264: lambda v: numbers(v, lambda n: n == 16),
        34735: lambda v: numbers(v, lambda n: n >= 4 and n % 4 == 0),
    }
    bad = [code for code, _, _, value in tags if code in shapes and not shapes[code](value)]
    if not bad:
        return tags
    warnings.warn(
        f"{path}: malformed GeoTIFF tag {bad[0]}; the georeferencing is not written",
        ImageWarning,
        stacklevel=5,
    )
    return tuple(t for t in tags if t[0] not in GEO_TAGS)


def _nodata(tags: tuple[tuple[int, int, int, Any], ...], path: Path) -> float | None:
    for code, _type, _count, value in tags:
        if code == GDAL_NODATA:
            text = (value.decode("latin-1") if isinstance(value, bytes) else str(value)).strip("\x00 ")
            try:
                return float(text)
            except ValueError:
                raise ImageError(f"{path}: unreadable GDAL nodata value {text[:40]!r}") from None
    return None


def _valid(array: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """HxWxS: False where a sample holds no data (NaN/Inf, or the nodata value); None when all do."""
    valid: np.ndarray | None = None
    if array.dtype.kind == "f":
        valid = np.isfinite(array)
    if nodata is not None and not np.isnan(nodata):
        same = array == np.asarray(nodata).astype(array.dtype) if _fits(nodata, array.dtype) else None
        if same is not None:
            valid = ~same if valid is None else valid & ~same
    return valid


def _fits(value: float, dtype: np.dtype[Any]) -> bool:
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def _ranges(
    array: np.ndarray, valid: np.ndarray | None, colour: int, has_alpha: bool
) -> tuple[tuple[float, float], ...]:
    """Per sample, the (lo, hi) mapped onto [0, 1]: min and max of its valid values, the RGB colour samples sharing
    one range; alpha keeps its type's full range (it is no measurement)."""

    def extent(band: np.ndarray, ok: np.ndarray | None) -> tuple[float, float] | None:
        values = band if ok is None else band[ok]
        if values.size == 0:
            return None
        return float(values.min()), float(values.max())

    samples = array.shape[2]
    found = [extent(array[:, :, s], None if valid is None else valid[:, :, s]) for s in range(samples)]
    ranges = [e if e is not None else (0.0, 1.0) for e in found]
    if colour == 3:
        known = [e for e in found[:3] if e is not None]
        joint = (min(e[0] for e in known), max(e[1] for e in known)) if known else (0.0, 1.0)
        ranges[:3] = [joint] * 3
    if has_alpha:
        ranges[colour] = (0.0, 1.0 if array.dtype.kind == "f" else float(np.iinfo(array.dtype).max))
    return tuple(ranges)


def stretch_planes(
    array: np.ndarray,
    valid: np.ndarray | None,
    colour: int,
    has_alpha: bool,
    value_range: tuple[float, float] | None,
    path: Path,
    *,
    photo: bool = False,
) -> tuple[np.ndarray, tuple[tuple[float, float], ...]]:
    """HxWxS samples -> (uint16 planes, the (lo, hi) of each): every band from [min, max] of its valid values (the
    colour bands jointly, alpha over its type's range), or from value_range (clipped, with a warning). 8-bit
    samples are over 0..255 unless value_range is given: a byte raster (an orthophoto, RGB + near-infrared, an
    ultrasound still) is already what a screen shows, and stretching each file from its own min and max would
    give each tile of a mosaic its own contrast. photo: a photograph's samples (GEO_PHOTO), over 0..255 whatever
    value_range says (value ranges are for measurements; training and evaluation read it as a photograph)."""
    if photo or (array.dtype == np.uint8 and value_range is None):
        full = ((0.0, 255.0),) * array.shape[2]
        return _to_uint16(array, valid, full), full
    ranges = _ranges(array, valid, colour, has_alpha)
    if value_range is not None:
        ranges = tuple(r if has_alpha and s == colour else value_range for s, r in enumerate(ranges))
        _warn_clipped(array, valid, ranges, path)
    return _to_uint16(array, valid, ranges), ranges


def _warn_clipped(
    array: np.ndarray, valid: np.ndarray | None, ranges: tuple[tuple[float, float], ...], path: Path
) -> None:
    outside = 0
    for s, (lo, hi) in enumerate(ranges):
        band = array[:, :, s]
        out = (band < lo) | (band > hi)
        outside += int(np.count_nonzero(out if valid is None else out & valid[:, :, s]))
    if outside:
        lo, hi = ranges[0]
        warnings.warn(
            f"{path}: {outside} values outside the value range {lo:g}:{hi:g} (--value-range, data.value_range) "
            "clipped to it",
            ImageWarning,
            stacklevel=5,
        )


def _to_uint16(
    array: np.ndarray, valid: np.ndarray | None, ranges: tuple[tuple[float, float], ...]
) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.uint16)
    for s, (lo, hi) in enumerate(ranges):
        for top in range(0, array.shape[0], _ROWS):
            rows = slice(top, top + _ROWS)
            band = array[rows, :, s].astype(np.float64)
            unit = (band - lo) * (65535.0 / (hi - lo)) if hi != lo else np.zeros_like(band)
            if valid is not None:
                unit[~valid[rows, :, s]] = 0.0  # filled from valid neighbours before the model
            out[rows, :, s] = np.clip(np.rint(np.nan_to_num(unit)), 0, 65535)
    return out


# --- writing ------------------------------------------------------------------------------------------------------
def stored_values(
    image: ImageData, path: Path, *, interleaved: bool = False
) -> tuple[np.ndarray, float | None]:
    """The upscaled planes of a measurement TIFF (or DICOM) back in the file's sample type, in its layout: samples
    last, or first where the file had them planar (interleaved: last whatever the file had, as DICOM is written).
    And the value that marks invalid pixels in them: None where there are none, or where the file's mask marks
    them (ImageError where neither a mask nor a value the sample type holds can)."""
    sm = image.samples
    assert sm is not None
    planes = [image.pixels[:, :, c] for c in range(image.channels)]
    if image.alpha is not None:
        planes.append(image.alpha)
    if image.extra is not None:
        planes.extend(image.extra[:, :, k] for k in range(image.extra.shape[2]))
    if len(planes) != sm.samples:
        raise ImageError(f"{path}: {len(planes)} planes for a file of {sm.samples} samples")
    fill = None
    if image.valid is not None:
        fill = sm.nodata if sm.nodata is not None else float("nan")
        if sm.dtype.kind != "f" and not (np.isfinite(fill) and _fits(fill, sm.dtype)):
            if not sm.masked:
                raise ImageError(f"{path}: invalid pixels but no nodata value that {sm.dtype.name} holds")
            fill = None  # the mask written after the pixels says which have no data
    # the value written as nodata: data that comes out equal to it (an 8-bit band spans 0..255, a nodata value
    # among them) moves one step off, or readers would take it for a pixel without data
    marker = (
        sm.nodata if sm.nodata is not None and np.isfinite(sm.nodata) and _fits(sm.nodata, sm.dtype) else None
    )
    height, width = image.height, image.width
    planar = sm.planar == 2 and not interleaved
    # the file's layout straight away (samples last, or first when planar), filled one band at a time
    out = np.empty((sm.samples, height, width) if planar else (height, width, sm.samples), sm.dtype)
    for s, (plane, (lo, hi)) in enumerate(zip(planes, sm.ranges, strict=True)):
        band = out[s] if planar else out[:, :, s]
        _from_uint16(plane, lo, hi, band)
        if marker is not None:
            hit = band == np.asarray(marker).astype(sm.dtype)
            step_off(band, hit if image.valid is None else hit & image.valid[:, :, s], marker)
        if fill is not None:
            assert image.valid is not None
            band[~image.valid[:, :, s]] = np.asarray(fill).astype(sm.dtype)
    return out, fill


def write_measurements(tmp: Path, image: ImageData, path: Path) -> None:
    """The upscaled planes of a measurement TIFF back into the file's sample type and layout, as a TIFF (see the
    module). A DICOM source's are written as DICOM by esrgan.dicom.write_dicom."""
    import tifffile

    sm = image.samples
    assert sm is not None
    out, fill = stored_values(image, path)
    height, width = image.height, image.width
    extratags = _scaled_tags(sm, width / sm.size[1], height / sm.size[0])
    if image.icc_profile:
        extratags.append((_ICC, 7, len(image.icc_profile), image.icc_profile, True))
    if sm.orientation != 1:
        extratags.append((_ORIENTATION, 3, 1, sm.orientation, True))
    one = sm.samples == 1
    # the overviews and masks add up to a third of the raster: counted before choosing classic TIFF or BigTIFF
    factors = overview_factors(sm, height, width)
    extra = sum(1 / f**2 for f in factors)
    size = out.nbytes * (1 + extra) + (height * width * (1 + extra) if sm.masked else 0)
    with tifffile.TiffWriter(tmp, bigtiff=size > BIG_TIFF_BYTES) as tiff:
        tiff.write(
            out.reshape(height, width) if one else out,
            **_layout(sm),
            compression="zlib",
            tile=sm.tile,  # a tiled input (a cloud-optimised GeoTIFF, say) gives a tiled output, same tile size
            extratags=extratags,
            software=False,
            metadata=None,
        )
        has_data: np.ndarray | None = None
        if sm.masked:  # GDAL's internal mask: a 1-bit page of the same size, 0 where no band has data
            has_data = (
                np.ones((height, width), bool) if image.valid is None else np.asarray(image.valid.any(axis=2))
            )
            tiff.write(
                has_data, photometric=4, subfiletype=4, compression="zlib", tile=sm.tile, metadata=None
            )
        _write_overviews(tiff, out, image, sm, factors, fill, has_data)


def _layout(sm: SampleMap) -> dict[str, Any]:
    """tifffile's arguments for the file's sample layout, the same on the raster's page and its overviews'."""
    one = sm.samples == 1
    return {
        "photometric": {0: "miniswhite", 1: "minisblack", 2: "rgb"}[sm.photometric],
        "planarconfig": None if one else ("separate" if sm.planar == 2 else "contig"),
        "extrasamples": sm.extrasamples or None,
    }


def _write_overviews(
    tiff: Any,
    out: np.ndarray,
    image: ImageData,
    sm: SampleMap,
    factors: tuple[int, ...],
    fill: float | None,
    has_data: Any,
) -> None:
    """The overview pages (NewSubfileType 1) of the output in the file's layout, each followed by its mask's (5)
    where the file has a mask: each level made from the one before (the full raster for the first), by GDAL's
    "average" over the valid pixels, as gdaladdo makes them (equal to GDAL's own, tested). Valid as for GDAL:
    each sample's own (nodata, NaN, the mask), and where there is alpha only pixels whose alpha is not 0, for
    every band, alpha too (colour under alpha 0 is not seen: averaging it in would fringe transparent edges)."""
    height, width = image.height, image.width
    alpha = image.channels if image.alpha is not None else None
    bands = [np.asarray(out[s] if sm.planar == 2 else out[:, :, s]) for s in range(sm.samples)]
    masks: list[Any] = [None if image.valid is None else image.valid[:, :, s] for s in range(sm.samples)]
    covered = has_data
    # as GDAL tags its overview pages: the nodata value (what reads the page alone needs it) and how it was made
    tags = [(code, kind, count, value, True) for code, kind, count, value in sm.tags if code == GDAL_NODATA]
    made_by = '<GDALMetadata><Item name="RESAMPLING" sample="0">AVERAGE</Item></GDALMetadata>'
    tags.append((GDAL_METADATA, 2, len(made_by) + 1, made_by, True))
    for factor in factors:
        size = overview_size(height, width, factor)

        def validity(s: int, level: list[np.ndarray], valid: list[Any]) -> Callable[[slice], Any]:
            def ok(rows: slice) -> Any:
                mask = None if valid[s] is None else valid[s][rows]
                if alpha is not None:  # GDAL's alpha mask: for every band, alpha itself included
                    seen = level[alpha][rows] > 0
                    mask = seen if mask is None else mask & seen
                return mask

            return ok

        made = [_overview_band(bands[s], size, validity(s, bands, masks), fill) for s in range(sm.samples)]
        bands = [level for level, _ in made]
        masks = [weights > 0 for _, weights in made]  # what holds data at this level, for the next one
        stacked = np.stack(bands, axis=0 if sm.planar == 2 else 2)
        tiff.write(
            bands[0] if sm.samples == 1 else stacked,
            **_layout(sm),
            subfiletype=1,  # reduced resolution
            compression="zlib",
            tile=sm.tile,
            extratags=tags,
            software=False,
            metadata=None,
        )
        if covered is not None:  # the mask's overview: data wherever any pixel under it has data
            previous: np.ndarray = covered

            def has(rows: slice, m: np.ndarray = previous) -> np.ndarray:
                return m[rows]

            covered = _overview_band(previous.astype(np.uint8), size, has, None)[1] > 0
            tiff.write(
                covered,
                photometric=4,
                subfiletype=5,
                compression="zlib",
                tile=sm.tile,
                software=False,
                metadata=None,
            )


MAX_OVERVIEWS = 24  # levels written at most: halving each time, 24 take 16 M x 16 M pixels down to 1


def overview_factors(sm: SampleMap, height: int, width: int) -> tuple[int, ...]:
    """The output's overview factors: none where the source had none; else the source's (each at least twice the
    one before: a crafted file's hundreds of reduced pages give a handful), then doubling until the smallest is no
    larger than the source's smallest overview in both directions (an upscaled COG browses as fast as its source),
    none past the point where a level would be 1x1."""
    if not sm.overviews:
        return ()
    factors: list[int] = []
    for f in sorted(sm.overviews):
        if f >= 2 * (factors[-1] if factors else 1):
            factors.append(f)
    src_h, src_w = sm.size
    small_h, small_w = -(-src_h // factors[-1]), -(-src_w // factors[-1])
    largest = max(height, width)
    while -(-height // factors[-1]) > small_h or -(-width // factors[-1]) > small_w:
        if factors[-1] * 2 > largest:
            break
        factors.append(factors[-1] * 2)
    return tuple(f for f in factors if f <= largest)[:MAX_OVERVIEWS]


def overview_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """An overview level's size, as GDAL makes it: each side divided by the factor, rounded up."""
    return -(-height // factor), -(-width // factor)


def _window_sums(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sums of `values` (..., L) over the windows [edges[j], edges[j + 1]) of its last axis, edges fractional: a
    pixel partly inside a window counts by the part inside (prefix sums, linear within a pixel)."""
    length = values.shape[-1]
    prefix = np.zeros((*values.shape[:-1], length + 1))
    np.cumsum(values, axis=-1, out=prefix[..., 1:])
    k = np.clip(np.floor(edges).astype(np.int64), 0, length - 1)
    at = prefix[..., k] + (edges - k) * values[..., k]
    return np.diff(at, axis=-1)


_CHUNK = 1 << 22  # float64 values held at once by an overview's passes (32 MB each)


def _overview_band(
    band: np.ndarray, size: tuple[int, int], ok: Callable[[slice], np.ndarray | None], fill: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(level, weights): band (HxW) averaged as GDAL's "average" resampling does, over the valid values (ok(rows):
    the valid mask of those rows, or None for all; NaN never counts): overview pixel j covers the band's
    [j * W / w, (j + 1) * W / w), partly covered pixels counting by the part covered; rounded half away from zero
    for integers, in the band's type; `fill` (nodata; NaN for floats without one) where no valid value falls, and
    an average that equals the nodata value moved one step off it. weights: the valid area behind each pixel
    (0: none). In row chunks of bounded memory, whatever the ratio."""
    h, w = band.shape
    oh, ow = size
    col_edges = np.arange(ow + 1) * (w / ow)
    row_scale = h / oh
    level = np.empty((oh, ow), band.dtype)
    weights = np.empty((oh, ow))
    out_rows = max(1, _CHUNK // max(1, (int(np.ceil(row_scale)) + 1) * ow))
    sub_rows = max(1, _CHUNK // max(1, w))
    for i0 in range(0, oh, out_rows):
        i1 = min(oh, i0 + out_rows)
        y0, y1 = int(np.floor(i0 * row_scale)), min(h, int(np.ceil(i1 * row_scale)))
        sums = np.empty((y1 - y0, ow))
        counts = np.empty((y1 - y0, ow))
        for r in range(y0, y1, sub_rows):
            rows = slice(r, min(y1, r + sub_rows))
            x = band[rows].astype(np.float64)
            good = ~np.isnan(x)
            mask = ok(rows)
            if mask is not None:
                good &= mask
            sums[rows.start - y0 : rows.stop - y0] = _window_sums(np.where(good, x, 0.0), col_edges)
            counts[rows.start - y0 : rows.stop - y0] = _window_sums(good.astype(np.float64), col_edges)
        row_edges = np.arange(i0, i1 + 1) * row_scale - y0
        total = _window_sums(sums.T, row_edges).T
        area = _window_sums(counts.T, row_edges).T
        mean = total / np.where(area > 0, area, 1.0)
        empty = area <= 1e-9
        if band.dtype.kind in "ui":
            info = np.iinfo(band.dtype)
            mean = np.sign(mean) * np.floor(np.abs(mean) + 0.5)  # GDAL rounds halves away from zero
            top = float(info.max) if info.bits < 64 else float(np.nextafter(float(info.max), 0.0))
            mean = np.clip(mean, float(info.min), top)
        part = mean.astype(band.dtype)
        if fill is not None and not np.isnan(fill):  # an average is data: never the nodata value
            step_off(part, (part == fill) & ~empty, fill)
        if empty.any():
            part[empty] = (np.nan if band.dtype.kind == "f" else 0) if fill is None else fill
        level[i0:i1] = part
        weights[i0:i1] = np.where(empty, 0.0, area)
    return level, weights


def step_off(band: np.ndarray, hit: np.ndarray, nodata: float) -> None:
    """Move band's values where hit (data equal to the nodata value) one step off it, in place: +1 for integers
    (-1 at the type's top), the next float up for floats. Readers would take them for pixels without data."""
    if not hit.any():
        return
    if band.dtype.kind in "ui":
        step = 1 if nodata < np.iinfo(band.dtype).max else -1
        band[hit] = np.asarray(nodata + step).astype(band.dtype)
    else:
        band[hit] = np.nextafter(np.asarray(nodata, band.dtype), np.asarray(np.inf, band.dtype))


def as_photo(image: ImageData) -> ImageData:
    """A photo-compatible measurement image (SampleMap.photo_compatible, all pixels valid) as the plain photograph
    it holds: planes back in the file's uint8/uint16 values, without the SampleMap (its georeferencing is lost)."""
    sm = image.samples
    assert sm is not None and sm.photo_compatible and image.valid is None and image.extra is None
    c = image.channels
    pixels = np.empty(image.pixels.shape, sm.dtype)
    for k in range(c):
        _from_uint16(image.pixels[:, :, k], *sm.ranges[k], pixels[:, :, k])
    alpha = None
    if image.alpha is not None:
        alpha = np.empty(image.alpha.shape, sm.dtype)
        _from_uint16(image.alpha, *sm.ranges[c], alpha)
    return replace(  # as shown: a photograph holds no orientation tag for the stored raster
        image,
        pixels=orient(pixels, sm.orientation),
        alpha=None if alpha is None else orient(alpha, sm.orientation),
        bit_depth=8 if sm.dtype == np.uint8 else 16,
        samples=None,
    )


_ROWS = 256  # rows converted at once: the float64 intermediate of a band stays small whatever its size


def _from_uint16(plane: np.ndarray, lo: float, hi: float, out: np.ndarray) -> None:
    """One HxW uint16 plane back into out (HxW of the file's type): lo + plane * (hi - lo) / 65535, integers
    rounded and kept within [lo, hi]."""
    step = (hi - lo) / 65535.0
    for top in range(0, plane.shape[0], _ROWS):
        values = lo + plane[top : top + _ROWS].astype(np.float64) * step
        if out.dtype.kind != "f":
            info = np.iinfo(out.dtype)
            values = np.clip(np.rint(values), max(info.min, min(lo, hi)), min(info.max, max(lo, hi)))
        out[top : top + _ROWS] = values


def _scaled_tags(sm: SampleMap, sx: float, sy: float) -> list[tuple[int, int, int, Any, bool]]:
    """The carried tags with the georeferencing moved onto the raster scaled by (sx, sy).

    A raster coordinate r of the output is r / s of the input where pixels are areas (GeoTIFF's default), and
    (r + 0.5) / s - 0.5 where they are points (PixelIsPoint: coordinates name pixel centres)."""
    point = any(code == 34735 and _raster_type(value) == _PIXEL_IS_POINT for code, _, _, value in sm.tags)
    shift = (lambda s: 0.5 / s - 0.5) if point else (lambda s: 0.0)
    tags: list[tuple[int, int, int, Any, bool]] = []
    for code, kind, count, value in sm.tags:
        if code == 33550:  # ModelPixelScale (Sx, Sy, Sz): model units per pixel
            value = (float(value[0]) / sx, float(value[1]) / sy, *map(float, value[2:]))
        elif code == 33922:  # ModelTiepoint (I, J, K, X, Y, Z) per point: raster (I, J) at model (X, Y)
            points = [float(v) for v in value]
            for i in range(0, len(points) - 5, 6):
                points[i] = (points[i] - shift(sx)) * sx
                points[i + 1] = (points[i + 1] - shift(sy)) * sy
            value = tuple(points)
        elif code == 34264:  # ModelTransformation: 4x4 row-major, model = M @ (I, J, K, 1)
            m = np.asarray(value, dtype=np.float64).reshape(4, 4)
            back = np.array(
                [[1 / sx, 0, 0, shift(sx)], [0, 1 / sy, 0, shift(sy)], [0, 0, 1, 0], [0, 0, 0, 1]]
            )
            value = tuple((m @ back).ravel().tolist())
        if kind == 2:  # ASCII: tifffile counts and terminates it
            tags.append(
                (code, 2, 0, value.decode("latin-1") if isinstance(value, bytes) else str(value), True)
            )
        else:
            tags.append((code, kind, len(value) if isinstance(value, tuple) else count, value, True))
    return tags


def _raster_type(keys: Any) -> int:
    """GTRasterTypeGeoKey from a GeoKeyDirectory (header of 4 shorts, then 4 per key: id, location, count,
    value); 1 (PixelIsArea) when absent."""
    flat = [int(k) for k in keys]
    for i in range(4, len(flat) - 3, 4):
        if flat[i] == _RASTER_TYPE_KEY and flat[i + 1] == 0:
            return flat[i + 3]
    return 1
