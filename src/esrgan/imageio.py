"""Image files in and out without losing bit depth, alpha, colour profile or EXIF.

Reading sniffs the content (the extension is never trusted), refuses oversized images from the header before any
pixel is decoded, applies the EXIF orientation, and maps every Pillow mode onto one of four layouts: grey or RGB,
each with an optional alpha plane, stored as uint8 or uint16 according to the file's bit depth.

Pillow (13 included) still decodes 16-bit colour PNG, TIFF and PPM to 8 bits, so those go through other decoders:
16-bit PNG (every colour type) through the small PNG codec in this module (zlib plus the five scanline filters),
16-bit multi-sample TIFF through `tifffile` (LZW/PackBits-compressed ones also need `imagecodecs`), 16-bit
binary PPM by reading its samples directly. Everything else is Pillow.

Writing is atomic (esrgan.atomic), keeps the metadata where the output format holds it (ICC profile, EXIF, XMP,
resolution; a PNG's text and gamma chunks PNG to PNG, a JPEG comment JPEG to JPEG; what it cannot hold is named in
one ImageWarning), writes 16-bit PNG/TIFF when the image is 16-bit, and converts to 8 bits (rounded) for
JPEG/WEBP/BMP/GIF (GIF: 256 colours, one palette for all the frames of an animation; 1-bit transparency). Animations (GIF, APNG,
animated WebP) are read a frame at a time (read_frames) and written from frames held as they come
(AnimationWriter): esrgan.animation upscales them. Other Pillow formats are read but not written.

Measurement TIFFs and DICOM are read and written by esrgan.datatiff and esrgan.dicom, which this module dispatches
to. ImageData, ImageWarning and the helpers those modules share with this one live below all three, in
esrgan.imagedata, and are re-exported here.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import PIL
from PIL import Image, ImageCms, ImageFile, PngImagePlugin, UnidentifiedImageError

from . import datatiff, dicom
from .atomic import OutputExistsError, atomic_path, cannot_write_reason
from .defaults import DEFAULT_MAX_PIXELS
from .errors import ImageError
from .imagedata import (
    BIG_TIFF_BYTES,
    ImageData,
    ImageWarning,
    from_float,
    orient,
    orientation_value,
    straighten,
    tifffile_quiet,
    to_float,
    too_many_pixels,
    xmp_orientation,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "PIL_LAYOUTS",
    "STREAMED_FORMATS",
    "WRITE_FORMATS",
    "ImageData",
    "ImageWarning",
    "check_writable",
    "cmyk_to_rgb",
    "file_in_hand",
    "from_float",
    "in_hand",
    "list_images",
    "output_format",
    "profile_fits",
    "read_image",
    "special_file",
    "straighten",
    "to_float",
    "write_image",
    "write_image_rows",
]


WRITE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".dcm": "DICOM",
    ".dicom": "DICOM",
}
"""Output extensions and the format each selects (format names are accepted too, case-insensitively). DICOM is
written for DICOM inputs only (esrgan.dicom)."""

ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")
"""Formats read and written as animations (GIF, APNG, animated WebP): every frame of such an input is upscaled into
an output in one of them (esrgan.animation); another output format gets the first frame, with a warning."""

MAX_SIDE = {"JPEG": 65500, "WEBP": 16383, "GIF": 65535, "DICOM": 65535}
"""The largest width or height each format's writer takes: libjpeg(-turbo)'s JPEG_MAX_DIMENSION (the format's own
16-bit fields would allow 65535), libwebp's WEBP_MAX_DIMENSION, GIF's 16-bit screen size, DICOM's 16-bit Rows /
Columns. PNG and TIFF hold
anything an upscaler makes. Checked before the model runs (check_writable with the output's size), so a 20-minute
upscale does not end in an encoder's error."""
MAX_FILE_BYTES = {"BMP": 2**32 - 1, "DICOM": 2**32 - 2}
"""BMP's header records the file size in 32 bits; an uncompressed DICOM's Pixel Data length is 32 bits (even)."""

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
"""DICOM files the folder listings of `esrgan upscale`, training and `esrgan evaluate` pick up."""

IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".webp",
        ".tif",
        ".tiff",
        ".bmp",
        ".gif",
        ".ppm",
        ".pgm",
        ".pnm",
        ".tga",
    }
)
"""File names a folder listing picks up (formats read_image decodes). A file named explicitly is read whatever its
name: the content is sniffed, the suffix is only for listing folders."""

_JPEG_DEFAULT_QUALITY = 95  # with 4:4:4 chroma: super-resolution output should not be smeared by the encoder
DEFAULT_PNG_COMPRESSION = 1
"""zlib level of written PNGs (0-9). Level 1 encodes a 2048x2048 photo about 4x faster than Pillow's usual 6 for
~20 % more bytes (docs/benchmarks.md, "PNG compression level"): upscaled outputs are large and written often, so
speed wins by default; `--png-compression 9` when the bytes matter more."""
_EXIF_HEADER = b"Exif\x00\x00"
_JPEG_MARKER_BYTES = 65533  # an APP segment's 16-bit length, less its own two bytes
# an ICC profile in JPEG: at most 255 APP2 segments ("ICC_PROFILE\0", sequence number, count: 14 bytes each)
_JPEG_ICC_BYTES = 255 * (_JPEG_MARKER_BYTES - 14)
_ORIENTATION_TAG = 0x0112
_MAX_META_BYTES = 16 * 1024 * 1024  # iCCP inflate limit: profiles are kilobytes, big LUT ones a few MiB
# Pillow inflates a PNG's iCCP chunk up to MAX_TEXT_CHUNK (1 MiB) and refuses the whole image past it: an 8-bit PNG
# with a 2 MiB printer profile was "corrupt", while our 16-bit PNG reader, JPEG and TIFF take it. Raised (never
# lowered) to the limit our own reader has; the inflate stays bounded, and all text chunks by MAX_TEXT_MEMORY.
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, _MAX_META_BYTES)


PIL_LAYOUTS = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "P": "RGB",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "YCbCr": "RGB",
    "HSV": "RGB",
}
"""Pillow's 8-bit modes and the layout their pixels are taken in (converted by Pillow). A transparency key in
image.info turns P into RGBA; read_image also turns L and RGB into LA and RGBA (a PNG tRNS chunk), whereas
Upscaler.upscale gives a PIL image back in its own mode. CMYK and 16/32-bit modes are handled apart."""


def list_images(
    folder: Path,
    *,
    recursive: bool = False,
    exclude: Path | None = None,
    suffixes: frozenset[str] = IMAGE_SUFFIXES,
    on_error: Callable[[Path, OSError], None] | None = None,
    sniff: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """The image files of a folder (by suffix: IMAGE_SUFFIXES, or `suffixes`), sorted. Hidden files and folders are
    skipped, among them the `.NAME.part` temp files of atomic writes. recursive: sub-folders too (not through
    symbolic links to folders, which could loop). exclude: a resolved folder whose files are left out (an output
    folder inside the input folder, so a rerun never reads its own outputs).

    A folder that cannot be listed (permission denied...) raises ImageError naming it, or, with on_error, is passed
    to on_error(folder, exc) and the listing goes on: a batch reports an unreadable sub-folder and does the rest,
    instead of losing its images without a word (pathlib's rglob skips such folders silently).

    sniff: also list a file of another name when sniff(path) says so from its content (DICOM slices are often
    named "IM0001" or by their UID).
    """

    def unreadable(path: Path, exc: OSError) -> None:
        if on_error is None:
            raise ImageError(f"{path}: cannot read folder ({exc.strerror or exc})") from None
        on_error(path, exc)

    out = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as scan:
                entries = list(scan)
        except OSError as exc:
            unreadable(current, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = current / entry.name
            if recursive and _is_real_dir(entry):
                pending.append(path)
                continue
            if not path.is_file():
                continue
            if path.suffix.lower() not in suffixes and (sniff is None or not sniff(path)):
                continue
            if exclude is not None and path.resolve().is_relative_to(exclude):
                continue
            out.append(path)
    return sorted(out)


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    """A folder, not a symbolic link to one (rglob's rule: a link to a parent would recurse for ever)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _to_8bit(array: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by rounding (v * 255 / 65535), exact inverse of the 8->16 scaling by 257."""
    if array.dtype == np.uint8:
        return array
    return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# --- reading --------------------------------------------------------------------------------------------------------


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    measurements: bool = False,
    value_range: tuple[float, float] | None = None,
) -> ImageData:
    """Decode an image file into an ImageData (see the module docstring for what is kept and how).

    Size is checked from the header against max_pixels before decoding, whatever Pillow's global
    Image.MAX_IMAGE_PIXELS is (even None). When max_pixels exceeds that global, Pillow's warning is silenced, but
    its hard error at twice the global still applies and is reported as an ImageError. Animated images: the first frame, with an
    ImageWarning. 32-bit float and 32-bit integer images are refused (their value range is not defined).
    Truncated or corrupt files, non-images and unsupported modes raise ImageError("<path>: <problem>").

    measurements: read measurement TIFFs (float, signed, multi-band, georeferenced: esrgan.datatiff) with
    everything needed to write them back (what `esrgan upscale` does). Without it, those whose pixels are no
    photograph's are refused in one line saying what they hold, and a georeferenced photograph is read as one.
    value_range: the (lo, hi) every band of a measurement TIFF is mapped from (default: each band's min and max).
    """
    path = Path(path)
    problem = special_file(path)
    if problem is not None:  # before any open(): opening a FIFO waits for a writer, for ever
        raise ImageError(f"{path}: not a regular file ({problem})")
    with _read_errors(path, max_pixels), in_hand(path):
        return _read_any(path, max_pixels, measurements, value_range)


@contextlib.contextmanager
def _read_errors(path: Path, max_pixels: int, where: str = "") -> Iterator[None]:
    """Every way a decoder fails, as one ImageError line naming the file (and `where` in it: "frame 3 of 20")."""
    at = f"{path}: {where}: " if where else f"{path}: "
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses more than 2 x Image.MAX_IMAGE_PIXELS (179 megapixels by default) in Image.open, before our
        # own check sees the size: say it in our words, with the pixel count from Pillow's message
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found is None:
            raise ImageError(f"{at}refused by Pillow's decompression-bomb guard ({exc})") from None
        count = int(found.group(1))
        if count > max_pixels:
            raise too_many_pixels(path, str(count), max_pixels) from None
        raise ImageError(
            f"{path}: {count} pixels: Pillow refuses more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} "
            "(2 x PIL.Image.MAX_IMAGE_PIXELS, its decompression-bomb guard); raise that to read it"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{at}no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        if _is_empty(path):  # an interrupted download or copy: say so rather than "not an image"
            raise ImageError(f"{path}: empty file (0 bytes)") from None
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except MemoryError:
        raise ImageError(f"{at}not enough memory to decode it") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,  # Pillow's TIFF reader and tifffile raise it for malformed tags (found by tools/fuzz_images.py)
        ArithmeticError,  # e.g. tifffile's division by a RowsPerStrip of 0 (found by atheris)
        struct.error,
        zlib.error,
    ) as exc:
        raise ImageError(f"{at}corrupt or truncated image ({_one_line(exc)})") from None


_IN_HAND = threading.local()


@contextlib.contextmanager
def in_hand(path: Path) -> Iterator[None]:
    """Mark `path` as the file this thread is decoding, upscaling or encoding, for file_in_hand()."""
    before = getattr(_IN_HAND, "path", None)
    _IN_HAND.path = path
    try:
        yield
    finally:
        _IN_HAND.path = before


def file_in_hand() -> Path | None:
    """The file read_image is decoding or write_image encoding in this thread, if any: a warning raised inside
    Pillow or tifffile ("Corrupt EXIF data...", "Tag data larger than file" while the EXIF is sorted for a TIFF)
    does not say which file it is about, so whoever shows it (esrgan.pipeline.warnings_as_lines, in the warning
    thread) names it with this."""
    path: Path | None = getattr(_IN_HAND, "path", None)
    return path


def is_measurement(path: str | os.PathLike[str]) -> bool:
    """A DICOM file or a measurement TIFF (float, signed, multi-band, or a georeferenced 16-bit raster: a sensor's
    values): what readers stretch from its range (its own, or a value range given) as `esrgan upscale` does. A
    georeferenced 8-bit photograph is a photograph here. False for a file that cannot be opened: reading it says
    why."""
    path = Path(path)
    try:
        if dicom.is_dicom(path):
            return True
    except OSError:
        return False
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    kind = datatiff.measurement_kind(path)
    return kind is not None and (not kind.readable or kind.kind == datatiff.GEO_16)


def own_range(path: str | os.PathLike[str]) -> bool:
    """Whether readers map this file from its own [min, max] when no value range is given: a measurement
    (is_measurement) of samples wider than 8 bits (8-bit ones are over 0..255). Such a file's values are not on
    another file's scale: a paired LR or an SR result of one needs a value range. False for a file that cannot be
    opened (reading it says why)."""
    if not is_measurement(path):
        return False
    path = Path(path)
    try:
        if dicom.is_dicom(path):
            return not dicom.byte_samples(path)
    except (OSError, ImageError):
        return False
    kind = datatiff.measurement_kind(path)
    return kind is not None and not kind.byte_samples


def special_file(path: str | os.PathLike[str]) -> str | None:
    """What `path` is when it exists but is neither a regular file nor a folder ("a named pipe (FIFO)", "a
    device"...), else None (a missing or unreadable path is left to open() and its usual error).

    Every input must pass this before it is opened: open() on a FIFO blocks until something writes to it (a hang,
    not an error), and a device such as /dev/zero or /dev/urandom never ends. stat() follows symbolic links, so a
    link to a device is caught too."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _read_any(
    path: Path, max_pixels: int, measurements: bool, value_range: tuple[float, float] | None
) -> ImageData:
    with open(path, "rb") as fh:
        head = fh.read(132)  # one read tells DICOM (a preamble, then "DICM") and TIFF (4 bytes) apart
    tiff = _is_tiff_head(head)
    if dicom.is_dicom_head(head):
        if not measurements:
            raise ImageError(f"{path}: a DICOM file: {_MEASUREMENT_READERS} read it, this does not")
        return dicom.read_dicom(path, max_pixels, value_range)
    if tiff:
        if measurements:
            data = datatiff.read_measurements(path, max_pixels, value_range, read_photo=_read_photo)
            if data is not None:
                return data
        else:
            kind = datatiff.measurement_kind(path)
            if kind is not None and kind.kind == datatiff.CLASS_MAP:
                raise ImageError(f"{path}: {datatiff.CLASS_MAP}: {datatiff.CLASS_MAP_ADVICE}")
            if kind is not None and (not kind.readable or kind.kind == datatiff.GEO_16):
                advice = (
                    "to use it as a photograph, stretch it to 16 bits first: "
                    "`gdal_translate -of PNG -scale LO HI 0 65535`"
                    if kind.kind == datatiff.GEO_16
                    else "save it as 8 or 16-bit grey or RGB"
                )
                raise ImageError(
                    f"{path}: a measurement TIFF ({kind.kind}): {_MEASUREMENT_READERS} read it, this does not "
                    f"({advice})"
                )
    return _read_photo(path, max_pixels, tiff)


def _read_photo(path: Path, max_pixels: int, tiff: bool = True) -> ImageData:
    """A file's pixels read as a photograph's (LZW, JPEG, YCbCr...). esrgan.datatiff is given this for a
    georeferenced raster's pixels (it reads the georeferencing itself): it sits below this module and does not
    import it. tiff: whether the file is a TIFF (the 16-bit reader's fallback).

    A TIFF is given to Pillow as an open file, not a path: from a path Pillow 13 memory-maps an uncompressed
    single-strip grey TIFF, and that load turns an Orientation 5-8 raster's size but not its pixels (a scrambled
    image, upscaled as such: session 35's format audit); from a file it decodes and turns it right."""
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_pillow_bomb_warning_silenced(max_pixels))
            source = stack.enter_context(open(path, "rb")) if tiff else path
            im = stack.enter_context(Image.open(source))
            return _read_opened(im, path, max_pixels)
    except UnidentifiedImageError:
        if tiff:  # e.g. 16-bit grey + alpha, which Pillow does not open
            return _read_tiff16(None, path, max_pixels)
        raise


_MEASUREMENT_READERS = "`esrgan upscale`, training and `esrgan evaluate`"
"""What reads measurement files (is_measurement), for the others' refusal."""


_WARNING_FILTERS_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_bomb_warning_silenced(max_pixels: int) -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning when the caller allowed more pixels than Pillow's global limit.

    Only then: below it, Pillow warns only about images refused here anyway. The warning filters are process
    global (catch_warnings is not thread-safe), so those reads are serialised by a lock.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or max_pixels <= limit:
        yield
        return
    with _WARNING_FILTERS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _is_tiff_head(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF, BigTIFF


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _read_opened(
    im: ImageFile.ImageFile, path: Path, max_pixels: int, *, first_frame: bool = False
) -> ImageData:
    """The image Pillow opened, decoded with its metadata. first_frame: an animation's first frame, read by
    read_frames (no warning that the other frames are left out: they are read too)."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise too_many_pixels(path, f"{width}x{height} = {width * height}", max_pixels)
    fmt = im.format or "UNKNOWN"
    try:
        frames = int(getattr(im, "n_frames", 1))
    except (SyntaxError, OSError, ValueError):
        if fmt != "TIFF":
            raise
        # a later page Pillow cannot parse (SyntaxError "unknown pixel mode": the 1-bit mask page GDAL writes
        # after an RGB orthophoto, GDAL_TIFF_INTERNAL_MASK, which esrgan.datatiff reads itself): the first page
        # is what is read anyway
        im.seek(0)
        frames = 1
    if fmt == "MPO":  # a phone JPEG followed by previews or depth maps: not an animation
        fmt, frames = "JPEG", 1
    if frames > 1 and not first_frame:
        warnings.warn(
            f"{path}: animated {fmt} with {frames} frames; only the first is used",
            ImageWarning,
            stacklevel=3,
        )

    png: _PngMetadata = (None, None, ())
    if fmt == "PNG":
        with open(path, "rb") as fh:
            head = fh.read(33)
        if len(head) == 33 and head[24] == 16:  # IHDR bit depth byte
            return _read_png16(path, max_pixels)
        data = path.read_bytes()
        _check_png_data(path, data)
        png = _png_metadata(data, path)
        del data
    ppm16 = _ppm16_layout(im) if fmt == "PPM" and im.mode == "RGB" else None
    if ppm16 is not None:  # binary P6 with maxval > 255 (dcraw -6 output): Pillow would keep 8 bits
        return _read_ppm16(im.size, *ppm16, path)
    # BitsPerSample 16 with several SamplesPerPixel: Pillow would keep only the high bytes
    if fmt == "TIFF" and _tiff_tag(im, 258) == 16 and _tiff_tag(im, 277) > 1:
        return _read_tiff16(im, path, max_pixels)

    had_tag = fmt == "TIFF" and 274 in im.tag_v2  # type: ignore[attr-defined]
    tiff_orientation = orientation_value(im.tag_v2.get(274, 1)) if fmt == "TIFF" else 1  # type: ignore[attr-defined]
    xmp_turn = xmp_orientation(im.info.get("xmp")) if fmt == "TIFF" else 1
    im.load()
    exif = _tiff_exif(im) if fmt == "TIFF" else _loaded_exif(im, path)
    icc = im.info.get("icc_profile") or None
    pixels, alpha, depth, icc = _pil_to_arrays(im, path, icc)

    if fmt == "TIFF":
        # the file's orientation: its tag, else its XMP's (as every format's). Pillow >= 11 applies it during
        # load() and deletes the tag, or the XMP's tiff:Orientation; Pillow 10 applies neither: turn what it left
        turned = tiff_orientation if had_tag else xmp_turn
        # whether Pillow left it: the tag is still there, or (an XMP's) Pillow is older than 11; not the XMP's text
        # after the load, which Pillow strips of the plain forms only ("60", "6.0" and " 6 " it reads as 6 too)
        left = 274 in im.tag_v2 if had_tag else not _PILLOW_TURNS_TIFF  # type: ignore[attr-defined]
        orientation = turned if left else 1  # what is still to be applied here
    else:
        orientation = turned = _shown_orientation(exif, png[0] if fmt == "PNG" else im.info.get("xmp"))
    pixels, alpha = orient(pixels, orientation), None if alpha is None else orient(alpha, orientation)
    if fmt == "PNG":
        xmp, dpi, chunks = png
        meta = _metadata(xmp, _turned(dpi, turned), None, chunks, (), turned, path)
    else:
        meta = _pillow_metadata(im, fmt, path, turned)
    return ImageData(
        pixels=pixels,
        alpha=alpha,
        bit_depth=depth,
        icc_profile=icc,
        exif=_exif_upright(exif, orientation),
        format=fmt,
        source=path,
        **meta,
    )


_FLOAT_REFUSED = "32-bit float images are not supported (their range is undefined; save as 16-bit)"


def _pil_to_arrays(
    im: Image.Image, path: Path, icc: bytes | None
) -> tuple[np.ndarray, np.ndarray | None, int, bytes | None]:
    """Map a loaded Pillow image onto (pixels HxWxC, alpha, bit depth, icc profile)."""
    mode = im.mode
    transparent = "transparency" in im.info
    if mode in ("F", "I;32", "I;32B", "I;32L") or mode.startswith("F;"):
        raise ImageError(f"{path}: {_FLOAT_REFUSED}")
    if mode.startswith("I;16"):
        grey = np.asarray(im).astype(np.uint16)  # I;16B arrives big-endian: astype makes it native
        if im.format == "TIFF" and _tiff_tag(im, 262) == 0:
            # MINISWHITE (0 is white): Pillow inverts it at 8 bits ("L;I"), not at 16 (it was upscaled and written
            # as its own negative: session 35's format audit); written back as MINISBLACK, as at 8 bits
            grey = np.subtract(65535, grey, dtype=np.uint16)
        alpha = _transparency_alpha(grey, im.info.get("transparency"), 65535) if transparent else None
        return grey[:, :, None], alpha, 16, icc
    if mode == "I":
        # 32-bit integer mode: older Pillow's 16-bit PNG/PGM greyscale, otherwise genuine 32-bit (refused)
        if im.format not in ("PNG", "PPM"):
            raise ImageError(f"{path}: 32-bit integer images are not supported (save as 16-bit)")
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 65535:
            raise ImageError(f"{path}: greyscale values outside the 16-bit range")
        grey = values.astype(np.uint16)
        alpha = _transparency_alpha(grey, im.info.get("transparency"), 65535) if transparent else None
        return grey[:, :, None], alpha, 16, icc
    if mode == "CMYK":
        rgb, icc = cmyk_to_rgb(im, path, icc)
        return rgb, None, 8, icc
    target = PIL_LAYOUTS.get(mode)
    if transparent and mode in ("L", "P", "RGB"):
        target = {"L": "LA", "P": "RGBA", "RGB": "RGBA"}[mode]
    if target is None:
        raise ImageError(f"{path}: unsupported image mode {mode}")
    if target != mode:
        im = im.convert(target)
    array = np.asarray(im)
    if array.ndim == 2:
        array = array[:, :, None]
    colour = 1 if target in ("L", "LA") else 3
    alpha = np.ascontiguousarray(array[:, :, colour]) if target in ("LA", "RGBA") else None
    return np.ascontiguousarray(array[:, :, :colour]), alpha, 8, icc


def _transparency_alpha(grey: np.ndarray, key: object, opaque: int) -> np.ndarray | None:
    """PNG tRNS on a greyscale image: one grey value is transparent."""
    if not isinstance(key, int):
        return None
    return np.where(grey == key, 0, opaque).astype(grey.dtype)


def cmyk_to_rgb(im: Image.Image, name: str | Path, icc: bytes | None) -> tuple[np.ndarray, bytes | None]:
    """CMYK -> RGB: through the embedded CMYK profile to sRGB when there is one (returned with an sRGB profile);
    otherwise Pillow's naive R = 255 - C - K conversion (no profile: the CMYK one no longer applies).
    name: the image in the warning about an unusable profile (a path, or "PIL image" for Upscaler.upscale)."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            rgb = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if rgb is not None:
                return np.asarray(rgb), _srgb_profile()
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            warnings.warn(
                f"{name}: CMYK profile unusable ({_one_line(exc)}); naive conversion",
                ImageWarning,
                stacklevel=4,
            )
    return np.asarray(im.convert("RGB")), None


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- EXIF: read and patch in place (Pillow's Exif.tobytes() rewrites every IFD and can drop maker notes) ----------------


def _normalise_exif(raw: object, path: Path) -> bytes | None:
    """EXIF bytes in one form: "Exif\\0\\0" + TIFF structure (PNG eXIf and WebP EXIF chunks omit the prefix)."""
    if not isinstance(raw, bytes) or not raw:
        return None
    data = raw if raw.startswith(_EXIF_HEADER) else _EXIF_HEADER + raw
    if data[6:10] not in (b"II*\x00", b"MM\x00*"):
        warnings.warn(f"{path}: unreadable EXIF block dropped", ImageWarning, stacklevel=4)
        return None
    return data


# EXIF stays hand-read here rather than through PIL.Image.Exif: the changes we make (orientation -> 1, the image size,
# the thumbnail's link) are patches of a few bytes at known offsets, so every other byte reaches the output as the
# camera wrote it. Exif.tobytes() would re-serialise the whole structure at new offsets, which breaks maker notes
# that hold absolute offsets.
_ExifOrder = Literal["little", "big"]
_EXIF_IFD_POINTER = 0x8769
_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION = 0xA002, 0xA003


def _exif_order(exif: bytes) -> _ExifOrder | None:
    tiff = len(_EXIF_HEADER)
    if len(exif) < tiff + 8:
        return None
    return "little" if exif[tiff : tiff + 2] == b"II" else "big"


def _ifd_entries(exif: bytes, ifd: int, order: _ExifOrder) -> Iterator[tuple[int, int, int, int]]:
    """(offset, tag, type, count) of each 12-byte entry of the IFD at `ifd` (an offset into exif) that lies inside
    exif; nothing for an IFD outside it."""
    if ifd < len(_EXIF_HEADER) or ifd + 2 > len(exif):
        return
    for i in range(int.from_bytes(exif[ifd : ifd + 2], order)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(exif):
            return
        yield (
            entry,
            int.from_bytes(exif[entry : entry + 2], order),
            int.from_bytes(exif[entry + 2 : entry + 4], order),
            int.from_bytes(exif[entry + 4 : entry + 8], order),
        )


def _ifd0(exif: bytes, order: _ExifOrder) -> int:
    tiff = len(_EXIF_HEADER)
    return tiff + int.from_bytes(exif[tiff + 4 : tiff + 8], order)


def _ifd0_entries(exif: bytes | None) -> tuple[_ExifOrder, list[tuple[int, int, int, int]]] | None:
    """The byte order and IFD0's entries (_ifd_entries) of an EXIF; None when there is none or it is malformed."""
    order = _exif_order(exif) if exif else None
    if order is None or exif is None:
        return None
    return order, list(_ifd_entries(exif, _ifd0(exif, order), order))


def _orientation_offset(exif: bytes) -> tuple[int, _ExifOrder] | None:
    """Offset of IFD0's Orientation value inside exif, and the byte order; None when absent or malformed."""
    found = _ifd0_entries(exif)
    if found is None:
        return None
    order, entries = found
    for entry, tag, kind, _count in entries:
        if tag == _ORIENTATION_TAG and kind == 3:  # SHORT, value stored inline
            return entry + 8, order
    return None


def _loaded_exif(im: Image.Image, path: Path) -> bytes | None:
    """The EXIF of a loaded PNG, JPEG, WebP or GIF (its eXIf/APP1 chunk, or ImageMagick's PNG text chunk), as the
    still reader and the frame reader both take it."""
    if "exif" not in im.info and "Raw profile type exif" in im.info:  # ImageMagick's PNG text chunk
        return _normalise_exif(im.getexif().tobytes(), path)
    return _normalise_exif(im.info.get("exif"), path)


def _shown_orientation(exif: bytes | None, xmp: object) -> int:
    """How the pixels are shown: the EXIF's orientation tag, else (no such tag) the XMP's tiff:Orientation, as the
    Metadata Working Group's guidelines and Pillow (Image.getexif, ImageOps.exif_transpose; a TIFF's load) read
    them. The XMP's alone was applied to TIFFs only (Pillow's load does), not to PNG, WebP or JPEG: session 35's
    format audit."""
    if exif and _orientation_offset(exif) is not None:
        return _exif_orientation(exif)
    return xmp_orientation(xmp)


def _exif_orientation(exif: bytes | None) -> int:
    found = _orientation_offset(exif) if exif else None
    if found is None or exif is None:
        return 1
    offset, order = found
    value = int.from_bytes(exif[offset : offset + 2], order)
    return value if 1 <= value <= 8 else 1


def _exif_upright(exif: bytes | None, orientation: int) -> bytes | None:
    """The EXIF of pixels turned upright by `orientation` (read from it): the orientation tag set to 1, and, when
    the pixels were turned (2-8), IFD0's link to IFD1 cut, as exiftool does when it drops a thumbnail: the thumbnail
    there shows the pixels unturned, and viewers show it (a preview, a file manager's icon) as it is. Every other
    byte is left untouched (the thumbnail's bytes too, unreferenced)."""
    found = _orientation_offset(exif) if exif else None
    if found is None or exif is None:
        return exif
    offset, order = found
    patched = bytearray(exif)
    patched[offset : offset + 2] = (1).to_bytes(2, order)
    if orientation != 1:
        ifd = _ifd0(exif, order)
        entries = list(_ifd_entries(exif, ifd, order))
        link = ifd + 2 + 12 * len(entries)
        if link + 4 <= len(exif) and len(entries) == int.from_bytes(exif[ifd : ifd + 2], order):
            patched[link : link + 4] = bytes(4)
    return bytes(patched)


def _exif_has_resolution(exif: bytes | None) -> bool:
    """Whether IFD0 has XResolution (a reader's resolution where the format has no field of its own: WebP)."""
    found = _ifd0_entries(exif)
    return found is not None and any(tag == 282 for _entry, tag, _kind, _count in found[1])


def _exif_with_size(exif: bytes | None, width: int, height: int) -> bytes | None:
    """The EXIF with the Exif IFD's PixelXDimension / PixelYDimension (the size of the image it describes: the
    input's, until now) set to width x height, where the file has them (one SHORT or LONG each, stored inline: a
    SHORT too small for the new size becomes a LONG, in the same 4 bytes). Every other byte is left untouched."""
    found = _ifd0_entries(exif)
    if found is None or exif is None:
        return exif
    order, entries = found
    sub = next(
        (
            int.from_bytes(exif[entry + 8 : entry + 12], order)
            for entry, tag, kind, count in entries
            if tag == _EXIF_IFD_POINTER and kind in (4, 13) and count == 1
        ),
        None,
    )
    if sub is None:
        return exif
    patched = bytearray(exif)
    for entry, tag, kind, count in _ifd_entries(exif, len(_EXIF_HEADER) + sub, order):
        value = {_PIXEL_X_DIMENSION: width, _PIXEL_Y_DIMENSION: height}.get(tag)
        if value is None or kind not in (3, 4) or count != 1:
            continue
        if kind == 3 and value <= 0xFFFF:  # SHORT: left-justified in the value field
            patched[entry + 8 : entry + 10] = value.to_bytes(2, order)
        else:
            patched[entry + 2 : entry + 4] = (4).to_bytes(2, order)
            patched[entry + 8 : entry + 12] = value.to_bytes(4, order)
    return bytes(patched)


# --- XMP and the rest of the metadata -----------------------------------------------------------------------------------

_XMP_NS_TIFF = b"http://ns.adobe.com/tiff/1.0/"
_XMP_NS_EXIF = b"http://ns.adobe.com/exif/1.0/"
_JPEG_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_XMP_BYTES = _JPEG_MARKER_BYTES - len(_JPEG_XMP_ID)  # one APP1 segment (Pillow writes no extended XMP)
_JPEG_PHOTOSHOP_ID = b"Photoshop 3.0\x00"  # APP13: IPTC and Photoshop's image resources
_TIFF_XMP, _TIFF_IPTC, _TIFF_PHOTOSHOP = 700, 33723, 34377
_IPTC = "IPTC/Photoshop data"
_PILLOW_JPEG_XMP = tuple(int(p) for p in re.findall(r"\d+", PIL.__version__)[:2]) >= (11, 0)
_PILLOW_TURNS_TIFF = _PILLOW_JPEG_XMP
"""Pillow >= 11 turns a TIFF by its orientation (the tag, else the XMP's) during load (TiffImageFile.load_end)."""
"""Pillow's JPEG writer takes xmp= from 11.0; before, the same APP1 segment goes in through its `extra` bytes."""


def _xmp_set(xmp: bytes, namespace: bytes, name: bytes, value: int) -> bytes:
    """The XMP packet with the property `name` of `namespace` set to value wherever the packet gives it, as an
    attribute (tiff:Orientation="6") or an element (<tiff:Orientation>6</tiff:Orientation>), under each prefix the
    packet binds to that namespace (the first 4: a packet has one); every other byte as it was. No XML parser: a
    hostile packet is only searched, by patterns linear in its length (an element's text is taken up to the next
    "<", never by nested repeats: `\\s*\\d*\\s*` took 277 s on 200 KB of spaces)."""
    bound = re.findall(rb"xmlns:([\w.-]+)\s*=\s*[\"']" + re.escape(namespace) + rb"[\"']", xmp)
    text = str(value).encode()
    for prefix in list(dict.fromkeys(bound))[:4]:
        qname = re.escape(prefix + b":" + name)
        xmp = re.sub(
            rb"(\s" + qname + rb"\s*=\s*)([\"'])[^\"'<>]*\2", lambda m: m[1] + m[2] + text + m[2], xmp
        )
        xmp = re.sub(
            rb"(<" + qname + rb"\s*>)[^<]*(</" + qname + rb"\s*>)", lambda m: m[1] + text + m[2], xmp
        )
    return xmp


def _capped(value: bytes | None, what: str, path: Path) -> bytes | None:
    """value, or None with a warning when it is larger than any metadata we keep (_MAX_META_BYTES)."""
    if value is not None and len(value) > _MAX_META_BYTES:
        warnings.warn(
            f"{path}: {what} of {len(value)} bytes (more than {_MAX_META_BYTES}) dropped",
            ImageWarning,
            stacklevel=5,
        )
        return None
    return value or None


def _as_bytes(value: object) -> bytes | None:
    """A tag's value as Pillow or tifffile gives it (bytes, a str, a tuple of byte values) as bytes."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, tuple) and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        return bytes(value)
    if isinstance(value, tuple) and len(value) == 1:
        return _as_bytes(value[0])
    return None


def _dpi(x: object, y: object, per_cm: bool = False) -> tuple[float, float] | None:
    """A resolution as pixels per inch, from a reader's values (floats, rationals, (num, den) pairs); None when it
    is no resolution (zero, negative, not finite, absurd)."""

    def one(v: object) -> float | None:
        if isinstance(v, tuple) and len(v) == 2:
            num, den = v
            v = num / den if isinstance(num, int) and isinstance(den, int) and den else None
        try:
            f = float(v) * (2.54 if per_cm else 1.0)  # type: ignore[arg-type]
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return f if 0 < f <= _MAX_DPI else None

    fx, fy = one(x), one(y)
    return None if fx is None or fy is None else (fx, fy)


_MAX_DPI = 1e6


def _tiff_dpi(tags: Any) -> tuple[float, float] | None:
    """A TIFF's XResolution / YResolution / ResolutionUnit (tag number -> value) as pixels per inch (the unit is
    the inch when the tag is missing; 1, "none", is no resolution)."""
    unit = tags.get(296, 2)
    unit = unit[0] if isinstance(unit, tuple) and len(unit) == 1 else unit
    if unit not in (2, 3) or 282 not in tags or 283 not in tags:
        return None
    return _dpi(tags.get(282), tags.get(283), per_cm=unit == 3)


def _turned(dpi: tuple[float, float] | None, orientation: int) -> tuple[float, float] | None:
    """The resolution of pixels turned by an EXIF orientation: x and y swap for 5-8 (a quarter turn)."""
    return (dpi[1], dpi[0]) if dpi is not None and orientation in (5, 6, 7, 8) else dpi


def _pillow_metadata(im: Image.Image, fmt: str, path: Path, orientation: int) -> dict[str, Any]:
    """What Pillow read of a JPEG, TIFF, WebP, GIF or BMP besides the pixels, ICC profile and EXIF: ImageData's
    xmp, dpi, comment and unwritten, for pixels turned by `orientation`."""
    info = im.info
    unwritten: tuple[str, ...] = ()
    if fmt == "JPEG":  # applist: Pillow 10 has no info["xmp"] for JPEG
        applist = getattr(im, "applist", [])
        xmp = next(
            (s[len(_JPEG_XMP_ID) :] for m, s in applist if m == "APP1" and s.startswith(_JPEG_XMP_ID)), None
        )
        if any(m == "APP13" and s.startswith(_JPEG_PHOTOSHOP_ID) for m, s in applist):
            unwritten = (_IPTC,)
        # JFIF's density in inches or cm; else the EXIF's resolution (Pillow's info["dpi"] says 72 for an EXIF
        # without one)
        dpi = _dpi(*info["dpi"]) if info.get("jfif_unit") in (1, 2) and "dpi" in info else None
        if dpi is None and info.get("exif"):
            with contextlib.suppress(Exception):  # a corrupt EXIF: Pillow warned on reading it
                dpi = _tiff_dpi(im.getexif())
    elif fmt == "TIFF":
        tags = im.tag_v2  # type: ignore[attr-defined]
        xmp = _as_bytes(tags.get(_TIFF_XMP))
        if _TIFF_IPTC in tags or _TIFF_PHOTOSHOP in tags:
            unwritten = (_IPTC,)
        dpi = _tiff_dpi(tags)
    else:
        xmp = _as_bytes(info.get("xmp"))
        dpi = _dpi(*info["dpi"]) if isinstance(info.get("dpi"), tuple) and len(info["dpi"]) == 2 else None
    comment = info.get("comment") if isinstance(info.get("comment"), bytes) else None
    return _metadata(xmp, _turned(dpi, orientation), comment, (), unwritten, orientation, path)


def _metadata(
    xmp: bytes | None,
    dpi: tuple[float, float] | None,
    comment: bytes | None,
    png_chunks: tuple[tuple[bytes, bytes], ...],
    unwritten: tuple[str, ...],
    orientation: int,
    path: Path,
) -> dict[str, Any]:
    xmp = _capped(xmp, "XMP", path)
    # the pixels are as shown: the XMP says so, turned or not (EXIF 1 with XMP 6: the EXIF wins, and the XMP's 6
    # would turn the output once more where no EXIF goes with it, a TIFF's)
    if xmp is not None and (orientation != 1 or xmp_orientation(xmp) != 1):
        xmp = _xmp_set(xmp, _XMP_NS_TIFF, b"Orientation", 1)
    return {
        "xmp": xmp,
        "dpi": dpi,
        "comment": _capped(comment, "comment", path),
        "png_chunks": png_chunks,
        "unwritten": unwritten,
    }


# --- TIFF ----------------------------------------------------------------------------------------------------------------


def _tiff_tag(im: Image.Image, tag: int) -> int:
    value = im.tag_v2.get(tag, 1)  # type: ignore[attr-defined]
    if isinstance(value, tuple):
        value = max(value) if value else 1
    return int(value)


# ImageDescription, Make, Model, Software, DateTime, Artist, Copyright
_TIFF_EXIF_IFD0_TAGS = (270, 271, 272, 305, 306, 315, 33432)


def _tiff_exif(im: Image.Image) -> bytes | None:
    """A TIFF keeps EXIF as tags of its own IFD plus Exif/GPS sub-IFDs: collect the descriptive ones into an EXIF
    block (the structural tags - strips, sizes, compression - describe this file only and must not travel)."""
    source = im.getexif()
    exif = Image.Exif()
    for tag in _TIFF_EXIF_IFD0_TAGS:
        if tag in source and not (tag == 270 and _describes_the_array(source[tag])):
            exif[tag] = source[tag]
    for pointer in (0x8769, 0x8825):  # Exif IFD, GPS IFD
        if pointer in source:
            sub = source.get_ifd(pointer)
            if sub:
                exif.get_ifd(pointer).update(sub)
    if not len(exif) and not any(exif.get_ifd(p) for p in (0x8769, 0x8825)):
        return None
    return exif.tobytes()


def _describes_the_array(description: object) -> bool:
    """Whether an ImageDescription is a writer's note of the array's shape (tifffile's '{"shape": [...]}', ImageJ's
    'ImageJ=...'), which would be false of the upscaled image (tifffile then warns that the shapes disagree)."""
    text = description.decode("latin-1") if isinstance(description, bytes) else str(description)
    return text.lstrip().startswith(('{"shape"', "ImageJ="))


def _read_tiff16(im: Image.Image | None, path: Path, max_pixels: int) -> ImageData:
    """16-bit multi-sample TIFF via tifffile: Pillow would hand back 8 bits (colour) or not open it at all (grey +
    alpha, im is None then). Profile, EXIF and orientation come from Pillow's parse when it has one, otherwise the
    profile and orientation from tifffile's tags (EXIF is then not carried over)."""
    try:
        import tifffile
    except ImportError:
        raise ImageError(f"{path}: 16-bit TIFF needs the 'tifffile' package (pip install tifffile)") from None
    try:
        with tifffile_quiet(), tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            height, width = int(page.imagelength), int(page.imagewidth)
            if width == 0 or height == 0:
                raise ImageError(f"{path}: image has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise too_many_pixels(path, f"{width}x{height} = {width * height}", max_pixels)
            photometric = int(page.photometric)
            samples = int(page.samplesperpixel)
            if (
                photometric not in (1, 2) or not (3 if photometric == 2 else 1) <= samples <= 4
            ):  # MINISBLACK, RGB
                raise ImageError(
                    f"{path}: 16-bit TIFF with photometric {photometric} and {samples} samples is not supported"
                )
            extra = tuple(int(e) for e in page.extrasamples)
            tags = {
                tag.code: tag.value
                for tag in page.tags
                if tag.code in (274, 282, 283, 296, 34675, _TIFF_XMP, _TIFF_IPTC, _TIFF_PHOTOSHOP)
            }
            array = page.asarray()
            axes = page.axes
    except (ValueError, KeyError, NotImplementedError, ArithmeticError) as exc:  # TiffFileError: ValueError
        raise ImageError(f"{path}: cannot decode this 16-bit TIFF ({_one_line(exc)})") from None
    # the tag, else the XMP's tiff:Orientation (as every reader here): tifffile applies neither
    orientation = (
        orientation_value(tags[274]) if 274 in tags else xmp_orientation(_as_bytes(tags.get(_TIFF_XMP)))
    )
    if im is not None:
        icc, exif = im.info.get("icc_profile") or None, _tiff_exif(im)
        meta = _pillow_metadata(im, "TIFF", path, orientation)
    else:
        icc, exif = tags.get(34675) or None, None
        icc = bytes(icc) if icc is not None else None
        unwritten = (_IPTC,) if _TIFF_IPTC in tags or _TIFF_PHOTOSHOP in tags else ()
        dpi = _turned(_tiff_dpi(tags), orientation)
        meta = _metadata(_as_bytes(tags.get(_TIFF_XMP)), dpi, None, (), unwritten, orientation, path)
    if array.dtype.kind == "f":  # SampleFormat IEEEFP: as Pillow's mode F, refused in the same words
        raise ImageError(f"{path}: {_FLOAT_REFUSED}")
    if array.dtype != np.uint16:
        raise ImageError(f"{path}: {array.dtype} samples are not supported (save as 8 or 16-bit)")
    if axes.startswith("S"):  # planar configuration "separate": samples first
        array = np.moveaxis(array, 0, -1)
    elif array.ndim == 2:
        array = array[:, :, None]
    if array.shape != (height, width, samples):
        raise ImageError(f"{path}: unsupported 16-bit TIFF layout {axes} {array.shape}")
    colour = 3 if photometric == 2 else 1
    pixels = array[:, :, :colour]
    alpha = array[:, :, colour] if array.shape[2] > colour else None
    if alpha is not None and extra and extra[0] == 1:  # associated (premultiplied) alpha: undo it
        pixels = straighten(pixels, alpha)
    pixels = orient(pixels, orientation)
    return ImageData(
        pixels=pixels,
        alpha=None if alpha is None else orient(alpha, orientation),
        bit_depth=16,
        icc_profile=icc,
        exif=exif,
        format="TIFF",
        source=path,
        **meta,
    )


def _ppm16_layout(im: ImageFile.ImageFile) -> tuple[int, int] | None:
    """(pixel data offset, maxval) of a binary colour PPM deeper than 8 bits, from Pillow's parsed header."""
    if not im.tile:
        return None
    codec, _extents, offset, args = im.tile[0][:4]
    if codec != "ppm" or not isinstance(args, tuple) or len(args) < 2 or int(args[1]) <= 255:
        return None
    return int(offset), int(args[1])


def _read_ppm16(size: tuple[int, int], offset: int, maxval: int, path: Path) -> ImageData:
    """16-bit binary PPM: big-endian samples after the header, scaled from maxval to the full 16-bit range."""
    width, height = size
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(width * height * 6)
    if len(data) < width * height * 6:
        raise ImageError(f"{path}: truncated PPM ({len(data)} of {width * height * 6} pixel bytes)")
    values = np.frombuffer(data, ">u2").reshape(height, width, 3).astype(np.uint32)
    if values.max() > maxval:
        raise ImageError(f"{path}: corrupt PPM (a sample exceeds maxval {maxval})")
    pixels = ((values * 65535 + maxval // 2) // maxval).astype(np.uint16)
    return ImageData(pixels=pixels, bit_depth=16, format="PPM", source=path)


# --- PNG ---------------------------------------------------------------------------------------------------------------
# Hand-written: Pillow decodes every 16-bit colour PNG (RGB, RGBA, grey+alpha) to 8 bits and cannot encode them at
# all, and it encodes any PNG on one core, which left a GPU batch waiting on the last image's PNG. PNG itself is
# small: chunks with CRCs, one zlib stream, five per-row byte filters.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (palette type 3 is never 16-bit)
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
_IDAT_CHUNK = 1 << 20


def _chunk_name(kind: bytes) -> str:
    """A chunk type for a message: letters as they are, any other byte escaped (a mutated type held a newline,
    which split the one-line error; found by tools/fuzz_images.py)."""
    if kind.isalpha():
        return kind.decode("ascii")
    return repr(kind)[2:-1]


def _png_chunks(data: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    if not data.startswith(_PNG_SIGNATURE):
        raise ImageError(f"{path}: not a PNG stream")
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ImageError(f"{path}: truncated PNG (ends before IEND)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageError(f"{path}: truncated PNG (chunk {_chunk_name(kind)} cut short)")
        body = data[pos + 8 : end]
        if zlib.crc32(kind + body) != int.from_bytes(data[end : end + 4], "big"):
            raise ImageError(f"{path}: corrupt PNG (CRC mismatch in chunk {_chunk_name(kind)})")
        yield kind, body
        if kind == b"IEND":
            return
        pos = end + 4


def _inflate(data: bytes, limit: int) -> bytes:
    """zlib-decompress at most limit bytes: a hostile stream cannot expand beyond what the header promised."""
    return zlib.decompressobj().decompress(data, limit)


_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
_PNG_COLOUR = (b"gAMA", b"cHRM", b"sRGB")
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"
# ImageMagick's text chunks of what eXIf and iCCP carry (the EXIF one is read as the EXIF): a copy would keep the
# unturned orientation and the old size
_PNG_RAW_PROFILES = (
    b"Raw profile type exif",
    b"Raw profile type APP1",
    b"Raw profile type icc",
    b"Raw profile type icm",
)
_SRGB_GAMA = 45455  # gAMA of sRGB's approximate 1/2.2 (PNG spec 11.3.3.5)


_PngMetadata = tuple[bytes | None, tuple[float, float] | None, tuple[tuple[bytes, bytes], ...]]


def _png_metadata(data: bytes, path: Path) -> _PngMetadata:
    """(xmp, dpi, png_chunks) of a PNG (its bytes), as the pixels are stored: the iTXt chunk XML:com.adobe.xmp,
    pHYs in metres, the other text chunks and gAMA/cHRM/sRGB as they are (never inflated: a compressed one is copied
    as it is). _metadata makes them ImageData's once the orientation is known.
    Chunks are walked without raising (the pixels' reader judges the file): a chunk with a wrong CRC is skipped,
    the walk ends where the chunks do. At most _MAX_META_BYTES of chunks are kept; past that, a warning."""
    xmp = dpi = None
    kept: list[tuple[bytes, bytes]] = []
    total = 0
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if kind == b"IEND" or end + 4 > len(data):
            break
        body = data[pos + 8 : end]
        pos = end + 4
        if kind not in (*_PNG_TEXT, *_PNG_COLOUR, b"pHYs"):
            continue
        if zlib.crc32(kind + body) != int.from_bytes(data[end : end + 4], "big"):
            continue
        keyword = body.partition(b"\x00")[0]
        if kind == b"pHYs" and len(body) == 9 and body[8] == 1:  # unit: the metre (0: aspect ratio only)
            x, y = struct.unpack(">II", body[:8])
            dpi = _dpi(round(x * 0.0254, 2), round(y * 0.0254, 2))  # 11811 px/m: 300, not 299.9994
        elif kind == b"iTXt" and keyword == _PNG_XMP_KEYWORD:
            xmp = _itxt_text(body, path)
        elif keyword in _PNG_RAW_PROFILES or kind == b"pHYs":
            continue
        elif total + len(body) > _MAX_META_BYTES:
            warnings.warn(
                f"{path}: PNG text past {_MAX_META_BYTES} bytes dropped ({_chunk_name(keyword[:40])} and after)",
                ImageWarning,
                stacklevel=4,
            )
            break
        else:
            kept.append((kind, body))
            total += len(body)
    return xmp, dpi, tuple(kept)


def _itxt_text(body: bytes, path: Path) -> bytes | None:
    """The text of an iTXt chunk (keyword, compression flag and method, language, translated keyword, text),
    inflated when compressed (at most _MAX_META_BYTES + 1 bytes: more is dropped by _capped)."""
    _keyword, _, rest = body.partition(b"\x00")
    if len(rest) < 2:
        return None
    flag, method, rest = rest[0], rest[1], rest[2:]
    parts = rest.split(b"\x00", 2)
    if len(parts) != 3:
        return None
    text = parts[2]
    if flag:
        if method != 0:
            return None
        try:
            text = _inflate(text, _MAX_META_BYTES + 1)
        except zlib.error:
            warnings.warn(f"{path}: unreadable compressed XMP dropped", ImageWarning, stacklevel=5)
            return None
    return text


def _check_png_data(path: Path, data: bytes) -> None:
    """Raise ImageError when the image data (IDAT) of a PNG of depth 1-8 inflates to fewer bytes than its header
    needs. Pillow takes a zlib stream that ends early but properly (its end marker, then IEND) as a whole image and
    fills the missing rows with zeros: a 1000-row PNG holding 3 rows decoded as a black picture, without a word. The
    data is inflated once more in 1 MiB pieces (counted, not kept): about 0.1 s for a 12-megapixel photo."""
    header: tuple[int, ...] | None = None
    inflater, got, expected = zlib.decompressobj(), 0, 0
    for kind, body in _png_chunks(data, path):
        if kind == b"IHDR" and len(body) == 13:
            width, height, depth, colour_type, _, _, interlace = header = struct.unpack(">IIBBBBB", body)
            channels = {**_PNG_CHANNELS, 3: 1}.get(colour_type, 1)
            passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
            shapes = [(-(-(height - y0) // dy), -(-(width - x0) // dx)) for y0, x0, dy, dx in passes]
            expected = sum(h * (1 + -(-w * channels * depth // 8)) for h, w in shapes if h > 0 and w > 0)
        elif kind == b"IDAT" and header is not None:
            piece = body
            while piece and got < expected:
                try:
                    got += len(inflater.decompress(piece, _IDAT_CHUNK))
                except zlib.error as exc:
                    raise ImageError(f"{path}: corrupt PNG image data ({exc})") from None
                piece = inflater.unconsumed_tail
        if got >= expected > 0:
            return
    if header is not None and got < expected:
        raise ImageError(f"{path}: truncated PNG (image data is {got} of {expected} bytes)")


def _read_png16(path: Path, max_pixels: int) -> ImageData:
    data = path.read_bytes()
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    icc = exif = trns = None
    for kind, body in _png_chunks(data, path):
        if kind == b"IHDR" and len(body) == 13:
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"iCCP":
            _name, _, rest = body.partition(b"\x00")
            icc = _inflate(rest[1:], _MAX_META_BYTES) or None
        elif kind == b"eXIf":
            exif = body
        elif kind == b"tRNS":
            trns = body
    if header is None:
        raise ImageError(f"{path}: corrupt PNG (no valid IHDR)")
    width, height, depth, colour_type, compression, filter_method, interlace = header
    if width == 0 or height == 0:  # Pillow checked too; the bytes may differ
        raise ImageError(f"{path}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise too_many_pixels(path, f"{width}x{height} = {width * height}", max_pixels)
    if depth != 16 or colour_type not in _PNG_CHANNELS or compression or filter_method or interlace > 1:
        raise ImageError(f"{path}: unsupported PNG header (depth {depth}, colour type {colour_type})")
    channels = _PNG_CHANNELS[colour_type]
    bpp = 2 * channels
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    shapes = [(-(-(height - y0) // dy), -(-(width - x0) // dx)) for y0, x0, dy, dx in passes]
    expected = sum(h * (1 + w * bpp) for h, w in shapes if h > 0 and w > 0)
    raw = _inflate(b"".join(idat), expected)
    if len(raw) < expected:
        raise ImageError(f"{path}: truncated PNG (image data is {len(raw)} of {expected} bytes)")
    planes = np.empty((height, width, bpp), np.uint8)
    pos = 0
    for (y0, x0, dy, dx), (h, w) in zip(passes, shapes, strict=True):
        if h <= 0 or w <= 0:
            continue
        rows = np.frombuffer(raw, np.uint8, count=h * (1 + w * bpp), offset=pos).reshape(h, 1 + w * bpp)
        planes[y0::dy, x0::dx] = _unfilter(rows, w, bpp, path)
        pos += rows.size
    samples = planes.view(">u2").reshape(height, width, channels).astype(np.uint16)
    colour = 3 if colour_type in (2, 6) else 1
    pixels = np.ascontiguousarray(samples[:, :, :colour])
    alpha = np.ascontiguousarray(samples[:, :, colour]) if channels in (2, 4) else None
    if alpha is None and trns is not None and len(trns) == 2 * colour:  # one fully transparent colour
        key = np.frombuffer(trns, ">u2").astype(np.uint16)
        alpha = np.where((pixels == key).all(axis=2), 0, 65535).astype(np.uint16)
    exif_bytes = _normalise_exif(exif, path)
    xmp, dpi, chunks = _png_metadata(data, path)
    orientation = _shown_orientation(exif_bytes, xmp)
    return ImageData(
        pixels=orient(pixels, orientation),
        alpha=None if alpha is None else orient(alpha, orientation),
        bit_depth=16,
        icc_profile=icc,
        exif=_exif_upright(exif_bytes, orientation),
        format="PNG",
        source=path,
        **_metadata(xmp, _turned(dpi, orientation), None, chunks, (), orientation, path),
    )


def _unfilter(rows: np.ndarray, width: int, bpp: int, path: Path) -> np.ndarray:
    """Undo PNG row filters: rows is (h, 1 + width*bpp) with the filter type first; returns (h, width, bpp).

    Average and Paeth depend on the already-decoded left neighbour, so a row cannot be vectorised along x. Every
    pixel depends only on its left, upper and upper-left neighbours, so all pixels of one anti-diagonal (x + y = d)
    are independent: the loop runs over the h + w - 1 diagonals, each a strided view of the padded image.
    """
    height = rows.shape[0]
    kinds = rows[:, 0]
    if kinds.size and kinds.max() > 4:
        raise ImageError(f"{path}: corrupt PNG (unknown filter type {int(kinds.max())})")
    data = rows[:, 1:].reshape(height * width, bpp)
    # rows of each filter type before row y: lets a diagonal skip predictors none of its rows use
    before = np.zeros((5, height + 1), np.int64)
    before[:, 1:] = np.cumsum(kinds[None, :] == np.arange(5)[:, None], axis=1)
    # (height + 1) x (width + 1) pixels with a zero top row and left column: neighbours need no bounds checks
    out = np.zeros(((height + 1) * (width + 1), bpp), np.uint8)
    for d in range(height + width - 1):
        y_lo, y_hi = max(0, d - width + 1), min(height, d + 1)
        n = y_hi - y_lo
        a = out[_diagonal(y_lo * width + width + 1 + d, width, n)].astype(np.int16)  # left (y+1, x) padded
        b = out[_diagonal(y_lo * width + d + 1, width, n)].astype(np.int16)  # up (y, x+1) padded
        raw = data[_diagonal(y_lo * (width - 1) + d, max(width - 1, 1), n)]
        used = before[:, y_hi] - before[:, y_lo]
        pred = np.zeros_like(a)
        for kind in np.flatnonzero(used[1:]) + 1:
            if kind == 1:
                candidate = a
            elif kind == 2:
                candidate = b
            elif kind == 3:
                candidate = (a + b) >> 1
            else:
                c = out[_diagonal(y_lo * width + d, width, n)].astype(np.int16)  # upper-left (y, x) padded
                pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)  # |p - a|, |p - b|, |p - c|
                candidate = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
            if used[kind] == n:
                pred = candidate
            else:
                np.copyto(pred, candidate, where=kinds[y_lo:y_hi, None] == kind)
        out[_diagonal(y_lo * width + width + d + 2, width, n)] = raw + pred  # wraps mod 256 on assignment
    return out.reshape(height + 1, width + 1, bpp)[1:, 1:]


def _diagonal(start: int, step: int, n: int) -> slice:
    """n elements from start, step apart, of a flattened pixel array."""
    return slice(start, start + (n - 1) * step + 1, step)


PARALLEL_PNG_MIN_CORES = 4
"""8-bit PNGs at levels 1-9 are written by _write_png (rows in parallel blocks) on machines with at least this many
cores, by Pillow on smaller ones and at level 0 (on 2 cores the default level 1 is a wash, see below; 2 would
also do: a CI failure first blamed on the writer turned out not to be its doing). Measured on an idle 2-core AMD EPYC (Zen 1), bench/png_levels.py, two
2048x2048 photos, three runs, same bytes as Pillow: level 1 on 2 threads 0.82-1.25x Pillow's time (as fast, within
the noise of this shared machine), level 6 0.45-0.73x; one thread: level 1 0.97-1.95x, level 6 0.76-1.18x;
level 0 1.6x (the row filter, numpy here and C in Pillow, is then all the work). The blocks use every core, which
is what a GPU machine's batch needs (bench/gpu.py's pipeline rows measure it). 16-bit PNGs are always ours
(Pillow cannot write them)."""
_PNG_BLOCK_BYTES = 1 << 20
"""Raw bytes of rows filtered and deflated as one independent block by _png_stream (a 2048x2048 RGB image: 12)."""
_png_pool: ThreadPoolExecutor | None = None
_png_pool_lock = threading.Lock()


def _png_executor() -> ThreadPoolExecutor:
    """One pool for the blocks of every PNG being written (writer threads share it, so N writers do not start N x
    cores threads): zlib and numpy release the GIL, so the blocks of one image use every core. Its threads run at
    the lowest priority: encoding fills idle cores and never slows a model running on the CPU."""
    global _png_pool
    with _png_pool_lock:
        if _png_pool is None:
            _png_pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 2,
                thread_name_prefix="esrgan-png",
                initializer=lower_thread_priority,
            )
        return _png_pool


def lower_thread_priority() -> None:
    """Lower the calling thread's scheduling priority to the lowest (Linux: threads have their own nice value),
    best effort: for work that should only fill the cores a model leaves idle (esrgan.pipeline's reader and
    writers on the CPU, the PNG encoding pool)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _adler32_combine(first: int, second: int, second_len: int) -> int:
    """Adler-32 of A + B from adler32(A), adler32(B) and len(B) (zlib's adler32_combine; Python's zlib lacks it)."""
    base = 65521
    rem = second_len % base
    sum1 = first & 0xFFFF
    sum2 = (rem * sum1) % base
    sum1 += (second & 0xFFFF) + base - 1
    sum2 += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + base - rem
    sum1 -= base if sum1 >= base else 0
    sum1 -= base if sum1 >= base else 0
    sum2 -= 2 * base if sum2 >= 2 * base else 0
    sum2 -= base if sum2 >= base else 0
    return sum1 | (sum2 << 16)


def _png_stream(bands: Iterable[np.ndarray], bpp: int, level: int) -> Iterator[bytes]:
    """The IDAT zlib stream of byte rows (H, row bytes) given in bands, top to bottom, in parts: blocks of rows
    filtered and deflated in parallel (one array is one band).

    pigz's method: each block is a raw deflate stream ended by a sync flush (the last by a final block), so the
    blocks join into one valid stream; the zlib header goes first and the Adler-32 of all filtered bytes (combined
    from the blocks') last. Each block starts with an empty dictionary: the stream is ~0.5 % larger at most. A
    band's blocks are deflated while the next band is made (the caller's generator runs meanwhile): at most two
    bands are held.
    """

    def deflate(rows: np.ndarray, above: np.ndarray | None, last: bool) -> tuple[bytes, int, int]:
        filtered = _filter_rows(rows, above, bpp).tobytes()
        # Z_FILTERED: what libpng and Pillow use on filtered rows (~5 % smaller than the default strategy at level 6)
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_FILTERED)
        end = zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
        return compressor.compress(filtered) + compressor.flush(end), zlib.adler32(filtered), len(filtered)

    yield zlib.compress(b"", level)[:2]  # the zlib header for this level
    adler = 1
    pending: collections.deque[Any] = collections.deque()
    above: np.ndarray | None = None
    bands = iter(bands)
    band = next(bands, None)
    while band is not None:
        following = next(bands, None)  # the next band is made while this one's blocks are deflated
        block = max(1, _PNG_BLOCK_BYTES // max(band.shape[1], 1))
        starts = list(range(0, band.shape[0], block))
        for start in starts:
            last = following is None and start == starts[-1]
            rows = band[start : start + block]
            if len(starts) == 1 and following is None and not pending:  # one block in all: no thread needed
                pending.append(deflate(rows, above, last))
            else:
                pending.append(_png_executor().submit(deflate, rows, above, last))
            above = rows[-1].copy()
        while len(pending) > len(starts) or (following is None and pending):
            got = pending.popleft()
            data, block_adler, length = got if isinstance(got, tuple) else got.result()
            adler = _adler32_combine(adler, block_adler, length)
            yield data
        band = following
    yield struct.pack(">I", adler)


def _write_png(fh: io.BufferedIOBase, image: ImageData, level: int = DEFAULT_PNG_COMPRESSION) -> None:
    """Encode an 8- or 16-bit image as PNG (grey, grey+alpha, RGB or RGBA), with iCCP and eXIf chunks when present,
    the rows filtered and deflated on every core (_png_stream)."""
    samples = (
        image.pixels
        if image.alpha is None
        else np.concatenate([image.pixels, image.alpha[:, :, None]], axis=2)
    )
    _write_png_rows(fh, image, samples.shape[:2], [samples], level)


def _write_png_rows(
    fh: io.BufferedIOBase,
    image: ImageData,
    size: tuple[int, int],
    bands: Iterable[np.ndarray],
    level: int = DEFAULT_PNG_COMPRESSION,
) -> None:
    """_write_png of an image of `size` (height, width) whose samples (pixels, then alpha) come in bands of rows,
    top to bottom (uint8 or uint16, as image's); image gives the channels, ICC profile and EXIF."""
    height, width = size
    channels = image.channels + (image.alpha is not None)
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    depth = 16 if image.bit_depth == 16 else 8

    def chunk(kind: bytes, body: bytes) -> None:
        fh.write(_png_chunk(kind, body))

    def byte_rows() -> Iterator[np.ndarray]:
        written = 0
        for band in bands:
            _check_band(
                band, width, height - written, channels, np.dtype(np.uint16 if depth == 16 else np.uint8)
            )
            if not len(band):  # an empty last band would leave the stream without its final block
                continue
            written += band.shape[0]
            wide = band.astype(">u2") if depth == 16 else np.ascontiguousarray(band, dtype=np.uint8)
            yield wide.view(np.uint8).reshape(band.shape[0], width * channels * depth // 8)
        if written != height:
            raise ValueError(f"{written} rows given for an image {height} high")

    fh.write(_PNG_SIGNATURE)
    chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
    if image.icc_profile:
        chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(image.icc_profile))
    for kind, body in _png_extra_chunks(image):
        chunk(kind, body)
    if image.exif:
        chunk(b"eXIf", image.exif.removeprefix(_EXIF_HEADER))
    pending = b""
    for part in _png_stream(byte_rows(), channels * depth // 8, level):
        pending += part
        while len(pending) >= _IDAT_CHUNK:
            chunk(b"IDAT", pending[:_IDAT_CHUNK])
            pending = pending[_IDAT_CHUNK:]
    if pending:
        chunk(b"IDAT", pending)
    chunk(b"IEND", b"")


def _png_extra_chunks(image: ImageData) -> list[tuple[bytes, bytes]]:
    """The chunks a PNG output of image has besides IHDR, iCCP, eXIf and the data, in the order they are written
    (all before the data): the input PNG's gAMA, cHRM and sRGB (not sRGB beside an ICC profile, which the spec
    forbids: the profile is written, as Pillow does), pHYs of the resolution, the XMP as an uncompressed iTXt
    (what Adobe's XMP specification asks), then the input PNG's text chunks as they were."""
    out = [
        (kind, body)
        for kind, body in image.png_chunks
        if kind in _PNG_COLOUR and not (kind == b"sRGB" and image.icc_profile)
    ]
    if image.dpi is not None:  # pixels per metre, rounded as Pillow does
        x, y = (int(v / 0.0254 + 0.5) for v in image.dpi)
        if 0 < x < 2**31 and 0 < y < 2**31:
            out.append((b"pHYs", struct.pack(">IIB", x, y, 1)))
    if image.xmp:
        out.append((b"iTXt", _PNG_XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + image.xmp))
    out += [(kind, body) for kind, body in image.png_chunks if kind in _PNG_TEXT]
    return out


def _jfif_dpi(dpi: tuple[float, float]) -> tuple[int, int] | None:
    """The resolution as JFIF's density in dots per inch (16-bit integers), None when it does not fit."""
    x, y = round(dpi[0]), round(dpi[1])
    return (x, y) if 0 < x <= 0xFFFF and 0 < y <= 0xFFFF else None


def _filter_rows(rows: np.ndarray, above: np.ndarray | None, bpp: int) -> np.ndarray:
    """Filter each row with whichever of the five PNG filters gives the smallest sum of |signed bytes| (the
    libpng heuristic); encoding only reads original bytes, so all five vectorise. Returns rows with type bytes."""
    x = rows.astype(np.int16)
    up = np.empty_like(x)
    up[0] = 0 if above is None else above
    up[1:] = x[:-1]
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    upleft = np.zeros_like(x)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    candidates = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]).astype(
        np.uint8
    )  # wraps mod 256
    cost = np.abs(candidates.view(np.int8).astype(np.int16)).sum(axis=2, dtype=np.int32)
    best = cost.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(rows.shape[0])]
    return out


# --- writing ---------------------------------------------------------------------------------------------------------


def output_format(path: Path, format: str | None) -> str:
    """The format a file written to path is in: format (png, jpg/jpeg, webp, tif/tiff, bmp, gif, dicom: any case) when
    given, else from path's extension; ImageError when neither names one we write."""
    return _output_format(path, format)


def _output_format(path: Path, format: str | None) -> str:
    if format is not None:
        name = format.upper().lstrip(".")
        name = {"JPG": "JPEG", "TIF": "TIFF"}.get(name, name)
        if name not in set(WRITE_FORMATS.values()):
            raise ImageError(
                f"{path}: cannot write format {format!r} (choose from png, jpeg, webp, tiff, bmp, gif, dicom)"
            )
        return name
    found = WRITE_FORMATS.get(path.suffix.lower())
    if found is None:
        raise ImageError(
            f"{path}: unknown output extension {path.suffix!r} (use .png, .jpg, .webp, .tif, .bmp, .gif or .dcm)"
        )
    return found


def write_image(
    path: str | os.PathLike[str],
    image: ImageData,
    *,
    format: str | None = None,
    quality: int | None = None,
    overwrite: bool = False,
    png_compression: int | None = None,
) -> Path:
    """Write image atomically and return the path.

    format: PNG, JPEG, WEBP, TIFF, BMP or GIF (default: from the extension). PNG and TIFF keep 16 bits and alpha;
    JPEG, WEBP, BMP and GIF are 8-bit (16-bit input rounded; GIF 256 colours, alpha all or nothing: gif_frame), WEBP
    greyscale is stored as RGB. JPEG and BMP have no (reliable)
    alpha: transparent pixels are composited on white, with an ImageWarning. quality: JPEG 0-100 (libjpeg takes 0
    as 1; default 95, 4:4:4 chroma) or WEBP 0-100 (default: lossless, colour under transparent pixels kept); ignored
    with a warning for PNG/TIFF. png_compression: zlib level 0-9 of PNG output (default DEFAULT_PNG_COMPRESSION,
    chosen for speed); ignored with a warning for other formats.

    Metadata (_metadata_for): PNG keeps all of it but a comment; JPEG the ICC profile, EXIF and XMP (up to what its
    segments hold), the resolution and a comment; WebP the ICC profile, EXIF and XMP; TIFF the ICC profile, XMP,
    the resolution and only the descriptive EXIF tags; BMP the resolution only. The EXIF's (and XMP's)
    PixelXDimension / PixelYDimension become the image's size. What the format cannot hold (and IPTC/Photoshop
    data, which no writer keeps) is named in one ImageWarning.
    An existing file raises OutputExistsError (before any encoding) unless overwrite; any write failure raises
    ImageError naming the path and leaves no file behind.
    """
    path = Path(path)
    fmt = _output_format(path, format)
    if not overwrite and path.exists():
        raise OutputExistsError(path)
    _check_quality(quality, fmt, path)
    level = _png_level(png_compression, fmt, path)
    check_writable(image, fmt, path)
    if image.samples is not None and fmt not in ("TIFF", "DICOM"):
        image = _measurements_as_photo(image, fmt, path)
    stored_channels = 3 if fmt == "WEBP" else image.channels  # WebP stores grey as RGB
    icc = _profile_fitting(image.icc_profile, stored_channels, path)
    if icc is not image.icc_profile:
        image = replace(image, icc_profile=icc)
    image = _metadata_for(image, fmt, path, (image.height, image.width))
    with _encoding_errors(path, fmt), atomic_path(path, overwrite=overwrite) as tmp, in_hand(path):
        _encode(tmp, image, fmt, quality, path, level)
    return path


def _check_quality(quality: int | None, fmt: str, path: Path) -> None:
    """quality given for a format without one is ignored with a warning; out of 0-100 it is an ImageError."""
    if quality is not None and fmt not in ("JPEG", "WEBP"):
        warnings.warn(
            f"{path}: quality applies to JPEG and WEBP only; ignored for {fmt}", ImageWarning, stacklevel=3
        )
    elif quality is not None and not 0 <= quality <= 100:
        raise ImageError(f"{path}: quality must be between 0 and 100, not {quality}")


@contextlib.contextmanager
def _encoding_errors(path: Path, fmt: str) -> Iterator[None]:
    """An encoder's failures as one ImageError line naming path: the file system's (cannot write), and Pillow's
    refusals (an EXIF too long or unparsable, a tag its libtiff writer cannot set, a GIF delay past 16 bits)."""
    try:
        yield
    except (OutputExistsError, ImageError):
        raise
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({cannot_write_reason(path, exc)})") from None
    except (ValueError, SyntaxError, struct.error, RuntimeError, ArithmeticError) as exc:
        raise ImageError(f"{path}: cannot encode as {fmt} ({_one_line(exc)})") from None


STREAMED_FORMATS = ("PNG", "TIFF")
"""Formats write_image_rows writes as the rows come (Pillow's JPEG and WebP writers take a whole image)."""


def write_image_rows(
    path: str | os.PathLike[str],
    like: ImageData,
    size: tuple[int, int],
    rows: Iterable[np.ndarray],
    *,
    format: str | None = None,
    overwrite: bool = False,
    png_compression: int | None = None,
) -> Path:
    """write_image for an image whose pixels come as bands of rows, top to bottom (Upscaler.upscale_rows), written
    as they come: the whole image is never held. size: its (height, width); like: an image with its channels, bit
    depth, ICC profile and EXIF (its pixels are not read: the input of an upscale). PNG (a stream of IDAT chunks) or
    TIFF (tiled, STREAMED_FORMATS); with alpha (`like` has some) PNG only, each band's alpha as its last channel.
    Atomic as write_image: an exception from `rows` (the model's) leaves no file. The same pixels as write_image of
    the whole image; a TIFF is tiled where write_image writes strips."""
    path = Path(path)
    fmt = _output_format(path, format)
    if fmt not in STREAMED_FORMATS or (like.alpha is not None and fmt != "PNG") or like.samples is not None:
        raise ImageError(
            f"{path}: only PNG and TIFF (without alpha: PNG) are written row by row, not {fmt}"
            + (" with alpha" if like.alpha is not None and fmt in STREAMED_FORMATS else "")
        )
    if not overwrite and path.exists():
        raise OutputExistsError(path)
    level = _png_level(png_compression, fmt, path)
    check_writable(like, fmt, path, size)
    icc = _profile_fitting(like.icc_profile, like.channels, path)
    if icc is not like.icc_profile:
        like = replace(like, icc_profile=icc)
    like = _metadata_for(like, fmt, path, size)
    try:
        with atomic_path(path, overwrite=overwrite) as tmp, in_hand(path):
            if fmt == "PNG":
                with open(tmp, "wb") as fh:
                    _write_png_rows(fh, like, size, rows, level)
            else:
                _write_tiff(tmp, like, path, rows=(size, rows))
    except (OutputExistsError, ImageError):
        raise
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({cannot_write_reason(path, exc)})") from None
    return path


def _png_level(png_compression: int | None, fmt: str, path: Path) -> int:
    """The zlib level of a PNG output; png_compression given for another format is ignored with a warning (as
    quality is for PNG and TIFF)."""
    level = DEFAULT_PNG_COMPRESSION if png_compression is None else png_compression
    if not 0 <= level <= 9:
        raise ImageError(f"{path}: PNG compression must be 0-9, not {level}")
    if png_compression is not None and fmt != "PNG":
        warnings.warn(
            f"{path}: PNG compression applies to PNG only; ignored for {fmt}", ImageWarning, stacklevel=3
        )
    return level


def _metadata_for(image: ImageData, fmt: str, path: Path, size: tuple[int, int]) -> ImageData:
    """image's metadata as a `fmt` output of `size` (height, width) holds it: the EXIF's and XMP's pixel size made
    the output's, and what the format cannot hold removed, named in one ImageWarning (the writers then write all
    that is left). PNG holds everything but a comment; JPEG XMP (one segment), a comment and the resolution; WebP
    XMP; TIFF XMP and the resolution; BMP the resolution only; GIF a comment only. The IPTC/Photoshop data no
    writer keeps."""
    height, width = size
    exif, xmp = _exif_with_size(image.exif, width, height), image.xmp
    if xmp is not None:
        xmp = _xmp_set(
            _xmp_set(xmp, _XMP_NS_EXIF, b"PixelXDimension", width), _XMP_NS_EXIF, b"PixelYDimension", height
        )
    dropped: list[str] = []
    icc, comment, chunks = image.icc_profile, image.comment, image.png_chunks
    if fmt in ("BMP", "GIF"):
        dropped += [name for name, v in (("ICC profile", icc), ("EXIF", exif), ("XMP", xmp)) if v]
        icc = exif = xmp = None
    if xmp is not None and fmt == "JPEG" and len(xmp) > _JPEG_XMP_BYTES:
        dropped.append(f"XMP ({len(xmp)} bytes: a JPEG holds {_JPEG_XMP_BYTES})")
        xmp = None
    if comment is not None and fmt != "GIF" and (fmt != "JPEG" or len(comment) > _JPEG_MARKER_BYTES):
        dropped.append(
            "comment"
            if fmt != "JPEG"
            else f"comment ({len(comment)} bytes: a JPEG holds {_JPEG_MARKER_BYTES})"
        )
        comment = None
    if image.dpi is not None and not (fmt == "JPEG" and _jfif_dpi(image.dpi) is None):
        if (
            fmt == "WEBP" and not _exif_has_resolution(exif)
        ) or fmt == "GIF":  # WebP holds one only in its EXIF
            dropped.append(f"resolution ({image.dpi[0]:g} dpi)")
    elif image.dpi is not None:  # JFIF's density is a 16-bit integer
        dropped.append(f"resolution ({image.dpi[0]:g} dpi: a JPEG holds 1-65535)")
    if chunks and fmt != "PNG":
        keywords = [
            _chunk_name(body.partition(b"\x00")[0][:40]) for kind, body in chunks if kind in _PNG_TEXT
        ]
        if keywords:
            more = f" and {len(keywords) - 3} more" if len(keywords) > 3 else ""
            dropped.append(f"PNG text ({', '.join(keywords[:3])}{more})")
        gama = next((body for kind, body in chunks if kind == b"gAMA" and len(body) == 4), None)
        srgb = any(kind == b"sRGB" for kind, _ in chunks)
        if gama is not None and not icc and not srgb and abs(int.from_bytes(gama, "big") - _SRGB_GAMA) > 100:
            dropped.append(f"PNG gamma (gAMA {int.from_bytes(gama, 'big') / 100000:g}, not sRGB's 0.45455)")
        chrm = next((body for kind, body in chunks if kind == b"cHRM" and len(body) == 32), None)
        if chrm is not None and not icc and not srgb and not _srgb_chromaticities(chrm):
            dropped.append("PNG chromaticities (cHRM, not sRGB's)")
        chunks = ()
    dropped += image.unwritten
    if dropped:
        warnings.warn(
            f"{path}: {fmt} output: the input's {_listed(dropped)} not written", ImageWarning, stacklevel=3
        )
    return replace(
        image, icc_profile=icc, exif=exif, xmp=xmp, comment=comment, png_chunks=chunks, unwritten=()
    )


_SRGB_CHRM = (31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)  # white, red, green, blue x/y * 100000


def _srgb_chromaticities(chrm: bytes) -> bool:
    """Whether a cHRM chunk's white point and primaries are sRGB's (what a reader assumes without them)."""
    values = struct.unpack(">8I", chrm)
    return all(abs(v - ref) <= 100 for v, ref in zip(values, _SRGB_CHRM, strict=True))


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def check_writable(
    image: ImageData, fmt: str | None, path: Path, size: tuple[int, int] | None = None
) -> None:
    """Raise ImageError if image cannot be written to path in fmt (None: from the extension): a measurement TIFF's
    values fit TIFF only; the size must fit the format (MAX_SIDE, MAX_FILE_BYTES). size: (height, width) the
    written image will have (the batch checks the input with its output's size before the model runs), else the
    image's own. Checked by the batch, the web page and write_image."""
    sm = image.samples
    out = _output_format(path, fmt)
    height, width = (image.height, image.width) if size is None else size
    problem = size_problem(out, height, width, image, path)
    if problem:
        raise ImageError(f"{image.source or path}: {problem}")
    if out == "DICOM" and (sm is None or sm.dicom is None):
        raise ImageError(f"{image.source or path}: only a DICOM input can be written as DICOM ({path.name})")
    if sm is not None and sm.frames > 1 and out != "DICOM":
        raise ImageError(
            f"{image.source or path}: a multi-frame DICOM ({sm.frames} frames): only a DICOM output keeps the "
            f"frames, not {out} (drop --format: the output is then DICOM)"
        )
    if sm is None or out in ("TIFF", "DICOM"):
        return
    if not sm.photo_compatible or image.valid is not None:
        what = sm.describe() + (", pixels without data" if image.valid is not None else "")
        raise ImageError(
            f"{image.source or path}: {what}: only a TIFF output keeps them, not {out} "
            "(drop --format, or --format tiff)"
        )


def size_problem(fmt: str, height: int, width: int, image: ImageData, path: Path) -> str | None:
    """Why an image of `image`'s kind at height x width cannot be written as fmt, in one phrase; None if it can."""
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(height, width) > limit:
        return (
            f"the output would be {width}x{height}, larger than {_FORMAT_NAMES[fmt]} allows ({limit} pixels a side); "
            f"{_SMALLER}"
        )
    if fmt == "BMP":  # Pillow writes L (8 bits, 1 KiB palette) or RGB (24); alpha is composited away
        bits, palette = (8, 1024) if image.channels == 1 and image.samples is None else (24, 0)
        size = 54 + palette + (width * bits + 31) // 32 * 4 * height
    elif fmt == "DICOM":  # every frame (a multi-frame file's later frames are the extra planes), uncompressed
        planes = image.channels + (0 if image.extra is None else image.extra.shape[2])
        size = height * width * planes * image.pixels.dtype.itemsize
    else:
        return None
    if size > MAX_FILE_BYTES[fmt]:
        return (
            f"the output would be {width}x{height}, {size / 2**30:.1f} GiB: more than {_FORMAT_NAMES[fmt]} holds "
            f"(4 GiB); {_SMALLER}"
        )
    return None


_FORMAT_NAMES = {"JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "DICOM": "DICOM", "BMP": "BMP"}
_SMALLER = "use --format png or tiff, or a smaller --outscale (or --width / --height)"


def _measurements_as_photo(image: ImageData, fmt: str, path: Path) -> ImageData:
    assert image.samples is not None  # and checked writable by write_image
    if image.samples.tags:
        warnings.warn(
            f"{path}: {fmt} holds no georeferencing; not written (use TIFF)", ImageWarning, stacklevel=4
        )
    return datatiff.as_photo(image)


def profile_fits(icc: bytes | None, channels: int) -> bool:
    """Whether an ICC profile's data colour space (header bytes 16-20) describes pixels of `channels` colour
    channels (alpha not counted): GRAY for 1, RGB for 3. A profile of another space (Lab, CMYK, a grey one on
    RGB data) misleads colour-managed viewers, or makes them fail, on those pixels."""
    space = icc[16:20] if icc else b""
    return (space == b"GRAY" and channels == 1) or (space == b"RGB " and channels == 3)


def _profile_fitting(icc: bytes | None, channels: int, path: Path) -> bytes | None:
    """The ICC profile if it fits the stored pixels (profile_fits), else None with a warning: e.g. a grey profile
    on RGB data (a grey photo upscaled in colour)."""
    if not icc:
        return None
    if profile_fits(icc, channels):
        return icc
    kind = "grey" if channels == 1 else "RGB"
    space_name = icc[16:20].decode("latin-1").strip() or "unknown"
    warnings.warn(
        f"{path}: {space_name} ICC profile does not fit {kind} pixels; not written",
        ImageWarning,
        stacklevel=3,
    )
    return None


def _encode(tmp: Path, image: ImageData, fmt: str, quality: int | None, path: Path, level: int) -> None:
    if fmt == "PNG" and (
        image.bit_depth == 16 or (level > 0 and (os.cpu_count() or 1) >= PARALLEL_PNG_MIN_CORES)
    ):
        with open(tmp, "wb") as fh:
            _write_png(fh, image, level)
        return
    if fmt == "DICOM" and image.samples is not None:
        dicom.write_dicom(tmp, image, path)
        return
    if fmt == "TIFF" and image.samples is not None:
        datatiff.write_measurements(tmp, image, path)
        return
    if (
        fmt == "TIFF"
    ):  # tifffile, 8-bit too: Pillow's libtiff writer failed on a camera EXIF (sub-IFD pointers)
        _write_tiff(tmp, image, path)
        return
    if fmt == "GIF":  # one frame (an animation: AnimationWriter)
        gif_frame(image).save(tmp, format="GIF", **({"comment": image.comment} if image.comment else {}))
        return
    pixels, alpha = _to_8bit(image.pixels), None if image.alpha is None else _to_8bit(image.alpha)
    if fmt in ("JPEG", "BMP") and alpha is not None and int(alpha.min()) == 255:
        alpha = None  # opaque everywhere (an animated WebP decodes as RGBA): nothing to composite or say
    if fmt in ("JPEG", "BMP") and alpha is not None:  # readers ignore a BMP's 4th byte (Pillow included)
        warnings.warn(f"{path}: {fmt} has no alpha channel; composited on white", ImageWarning, stacklevel=3)
        a = alpha.astype(np.float32)[:, :, None] / 255.0
        pixels = np.clip(np.rint(pixels.astype(np.float32) * a + 255.0 * (1.0 - a)), 0, 255).astype(np.uint8)
        alpha = None
    if fmt == "WEBP" and pixels.shape[2] == 1:  # WebP has no greyscale: store it as equal R, G, B
        pixels = np.repeat(pixels, 3, axis=2)
    stacked = pixels if alpha is None else np.concatenate([pixels, alpha[:, :, None]], axis=2)
    pil = Image.fromarray(stacked[:, :, 0] if stacked.shape[2] == 1 else stacked)  # L, LA, RGB or RGBA
    options: dict[str, Any] = {}
    if image.dpi is not None and fmt in ("JPEG", "PNG", "BMP"):  # WebP has no resolution but in EXIF/XMP
        dpi = _jfif_dpi(image.dpi) if fmt == "JPEG" else image.dpi
        if dpi is not None:
            options["dpi"] = dpi
    if image.xmp and (fmt == "WEBP" or (fmt == "JPEG" and _PILLOW_JPEG_XMP)):
        options["xmp"] = image.xmp
    elif image.xmp and fmt == "JPEG":  # Pillow 10: the same APP1 segment as 11's
        size = struct.pack(">H", 2 + len(_JPEG_XMP_ID) + len(image.xmp))
        options["extra"] = b"\xff\xe1" + size + _JPEG_XMP_ID + image.xmp
    if image.comment and fmt == "JPEG":
        options["comment"] = image.comment
    if fmt == "PNG":
        options["pnginfo"] = PngImagePlugin.PngInfo()
        for kind, body in _png_extra_chunks(image):
            if kind != b"pHYs":  # Pillow writes it from dpi
                options["pnginfo"].add(kind, body)
    if image.icc_profile:
        options["icc_profile"] = image.icc_profile
        if (
            fmt == "JPEG" and len(image.icc_profile) > _JPEG_ICC_BYTES
        ):  # Pillow wraps the chunk count: corrupt
            warnings.warn(
                f"{path}: the ICC profile is {len(image.icc_profile)} bytes, more than a JPEG holds "
                f"({_JPEG_ICC_BYTES}); not written (PNG, TIFF and WebP keep it)",
                ImageWarning,
                stacklevel=3,
            )
            del options["icc_profile"]
    if image.exif:  # JPEG's APP1 needs the "Exif" prefix (callers may hand bare TIFF); WebP's chunk must not
        bare = image.exif.removeprefix(_EXIF_HEADER)
        options["exif"] = bare if fmt == "WEBP" else _EXIF_HEADER + bare
        if fmt == "JPEG" and len(options["exif"]) > _JPEG_MARKER_BYTES:  # Pillow: "EXIF data is too long"
            warnings.warn(
                f"{path}: the EXIF is {len(options['exif'])} bytes, more than a JPEG holds ({_JPEG_MARKER_BYTES}); "
                "not written (PNG and WebP keep it)",
                ImageWarning,
                stacklevel=3,
            )
            del options["exif"]
    if fmt == "JPEG":
        options.update(quality=_JPEG_DEFAULT_QUALITY if quality is None else quality, subsampling=0)
    elif fmt == "WEBP" and quality is None:
        options.update(lossless=True, quality=100, exact=True)
    elif fmt == "WEBP":
        options.update(quality=quality)
    elif fmt == "PNG":
        options.update(compress_level=level)
    elif fmt == "TIFF":
        options.update(compression="tiff_adobe_deflate")
    pil.save(tmp, format=fmt, **options)


def _write_tiff(
    tmp: Path,
    image: ImageData,
    path: Path,
    rows: tuple[tuple[int, int], Iterable[np.ndarray]] | None = None,
) -> None:
    """8- or 16-bit TIFF through tifffile (Pillow cannot write 16-bit colour, and its libtiff writer raised
    RuntimeError on an ordinary camera EXIF, whose Exif sub-IFD pointer it copies as a tag), deflate-compressed, ICC
    as tag 34675, BigTIFF past BIG_TIFF_BYTES of pixels.

    tifffile writes no Exif sub-IFD, so only the descriptive IFD0 tags of the EXIF (make, model, date, artist,
    copyright, description, software) are carried over; anything else warns.

    rows: ((height, width), bands of rows top to bottom) to write instead of image's own pixels (image then gives
    the channels, bit depth and metadata only): a tiled TIFF (_TIFF_TILE), each tile row written as its rows come."""
    try:
        import tifffile
    except ImportError:
        raise ImageError(
            f"{path}: writing 16-bit TIFF needs the 'tifffile' package (pip install tifffile)"
        ) from None
    extratags: list[tuple[int, int | str, int, Any, bool]] = []
    if image.icc_profile:
        extratags.append((34675, 7, len(image.icc_profile), image.icc_profile, True))
    if image.xmp:  # BYTE, as Adobe's XMP specification (part 3) has it
        extratags.append((_TIFF_XMP, 1, len(image.xmp), image.xmp, True))
    software: str | bool = False
    if image.exif:
        exif = Image.Exif()
        exif.load(image.exif)
        for tag in _TIFF_EXIF_IFD0_TAGS:
            value = exif.get(tag)
            if isinstance(value, str) and value.isascii():
                if tag == 305:
                    software = value  # tifffile owns the Software tag
                else:
                    extratags.append((tag, "s", 0, value, True))
        dropped = set(exif) - set(_TIFF_EXIF_IFD0_TAGS) - {_ORIENTATION_TAG, 0x8769, 0x8825}
        if dropped or exif.get_ifd(0x8769) or exif.get_ifd(0x8825):
            warnings.warn(
                f"{path}: TIFF keeps only make/model/date/artist/copyright/description/software of the EXIF; "
                "use PNG to keep all of it",
                ImageWarning,
                stacklevel=4,
            )
    options: dict[str, Any] = {}
    if rows is None:
        samples = (
            image.pixels
            if image.alpha is None
            else np.concatenate([image.pixels, image.alpha[:, :, None]], axis=2)
        )
        data: Any = samples if samples.shape[2] > 1 else samples[:, :, 0]
        nbytes = samples.nbytes
    else:
        (height, width), bands = rows
        channels = image.channels + (image.alpha is not None)
        dtype = image.pixels.dtype
        shape = (height, width) if channels == 1 else (height, width, channels)
        data = _tiff_tiles(bands, height, width, channels, dtype)
        nbytes = height * width * channels * dtype.itemsize
        options = {"shape": shape, "dtype": dtype, "tile": (_TIFF_TILE, _TIFF_TILE)}
    tifffile.imwrite(
        tmp,
        data,
        **options,
        photometric="rgb" if image.channels == 3 else "minisblack",
        extrasamples=["unassalpha"] if image.alpha is not None else None,
        compression="zlib",
        extratags=extratags,
        software=software,
        metadata=None,
        bigtiff=nbytes > BIG_TIFF_BYTES,  # tifffile does not choose it for compressed data
        # without a resolution tifffile writes 1 x 1, unit "none": what a viewer then reads as "no resolution"
        resolution=image.dpi,
        resolutionunit=2 if image.dpi is not None else None,  # RESUNIT.INCH
    )


_TIFF_TILE = 256
"""Tile side of TIFFs written from rows (write_image_rows): a multiple of 16 as TIFF asks, and what GDAL and most
viewers read fastest."""


def _check_band(band: np.ndarray, width: int, rows_left: int, channels: int, dtype: np.dtype) -> None:
    """A band of rows write_image_rows was given must be (n <= rows_left, width, channels) of the image's dtype
    (a uint16 band for an 8-bit PNG wrapped silently: 300 read back as 44)."""
    if (
        band.ndim != 3
        or band.shape[1:] != (width, channels)
        or band.shape[0] > rows_left
        or band.dtype != dtype
    ):
        raise ValueError(
            f"rows of shape {band.shape} {band.dtype} do not fit a {width}-wide {channels}-channel {dtype} image "
            f"with {rows_left} rows left"
        )


def _tiff_tiles(
    bands: Iterable[np.ndarray], height: int, width: int, channels: int, dtype: np.dtype
) -> Iterator[np.ndarray]:
    """The tiles tifffile asks for, row of tiles by row of tiles (each _TIFF_TILE square; tifffile pads the last
    ones), from bands of rows of any height: at most one row of tiles and one band are held."""
    held: list[np.ndarray] = []
    count = written = 0
    for band in bands:
        _check_band(band, width, height - written, channels, dtype)
        written += band.shape[0]
        held.append(band)
        count += band.shape[0]
        while count >= _TIFF_TILE or (written == height and count):
            stacked = np.concatenate(held, axis=0) if len(held) > 1 else held[0]
            strip, rest = stacked[:_TIFF_TILE], stacked[_TIFF_TILE:]
            for x in range(0, width, _TIFF_TILE):
                tile = strip[:, x : x + _TIFF_TILE]
                yield tile if channels > 1 else tile[:, :, 0]
            held, count = ([rest] if len(rest) else []), len(rest)
    if written != height:
        raise ValueError(f"{written} rows given for an image {height} high")


# --- animated images: GIF, APNG, animated WebP -----------------------------------------------------------------------
def is_animated(path: str | os.PathLike[str]) -> bool:
    """Whether path is an animation (a GIF, APNG or WebP of more than one frame), from its header and the start of
    its second frame only. False for a still image, a multi-page TIFF (pages, not frames), an MPO (a phone JPEG
    with previews) and a file that cannot be opened (read_image says what is wrong with it)."""
    path = Path(path)
    if special_file(path) is not None:
        return False
    try:
        # the header only: a size beyond Pillow's bomb limits is read_image's to refuse, in its words
        with _WARNING_FILTERS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.format in ANIMATED_FORMATS and bool(getattr(im, "is_animated", False))
    except Exception:  # any decoder failure: not an animation we can read; read_image reports it
        return False


class Frames:
    """An animation opened by read_frames: its first frame with the file's metadata (as read_image reads it),
    count, plays (how many times it plays: 0 = for ever; a GIF's loop count N is N + 1 plays, as browsers play it,
    and no loop count is 1) and default_image (an APNG whose first frame is the still image shown by readers
    without animation support, not part of the animation). Iterating gives every frame in order (the first
    included) as (ImageData, duration in ms): full frames at the canvas size, as a browser shows them, RGB or RGBA
    (alpha where some pixel is not opaque), or grey (a GIF whose colour tables are all grey, a grey APNG), 8 bits
    but for 16-bit grey APNGs.

    GIF and APNG frames are composited here as browsers (Chrome, Firefox) and the APNG specification do it, each
    frame decoded alone by Pillow (_Composited): the canvas starts transparent; a GIF frame's transparent index
    leaves the pixel under it, disposal 2 clears the frame's rectangle to transparent (Pillow fills it with the
    background colour) and 3 restores what was there before it, and a frame reaching past the canvas is cut to it;
    an APNG frame is drawn by its blend_op (SOURCE, or OVER: the specification's alpha compositing, in floating
    point then rounded, where Pillow's made a half-transparent square over an opaque frame 191 alpha) and disposed
    of by its dispose_op (BACKGROUND clears to transparent black, PREVIOUS restores). A file laid out in a way that
    walk does not follow is composited by Pillow as before; animated WebP is composited by libwebp (through
    Pillow), which does it as browsers do."""

    def __init__(self, im: ImageFile.ImageFile, path: Path, max_pixels: int) -> None:
        self._im, self._path, self._max_pixels = im, path, max_pixels
        self.count = int(getattr(im, "n_frames", 1))
        size = path.stat().st_size
        if im.format == "PNG" and self.count > size // _APNG_FRAME_BYTES:  # acTL's count is only a claim
            raise ImageError(
                f"{path}: corrupt APNG: it claims {self.count} frames in {size} bytes (each takes "
                f"{_APNG_FRAME_BYTES} at least)"
            )
        loop = im.info.get("loop")
        if im.format == "GIF":  # the NETSCAPE loop count repeats the animation: N + 1 plays
            self.plays = 1 if not isinstance(loop, int) else 0 if loop == 0 else loop + 1
        else:
            self.plays = loop if isinstance(loop, int) and loop >= 0 else 1
        self.default_image = bool(im.info.get("default_image"))
        first = _read_opened(im, path, max_pixels, first_frame=True)
        # the later frames turned as read_image turned the first: from what the first frame's load found (an
        # APNG's XMP may follow its first image data), a PNG's XMP from the whole file as _read_opened reads it
        exif = _loaded_exif(im, path)
        xmp = im.info.get("xmp")
        if im.format == "PNG" and not (exif and _orientation_offset(exif) is not None):
            xmp = _png_metadata(path.read_bytes(), path)[0]
        self._orientation = _shown_orientation(exif, xmp)
        self._canvas = im.size
        self._first_duration = _duration(im)
        self._composited: _Composited | None = None
        if im.format in ("GIF", "PNG") and self.count > 1:
            self._composited = _Composited.open(
                path, im.format, self._canvas, max_pixels, self.count, self.default_image
            )
        self._steps: Iterator[tuple[dict[str, Any], float]] | None = None
        if self._composited is not None and not self.default_image:  # the first frame as composited here
            self._steps = self._composited.frames(self._orientation)
            arrays, _ = next(self._steps)
            first = replace(first, **arrays)
        elif (
            first.bit_depth == 16
        ):  # our 16-bit PNG reader: the frame as Pillow gives the others, to compare them
            im.load()
            first = replace(first, **self._arrays())
        self.first = first

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every frame."""
        return self.first.height, self.first.width

    def _arrays(self) -> dict[str, Any]:
        """The loaded frame's pixels, alpha and bit depth, cut to the canvas and turned upright."""
        im: Image.Image = self._im
        if im.size != self._canvas:  # a GIF frame past the canvas: Pillow grows the image, browsers cut it
            im = im.crop((0, 0, *self._canvas))
        pixels, alpha, depth, _ = _pil_to_arrays(im, self._path, None)
        pixels = orient(pixels, self._orientation)
        alpha = None if alpha is None else orient(alpha, self._orientation)
        return {"pixels": pixels, "alpha": alpha, "bit_depth": depth}

    def __iter__(self) -> Iterator[tuple[ImageData, float]]:
        yield self.first, self._first_duration
        if self._composited is None:
            for k in range(1, self.count):
                with _read_errors(self._path, self._max_pixels, f"frame {k + 1} of {self.count}"):
                    self._im.seek(
                        k
                    )  # Pillow grows the image to a frame larger than the canvas: check it first
                    width, height = self._im.size
                    if width * height > self._max_pixels:
                        at = f"{self._path}: frame {k + 1} of {self.count}"
                        raise too_many_pixels(at, f"{width}x{height} = {width * height}", self._max_pixels)
                    self._im.load()
                    arrays = self._arrays()
                yield replace(self.first, **arrays), _duration(self._im)
            return
        steps, self._steps = (
            self._steps,
            None,
        )  # the walk begun by __init__, else a new one past the first frame
        if steps is None:
            steps = self._composited.frames(self._orientation)
            if not self.default_image:
                with _read_errors(self._path, self._max_pixels, f"frame 1 of {self.count}"):
                    next(steps)
        for k in range(1, self.count):
            with _read_errors(self._path, self._max_pixels, f"frame {k + 1} of {self.count}"):
                step = next(steps, None)
                if step is None:
                    raise EOFError(f"no more images in the {self._im.format} file")
            yield replace(self.first, **step[0]), step[1]


_APNG_FRAME_BYTES = 38
"""The least an APNG frame takes: its fcTL chunk (12 bytes of chunk, 26 of data)."""


def _duration(im: Image.Image) -> float:
    """The loaded frame's display time in ms (0 where the file gives none, as a GIF without a control block)."""
    value = im.info.get("duration")
    return float(value) if isinstance(value, (int, float)) and value >= 0 else 0.0


# --- GIF and APNG frames composited as browsers do (Frames) ------------------------------------------------------------
class _Unfollowed(Exception):
    """The file is laid out in a way _gif_walk or _apng_layout does not follow: Pillow composites it."""


_GIF_GREY = bytes(v for v in range(256) for _ in range(3))
"""A colour table of greys 0-255 (index i is grey i): what Pillow reads as a grey GIF, and a GIF without any."""


class _GifFrame(NamedTuple):
    x: int
    y: int
    width: int
    height: int
    interlace: bool
    table: tuple[
        int, int
    ]  # where its colour table is in the file (its own, else the global one): offset, bytes
    transparency: int | None
    disposal: int
    duration: float
    data: tuple[
        int, int
    ]  # its image data in the file: from the LZW code size byte to the end of its sub-blocks
    complete: bool  # the data ends with its terminator (not with the file)


def _gif_walk(data: bytes) -> Iterator[_GifFrame]:
    """The frames of a GIF (its bytes), found as Pillow's GifImagePlugin finds them (the same frames, so the same
    count): extensions skipped but for the graphic control one, a stray byte between blocks skipped, the trailer or
    the file's end ending it. Every offset is checked against the file's length; where Pillow would fail, or read
    past an empty extension, raises _Unfollowed."""
    end = len(data)
    if end < 13:
        raise _Unfollowed
    flags, pos = data[10], 13
    table = (0, 0)
    if flags & 0x80:
        table = (pos, 3 << ((flags & 7) + 1))
        pos += table[1]
        if pos > end:
            raise _Unfollowed
    while True:
        control: bytes | None = None
        while True:
            if pos >= end or data[pos] == 0x3B:
                return
            byte, pos = data[pos], pos + 1
            if byte == 0x2C:
                break
            if byte != 0x21:
                continue  # a stray byte: Pillow reads on
            if pos >= end:
                raise _Unfollowed
            label, pos = data[pos], pos + 1
            if pos >= end or data[pos] == 0:  # no sub-block: Pillow would skip the one after the terminator
                raise _Unfollowed
            if label == 0xF9:
                control = data[pos + 1 : pos + 1 + data[pos]]
                if len(control) < 4:
                    raise _Unfollowed
            pos, _ = _gif_sub_blocks(data, pos)
        if pos + 9 > end:
            raise _Unfollowed
        x, y, width, height, image_flags = struct.unpack_from("<HHHHB", data, pos)
        pos += 9
        frame_table = table
        if image_flags & 0x80:
            frame_table = (pos, 3 << ((image_flags & 7) + 1))
            pos += frame_table[1]
        if pos >= end:  # the table cut short, or no LZW code size
            raise _Unfollowed
        start = pos
        pos, complete = _gif_sub_blocks(data, pos + 1)
        transparency = None if control is None or not control[0] & 1 else control[3]
        yield _GifFrame(
            x,
            y,
            width,
            height,
            bool(image_flags & 0x40),
            frame_table,
            transparency,
            0 if control is None else (control[0] >> 2) & 7,
            0.0 if control is None else float(struct.unpack_from("<H", control, 1)[0] * 10),
            (start, min(pos, end)),
            complete,
        )


def _gif_sub_blocks(data: bytes, pos: int) -> tuple[int, bool]:
    """The offset past the sub-blocks starting at pos, and whether they end with their terminator (not the file)."""
    end = len(data)
    while pos < end:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos, True
    return pos, False


class _ApngLayout(NamedTuple):
    header: bytes  # IHDR's data
    palette: bytes | None  # PLTE's
    transparency: bytes | None  # tRNS's
    start: int  # offset of the first IDAT chunk
    first: bytes | None  # the fcTL before the IDAT (the IDAT is the first frame), or None (a default image)


def _apng_layout(data: bytes) -> _ApngLayout:
    """An APNG's chunks up to its first IDAT (the reader judged them: read_image's checks, Pillow's). Raises
    _Unfollowed for what the walk does not follow: no IHDR first, a first frame that is not the whole canvas."""
    header = palette = transparency = first = None
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            break
        if kind == b"IHDR" and header is None and len(body) == 13:
            header = body
        elif header is None:
            break
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            transparency = body
        elif kind == b"fcTL" and first is None:
            first = body
        elif kind == b"IDAT":
            if first is not None:
                if len(first) < 26:
                    raise _Unfollowed
                seq, width, height, x, y = struct.unpack_from(">IIIII", first)
                if (seq, x, y, width, height) != (0, 0, 0, *struct.unpack_from(">II", header)):
                    raise _Unfollowed
            return _ApngLayout(header, palette, transparency, pos, first)
        pos += 12 + length
    raise _Unfollowed


_APNG_CHECKED = (b"IDAT", b"fcTL", b"fdAT")
"""Chunks whose CRC a frame depends on: a mismatch there fails the frame (elsewhere the chunk is skipped)."""


def _apng_walk(data: bytes, layout: _ApngLayout) -> Iterator[tuple[bytes, list[bytes]]]:
    """An APNG's animation frames from its first IDAT on: (fcTL data, the frame's image data: IDAT's, or fdAT's
    without their sequence numbers), as the chunks come. What is wrong with a frame (a chunk cut short or with a
    wrong CRC, a sequence number out of order, no data) raises when that frame is asked for, not before: the
    frames before it are given."""
    control, seq = layout.first, 0 if layout.first is not None else -1
    pieces: list[bytes] = []
    frame_data = False  # an fdAT seen: IDATs are no longer the first frame's
    pos, end = layout.start, len(data)
    while True:
        kind, problem = b"IEND", None
        if pos + 12 > end:
            problem = ValueError("truncated PNG (ends before IEND)")
        else:
            length, kind = struct.unpack_from(">I4s", data, pos)
            stop = pos + 8 + length
            if stop + 4 > end:
                problem = ValueError(f"truncated PNG (chunk {_chunk_name(kind)} cut short)")
            else:
                body = data[pos + 8 : stop]
                pos = stop + 4
                if kind in _APNG_CHECKED and zlib.crc32(kind + body) != int.from_bytes(data[stop:pos], "big"):
                    problem = ValueError(f"corrupt PNG (CRC mismatch in chunk {_chunk_name(kind)})")
        if problem is not None:
            if kind not in (b"fdAT", b"IDAT") and control is not None and pieces:
                yield control, pieces  # the chunk after the frame's data is broken: the frame may be whole
            raise problem
        if kind in (b"fcTL", b"IEND"):
            if control is not None:
                if not pieces:
                    raise SyntaxError("APNG missing frame data")
                yield control, pieces
            if kind == b"IEND":
                return
            if len(body) < 26:
                raise ValueError("APNG contains truncated fcTL chunk")
            control, pieces = body, []
        elif kind == b"IDAT" and control is not None and control is layout.first and not frame_data:
            pieces.append(body)
            continue
        elif kind == b"fdAT":
            if len(body) < 4:
                raise ValueError("APNG contains truncated fdAT chunk")
            frame_data = True
            if control is not None:
                pieces.append(body[4:])
        else:
            continue
        if int.from_bytes(body[:4], "big") != seq + 1:
            raise SyntaxError("APNG contains frame sequence errors")
        seq += 1


class _Composited:
    """A GIF's or APNG's frames composited as browsers do (Frames): each frame decoded alone by Pillow, from a
    small file of its own made from its bytes (a GIF of the frame at 0,0 with its transparency, a PNG of its size
    with the file's palette and the frame's image data), and drawn onto an RGBA canvas with numpy."""

    def __init__(self, path: Path, fmt: str, data: bytes, canvas: tuple[int, int], max_pixels: int) -> None:
        self.path, self.fmt, self.data, self.max_pixels = path, fmt, data, max_pixels
        self.width, self.height = canvas
        self.count, self.skipped = (
            0,
            0,
        )  # frames in Frames, and before the walk's first (an APNG's default image)
        self.grey = False
        self.layout: _ApngLayout | None = None

    @classmethod
    def open(
        cls, path: Path, fmt: str, canvas: tuple[int, int], max_pixels: int, count: int, default_image: bool
    ) -> _Composited | None:
        """The compositor of the animation at path, or None where the walk does not follow its layout (a GIF found
        to hold another count of frames than Pillow's, for one: count)."""
        self = cls(path, fmt, path.read_bytes(), canvas, max_pixels)
        self.count, self.skipped = count, int(default_image)
        try:
            if fmt == "GIF":
                found = grey = 0
                for frame in _gif_walk(self.data):
                    found += 1
                    offset, size = frame.table
                    grey += self.data[offset : offset + size] == _GIF_GREY[:size]
                if found != count:
                    return None
                self.grey = grey == count
            else:
                self.layout = _apng_layout(self.data)
                if (self.layout.first is None) != default_image:
                    return None
        except _Unfollowed:
            return None
        return self

    def frames(self, orientation: int) -> Iterator[tuple[dict[str, Any], float]]:
        """Every frame in order (an APNG's default image left out): (pixels, alpha and bit depth, turned upright by
        orientation; duration in ms). Decodes one frame per step."""
        if self.fmt == "GIF":
            yield from self._gif_frames(orientation)
        else:
            yield from self._apng_frames(orientation)

    def _decoded(self, data: bytes, width: int, height: int, frame: int) -> Image.Image:
        """A frame's own file (data) decoded by Pillow, its size checked first (frame: its index, for a message)."""
        if width * height > self.max_pixels:
            at = f"{self.path}: frame {frame + 1} of {self.count}"
            raise too_many_pixels(at, f"{width}x{height} = {width * height}", self.max_pixels)
        try:
            with _pillow_bomb_warning_silenced(self.max_pixels):
                im = Image.open(io.BytesIO(data), formats=[self.fmt])
        except UnidentifiedImageError:
            raise ValueError(f"Pillow cannot read the frame's {width}x{height} {self.fmt} image") from None
        im.load()
        return im

    def _gif_frames(self, orientation: int) -> Iterator[tuple[dict[str, Any], float]]:
        canvas = np.zeros((self.height, self.width, 4), np.uint8)
        for n, frame in enumerate(_gif_walk(self.data)):
            x0, y0 = min(frame.x, self.width), min(frame.y, self.height)
            x1, y1 = min(frame.x + frame.width, self.width), min(frame.y + frame.height, self.height)
            region = canvas[y0:y1, x0:x1]
            before = region.copy() if frame.disposal == 3 else None
            if frame.width and frame.height:
                index = np.asarray(self._gif_indices(frame, n))[: y1 - y0, : x1 - x0]
                colours = self._gif_colours(frame.table)[index]
                if frame.transparency is None:
                    region[...] = colours
                else:
                    np.copyto(region, colours, where=(index != frame.transparency)[:, :, None])
            yield _canvas_arrays(canvas, 1 if self.grey else 3, 8, orientation), frame.duration
            if frame.disposal == 2:
                region[...] = 0
            elif before is not None:
                region[...] = before

    def _gif_indices(self, frame: _GifFrame, n: int) -> Image.Image:
        """The frame's palette indices, decoded by Pillow from a GIF of the frame alone, at 0,0, without a colour
        table (Pillow reads it as grey: the values are the indices). Its transparency goes with it: Pillow fills
        what the data leaves undrawn with that index, which leaves the canvas there as it is."""
        start, stop = frame.data
        control = b""
        if frame.transparency is not None:
            control = b"\x21\xf9\x04\x01\x00\x00" + bytes([frame.transparency]) + b"\x00"
        head = b"GIF89a" + struct.pack("<HHBBB", frame.width, frame.height, 0, 0, 0) + control
        head += b"\x2c" + struct.pack(
            "<HHHHB", 0, 0, frame.width, frame.height, 0x40 if frame.interlace else 0
        )
        # a frame cut short by the file's end stays cut (no trailer, read as more data): Pillow says it is truncated
        tail = b"\x3b" if frame.complete else b""
        return self._decoded(head + self.data[start:stop] + tail, frame.width, frame.height, n)

    def _gif_colours(self, table: tuple[int, int]) -> np.ndarray:
        """A colour table as 256 RGBA colours (opaque; black past its end; a grey table, or none, as Pillow reads
        it: index i is grey i)."""
        offset, size = table
        colours = np.zeros((256, 4), np.uint8)
        colours[:, 3] = 255
        raw = self.data[offset : offset + size]
        if raw == _GIF_GREY[:size]:
            raw = _GIF_GREY
        colours[: len(raw) // 3, :3] = np.frombuffer(raw, np.uint8, len(raw) // 3 * 3).reshape(-1, 3)
        return colours

    def _apng_frames(self, orientation: int) -> Iterator[tuple[dict[str, Any], float]]:
        assert self.layout is not None
        canvas: np.ndarray | None = None
        top = 0
        for n, (control, pieces) in enumerate(_apng_walk(self.data, self.layout), start=self.skipped):
            width, height, x, y, delay, scale, dispose, blend = struct.unpack_from(">IIIIHHBB", control, 4)
            if not width or not height or x + width > self.width or y + height > self.height:
                raise SyntaxError(
                    f"APNG frame of {width}x{height} at ({x}, {y}) outside its {self.width}x{self.height} canvas"
                )
            pixels, alpha, depth = self._apng_frame(width, height, pieces, n)
            if canvas is None:
                canvas = np.zeros((self.height, self.width, pixels.shape[2] + 1), pixels.dtype)
                top = np.iinfo(pixels.dtype).max
            if canvas.shape[2] != pixels.shape[2] + 1 or canvas.dtype != pixels.dtype:
                raise ValueError(
                    f"APNG frame of {pixels.shape[2]} channels of {pixels.dtype}, unlike the first"
                )
            region = canvas[y : y + height, x : x + width]
            before = region.copy() if dispose == 2 else None
            if alpha is None or blend != 1 or alpha.min() == top:
                region[:, :, :-1] = pixels
                region[:, :, -1] = top if alpha is None else alpha
            else:
                _over(region, pixels, alpha, top)
            duration = float(delay) / float(scale or 100) * 1000
            yield _canvas_arrays(canvas, pixels.shape[2], depth, orientation), duration
            if dispose == 1:
                region[...] = 0
            elif before is not None:
                region[...] = before

    def _apng_frame(
        self, width: int, height: int, pieces: list[bytes], n: int
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """A frame's pixels, alpha and bit depth, decoded by Pillow from a PNG of the frame alone (the file's header
        at the frame's size, its palette and transparency, the frame's data as one IDAT), after the check read_image
        makes (image data that ends before the rows do is an error, not rows of zeros)."""
        assert self.layout is not None
        header = struct.pack(">II", width, height) + self.layout.header[8:]
        png = _PNG_SIGNATURE + _png_chunk(b"IHDR", header)
        if self.layout.palette is not None:
            png += _png_chunk(b"PLTE", self.layout.palette)
        if self.layout.transparency is not None:
            png += _png_chunk(b"tRNS", self.layout.transparency)
        png += _png_chunk(b"IDAT", b"".join(pieces)) + _png_chunk(b"IEND", b"")
        try:
            _check_png_data(self.path, png)
        except ImageError as exc:
            raise ValueError(str(exc).removeprefix(f"{self.path}: ")) from None
        pixels, alpha, depth, _ = _pil_to_arrays(self._decoded(png, width, height, n), self.path, None)
        return pixels, alpha, depth


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _over(region: np.ndarray, colour: np.ndarray, alpha: np.ndarray, top: int) -> None:
    """Draw colour with alpha onto region (colour channels, then alpha; values 0-top) by the APNG specification's
    "over": with s, d the source's and the region's alpha as fractions, the alpha s + d (1 - s) and the colour
    (C_s s + C_d (d (1 - s))) / that alpha, in float64 then rounded (half to even). A clear source pixel leaves the
    region's as it is; an opaque one replaces it (what the formula gives, exactly): the floating point is spent on
    the partly transparent pixels only."""
    opaque = alpha == top
    np.copyto(region[:, :, :-1], colour, where=opaque[:, :, None])
    region[:, :, -1][opaque] = top
    partial = np.nonzero((alpha > 0) & ~opaque)
    if not len(partial[0]):
        return
    s = alpha[partial][:, None] / top
    under = region[partial]
    d = under[:, -1:] / top
    out = s + d * (1 - s)
    region[:, :, :-1][partial] = np.round((colour[partial] * s + under[:, :-1] * (d * (1 - s))) / out)
    region[:, :, -1][partial] = np.round(out[:, 0] * top)


def _canvas_arrays(canvas: np.ndarray, channels: int, depth: int, orientation: int) -> dict[str, Any]:
    """A frame from the canvas (colour, then alpha): its first `channels` colour channels and its alpha (None
    where every pixel is opaque), copied and turned upright, as Frames gives them."""
    alpha: np.ndarray | None = canvas[:, :, -1]
    if alpha is not None and alpha.min() == np.iinfo(canvas.dtype).max:
        alpha = None
    return {  # _orient copies: a slice of the canvas is never contiguous
        "pixels": orient(canvas[:, :, :channels], orientation),
        "alpha": None if alpha is None else orient(alpha, orientation),
        "bit_depth": depth,
    }


@contextlib.contextmanager
def read_frames(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Frames]:
    """Open an animation (GIF, APNG, animated WebP) to read its frames one at a time (Frames): only one frame is
    decoded at a time. The canvas is checked against max_pixels from the header, as read_image checks an image;
    each frame that cannot be decoded is one ImageError line naming the file and the frame."""
    path = Path(path)
    problem = special_file(path)
    if problem is not None:
        raise ImageError(f"{path}: not a regular file ({problem})")
    with contextlib.ExitStack() as stack:
        with _read_errors(path, max_pixels), in_hand(path):
            with _pillow_bomb_warning_silenced(max_pixels):  # its lock only while the header is read
                im = Image.open(path)
            stack.callback(im.close)
            if im.format not in ANIMATED_FORMATS:
                raise ImageError(f"{path}: {im.format} is no animation (GIF, APNG or WebP)")
            frames = Frames(im, path, max_pixels)
        yield frames


def _rgb8(image: ImageData) -> tuple[np.ndarray, np.ndarray | None]:
    """An image's colour as 8-bit RGB (grey repeated) and its alpha as 8 bits (None when there is none)."""
    pixels = _to_8bit(image.pixels)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels, None if image.alpha is None else _to_8bit(image.alpha)


ANIMATION_BYTES = {"GIF": (4, 2), "PNG": (4, 5), "WEBP": (4, 5)}
"""Host memory an AnimationWriter takes, in bytes per pixel of every output frame: (held until save, added by the
encoder while save writes). Measured with 24 frames of 1280x960 on a 2-core AMD EPYC Zen 4 (Pillow 13): APNG and
WebP held 4.0 (Pillow keeps RGB in 4 bytes a pixel) and their encoders added 4.7 and 4.4 (a copy of every frame,
and the deltas); GIF held 2.9 (the frames as they came, 3 bytes, 4 with alpha, until one palette is made from all
of them) and its save added 0.4 (their palette images, each array let go as it is converted, and the encoder's
copies)."""

ANIMATED_WEBP_EFFORT = (50, 0)
"""Pillow's (quality, method) of a lossless animated WebP: libwebp's effort, not the pixels (lossless is exact).
8 frames of 640x480 on a 2-core AMD EPYC Zen 4: 0.15 s and 3377 KiB, against 3.34 s and 2831 KiB at a still
WebP's (100, 4): 22x quicker for 19 % more bytes, which matters when every frame pays it (--quality N for lossy)."""

GIF_TRANSPARENT = 255
"""The palette index of transparent pixels in the GIFs written here (the other 255 are the frames' colours)."""
GIF_PALETTE_SAMPLE = 1 << 16
"""Pixels the palette of a GIF is made from, taken evenly from all its frames: median cut then one k-means pass
(Pillow's) on 65536 pixels took 0.2-0.4 s and gave 36.6-38.6 dB on 1024x768 photos, as much as or more than median
cut on every pixel (34.6-39.0 dB, 0.2 s each)."""
MAX_DELAY = {"GIF": 655350, "PNG": 65535000, "WEBP": 2**24 - 1}
"""The longest display time each animated format holds, in ms: a GIF's 16-bit hundredths, an APNG's 16-bit
numerator of seconds (Pillow's fraction), a WebP's 24-bit milliseconds. Longer frames are cut to it, with a warning
(Pillow raised OverflowError for a GIF, after the model had run)."""
GIF_MIN_DELAY = 20
"""The shortest display time a GIF frame is written with, in ms: browsers show 10 ms and less as 100 ms."""


def gif_palette(frames: Iterable[tuple[np.ndarray, np.ndarray | None]], colours: int = 256) -> Image.Image:
    """One palette for frames of 8-bit RGB (and alpha: pixels below half are left out), as a palette image: made
    from about GIF_PALETTE_SAMPLE pixels drawn at random from all of them, each frame's share by its size. One palette for the whole animation, as FFmpeg's
    palettegen makes by default: a pixel that keeps its colour keeps its index, so what does not move does not
    flicker and the encoder writes only what changed (a palette per frame changed 40-75 % of the still pixels of
    a photo from one frame to the next)."""
    chosen = [(rgb, alpha) for rgb, alpha in frames]
    total = sum(rgb.shape[0] * rgb.shape[1] for rgb, _ in chosen)
    share = min(1.0, GIF_PALETTE_SAMPLE / max(total, 1))
    # positions drawn at random (a fixed seed: the same file gives the same GIF): every n-th pixel took the same
    # few columns of every frame where n divided the width (a 512x512 animation got 2 colours, 8 dB)
    rng = np.random.default_rng(0)
    parts = []
    for rgb, alpha in chosen:
        flat = rgb.reshape(-1, 3) if alpha is None else rgb[alpha >= 128]
        take = min(len(flat), int(np.ceil(len(flat) * share)))
        parts.append(flat if take == len(flat) else flat[rng.integers(0, len(flat), take)])
    sample = np.concatenate(parts) if parts else np.zeros((0, 3), np.uint8)
    if len(sample) == 0:
        sample = np.zeros((1, 3), np.uint8)
    return Image.fromarray(np.ascontiguousarray(sample[None])).quantize(
        colours, Image.Quantize.MEDIANCUT, kmeans=1, dither=Image.Dither.NONE
    )


def gif_indexed(rgb: np.ndarray, alpha: np.ndarray | None, palette: Image.Image) -> Image.Image:
    """A frame as a palette image on `palette` (nearest colour, no dithering: its noise would change from frame to
    frame and flicker), pixels whose alpha is below half GIF_TRANSPARENT."""
    indexed = Image.fromarray(rgb).quantize(palette=palette, dither=Image.Dither.NONE)
    if alpha is None:
        return indexed
    index = np.asarray(indexed).copy()
    index[alpha < 128] = GIF_TRANSPARENT
    out = Image.fromarray(index, mode="P")
    colours = (palette.getpalette() or [])[: 3 * GIF_TRANSPARENT]
    out.putpalette(colours + [0] * (3 * 256 - len(colours)))
    out.info["transparency"] = GIF_TRANSPARENT
    return out


def gif_frame(image: ImageData) -> Image.Image:
    """A still image as a GIF: its own palette (gif_palette), pixels whose alpha is below half transparent."""
    rgb, alpha = _rgb8(image)
    clear = alpha is not None and bool((alpha < 128).any())
    palette = gif_palette([(rgb, alpha)], 255 if clear else 256)
    return gif_indexed(rgb, alpha if clear else None, palette)


def gif_timeline(durations: list[float], *, from_gif: bool = False) -> tuple[list[int], list[int]]:
    """The frames a GIF keeps and their display times, for frames shown `durations` ms each: as they are when they
    come from a GIF (from_gif: browsers play them as they played the source) or are each 0 or a whole number of
    hundredths from 20 ms up (a 10 ms APNG frame kept at 10 would play at 100); else each frame starts at its time rounded to
    10 ms, and a frame that would start less than GIF_MIN_DELAY after the one kept before it is left out (that one
    shows on), so that the animation keeps its length and speed: a 60 fps APNG plays at its speed, about 40
    frames a second, where 10 ms delays would have played it at 10. Returns (indices kept, delays in ms)."""
    if from_gif or all(
        float(d).is_integer() and int(d) % 10 == 0 and (d == 0 or d >= GIF_MIN_DELAY) for d in durations
    ):
        return list(range(len(durations))), [int(d) for d in durations]
    starts, t = [], 0.0
    for d in durations:
        starts.append(t)
        t += d
    kept: list[int] = []
    times: list[int] = []
    for k, start in enumerate(starts):
        at = round(start / 10.0) * 10
        if not kept or at - times[-1] >= GIF_MIN_DELAY:
            kept.append(k)
            times.append(at)
    end = round(t / 10.0) * 10
    delays = [b - a for a, b in itertools.pairwise(times)]
    delays.append(max(end - times[-1], GIF_MIN_DELAY))
    return kept, delays


class AnimationWriter:
    """The frames of an animated output (GIF, APNG or animated WebP), held as they come and written atomically by
    save(). `like` is the input's first frame: its metadata, where the format holds it (GIF a comment; APNG and
    WebP the ICC profile, EXIF and XMP, APNG its text chunks and resolution too), and what cannot be held named in
    one ImageWarning, as write_image does. APNG and WebP frames are held as the encoder takes them (8-bit RGB, or
    RGBA for all once one has alpha); a GIF's as they came, until save() makes one palette for all of them
    (gif_palette) and their display times whole hundredths (gif_timeline). repeat() holds a frame again without
    another copy.

    plays: how many times the animation plays, 0 = for ever (a GIF's loop count is one less: N + 1 plays; 1 play
    writes none). quality: WebP's (default lossless, at the quickest effort: ANIMATED_WEBP_EFFORT); png_compression:
    APNG's zlib level. A 16-bit frame is written in 8 bits (GIF and WebP hold no more; nor does Pillow's APNG
    writer)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        like: ImageData,
        *,
        format: str | None = None,
        quality: int | None = None,
        png_compression: int | None = None,
        plays: int = 0,
        default_image: bool = False,
    ) -> None:
        self.path = Path(path)
        self.fmt = _output_format(self.path, format)
        if self.fmt not in ANIMATED_FORMATS:
            raise ImageError(f"{self.path}: {self.fmt} holds no animation (GIF, PNG or WebP do)")
        _check_quality(quality, self.fmt, self.path)
        self.quality, self.level = quality, _png_level(png_compression, self.fmt, self.path)
        self.plays, self.default_image = plays, default_image
        self.like = like
        self.frames: list[Any] = []  # PIL images (APNG, WebP), (rgb, alpha) arrays (GIF)
        self.durations: list[float] = []
        self.transparent = False

    def add(self, image: ImageData, duration: float) -> int:
        """Hold the next frame (displayed for `duration` ms); returns its index, for repeat()."""
        rgb, alpha = _rgb8(image)
        clear = alpha is not None and int(alpha.min()) < 255
        if self.fmt == "GIF":
            self.frames.append((rgb, alpha if clear else None))
            self.transparent |= clear
        else:
            if clear and not self.transparent:  # every frame held so far becomes RGBA, once
                self._all_rgba()
            self.transparent |= clear
            if self.transparent:
                a = alpha if alpha is not None else np.full(rgb.shape[:2], 255, np.uint8)
                self.frames.append(Image.fromarray(np.dstack([rgb, a])))
            else:
                self.frames.append(Image.fromarray(rgb))
        self.durations.append(duration)
        return len(self.frames) - 1

    def _all_rgba(self) -> None:
        done: dict[int, Image.Image] = {}  # a repeated frame is one object: converted once
        for k, frame in enumerate(self.frames):
            if id(frame) not in done:
                done[id(frame)] = frame.convert("RGBA")
            self.frames[k] = done[id(frame)]

    def repeat(self, index: int, duration: float) -> None:
        """Hold frame `index` again as the next frame (an input frame seen before: its output is the same)."""
        self.frames.append(self.frames[index])
        self.durations.append(duration)

    def _gif_frames(self) -> list[Image.Image]:
        """The held frames as palette images on one palette; each held array is let go once converted."""
        distinct = {id(f): f for f in self.frames}
        palette = gif_palette(distinct.values(), 255 if self.transparent else 256)
        del distinct  # self.frames alone holds the arrays now: each goes when its frames are converted
        done: dict[int, Image.Image] = {}
        for k, frame in enumerate(self.frames):
            if id(frame) not in done:
                done[id(frame)] = gif_indexed(frame[0], frame[1], palette)
            self.frames[k] = done[id(frame)]
        return self.frames

    def save(self, *, overwrite: bool = False) -> Path:
        """Write the frames held to path, atomically (an existing file: OutputExistsError unless overwrite)."""
        if not self.frames:
            raise ImageError(f"{self.path}: no frames to write")
        if not overwrite and self.path.exists():
            raise OutputExistsError(self.path)
        first = self.frames[0]
        size = first[0].shape[:2] if self.fmt == "GIF" else (first.height, first.width)
        check_writable(self.like, self.fmt, self.path, size)
        like = _metadata_for(self.like, self.fmt, self.path, size)
        frames = self._gif_frames() if self.fmt == "GIF" else self.frames
        durations = self.durations
        if self.default_image and self.fmt != "PNG" and len(frames) > 1:
            frames, durations = (
                frames[1:],
                durations[1:],
            )  # an APNG's still image is no frame of the animation
        elif self.default_image:  # Pillow's durations are the animation's, after the still image
            durations = durations[1:]
        longest = MAX_DELAY[self.fmt]
        if max(durations, default=0) > longest:
            long = sum(d > longest for d in durations)
            warnings.warn(
                f"{self.path}: {self.fmt} output: {long} frame{'s' if long > 1 else ''} shown longer than "
                f"{self.fmt} holds ({longest / 1000:g} s), cut to it",
                ImageWarning,
                stacklevel=2,
            )
            durations = [min(d, longest) for d in durations]
        options: dict[str, Any] = {"save_all": True}
        if self.fmt == "GIF":
            kept, delays = gif_timeline(durations, from_gif=self.like.format == "GIF")
            if len(kept) < len(frames):
                warnings.warn(
                    f"{self.path}: GIF output: {len(frames) - len(kept)} of {len(frames)} frames shown for less "
                    f"than {GIF_MIN_DELAY} ms left out, the frames before them shown on (GIF viewers show shorter "
                    "delays at 100 ms); APNG or WebP keep every frame",
                    ImageWarning,
                    stacklevel=2,
                )
            frames, durations = [frames[k] for k in kept], [float(d) for d in delays]
            if self.plays != 1:
                options["loop"] = self.plays - 1 if self.plays else 0  # N + 1 plays
            if (
                self.transparent
            ):  # each frame replaces the one before; without it the one before shows through
                options["disposal"] = 2
            if like.comment:
                options["comment"] = like.comment
        else:
            options["loop"] = self.plays
            icc = _profile_fitting(like.icc_profile, 3, self.path)
            if icc:
                options["icc_profile"] = icc
            if like.exif:
                bare = like.exif.removeprefix(_EXIF_HEADER)
                options["exif"] = bare if self.fmt == "WEBP" else _EXIF_HEADER + bare
        options.update(append_images=frames[1:], duration=durations)
        if self.fmt == "PNG":
            options.update(compress_level=self.level, default_image=self.default_image and len(frames) > 1)
            if like.dpi is not None:
                options["dpi"] = like.dpi
            info = PngImagePlugin.PngInfo()
            for kind, body in _png_extra_chunks(like):
                if kind != b"pHYs":
                    info.add(kind, body)
            options["pnginfo"] = info
        elif self.fmt == "WEBP":
            if like.xmp:
                options["xmp"] = like.xmp
            if self.quality is None:  # lossless at libwebp's quickest effort: every frame costs it again
                options.update(lossless=True, quality=ANIMATED_WEBP_EFFORT[0], method=ANIMATED_WEBP_EFFORT[1])
            else:
                options.update(quality=self.quality)
        with (
            _encoding_errors(self.path, self.fmt),
            atomic_path(self.path, overwrite=overwrite) as tmp,
            in_hand(self.path),
        ):
            frames[0].save(tmp, format=self.fmt, **options)
        return self.path
