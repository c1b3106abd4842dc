"""The decoded image and what every image reader and writer shares, below all of them.

ImageData (pixels, alpha, bit depth, metadata; a measurement's extra bands, validity and SampleMap), ImageWarning,
the pixel-limit refusal, un-premultiplying, quiet tifffile reads, the BigTIFF threshold and channels_equal (a
grey image stored as colour: upscale and video's batched frames). esrgan.datatiff,
esrgan.dicom and esrgan.imageio (which dispatches to both, and re-exports these names: import them from there)
build on this module, and it imports none of them: the image modules import downwards only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ImageError

if TYPE_CHECKING:
    from .datatiff import SampleMap

__all__ = [
    "BIG_TIFF_BYTES",
    "ImageData",
    "ImageWarning",
    "from_float",
    "orient",
    "orientation_value",
    "straighten",
    "tifffile_quiet",
    "to_float",
    "too_many_pixels",
    "unorient",
    "xmp_orientation",
]

BIG_TIFF_BYTES = 2**32 - 2**25
"""A TIFF with more pixel bytes than this is written as BigTIFF (a classic TIFF's 32-bit offsets end at 4 GiB, and
deflate may compress little), through tifffile, 8-bit too (Pillow before 11.1 writes classic TIFF only); tifffile
itself picks BigTIFF for uncompressed data only. esrgan.datatiff's measurement TIFFs use the same threshold."""


class ImageWarning(UserWarning):
    """Something was dropped or approximated on the way in or out (the message says what)."""


# --- the in-memory image ----------------------------------------------------------------------------------------------


@dataclass
class ImageData:
    """Decoded pixels plus everything needed to write them back faithfully.

    pixels: HxWxC, C = 1 (grey) or 3 (RGB), uint8 when bit_depth is 8, uint16 when 16 (the file's depth, not the
    range of its values). alpha: HxW with the same dtype, or None. exif: raw EXIF as Pillow writes it ("Exif\\0\\0"
    followed by the TIFF structure), orientation already applied to the pixels and its tag reset to 1 (and its
    thumbnail, IFD1, dropped then: it shows the pixels unturned).

    The rest of the metadata, each written where the output format holds it (esrgan.imageio.write_image; what it
    cannot hold is named in one ImageWarning): xmp, the XMP packet (its tiff:Orientation reset to 1 as the EXIF's);
    dpi, the resolution (x, y) in pixels per inch (kept as it is by an upscale: the print size grows by the scale);
    comment, a JPEG's (or GIF's) comment, written to JPEG; png_chunks, a PNG's text chunks (tEXt, zTXt, iTXt) and
    colour chunks (gAMA, cHRM, sRGB) as (type, body), written to PNG; unwritten, what the input held that no writer
    keeps ("IPTC/Photoshop data"), named in that warning.

    Measurement TIFFs (esrgan.datatiff: float, signed or multi-band samples, georeferencing) add: extra, HxWxK
    bands that are neither colour nor alpha (each upscaled alone, as grey), same dtype; valid, HxWxS bool over all
    S samples of the file (colour, alpha, extra), False where the file held no data, or None; samples, the
    esrgan.datatiff.SampleMap that maps the planes back onto the file's samples.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str = "PNG"
    source: Path | None = field(default=None, compare=False)
    extra: np.ndarray | None = None
    valid: np.ndarray | None = None
    samples: SampleMap | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    comment: bytes | None = None
    png_chunks: tuple[tuple[bytes, bytes], ...] = ()
    unwritten: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, not {self.bit_depth}")
        dtype = _dtype(self.bit_depth)
        p = self.pixels
        if p.ndim != 3 or p.shape[2] not in (1, 3) or p.dtype != dtype:
            raise ValueError(
                f"pixels must be HxWx1 or HxWx3 {dtype.name} for {self.bit_depth}-bit, not {p.shape} {p.dtype}"
            )
        if p.shape[0] == 0 or p.shape[1] == 0:
            raise ValueError(f"pixels have zero size {p.shape}")
        if self.alpha is not None and (self.alpha.shape != p.shape[:2] or self.alpha.dtype != dtype):
            raise ValueError(
                f"alpha must be {p.shape[:2]} {dtype.name}, not {self.alpha.shape} {self.alpha.dtype}"
            )
        if self.extra is not None and (
            self.extra.ndim != 3 or self.extra.shape[:2] != p.shape[:2] or self.extra.dtype != dtype
        ):
            raise ValueError(
                f"extra must be {p.shape[:2]}xK {dtype.name}, not {self.extra.shape} {self.extra.dtype}"
            )
        planes = p.shape[2] + (self.alpha is not None) + (0 if self.extra is None else self.extra.shape[2])
        if self.valid is not None and (
            self.valid.shape != (*p.shape[:2], planes) or self.valid.dtype != np.bool_
        ):
            raise ValueError(
                f"valid must be {(*p.shape[:2], planes)} bool, not {self.valid.shape} {self.valid.dtype}"
            )

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        """Colour channels (1 or 3), alpha not counted."""
        return int(self.pixels.shape[2])

    def to_float(self) -> np.ndarray:
        """Pixels as float32 HxWxC in [0, 1] (value / 255 or / 65535)."""
        return to_float(self.pixels)

    def alpha_to_float(self) -> np.ndarray | None:
        """Alpha as float32 HxW in [0, 1], or None."""
        return None if self.alpha is None else to_float(self.alpha)

    @classmethod
    def from_float(
        cls,
        pixels: np.ndarray,
        *,
        bit_depth: int = 8,
        alpha: np.ndarray | None = None,
        icc_profile: bytes | None = None,
        exif: bytes | None = None,
        format: str = "PNG",
        source: Path | None = None,
    ) -> ImageData:
        """Build from float pixels in [0, 1] (HxW or HxWxC, alpha HxW): rounded to nearest, clipped, NaN -> 0."""
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return cls(
            pixels=from_float(pixels, bit_depth),
            alpha=None if alpha is None else from_float(alpha, bit_depth),
            bit_depth=bit_depth,
            icc_profile=icc_profile,
            exif=exif,
            format=format,
            source=source,
        )

    def with_float(self, pixels: np.ndarray, alpha: np.ndarray | None = None) -> ImageData:
        """A new image of any size from float [0, 1] data, keeping this one's bit depth and metadata."""
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return replace(
            self,
            pixels=from_float(pixels, self.bit_depth),
            alpha=None if alpha is None else from_float(alpha, self.bit_depth),
            extra=None,
            valid=None,
            samples=None,
        )

    @classmethod
    def from_array(cls, array: np.ndarray, **meta: Any) -> ImageData:
        """Wrap a uint8/uint16 array: HxW grey, HxWx2 grey+alpha, HxWx3 RGB or HxWx4 RGBA."""
        if array.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected uint8 or uint16, not {array.dtype}")
        a = array[:, :, None] if array.ndim == 2 else array
        if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"expected HxW or HxWx{{1,2,3,4}}, not {array.shape}")
        colour = 1 if a.shape[2] <= 2 else 3
        alpha = np.ascontiguousarray(a[:, :, colour]) if a.shape[2] in (2, 4) else None
        depth = 16 if a.dtype == np.uint16 else 8
        return cls(pixels=np.ascontiguousarray(a[:, :, :colour]), alpha=alpha, bit_depth=depth, **meta)


def _dtype(bit_depth: int) -> np.dtype[Any]:
    return np.dtype(np.uint16 if bit_depth == 16 else np.uint8)


def to_float(array: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1]."""
    scale = 65535.0 if array.dtype == np.uint16 else 255.0
    return array.astype(np.float32) / np.float32(scale)


def from_float(array: np.ndarray, bit_depth: int) -> np.ndarray:
    """float in [0, 1] -> uint8/uint16, rounded to nearest (halves up) and clipped (NaN becomes 0)."""
    top = 65535.0 if bit_depth == 16 else 255.0
    scaled = np.nan_to_num(np.asarray(array, dtype=np.float32), nan=0.0) * np.float32(top)
    return np.clip(np.floor(scaled + np.float32(0.5)), 0, top).astype(_dtype(bit_depth))


def too_many_pixels(path: str | os.PathLike[str], size: str, max_pixels: int) -> ImageError:
    """The refusal of an image over the pixel limit (size: "WxH = N" or "N"); "exceeds the limit" marks it."""
    return ImageError(
        f"{path}: {size} pixels exceeds the limit of {max_pixels} ({max_pixels / 2**20:.3g} megapixels, a "
        "decompression-bomb guard; --max-megapixels raises it)"
    )


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1-8) to HxW(xC) exactly as PIL.ImageOps.exif_transpose does: the pixels as
    they are shown."""
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = np.rot90(array, -1)
    elif orientation == 7:
        array = array.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        array = np.rot90(array, 1)
    return np.ascontiguousarray(array)


def orientation_value(value: object) -> int:
    """An orientation tag's value as read: an int, or from a malformed file a tuple (its largest counts, as
    Pillow's reading of the tag takes it); 1 for anything else (a string: Pillow's load does not turn by it) and
    for values outside 1-8."""
    if isinstance(value, tuple):
        value = max((v for v in value if isinstance(v, int)), default=1)
    if not isinstance(value, int):  # an IntEnum (tifffile's) is an int
        return 1
    return int(value) if 1 <= value <= 8 else 1


def xmp_orientation(xmp: object) -> int:
    """tiff:Orientation of an XMP packet as Pillow finds it (Image.getexif's pattern), 1 when none."""
    text = xmp.encode("utf-8", "replace") if isinstance(xmp, str) else xmp
    found = re.search(rb'tiff:Orientation(="|>)([0-9])', text) if isinstance(text, bytes) else None
    return int(found[2]) if found and 1 <= int(found[2]) <= 8 else 1


def unorient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Undo `orient`: pixels as shown back as stored (6 and 8 undo each other; the others undo themselves)."""
    return orient(array, {6: 8, 8: 6}.get(orientation, orientation))


def straighten(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour premultiplied by alpha (TIFF's associated alpha) back to straight colour, 0 where alpha is 0:
    uint8/uint16 over their range, float over [0, 1]."""
    if pixels.dtype.kind == "f":
        a = alpha[:, :, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, pixels / np.where(a > 0, a, 1), 0).astype(pixels.dtype)
    top = 255.0 if pixels.dtype == np.uint8 else 65535.0
    a = alpha.astype(np.float64)[:, :, None]
    straight = np.where(a > 0, pixels.astype(np.float64) * top / np.maximum(a, 1.0), 0.0)
    return np.clip(np.rint(straight), 0, top).astype(pixels.dtype)


class _QuietHere(logging.Filter):
    """Drops records logged by the thread while it is inside tifffile_quiet()."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "active", False)


_TIFFFILE_FILTER = _QuietHere()
logging.getLogger("tifffile").addFilter(_TIFFFILE_FILTER)


@contextlib.contextmanager
def tifffile_quiet() -> Iterator[None]:
    """tifffile logs each malformed tag of a hostile file at ERROR level, which reaches stderr through logging's
    last-resort handler (a dozen lines before our one-line ImageError): silence it during our own reads only."""
    _TIFFFILE_FILTER.local.active = True
    try:
        yield
    finally:
        _TIFFFILE_FILTER.local.active = False


def channels_equal(colour: np.ndarray) -> bool:
    """Whether an HxWx3 array has R == G == B at every pixel (a grey image stored as colour). Compared a band of
    rows at a time: a colour image is told apart at its first band with a colour pixel, not after a whole pass."""
    step = max(1, 2**20 // max(1, colour.shape[1]))
    for y in range(0, colour.shape[0], step):
        band = colour[y : y + step]
        if not (
            np.array_equal(band[:, :, 0], band[:, :, 1]) and np.array_equal(band[:, :, 1], band[:, :, 2])
        ):
            return False
    return True
