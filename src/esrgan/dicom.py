"""DICOM images (CT, MR, X-ray, ultrasound stills) through `esrgan upscale`: the pixels upscaled, the dataset kept.

Read (by `read_image(..., measurements=True)`, i.e. `esrgan upscale`) with pydicom (the optional `esrgan[dicom]`):
single-frame, uncompressed (native) pixel data, MONOCHROME1/MONOCHROME2 grey or RGB, 8/16/32-bit, signed or not.
The stored values become the planes of an ImageData as a measurement TIFF's do (esrgan.datatiff): stretched from
their [min, max] (or --value-range, in stored values) onto the model's range and back, MONOCHROME1 inverted for the
model (so that it sees bright as bright) and not in the file.

Written back as DICOM, explicit VR little endian: the same dataset with the new Rows/Columns and pixel data, pixel
spacings divided by the factor, "DERIVED\\SECONDARY" image type, a derivation description, the source image
referenced, and new series and instance UIDs derived from the old ones (a folder of slices of one series becomes
one new series; a rerun gives the same UIDs). Elements that describe the old pixels (overlays, icon, smallest and
largest pixel values) are dropped. Or as TIFF (the stored values, their type kept), or as 8/16-bit PNG/TIFF where
the stored values are unsigned grey or RGB.

Upscaled medical images show detail the acquisition did not record: a GAN model invents plausible texture. The
outputs are marked derived for that reason; they are not for diagnosis (docs/measurements.md).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .datatiff import SampleMap, stretch_planes
from .errors import ImageError, one_line
from .imageio import ImageData, too_many_pixels

__all__ = ["DICOM_PIP", "is_dicom", "is_dicom_head", "read_dicom", "write_dicom"]

DICOM_PIP = "pip install 'esrgan[dicom]'"
_PHOTOMETRIC = {"MONOCHROME1": 1, "MONOCHROME2": 1, "RGB": 2}
_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
_STALE = ("SmallestImagePixelValue", "LargestImagePixelValue", "IconImageSequence", "PixelPaddingRangeLimit")


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


def read_dicom(path: Path, max_pixels: int, value_range: tuple[float, float] | None = None) -> ImageData:
    """A DICOM file as an ImageData whose SampleMap carries the dataset (without its pixel data) for writing."""
    pydicom = _pydicom()
    if pydicom is None:
        raise ImageError(f"{path}: a DICOM file; reading it needs pydicom ({DICOM_PIP})")
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        rows, cols = int(header.get("Rows", 0)), int(header.get("Columns", 0))
        samples = int(header.get("SamplesPerPixel", 1))
        photometric = str(header.get("PhotometricInterpretation", ""))
        frames = int(header.get("NumberOfFrames", 1) or 1)
        syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
        if syntax is not None:  # a UID, or whatever a hostile file holds there (UID() of it raises then)
            syntax = pydicom.uid.UID(str(syntax))
        compressed = syntax is not None and syntax.is_compressed
    except MemoryError:
        raise
    except Exception as exc:  # a hostile header makes pydicom raise almost anything: one line for all
        raise ImageError(f"{path}: unreadable DICOM ({one_line(exc)[:200]})") from None
    if compressed:
        assert syntax is not None
        raise ImageError(
            f"{path}: compressed DICOM ({syntax.name}) is not supported; decompress it first "
            "(gdcmconv --raw, or dcmdjpeg)"
        )
    if rows <= 0 or cols <= 0:
        raise ImageError(f"{path}: DICOM without an image (Rows x Columns {rows}x{cols})")
    if rows * cols > max_pixels:
        raise too_many_pixels(path, f"{cols}x{rows} = {rows * cols}", max_pixels)
    if frames != 1:
        raise ImageError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; one image per file")
    if photometric not in _PHOTOMETRIC or samples != (3 if photometric == "RGB" else 1):
        raise ImageError(
            f"{path}: DICOM {photometric or 'without PhotometricInterpretation'} is not supported"
        )
    try:
        dataset = pydicom.dcmread(path)
        array = np.asarray(dataset.pixel_array)
    except MemoryError:
        raise
    except Exception as exc:  # pydicom's pixel handlers raise many kinds (ValueError, NotImplementedError...)
        raise ImageError(f"{path}: cannot decode the DICOM pixel data ({one_line(exc)[:200]})") from None
    if array.shape[:2] != (rows, cols) or array.dtype.kind not in "ui":
        raise ImageError(f"{path}: DICOM pixel data of shape {array.shape} {array.dtype} for {cols}x{rows}")
    array = array.reshape(rows, cols, samples)
    del dataset.PixelData
    colour = 3 if samples == 3 else 1
    pixels, ranges = stretch_planes(array, None, colour, False, value_range, path)
    if photometric == "MONOCHROME1":  # bright is low: inverted for the model, as the file is shown
        pixels = 65535 - pixels
        ranges = tuple((hi, lo) for lo, hi in ranges)
    return ImageData(
        pixels=np.ascontiguousarray(pixels),
        bit_depth=16,
        format="DICOM",
        source=path,
        samples=SampleMap(
            dtype=array.dtype,
            ranges=ranges,
            photometric=0 if photometric == "MONOCHROME1" else _PHOTOMETRIC[photometric],
            planar=1,
            extrasamples=(),
            tags=(),
            nodata=None,
            size=(rows, cols),
            value_range=value_range,
            dicom=dataset,
        ),
    )


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


def _regrid(ds: Any, sx: float, sy: float) -> None:
    """Move what is measured in pixels onto the grid scaled by (sx, sy): pixel spacings divided, image positions
    (the centre of the first pixel, in mm) moved half an old pixel less half a new one up and left along the image
    orientation, ultrasound regions' pixel bounds and physical deltas scaled."""
    items = _datasets(ds)
    spacing = next(
        (tuple(float(v) for v in d.PixelSpacing) for d in items if len(d.get("PixelSpacing", [])) == 2), None
    )
    orientation = next(
        (
            tuple(float(v) for v in d.ImageOrientationPatient)
            for d in items
            if len(d.get("ImageOrientationPatient", [])) == 6
        ),
        None,
    )
    for d in items:
        if "ImagePositionPatient" in d and len(d.ImagePositionPatient) == 3 and spacing and orientation:
            along_row, along_column = np.array(orientation[:3]), np.array(orientation[3:])
            first = np.array([float(v) for v in d.ImagePositionPatient])
            first = (
                first
                + along_row * spacing[1] * (0.5 / sx - 0.5)
                + along_column * spacing[0] * (0.5 / sy - 0.5)
            )
            d.ImagePositionPatient = [_decimal(float(v)) for v in first]
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


def write_dicom(tmp: Path, image: ImageData, path: Path, values: np.ndarray) -> None:
    """values (HxWxC in the stored type) as the pixel data of a copy of the source dataset (see the module)."""
    pydicom = _pydicom()
    sm = image.samples
    assert sm is not None and sm.dicom is not None and pydicom is not None
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(sm.dicom)
    height, width = image.height, image.width
    sy, sx = height / sm.size[0], width / sm.size[1]
    scale = f"{sx:g}" if sx == sy else f"{sx:g}x{sy:g}"
    source_sop = str(ds.get("SOPInstanceUID", ""))
    ds.Rows, ds.Columns = height, width
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
    digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[source_sop or str(path), *entropy, digest])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    bits = int(ds.get("BitsStored", values.dtype.itemsize * 8))
    if values.dtype.kind in "ui" and 0 < bits < values.dtype.itemsize * 8:  # e.g. 12 of 16 bits: stay in them
        low, high = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if values.dtype.kind == "i" else (0, (1 << bits) - 1)
        )
        values = np.clip(values, low, high)
    ds.PixelData = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if values.dtype.itemsize == 1 else "OW"
    ds.preamble = ds.preamble or b"\0" * 128
    # force_encoding: a dataset read as big endian (or implicit VR) is re-encoded, not refused after the model ran
    pydicom.dcmwrite(tmp, ds, implicit_vr=False, little_endian=True, force_encoding=True)
