"""DICOM images (CT, MR, X-ray, ultrasound stills) through `esrgan upscale`: the pixels upscaled, the dataset kept.

Read (by `read_image(..., measurements=True)`, i.e. `esrgan upscale`) with pydicom (the optional `esrgan[dicom]`):
MONOCHROME1/MONOCHROME2 grey, RGB, YCbCr (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT: decoded to RGB) and PALETTE
COLOR (its lookup table applied: RGB), 8/16/32-bit, signed or not; uncompressed, deflated, RLE, JPEG baseline and
JPEG 2000 pixel data with what every install has (pydicom's own decoders and Pillow's); the other compressions
(JPEG lossless, 12-bit JPEG, JPEG-LS, HTJ2K) where their pydicom plugin is installed, else one line naming the
package (only the declared frames decoded, each codestream's own size checked against Rows x Columns first).
Multi-frame images (cine loops, RT dose grids, enhanced CT/MR) are read whole, every frame upscaled alone; tiled
whole-slide images are refused (their tiles would be upscaled apart).
The stored values become the planes of an ImageData as a measurement TIFF's do (esrgan.datatiff): stretched from
their [min, max] (all frames jointly; or --value-range, in stored values) onto the model's range and back,
MONOCHROME1 inverted for the model (so that it sees bright as bright) and not in the file; frames after the first
are the ImageData's `extra` planes, each frame's (1 or 3) together (`SampleMap.frames`).

Written back as DICOM, explicit VR little endian (uncompressed): the same dataset with the new Rows/Columns and
pixel data, pixel spacings divided by the factor (those of every frame's functional groups too), "DERIVED\\SECONDARY"
image type, a derivation description, the source image referenced, and new series and instance UIDs derived from
the old ones (a folder of slices of one series becomes one new series; a rerun gives the same UIDs). Decoded colour
is written as RGB. A source in a lossy compression (JPEG 2000: by its wavelet) stays marked lossy (Lossy Image
Compression "01", its method and ratio added where the source did not say). Elements that describe the old pixels
(overlays, icon, smallest and largest pixel values, the extended offset table, a palette's tables) are dropped. Or, for one frame, as TIFF (the stored values, their type
kept), or as 8/16-bit PNG/TIFF where the stored values are unsigned grey or RGB.

Upscaled medical images show detail the acquisition did not record: a GAN model invents plausible texture. The
outputs are marked derived for that reason; they are not for diagnosis (docs/measurements.md).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .datatiff import SampleMap, stored_values, stretch_planes
from .errors import ImageError, one_line, shown
from .imagedata import ImageData, too_many_pixels

_T = TypeVar("_T")

__all__ = ["DICOM_PIP", "is_dicom", "is_dicom_head", "read_dicom", "write_dicom"]

DICOM_PIP = "pip install 'esrgan[dicom]'"
_PHOTOMETRIC = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
                "YBR_FULL_422": 3, "YBR_ICT": 3, "YBR_RCT": 3}  # fmt: skip
"""The photometric interpretations read, with the samples per pixel each has in the file."""
_PALETTE = (
    *(
        f"{c}PaletteColorLookupTable{part}"
        for c in ("Red", "Green", "Blue", "Alpha")
        for part in ("Descriptor", "Data")
    ),
    *(f"Segmented{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue")),
    "PaletteColorLookupTableUID",
)
# the decoders pydicom can use for what Pillow and pydicom itself do not decode (pydicom's plugins)
_PLUGINS = {
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG extended (12-bit)
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
}
_J2K_PLUGIN = "pylibjpeg pylibjpeg-openjpeg"
# JPEG 2000 syntaxes that may be lossy (the codestream tells: the 9-7 wavelet), with DICOM's method code
_J2K_METHODS = {
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}  # JPEG 2000 and HTJ2K beyond what Pillow's OpenJPEG decodes
# transfer syntaxes that are lossy whatever the dataset says, with DICOM's code for the method
_LOSSY = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
}
_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
_STALE = ("SmallestImagePixelValue", "LargestImagePixelValue", "IconImageSequence", "PixelPaddingRangeLimit",
          "ExtendedOffsetTable", "ExtendedOffsetTableLengths")  # fmt: skip
_PALETTE_STALE = ("PixelPaddingValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "WindowCenter",
                  "WindowWidth", "VOILUTFunction")  # palette indices, not colours  # fmt: skip
_WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then "DICM"."""
    with open(path, "rb") as fh:
        return is_dicom_head(fh.read(132))


def is_dicom_head(head: bytes) -> bool:
    """The same test on a file's first 132 bytes (read once by esrgan.imageio for every format it sniffs)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        return None
    return pydicom


def _header(path: Path, read: Callable[[Any, Any], _T]) -> _T:
    """read(pydicom, header) on the file's header (its pixel data not read); pydicom missing, or anything a hostile
    header makes pydicom or `read` raise, as one ImageError naming the file."""
    pydicom = _pydicom()
    if pydicom is None:
        raise ImageError(f"{path}: a DICOM file; reading it needs pydicom ({DICOM_PIP})")
    try:
        return read(pydicom, pydicom.dcmread(path, stop_before_pixels=True))
    except MemoryError:
        raise
    except Exception as exc:  # a hostile header makes pydicom raise almost anything: one line for all
        raise ImageError(f"{path}: unreadable DICOM ({one_line(exc)[:200]})") from None


def _shape(header: Any) -> tuple[int, int, int]:
    """(rows, columns, frames) as the header says."""
    return (
        int(header.get("Rows", 0)),
        int(header.get("Columns", 0)),
        int(header.get("NumberOfFrames", 1) or 1),
    )


def dicom_shape(path: Path) -> tuple[int, int, int]:
    """(rows, columns, frames) from a DICOM file's header, the pixel data not read (read_dicom checks the decoded
    pixels against the same elements)."""
    rows, cols, frames = _header(path, lambda _, header: _shape(header))
    if rows <= 0 or cols <= 0 or frames < 1:
        raise ImageError(f"{path}: DICOM without an image (Rows x Columns {rows}x{cols}, {frames} frames)")
    return rows, cols, frames


def byte_samples(path: Path) -> bool:
    """Whether a DICOM file's header says 8-bit unsigned samples (a palette's aside: its tables may hold 16 bits):
    read over 0..255, not from their own range (esrgan.datatiff.stretch_planes)."""

    def eight(_: Any, header: Any) -> bool:
        return (
            int(header.get("BitsAllocated", 0) or 0) == 8
            and int(header.get("PixelRepresentation", 0) or 0) == 0
            and str(header.get("PhotometricInterpretation", "")) != "PALETTE COLOR"
        )

    return _header(path, eight)


def read_dicom(path: Path, max_pixels: int, value_range: tuple[float, float] | None = None) -> ImageData:
    """A DICOM file as an ImageData whose SampleMap carries the dataset (without its pixel data) for writing."""

    def fields(pydicom: Any, header: Any) -> tuple[Any, Any, tuple[int, int, int], int, str, int, Any]:
        shape = _shape(header)
        samples = int(header.get("SamplesPerPixel", 1))
        photometric = str(header.get("PhotometricInterpretation", ""))
        bits = int(header.get("BitsAllocated", 0) or 0)
        syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
        if syntax is not None:  # a UID, or whatever a hostile file holds there (UID() of it raises then)
            syntax = pydicom.uid.UID(str(syntax))
        return pydicom, header, shape, samples, photometric, bits, syntax

    pydicom, header, (rows, cols, frames), samples, photometric, bits, syntax = _header(path, fields)
    if rows <= 0 or cols <= 0:
        raise ImageError(f"{path}: DICOM without an image (Rows x Columns {rows}x{cols})")
    if frames < 1:
        raise ImageError(f"{path}: DICOM with {frames} frames")
    if rows * cols * frames > max_pixels:
        what = f"{cols}x{rows}" + (f" x {frames} frames" if frames > 1 else "")
        raise too_many_pixels(path, f"{what} = {rows * cols * frames}", max_pixels)
    if photometric not in _PHOTOMETRIC or samples != _PHOTOMETRIC[photometric]:
        raise ImageError(
            f"{path}: DICOM {shown(photometric[:64]) or 'without PhotometricInterpretation'} with {samples} "
            "samples per pixel is not supported"
        )
    if bits == 1:
        raise ImageError(f"{path}: a 1-bit DICOM (a segmentation or mask): there is no detail to upscale")
    if str(header.get("SOPClassUID", "")) == _WHOLE_SLIDE or "TotalPixelMatrixRows" in header:
        raise ImageError(
            f"{path}: a tiled whole-slide image: its tiles would be upscaled apart (seams) and its pixel matrix "
            "would not fit them; not supported"
        )
    try:
        compressed = syntax is not None and syntax.is_compressed
    except ValueError:  # a UID pydicom does not know as a transfer syntax (JPEG XL, private ones)
        assert syntax is not None
        raise ImageError(
            f"{path}: DICOM in transfer syntax {shown(str(syntax)[:64])}, which pydicom does not know"
        ) from None
    try:
        dataset = pydicom.dcmread(path)
        if compressed:  # before any decoding: a frame bigger than the header says would be a bomb
            _check_codestreams(path, dataset, syntax, frames, rows, cols)
        array = _decode(pydicom, dataset, syntax)
    except (MemoryError, ImageError):
        raise
    except Exception as exc:  # pydicom's pixel handlers raise many kinds (ValueError, NotImplementedError...)
        raise ImageError(f"{path}: {_why_undecoded(syntax, exc)}") from None
    colour = 3 if photometric != "MONOCHROME1" and photometric != "MONOCHROME2" else 1
    stack = (rows, cols) if frames == 1 else (frames, rows, cols)
    if (
        array.shape[: len(stack)] != stack
        or array.dtype.kind not in "ui"
        or array.size != rows * cols * frames * colour
    ):
        what = f"{cols}x{rows}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageError(f"{path}: DICOM pixel data of shape {array.shape} {array.dtype} for {what}")
    # (frames, rows, cols, colour) -> rows x cols x (frames * colour): each frame's samples together
    planes_in = (
        array.reshape(frames, rows, cols, colour).transpose(1, 2, 0, 3).reshape(rows, cols, frames * colour)
    )
    try:
        _mark_lossy(dataset, syntax, rows * cols * frames * samples * bits // 8)
    except (ValueError, TypeError, IndexError):  # a malformed ratio or method in a file that decoded
        dataset.LossyImageCompression = "01"
        for name in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if name in dataset:
                delattr(dataset, name)
    del dataset.PixelData
    joint = value_range
    # every frame through one mapping, as one colour image's bands share one (8-bit frames: over 0..255 already)
    if frames > 1 and joint is None and array.dtype != np.uint8:
        joint = (float(array.min()), float(array.max()))
    pixels, ranges = stretch_planes(planes_in, None, colour, False, joint, path)
    if photometric == "MONOCHROME1":  # bright is low: inverted for the model, as the file is shown
        pixels = 65535 - pixels
        ranges = tuple((hi, lo) for lo, hi in ranges)
    return ImageData(
        pixels=np.ascontiguousarray(pixels[:, :, :colour]),
        extra=np.ascontiguousarray(pixels[:, :, colour:]) if frames > 1 else None,
        bit_depth=16,
        format="DICOM",
        source=path,
        samples=SampleMap(
            dtype=array.dtype,
            ranges=ranges,
            photometric=0 if photometric == "MONOCHROME1" else (2 if colour == 3 else 1),
            planar=1,
            extrasamples=(),
            tags=(),
            nodata=None,
            size=(rows, cols),
            value_range=value_range,
            frames=frames,
            dicom=dataset,
        ),
    )


def _decode(pydicom: Any, dataset: Any, syntax: Any) -> np.ndarray:
    """The pixel data as stored values: (rows, cols[, 3]) or (frames, rows, cols[, 3]); YCbCr converted to RGB
    (by pydicom, or by the JPEG 2000 decoder), a palette's lookup table applied."""
    from pydicom.pixels import apply_color_lut

    # only the frames the header declares (pydicom would decode every fragment it finds: a small file with many
    # would be a bomb past the pixel limit); YBR_FULL(_422) as RGB (as_rgb, pydicom 3's default)
    dataset.pixel_array_options(allow_excess_frames=False)
    array = np.asarray(dataset.pixel_array)
    if str(dataset.get("PhotometricInterpretation")) == "PALETTE COLOR":
        array = np.asarray(apply_color_lut(array, dataset))
    if array.dtype.byteorder == ">":  # big-endian sources: native order for the arithmetic
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG (SOFn, JPEG-LS's SOF55 too) or JPEG 2000 (SIZ) codestream's header, None if it
    has neither where it should."""
    if (
        frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24
    ):  # J2K: SOC, SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz
        x, y, xo, yo = (int.from_bytes(frame[i : i + 4], "big") for i in (8, 12, 16, 20))
        return x - xo, y - yo
    pos = 2 if frame[:2] == b"\xff\xd8" else -1
    while pos >= 0 and pos + 9 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            return int.from_bytes(frame[pos + 7 : pos + 9], "big"), int.from_bytes(
                frame[pos + 5 : pos + 7], "big"
            )
        pos += 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
    return None


def _check_codestreams(path: Path, dataset: Any, syntax: Any, frames: int, rows: int, cols: int) -> None:
    """Every declared frame's JPEG / JPEG 2000 codestream is Columns x Rows: Pillow decodes what a codestream
    says, whatever the header (a 1 MB file saying 16x16 can hold an 8000x8000 JPEG)."""
    from pydicom.encaps import generate_frames

    if not str(syntax).startswith("1.2.840.10008.1.2.4."):
        return  # RLE decodes into the header's size
    for k, frame in enumerate(generate_frames(dataset.PixelData, number_of_frames=frames)):
        size = _codestream_size(frame)
        if size is not None and size != (cols, rows):
            raise ImageError(
                f"{path}: frame {k}'s codestream is {size[0]}x{size[1]}, the header says {cols}x{rows}"
            )
        if k + 1 >= frames:
            break


def _j2k_irreversible(dataset: Any, frames: int) -> bool:
    """Whether the first frame's JPEG 2000 codestream uses the irreversible 9-7 wavelet (lossy whatever the rate):
    the COD marker segment's transformation byte is 0."""
    from pydicom.encaps import generate_frames

    frame = next(iter(generate_frames(dataset.PixelData, number_of_frames=frames)), b"")
    pos = 2
    while (
        pos + 14 <= len(frame) and frame[pos] == 0xFF and frame[pos + 1] != 0x90
    ):  # up to the first tile (SOT)
        if frame[pos + 1] == 0x52:  # COD: Lcod Scod SGcod(4) levels width height style transformation
            return frame[pos + 13] == 0
        pos += 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
    return False


def _mark_lossy(dataset: Any, syntax: Any, raw_bytes: int) -> None:
    """A source in a lossy transfer syntax stays marked lossy in what is derived from it (DICOM PS3.3 C.7.6.1.1.5):
    Lossy Image Compression "01", the method and the ratio (uncompressed bytes / compressed) added where the source
    did not say."""
    if str(dataset.get("LossyImageCompression", "")) == "01":
        return
    method = _LOSSY.get(str(syntax))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if method is None and str(syntax) in _J2K_METHODS and _j2k_irreversible(dataset, frames):
        method = _J2K_METHODS[str(syntax)]
    if method is None:
        return
    dataset.LossyImageCompression = "01"
    ratio = _decimal(raw_bytes / max(1, len(dataset.PixelData)))

    def values(name: str) -> list[Any]:  # one value (a str or number), several (a MultiValue), or none
        earlier = dataset.get(name)
        if earlier in (None, ""):
            return []
        return [earlier] if isinstance(earlier, (str, int, float)) else list(earlier)

    ratios, methods = values("LossyImageCompressionRatio"), values("LossyImageCompressionMethod")
    if len(ratios) != len(methods):  # the two lists correspond value by value: a broken history is replaced
        ratios, methods = [], []
    dataset.LossyImageCompressionRatio = [*ratios, ratio] if ratios else ratio
    dataset.LossyImageCompressionMethod = [*methods, method] if methods else method


def _why_undecoded(syntax: Any, exc: Exception) -> str:
    """Why the pixel data did not decode, in one line: a compression no installed decoder reads (and the pip
    packages of pydicom's plugins that do), a transfer syntax pydicom does not know, or a decoder's error."""
    from pydicom.pixels import get_decoder

    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:  # no decoder for it at all
            return f"DICOM compressed as {syntax.name}, which pydicom does not decode"
        j2k = str(syntax).startswith(("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20"))  # JPEG 2000, HTJ2K
        plugin = _PLUGINS.get(str(syntax), _J2K_PLUGIN if j2k else "pylibjpeg pylibjpeg-libjpeg pyjpegls")
        if not available:
            return (
                f"DICOM compressed as {syntax.name}, which no installed decoder reads (pip install {plugin}; "
                "or decompress it first: gdcmconv --raw, dcmdjpeg)"
            )
        if (
            j2k or str(syntax) in _PLUGINS
        ):  # Pillow decodes some of these (8-bit JPEG, most JPEG 2000), not all
            return f"cannot decode the DICOM pixel data ({one_line(exc)[:160]}); pip install {plugin} may"
    return f"cannot decode the DICOM pixel data ({one_line(exc)[:200]})"


def _datasets(ds: Any) -> list[Any]:
    """ds and every dataset nested in its sequences (enhanced images keep spacing and position in functional
    groups, ultrasound its calibration in regions)."""
    found = [ds]
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                found.extend(_datasets(item))
    return found


def _decimal(value: float) -> str:
    return f"{value:.10g}"[:16]  # DS: at most 16 characters


def _geometry(d: Any, spacing: Any, orientation: Any) -> tuple[Any, Any]:
    """The (PixelSpacing, ImageOrientationPatient) in force for dataset d: its own, those of its functional groups
    (PixelMeasuresSequence, PlaneOrientationSequence), else the ones passed down from where it is nested."""
    for holder in (d, *d.get("PixelMeasuresSequence", [])[:1]):
        if len(holder.get("PixelSpacing", [])) == 2:
            spacing = tuple(float(v) for v in holder.PixelSpacing)
    for holder in (d, *d.get("PlaneOrientationSequence", [])[:1]):
        if len(holder.get("ImageOrientationPatient", [])) == 6:
            orientation = tuple(float(v) for v in holder.ImageOrientationPatient)
    return spacing, orientation


def _move_positions(d: Any, sx: float, sy: float, spacing: Any = None, orientation: Any = None) -> None:
    """ImagePositionPatient (the centre of the first pixel, in mm) moved half an old pixel less half a new one up
    and left along the image orientation, with the spacing and orientation of its own frame: each item of an
    enhanced image's per-frame functional groups has its own (a localiser's frames lie in three planes), else the
    shared groups', else the dataset's."""
    spacing, orientation = _geometry(d, spacing, orientation)
    if "SharedFunctionalGroupsSequence" in d:
        for shared in d.SharedFunctionalGroupsSequence[:1]:
            spacing, orientation = _geometry(shared, spacing, orientation)
    if "ImagePositionPatient" in d and len(d.ImagePositionPatient) == 3 and spacing and orientation:
        along_row, along_column = np.array(orientation[:3]), np.array(orientation[3:])
        first = np.array([float(v) for v in d.ImagePositionPatient])
        first = (
            first + along_row * spacing[1] * (0.5 / sx - 0.5) + along_column * spacing[0] * (0.5 / sy - 0.5)
        )
        d.ImagePositionPatient = [_decimal(float(v)) for v in first]
    for element in d:
        if element.VR == "SQ":
            for item in element.value:
                _move_positions(item, sx, sy, spacing, orientation)


def _regrid(ds: Any, sx: float, sy: float) -> None:
    """Move what is measured in pixels onto the grid scaled by (sx, sy): image positions (`_move_positions`), pixel
    spacings divided, ultrasound regions' pixel bounds and physical deltas scaled."""
    _move_positions(ds, sx, sy)  # first: it reads the spacings as they were
    items = _datasets(ds)
    for d in items:
        if len(d.get("FrameType", [])) >= 2:  # an enhanced image's per-frame type agrees with its ImageType
            d.FrameType = ["DERIVED", "SECONDARY", *list(d.FrameType)[2:]]
        for name in _SPACINGS:
            if len(d.get(name, [])) == 2:
                row, col = (float(v) for v in d[name].value)  # between rows (vertical), between columns
                d[name].value = [_decimal(row / sy), _decimal(col / sx)]
        for name, factor in (("PhysicalDeltaX", sx), ("PhysicalDeltaY", sy)):
            if name in d:
                d[name].value = float(d[name].value) / factor
        for low, high, factor in (
            ("RegionLocationMinX0", "RegionLocationMaxX1", sx),
            ("RegionLocationMinY0", "RegionLocationMaxY1", sy),
        ):
            if low in d and high in d:  # inclusive pixel bounds
                d[low].value = round(int(d[low].value) * factor)
                d[high].value = round((int(d[high].value) + 1) * factor) - 1
        for name, factor in (("ReferencePixelX0", sx), ("ReferencePixelY0", sy)):
            if name in d:
                d[name].value = round((int(d[name].value) + 0.5) * factor - 0.5)


def write_dicom(tmp: Path, image: ImageData, path: Path) -> None:
    """The upscaled planes back in the stored type (esrgan.datatiff.stored_values, HxWxC) as the pixel data of a
    copy of the source dataset (see the module)."""
    pydicom = _pydicom()
    sm = image.samples
    assert sm is not None and sm.dicom is not None and pydicom is not None
    values, _ = stored_values(image, path, interleaved=True)
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(sm.dicom)
    height, width = image.height, image.width
    sy, sx = height / sm.size[0], width / sm.size[1]
    scale = f"{sx:g}" if sx == sy else f"{sx:g}x{sy:g}"
    source_sop = str(ds.get("SOPInstanceUID", ""))
    ds.Rows, ds.Columns = height, width
    if sm.photometric == 2 and str(ds.get("PhotometricInterpretation")) != "RGB":  # decoded to RGB
        if (
            str(ds.get("PhotometricInterpretation")) == "PALETTE COLOR"
        ):  # the tables applied: RGB of their depth
            for name in (*_PALETTE, *_PALETTE_STALE):
                if name in ds:
                    delattr(ds, name)
            depth = values.dtype.itemsize * 8
            ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, depth, depth, depth - 1
            ds.PixelRepresentation = 0
        ds.PhotometricInterpretation = "RGB"
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        ds.PlanarConfiguration = 0  # written interleaved
    _regrid(ds, sx, sy)
    for name in _STALE:
        if name in ds:
            delattr(ds, name)
    overlays = [e.tag for e in ds if 0x6000 <= e.tag.group <= 0x601E and e.tag.group % 2 == 0]
    for tag in overlays:  # overlay planes: drawn over the old pixel grid
        del ds[tag]
    image_type = list(ds.get("ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.DerivationDescription = (
        f"upscaled x{scale} by esrgan (a super-resolution network: detail is inferred)"[:1024]
    )
    if source_sop and "SOPClassUID" in ds:
        source = pydicom.Dataset()
        source.ReferencedSOPClassUID = ds.SOPClassUID
        source.ReferencedSOPInstanceUID = source_sop
        ds.SourceImageSequence = [source]
    # the same source, factor, model and value range: the same new series (a folder of slices stays one series,
    # a rerun gives the same UIDs); another model or range: another series. The instance also hashes its pixels.
    entropy = ["esrgan", scale, sm.derivation, repr(sm.value_range)]
    if "SeriesInstanceUID" in ds:
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), *entropy])
        ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} esrgan x{scale}".strip()[:64]
    digest = hashlib.sha256(np.ascontiguousarray(values).view(np.uint8).data).hexdigest()  # no copy
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[source_sop or str(path), *entropy, digest])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    bits = int(ds.get("BitsStored", values.dtype.itemsize * 8))
    if values.dtype.kind in "ui" and 0 < bits < values.dtype.itemsize * 8:  # e.g. 12 of 16 bits: stay in them
        low, high = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if values.dtype.kind == "i" else (0, (1 << bits) - 1)
        )
        values = np.clip(values, low, high)
    if sm.frames > 1:  # rows x cols x (frames * samples) -> frame after frame, each pixel's samples together
        values = values.reshape(height, width, sm.frames, -1).transpose(2, 0, 1, 3)
    # one copy into the frames' order where there are frames, one into bytes (pydicom writes bytes)
    ds.PixelData = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False)).tobytes()
    ds["PixelData"].VR = "OB" if values.dtype.itemsize == 1 else "OW"
    ds.preamble = ds.preamble or b"\0" * 128
    # force_encoding: a dataset read as big endian (or implicit VR) is re-encoded, not refused after the model ran
    pydicom.dcmwrite(tmp, ds, implicit_vr=False, little_endian=True, force_encoding=True)
