"""DICOM images (CT, MR, X-ray, ultrasound stills) through `esrgan upscale`: the pixels upscaled, the dataset kept.

Read (by `read_image(..., measurements=True)`, i.e. `esrgan upscale`) with pydicom (the optional `esrgan[dicom]`):
MONOCHROME1/MONOCHROME2 grey, RGB, YCbCr (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT: decoded to RGB) and PALETTE
COLOR (its lookup table applied: RGB), 8/16/32-bit, signed or not; uncompressed, deflated, RLE, JPEG baseline and
JPEG 2000 pixel data with what every install has (pydicom's own decoders and Pillow's); the other compressions
(JPEG lossless, 12-bit JPEG, JPEG-LS, HTJ2K) where their pydicom plugin is installed, else one line naming the
package. Multi-frame images (cine loops, RT dose grids, enhanced CT/MR) are read whole, every frame upscaled alone.
The stored values become the planes of an ImageData as a measurement TIFF's do (esrgan.datatiff): stretched from
their [min, max] (all frames jointly; or --value-range, in stored values) onto the model's range and back,
MONOCHROME1 inverted for the model (so that it sees bright as bright) and not in the file; frames after the first
are the ImageData's `extra` planes, each frame's (1 or 3) together (`SampleMap.frames`).

Written back as DICOM, explicit VR little endian (uncompressed): the same dataset with the new Rows/Columns and
pixel data, pixel spacings divided by the factor (those of every frame's functional groups too), "DERIVED\\SECONDARY"
image type, a derivation description, the source image referenced, and new series and instance UIDs derived from
the old ones (a folder of slices of one series becomes one new series; a rerun gives the same UIDs). Decoded colour
is written as RGB. A source in a lossy compression stays marked lossy (Lossy Image Compression "01", its method and
ratio added where the source did not say). Elements that describe the old pixels (overlays, icon, smallest and
largest pixel values, a palette's tables) are dropped. Or, for one frame, as TIFF (the stored values, their type
kept), or as 8/16-bit PNG/TIFF where the stored values are unsigned grey or RGB.

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
_J2K_PLUGIN = "pylibjpeg pylibjpeg-openjpeg"  # JPEG 2000 and HTJ2K beyond what Pillow's OpenJPEG decodes
# transfer syntaxes that are lossy whatever the dataset says, with DICOM's code for the method
_LOSSY = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
}
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
        bits = int(header.get("BitsAllocated", 0) or 0)
        syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
        if syntax is not None:  # a UID, or whatever a hostile file holds there (UID() of it raises then)
            syntax = pydicom.uid.UID(str(syntax))
    except MemoryError:
        raise
    except Exception as exc:  # a hostile header makes pydicom raise almost anything: one line for all
        raise ImageError(f"{path}: unreadable DICOM ({one_line(exc)[:200]})") from None
    if rows <= 0 or cols <= 0:
        raise ImageError(f"{path}: DICOM without an image (Rows x Columns {rows}x{cols})")
    if frames < 1:
        raise ImageError(f"{path}: DICOM with {frames} frames")
    if rows * cols * frames > max_pixels:
        what = f"{cols}x{rows}" + (f" x {frames} frames" if frames > 1 else "")
        raise too_many_pixels(path, f"{what} = {rows * cols * frames}", max_pixels)
    if photometric not in _PHOTOMETRIC or samples != _PHOTOMETRIC[photometric]:
        raise ImageError(
            f"{path}: DICOM {photometric or 'without PhotometricInterpretation'} with {samples} samples per "
            "pixel is not supported"
        )
    if bits == 1:
        raise ImageError(f"{path}: a 1-bit DICOM (a segmentation or mask): there is no detail to upscale")
    try:
        dataset = pydicom.dcmread(path)
        array = _decode(pydicom, dataset, syntax)
    except MemoryError:
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
    _mark_lossy(dataset, syntax, rows * cols * frames * samples * bits // 8)
    del dataset.PixelData
    joint = value_range
    if frames > 1 and joint is None:  # every frame through one mapping, as one colour image's bands share one
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

    array = np.asarray(dataset.pixel_array)  # pydicom 3: YBR_FULL(_422) as RGB (as_rgb)
    if str(dataset.get("PhotometricInterpretation")) == "PALETTE COLOR":
        array = np.asarray(apply_color_lut(array, dataset))
    if array.dtype.byteorder == ">":  # big-endian sources: native order for the arithmetic
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _mark_lossy(dataset: Any, syntax: Any, raw_bytes: int) -> None:
    """A source in a lossy transfer syntax stays marked lossy in what is derived from it (DICOM PS3.3 C.7.6.1.1.5):
    Lossy Image Compression "01", the method and the ratio (uncompressed bytes / compressed) added where the source
    did not say."""
    method = _LOSSY.get(str(syntax))
    if method is None or str(dataset.get("LossyImageCompression", "")) == "01":
        return
    dataset.LossyImageCompression = "01"
    ratio = raw_bytes / max(1, len(dataset.PixelData))
    for name, value in (
        ("LossyImageCompressionRatio", _decimal(ratio)),
        ("LossyImageCompressionMethod", method),
    ):
        earlier = dataset.get(name)  # one value (a str or number), several (a MultiValue), or none
        if earlier in (None, ""):
            setattr(dataset, name, value)
        else:
            setattr(
                dataset, name, [*([earlier] if isinstance(earlier, (str, int, float)) else earlier), value]
            )


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
    if sm.photometric == 2 and str(ds.get("PhotometricInterpretation")) != "RGB":  # decoded to RGB
        if (
            str(ds.get("PhotometricInterpretation")) == "PALETTE COLOR"
        ):  # the tables applied: RGB of their depth
            for name in _PALETTE:
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
    if sm.frames > 1:  # rows x cols x (frames * samples) -> frame after frame, each pixel's samples together
        values = values.reshape(height, width, sm.frames, -1).transpose(2, 0, 1, 3)
    ds.PixelData = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if values.dtype.itemsize == 1 else "OW"
    ds.preamble = ds.preamble or b"\0" * 128
    # force_encoding: a dataset read as big endian (or implicit VR) is re-encoded, not refused after the model ran
    pydicom.dcmwrite(tmp, ds, implicit_vr=False, little_endian=True, force_encoding=True)
