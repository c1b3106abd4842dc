"""Training data: random aligned LR/HR patches from real images, reproducible and resumable.

HR folder mode makes each LR patch by MATLAB bicubic downscaling (esrgan.resize.imresize, the degradation of the
literature), rounded to the levels a saved LR image would have (8 bits, or 16 with `data.bit_depth: 16`). It is computed on the HR crop plus a margin wider
than the bicubic kernel, so the patch equals the same region of the whole downscaled image (at image borders the
crop starts at the border and gets the same mirror padding) without resizing whole images per sample. Paired mode
reads LR files of the same stem from a second folder.

Every random choice of a sample (image order, crop, flips, degradation) comes from (seed, global sample number), not
from a process-wide RNG: the stream of batches is a pure function of the seed, the same with 0 or 8 DataLoader
workers, and resuming at step k only needs the sample count k * batch (see InfiniteSampler).

Batches travel as uint8 (a quarter of the bytes of float32; every patch is on 8-bit levels anyway) and become
float on the training device (`batch_to_device`). With `bits` 16 (scans, medical and scientific images: a CT's 12
bits, a raw photo's 14) the images keep their 16 bits: decoded to uint16 (an 8-bit file's levels times 257, exact),
LR patches rounded to 16-bit levels, batches carried as int16 (the same 16 bits: torch's uint16 has no flip or
indexing on the CPU in older releases, int16 has every operation on every device) and read back by `to_unit`. With `lr_on_device` the workers only cut HR regions (the patch
plus the bicubic margin, mirror-padded at image borders exactly as imresize pads them) and the LR patches of the
whole batch are made on the training device in one imresize call: on a GPU this takes the per-sample bicubic off
the CPU, which was what the GPU waited for.

DataLoader workers are forked on the CPU (cheap, the decoded images are shared copy-on-write) and started by
forkserver (spawn where there is none) whenever the training device is not the CPU: a forked child of a process
that has initialised CUDA fails at its first CUDA-touching torch call ("CUDA error: initialization error"), and
which torch calls touch CUDA is not ours to guarantee; a fresh interpreter has no CUDA state at all. The decoded
images are then moved to shared memory once, so the workers receive handles, not copies.
"""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .config import RealESRGANDegradationConfig, downscale_factors
from .degrade import degrade, draw
from .device import host_memory_available
from .errors import ConfigError, ImageError
from .imagedata import ImageWarning
from .imageio import DICOM_SUFFIXES, IMAGE_SUFFIXES, own_range
from .imageio import list_images as _list_images

log = logging.getLogger(__name__)

MAX_PIXELS = 128_000_000  # refuse decompression bombs; a 12K x 10K photo still fits
# a multi-frame DICOM: each frame within MAX_PIXELS, the whole volume within this (976 CT slices of 512x512; decoded
# once, then held at 1-2 bytes a sample by the cache)
MAX_VOLUME_PIXELS = 2 * MAX_PIXELS
_MARGIN_LR = (
    4  # LR pixels of context around a patch: covers the x4 bicubic kernel (2 * scale HR px) plus blur
)
# realesrgan: 8 LR pixels (32 HR at x4) of the image around the patch. They cover the first 21x21 blur at HR size
# (10 HR px: 2.5 LR px at x4, 5 at x2) and the resampling taps; not all of what reaches further: the second blur
# works at s1 x HR size (10 px there: up to 16.7 LR px at x4 with s1 = 0.15), the final sinc up to 10 LR px, and at
# x1 the first blur 10. Beyond the margin the steps see reflected context, as at the edges of Real-ESRGAN's own
# crops. Measured at x4 (a 21 px sinc as the second blur at s1 = 0.25, with and without the final sinc), the patch
# differs from one cut with 40 LR px of margin by at most 3 levels, in its outermost rows as in its centre (float
# rounding: the convolutions run at other sizes): there the margin costs no more than that rounding
_MARGIN_LR_REALESRGAN = 8


TRAINING_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
"""What a training or validation folder's listing picks up: the images `esrgan upscale` reads, DICOM files too."""


def list_images(folder: str | Path) -> list[Path]:
    """esrgan.imageio.list_images for a training folder: a missing or empty folder is a ConfigError naming it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: image folder not found")
    files = _list_images(folder, suffixes=TRAINING_SUFFIXES)
    if not files:
        raise ConfigError(f"{folder}: no images ({', '.join(sorted(TRAINING_SUFFIXES))})")
    return files


BIT_DEPTHS = (8, 16)
"""What training data can be held as (`data.bit_depth`)."""


def pixel_dtype(bits: int) -> type[np.unsignedinteger[Any]]:
    """The numpy type of decoded training images of `bits` (8 or 16)."""
    if bits not in BIT_DEPTHS:
        raise ConfigError(f"training images are held with 8 or 16 bits, not {bits}")
    return np.uint8 if bits == 8 else np.uint16


def luma(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 RGB -> HxWx1 grey of the same type (uint8 or uint16): ITU-R BT.601 luma in Pillow's fixed point (its
    convert("L") exactly for uint8; 0.299 R + 0.587 G + 0.114 B, rounded): what a grey model trains on from a
    colour photo."""
    r, g, b = (rgb[:, :, i].astype(np.uint64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(rgb.dtype)[:, :, None]


def decode_frames(path: Path, value_range: tuple[float, float] | None = None) -> list[np.ndarray]:
    """A training file as decoded, a frame each: HxWxC uint8 or uint16 (C = 1 or 3, esrgan.imageio.read_image's
    planes; alpha and a measurement's extra bands are not in them), refusing bombs. Measurements (DICOM; float,
    signed or multi-band TIFFs) are stretched from their [min, max] to uint16 as `esrgan upscale` stretches them
    for the model (esrgan.datatiff; a multi-frame DICOM's frames through one mapping); every frame of a multi-frame
    DICOM (an enhanced CT or MR series, a cine loop) is one image, the others' files one each. `value_range`: the
    (lo, hi) of stored values measurements are mapped from instead of their own [min, max] (`data.value_range`)."""
    from .imageio import is_measurement, read_image

    # photos (an 8-bit georeferenced one too) are read as they are; measurements (a 16-bit georeferenced raster
    # too) stretched as `esrgan upscale` stretches them
    measurement = is_measurement(path)
    limit = MAX_VOLUME_PIXELS if _is_dicom(path) else MAX_PIXELS  # image_shape checked each frame's size
    image = read_image(
        path,
        max_pixels=limit,
        measurements=measurement,
        value_range=value_range if measurement else None,
    )
    first = np.asarray(image.pixels)
    first = first[:, :, None] if first.ndim == 2 else first
    count = image.samples.frames if image.samples is not None else 1
    if count == 1 or image.extra is None:
        return [first]
    c = first.shape[2]  # a frame's planes: later frames are the extra planes, each frame's together
    return [first, *(image.extra[:, :, k * c : (k + 1) * c] for k in range(count - 1))]


def decode_pixels(path: Path, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """`decode_frames`' first frame."""
    return decode_frames(path, value_range)[0]


def read_pixels(
    path: Path, channels: int = 3, bits: int = 8, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Decode an image as HxWxC of `bits` (uint8: 16-bit files reduced; uint16: 8-bit files' levels times 257),
    alpha and a measurement's extra bands dropped: C = 3 is RGB (grey repeated), C = 1 grey (a colour image's
    luma). See `decode_pixels`."""
    return to_bits(decode_pixels(path, value_range), channels, bits)


def to_bits(pixels: np.ndarray, channels: int, bits: int) -> np.ndarray:
    """A decoded HxWxC image (`decode_pixels`) as the training data holds it: `bits` deep, `channels` planes."""
    dtype = pixel_dtype(bits)
    if pixels.dtype != dtype:
        pixels = (
            np.round(pixels / 257.0).astype(np.uint8)
            if pixels.dtype == np.uint16
            else pixels.astype(np.uint16) * np.uint16(257)
        )
    if channels == 1:
        return np.ascontiguousarray(pixels[:, :, :1] if pixels.shape[2] < 3 else luma(pixels[:, :, :3]))
    if pixels.shape[2] < 3:
        pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def _is_dicom(path: Path) -> bool:
    from .dicom import is_dicom

    try:
        return is_dicom(path)
    except OSError:  # missing or unreadable: the reader says so in its own words
        return False


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels (a TIFF Pillow cannot open is decoded: its
    size is that of what training reads)."""
    return image_shape(path)[:2]


def image_shape(path: Path) -> tuple[int, int, int]:
    """(height, width, frames as training images: `decode_frames`), from the file header: a DICOM's (refused in one
    line beyond MAX_PIXELS a frame or MAX_VOLUME_PIXELS a file) or where Pillow reads it (one frame: an animation or
    a multi-page TIFF trains on its first); a TIFF Pillow cannot open is decoded."""
    if _is_dicom(path):  # from its header: a volume's pixels are decoded once, for the cache
        from .dicom import dicom_shape

        rows, cols, frames = dicom_shape(path)
        if rows * cols > MAX_PIXELS or rows * cols * frames > MAX_VOLUME_PIXELS:
            raise ImageError(
                f"{path}: {cols}x{rows}"
                + (f" x {frames} frames" if frames > 1 else "")
                + " is more than training "
                f"reads from one file ({MAX_PIXELS} pixels a frame, {MAX_VOLUME_PIXELS} a file): split the series"
            )
        return rows, cols, frames
    try:
        with Image.open(path) as im:
            return im.height, im.width, 1
    except Image.DecompressionBombError as exc:  # a header claiming a huge image
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    except OSError:
        decoded = decode_frames(path)  # or its one-line error: the reader's word on what the file is
        return decoded[0].shape[0], decoded[0].shape[1], len(decoded)


def to_tensor(pixels: np.ndarray) -> Tensor:
    """HxWxC uint8 or uint16 -> CxHxW float32 in [0, 1]."""
    top = 255.0 if pixels.dtype == np.uint8 else 65535.0
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(np.float32)
    elif not pixels.flags.writeable:  # torch refuses read-only buffers (Pillow's arrays are)
        pixels = pixels.copy()
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(top)


def top_level(bits: int) -> float:
    """The largest value of a `bits`-deep image: 255.0 or 65535.0."""
    return float((1 << bits) - 1)


def carry(pixels: np.ndarray) -> Tensor:
    """HxWxC uint8 or uint16 pixels -> the CxHxW tensor a loader carries: uint8 as it is, uint16 as int16 of the
    same bits (see the module docstring); `to_unit` reads either."""
    if pixels.dtype == np.uint16:
        pixels = np.ascontiguousarray(pixels).view(np.int16)
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()


def to_carrier(x: Tensor, bits: int) -> Tensor:
    """A float image in [0, 1] on `bits` levels -> its carried levels (uint8, or int16 holding the 16 bits)."""
    v = x.mul(top_level(bits)).round_().clamp_(0.0, top_level(bits))
    if bits == 8:
        return v.to(torch.uint8)
    v = v.to(torch.int32)
    return torch.where(v >= 32768, v - 65536, v).to(torch.int16)


def to_unit(t: Tensor) -> Tensor:
    """Carried levels (uint8, or int16 holding 16 bits) -> float32 in [0, 1], on t's device."""
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.dtype != torch.int16:
        raise TypeError(f"a training batch is carried as uint8 or int16, not {t.dtype}")
    return t.float().remainder_(65536.0).div_(65535.0)  # -1 -> 65535: the unsigned value, exact in float32


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 where the device has it (MPS has none: float32 there)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _round_levels(y: Tensor, bits: int = 8) -> Tensor:
    """Values on the 0..top scale (top 255, or 65535 for 16 bits) -> the levels of an image of `bits`, as fractions
    of top (y's dtype): rounded as MATLAB converts a double to uint8 or uint16, halves away from zero
    (floor(y + 0.5)), not to even as torch.round."""
    top = top_level(bits)
    return y.add(0.5).floor_().clamp_(0.0, top).div_(top)


def quantize(x: Tensor, bits: int = 8) -> Tensor:
    """Round a float image in [0, 1] to the levels a saved image of `bits` has (LR inputs are real images, not
    floats): floor(top x + 0.5), MATLAB's uint8 (uint16) conversion, computed in float64 (float32 on MPS); x's
    dtype back."""
    return _round_levels(x.to(_work_dtype(x)).mul(top_level(bits)), bits).to(x.dtype)


def _levels(x: Tensor, bits: int = 8) -> Tensor:
    """A float image in [0, 1] on the 0..top scale in float64 (float32 on MPS). An image on the levels of `bits`
    (every value within float32's rounding of some k/top, as to_tensor makes them: 1e-3 at 8 bits, 1/16 at 16)
    becomes those exact integers: a resampling sum of them can then land exactly on .5, as MATLAB's does, and is
    rounded the way MATLAB rounds it."""
    top = top_level(bits)
    y = x.to(_work_dtype(x)).mul(top)
    k = y.round()
    return k if y.numel() and float((y - k).abs().max()) < max(1e-3, top * 2.0**-20) else y


def bicubic_down(hr: Tensor, factor: float, bits: int = 8) -> Tensor:
    """MATLAB bicubic downscale by ``factor`` of a CxHxW (or NxCxHxW) float image in [0, 1], rounded to the levels
    of `bits` as MATLAB's imresize of a uint8 (uint16) image is: computed in float64 on the 0..top scale, halves
    rounded up (_levels, _round_levels). hr's dtype back."""
    from .resize import imresize  # written alongside

    return _round_levels(imresize(_levels(hr, bits), scale=1.0 / factor), bits).to(hr.dtype)


def bicubic_lr(hr: Tensor, scale: int, bits: int = 8) -> Tensor:
    """MATLAB bicubic downscale of a CxHxW (or NxCxHxW) float image, rounded to the levels of `bits`
    (bicubic_down)."""
    return bicubic_down(hr, scale, bits)


@dataclass(frozen=True)
class Degradation:
    """A first-order version of Real-ESRGAN's degradation: blur -> bicubic -> noise -> JPEG, each with a probability."""

    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.2, 2.0)
    noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 15.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """A CxHxW image in [0, 1] (C = 3 or 1) through Pillow's JPEG at `quality`: colour as YCbCr, grey as one plane."""
    pixels = x.mul(255.0).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    grey = pixels.shape[2] == 1
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if grey else pixels).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        decoded = np.asarray(im.convert("L" if grey else "RGB"))
    return to_tensor(decoded[:, :, None] if grey else decoded)


def pair_problem(hr: tuple[int, ...], lr: tuple[int, ...], scale: int, patch_size: int) -> str | None:
    """Why an LR file (height, width) is not the LR of an HR (height, width) at `scale` (a "{hr}" in it for the HR
    file's name), or None. The HR may be up to scale - 1 pixels larger on a side (the LR of an HR whose size is no
    multiple of the scale; it is cut to LR x scale), never more: an LR made at another scale (x8 files for a x4
    run) passed the old check (HR at least LR x scale) and trained on the HR's top-left corner against the whole
    LR. Both sides are checked against the patch (only the height was)."""
    (hh, hw), (lh, lw) = hr[:2], lr[:2]
    if not (lh * scale <= hh < (lh + 1) * scale and lw * scale <= hw < (lw + 1) * scale):
        return (
            f"LR {lw}x{lh} does not match HR {{hr}} {hw}x{hh} at scale {scale} (the LR of {hw}x{hh} is "
            + (f"{hw // scale}x{hh // scale})")
        )
    if lh * scale < patch_size or lw * scale < patch_size:
        return (
            f"LR {lw}x{lh} x{scale} is smaller than the {patch_size}x{patch_size} training patch (HR {{hr}})"
        )
    return None


class PatchDataset(Dataset[tuple[Tensor, Tensor]]):
    """Random aligned (LR, HR) patches; indexed by (image index, sample seed) pairs from InfiniteSampler."""

    def __init__(
        self,
        hr_dir: str | Path,
        *,
        scale: int,
        patch_size: int,
        lr_dir: str | Path | None = None,
        flip: bool = True,
        rot90: bool = True,
        degradation: Degradation | None = None,
        cache_max_mb: int = 4096,
        hr_downscale: float | Sequence[float] = 1.0,
        lr_on_device: bool = False,
        realesrgan: RealESRGANDegradationConfig | None = None,
        channels: int = 3,
        bits: int = 8,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        """`hr_downscale` > 1 first shrinks each HR image by that factor (MATLAB bicubic, rounded to its levels); a list
        of factors makes one item per image and factor (a multi-scale set, as BasicSR's multi-scale DF2K: the same
        photographs both sharp and soft).

        `lr_on_device`: samples are HR regions with margin (`region_u8`) and the LR patches are made per batch by
        `batch_to_device`; ignored (per-sample LR) with paired LR folders or the realworld degradation.

        `realesrgan`: Real-ESRGAN's degradation (esrgan.degrade). Samples are (HR region with margin, kernels,
        parameters); the batch is degraded by `batch_to_device` (lr_on_device) or by the loader's collate function.

        `channels`: 3 for an RGB model (grey images repeated), 1 for a grey one (colour images' luma, `read_pixels`).

        `bits`: 8, or 16 to keep the depth of 16-bit files and measurements (HR as decoded, LR rounded to 16-bit
        levels; an 8-bit file's levels times 257). Real-ESRGAN's degradation is defined on 8-bit images (its
        rounding to 8-bit levels between steps, its JPEG, its pair pool): it takes 8.

        `value_range`: measurements (DICOM, float TIFFs) mapped from this (lo, hi) of stored values, not each from
        its own [min, max] (`decode_frames`); paired LR files too.
        """
        pixel_dtype(bits)  # or a ConfigError
        if bits != 8 and realesrgan is not None:
            raise ConfigError(
                "the realesrgan degradation works on 8-bit images (its rounding between steps, its JPEG, its pair "
                "pool): data.bit_depth 16 takes the bicubic or realworld degradation"
            )
        if realesrgan is not None and (lr_dir is not None or degradation is not None):
            raise ConfigError(
                "the realesrgan degradation makes the LR from the HR: no LR folder, no realworld"
            )
        if patch_size % scale:
            raise ConfigError(f"patch size {patch_size} is not a multiple of the scale {scale}")
        try:
            factors = downscale_factors(hr_downscale)
        except ValueError as exc:
            raise ConfigError(f"hr_downscale {exc}") from None
        if factors != (1.0,) and lr_dir is not None:
            raise ConfigError(
                "hr_downscale cannot be used with paired LR folders (the pairs would no longer match)"
            )
        self.scale = scale
        self.patch_size = patch_size
        self.flip = flip
        self.rot90 = rot90
        self.degradation = degradation
        if channels not in (1, 3):
            raise ConfigError(f"training images have 1 channel (grey) or 3 (RGB), not {channels}")
        self.channels = channels
        self.bits = bits
        self.value_range = value_range
        self._warned: set[Path] = set()  # files read per sample whose warnings were shown (in this process)
        self.hr_files = list_images(hr_dir)
        shapes = {p: image_shape(p) for p in self.hr_files}
        # one item per (image, frame, shrink factor), image-major, then frame; paired LR folders have the one
        # factor 1.0 and single-frame images
        self.factors = factors
        self.items = [
            (path, frame, f) for path in self.hr_files for frame in range(shapes[path][2]) for f in factors
        ]
        self._first_item = np.cumsum([0] + [shapes[p][2] * len(factors) for p in self.hr_files]).tolist()
        self.lr_files: list[Path] | None = None
        if lr_dir is not None:
            multi = [p for p in self.hr_files if shapes[p][2] > 1]
            if multi:
                raise ConfigError(
                    f"{multi[0]}: {shapes[multi[0]][2]} frames; paired LR folders (data.lr_dir) take single-frame "
                    "images (the LR made from the HR, without data.lr_dir, takes every frame)"
                )
            by_stem = {p.stem: p for p in list_images(lr_dir)}
            missing = [p.name for p in self.hr_files if p.stem not in by_stem]
            if missing:
                raise ConfigError(
                    f"{lr_dir}: no LR image for {', '.join(missing[:5])} (matched by file stem)"
                )
            self.lr_files = [by_stem[p.stem] for p in self.hr_files]
            lr_shapes = {p: image_shape(p) for p in self.lr_files}  # the paired files only
            for lr_path in self.lr_files:
                if lr_shapes[lr_path][2] > 1:
                    raise ConfigError(
                        f"{lr_path}: {lr_shapes[lr_path][2]} frames; paired LR folders (data.lr_dir) take "
                        "single-frame images"
                    )
            if value_range is None:  # as esrgan evaluate's paired LR: one scale for both sides of a pair
                pairs = zip(self.hr_files, self.lr_files, strict=True)
                stretched = next((p for pair in pairs for p in pair if own_range(p)), None)
                if stretched is not None:
                    raise ConfigError(
                        f"{stretched}: a measurement in a paired set: stretched from its own [min, max] it is not "
                        "on its pair's scale; set data.value_range: [lo, hi] (the stored values every file is "
                        "mapped from)"
                    )
        from .resize import output_size

        sizes = [shapes[p][:2] if f == 1 else output_size(shapes[p][:2], 1.0 / f) for p, _, f in self.items]
        for (path, _, f), (h, w) in zip(self.items, sizes, strict=True):
            if h < patch_size or w < patch_size:
                shrunk = f" (shrunk {f:g}x by data.hr_downscale)" if f != 1 else ""
                raise ConfigError(
                    f"{path}: {w}x{h}{shrunk} is smaller than the {patch_size}x{patch_size} training patch"
                )
        if self.lr_files is not None:  # from the files' headers, before any step (it was found when drawn)
            for path, (h, w), lr_path in zip(self.hr_files, sizes, self.lr_files, strict=True):
                problem = pair_problem((h, w), lr_shapes[lr_path][:2], scale, patch_size)
                if problem:
                    raise ConfigError(f"{lr_path}: {problem.format(hr=path.name)}")
        total_mb = sum(h * w * channels * bits // 8 for h, w in sizes) * (1 + 1 / scale**2) / 2**20
        self.cache: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        self._shared: list[tuple[Tensor, Tensor | None]] | None = None
        self.realesrgan = realesrgan
        self.margin = _MARGIN_LR if realesrgan is None else _MARGIN_LR_REALESRGAN
        self.lr_on_device = lr_on_device and lr_dir is None and degradation is None
        # half of what the host can still give (a container's cgroup limit, not the machine's free memory): a 4 GB
        # cache in a 2 GB container was a kill by the kernel, with no message, before the first step
        free = host_memory_available()
        room_mb = cache_max_mb if free is None else min(cache_max_mb, free / 2 / 2**20)
        if total_mb <= room_mb:
            # decoded once in the parent (forked DataLoader workers share the pages), on all cores: decoding and
            # resizing release the GIL
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                per_file = list(pool.map(self._load_all_factors, range(len(self.hr_files))))
                self.cache = [pair for pairs, _ in per_file for pair in pairs]  # image-major, as self.items
            deep = sum(deeper for _, deeper in per_file)
            if deep:
                log.info(
                    "%d of %d training files have more than 8 bits: they are trained on as 8-bit images "
                    "(data.bit_depth: 16 keeps every bit)",
                    deep,
                    len(per_file),
                )
        else:
            why = "cache_max_mb" if room_mb == cache_max_mb else f"half the free memory, {room_mb:.0f} MB"
            log.info("%d images need %.0f MB decoded (> %s): reading per sample", len(sizes), total_mb, why)

    def __len__(self) -> int:
        return len(self.items)

    def share_memory(self) -> None:
        """Move the decoded images to shared memory, so workers that are not forked receive handles, not copies."""
        if self.cache is None or self._shared is not None:
            return
        shared: list[tuple[Tensor, Tensor | None]] = []
        kind = torch.uint8 if self.bits == 8 else torch.int16  # int16: the uint16 images' bits (see `carry`)
        for hr, lr in self.cache:
            pair = [None if a is None else torch.empty(a.shape, dtype=kind).share_memory_() for a in (hr, lr)]
            for t, a in zip(pair, (hr, lr), strict=True):
                if t is not None and a is not None:
                    _pixels_of(t)[...] = a
            assert pair[0] is not None
            shared.append((pair[0], pair[1]))
        self._shared = shared
        self.cache = _cache_of(shared)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if state.get("_shared") is not None:
            state["cache"] = (
                None  # the numpy views are rebuilt from the shared tensors (handles) in the worker
            )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._shared is not None:
            self.cache = _cache_of(self._shared)

    def _load_all_factors(self, file_index: int) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], bool]:
        """The items of one file, for every frame and factor, from one decode; and whether the file had more bits
        than the training data keeps."""
        frames = decode_frames(self.hr_files[file_index], self.value_range)
        first, end = self._first_item[file_index], self._first_item[file_index + 1]
        if len(frames) * len(self.factors) != end - first:  # the file changed since its frames were counted
            raise ImageError(f"{self.hr_files[file_index]}: {len(frames)} frames, {end - first} when listed")
        items = []
        for k, decoded in enumerate(frames):
            hr = to_bits(decoded, self.channels, self.bits)
            items += [self._load(first + k * len(self.factors) + j, hr) for j in range(len(self.factors))]
        # more than the data keep: 16-bit values that are not an 8-bit image's levels times 257
        deeper = self.bits == 8 and any(f.dtype == np.uint16 and bool((f % 257).any()) for f in frames)
        return items, deeper

    def _load(self, index: int, decoded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        path, frame, factor = self.items[index]
        if decoded is None:  # read per sample: a multi-frame file is decoded whole for one of its frames
            # a file's warnings (values clipped to data.value_range) once, not once a sample
            with warnings.catch_warnings():
                if path in self._warned:
                    warnings.simplefilter("ignore", ImageWarning)
                self._warned.add(path)
                frames = decode_frames(path, self.value_range)
            if frame >= len(frames):
                raise ImageError(f"{path}: {len(frames)} frames, {frame + 1} or more when listed")
            decoded = to_bits(frames[frame], self.channels, self.bits)
        hr = decoded
        if factor != 1:
            hr = to_pixels(bicubic_down(to_tensor(hr), factor, self.bits), self.bits)
        if self.lr_files is None:
            s = self.scale
            return hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s], None
        lr = read_pixels(self.lr_files[index], self.channels, self.bits, self.value_range)
        problem = pair_problem(hr.shape[:2], lr.shape[:2], self.scale, self.patch_size)
        if problem:  # the file changed since the check at the start
            raise ImageError(f"{self.lr_files[index]}: {problem.format(hr=path.name)}")
        return hr[: lr.shape[0] * self.scale, : lr.shape[1] * self.scale], lr

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(LR, HR) float CxHxW in [0, 1] for (image index, sample seed)."""
        sample = self.loader_sample(key)
        if self.realesrgan is not None:
            lr_u8, hr_u8 = degrade_batch(collate_samples([sample]), self.scale, self.margin)
            return to_unit(lr_u8[0]), to_unit(hr_u8[0])
        lr, hr = sample
        if self.lr_on_device:
            return lr_from_regions(to_unit(lr[None]), self.scale, self.bits)[0][0], to_unit(hr)
        return to_unit(lr), to_unit(hr)

    def loader_sample(self, key: tuple[int, int]) -> tuple[Tensor, ...]:
        """What a DataLoader worker returns: (LR, HR) CxHxW levels (uint8, or int16 carrying 16 bits: `carry`), or
        (HR region with margin, HR) with lr_on_device, or (HR region with margin, kernels, parameters) with the
        realesrgan degradation (`esrgan.degrade.draw`)."""
        if self.realesrgan is not None:
            region, rng = self._region(key)
            kernels, params = draw(rng, self.realesrgan)
            return region, torch.from_numpy(kernels), torch.from_numpy(params)
        if self.lr_on_device:
            region, _ = self._region(key)
            s, p, m = self.scale, self.patch_size // self.scale, self.margin
            return region, region[:, m * s : (m + p) * s, m * s : (m + p) * s].clone()
        lr, hr = self._sample_float(key)
        return to_carrier(lr, self.bits), to_carrier(hr, self.bits)

    def _region(self, key: tuple[int, int]) -> tuple[Tensor, np.random.Generator]:
        """The sample's HR patch with `self.margin` LR pixels of context (CxRxR levels, `carry`), and its
        generator."""
        index, sample_seed = key
        rng = np.random.default_rng(sample_seed)  # the same draws, in the same order, as the per-sample path
        hr_full = self.cache[index][0] if self.cache is not None else self._load(index)[0]
        s, p, m = self.scale, self.patch_size // self.scale, self.margin
        lr_h, lr_w = hr_full.shape[0] // s, hr_full.shape[1] // s
        top, left = int(rng.integers(0, lr_h - p + 1)), int(rng.integers(0, lr_w - p + 1))
        t0, l0 = max(0, top - m), max(0, left - m)
        t1, l1 = min(lr_h, top + p + m), min(lr_w, left + p + m)
        region = hr_full[t0 * s : t1 * s, l0 * s : l1 * s]
        pads = (
            ((t0 - (top - m)) * s, (top + p + m - t1) * s),
            ((l0 - (left - m)) * s, (left + p + m - l1) * s),
        )
        if any(a or b for a, b in pads):
            # imresize mirrors at the image border ('symmetric': the edge pixel repeated); pad the same way
            region = np.pad(region, (*pads, (0, 0)), mode="symmetric")
        if self.flip and rng.random() < 0.5:
            region = region[:, ::-1]
        if self.rot90:
            region = np.rot90(region, int(rng.integers(0, 4)), (0, 1))
        return carry(region), rng

    def _sample_float(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, sample_seed = key
        rng = np.random.default_rng(sample_seed)
        hr_full, lr_full = self.cache[index] if self.cache is not None else self._load(index)
        s, p = self.scale, self.patch_size // self.scale
        lr_h, lr_w = hr_full.shape[0] // s, hr_full.shape[1] // s
        top, left = int(rng.integers(0, lr_h - p + 1)), int(rng.integers(0, lr_w - p + 1))
        hr = to_tensor(hr_full[top * s : (top + p) * s, left * s : (left + p) * s])
        if lr_full is not None:
            lr = to_tensor(lr_full[top : top + p, left : left + p])
        else:
            lr = self._degrade(hr_full, top, left, p, rng)
        if self.flip and rng.random() < 0.5:
            hr, lr = hr.flip(-1), lr.flip(-1)
        if self.rot90:
            k = int(rng.integers(0, 4))
            hr, lr = torch.rot90(hr, k, (-2, -1)), torch.rot90(lr, k, (-2, -1))
        return lr.contiguous(), hr.contiguous()

    def _degrade(self, hr_full: np.ndarray, top: int, left: int, p: int, rng: np.random.Generator) -> Tensor:
        """LR patch at LR position (top, left) from the HR image region with a margin (see the module docstring)."""
        s, m = self.scale, _MARGIN_LR
        t0, l0 = max(0, top - m), max(0, left - m)
        t1, l1 = min(hr_full.shape[0] // s, top + p + m), min(hr_full.shape[1] // s, left + p + m)
        region = to_tensor(hr_full[t0 * s : t1 * s, l0 * s : l1 * s])
        d = self.degradation
        if d is not None and rng.random() < d.blur_prob:
            region = gaussian_blur(region, float(rng.uniform(*d.blur_sigma)))
        from .resize import imresize

        # on the 0..top scale in float64 (exact levels unless blurred): MATLAB's sums and its rounding
        bits = self.bits
        lr = imresize(_levels(region, bits), scale=1.0 / s)[
            :, top - t0 : top - t0 + p, left - l0 : left - l0 + p
        ]
        if d is not None and rng.random() < d.noise_prob:
            sigma = float(rng.uniform(*d.noise_sigma)) / 255.0  # noise_sigma is in 8-bit levels at any depth
            noise = torch.from_numpy(rng.standard_normal(lr.shape, dtype=np.float32)) * sigma
            lr = lr + noise.to(lr.dtype) * top_level(bits)
        lr = _round_levels(lr, bits).float()
        if d is not None and rng.random() < d.jpeg_prob:
            lr = jpeg_roundtrip(lr, int(rng.integers(d.jpeg_quality[0], d.jpeg_quality[1] + 1)))
        return lr


def to_pixels(x: Tensor, bits: int) -> np.ndarray:
    """A CxHxW float image in [0, 1] on the levels of `bits` -> HxWxC uint8 or uint16."""
    levels = x.mul(top_level(bits)).round_().clamp_(0.0, top_level(bits)).to(torch.int32)
    return levels.permute(1, 2, 0).numpy().astype(pixel_dtype(bits))


def _pixels_of(t: Tensor) -> np.ndarray:
    """The numpy pixels a shared tensor holds: uint8 as it is, int16 as the uint16 pixels of the same bits."""
    return t.numpy().view(np.uint16) if t.dtype == torch.int16 else t.numpy()


def _cache_of(shared: list[tuple[Tensor, Tensor | None]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return [(_pixels_of(hr), None if lr is None else _pixels_of(lr)) for hr, lr in shared]


def sample_seed(seed: int, sample: int) -> int:
    """Independent 63-bit seed for global sample number `sample` (SeedSequence mixes the pair well)."""
    return int(np.random.SeedSequence([seed, sample]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Endless shuffled passes over the images, split across DDP ranks, able to start mid-stream.

    Rank r of w takes global samples r, r + w, r + 2w, ...; global sample g is image perm_e[g mod n] of pass
    e = g // n with perm_e a permutation seeded by (seed, e). This does DistributedSampler's job, but it can start
    at any sample (exact resume) and never ends (training is counted in steps, not epochs).
    """

    def __init__(
        self, num_items: int, *, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.num_items = num_items
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = self.start
        epoch, perm = -1, np.empty(0, dtype=np.int64)
        while True:
            g = n * self.world_size + self.rank
            e, pos = divmod(g, self.num_items)
            if e != epoch:
                epoch, perm = e, np.random.default_rng([self.seed, e]).permutation(self.num_items)
            yield int(perm[pos]), sample_seed(self.seed, g)
            n += 1


def lr_from_regions(regions: Tensor, scale: int, bits: int = 8) -> tuple[Tensor, Tensor]:
    """(LR, HR) float batches from float HR regions with margin (N, C, R, R): MATLAB bicubic on the whole batch,
    the LR rounded to the levels of `bits`.

    Runs on the regions' device. Equals the per-sample path up to float rounding of the resampling sums (an LR
    level may differ by one where a sum falls on a rounding boundary).
    """
    from .resize import imresize

    s, m = scale, _MARGIN_LR
    p = regions.shape[-1] // s - 2 * m
    lr = quantize(imresize(regions, scale=1.0 / s)[..., m : m + p, m : m + p], bits)
    return lr, regions[..., m * s : (m + p) * s, m * s : (m + p) * s]


def collate_samples(samples: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Stack a list of samples into a batch (what the DataLoader does)."""
    return tuple(default_collate(samples))


def degrade_batch(
    batch: tuple[Tensor, ...], scale: int, margin: int, plain_hr: bool = False
) -> tuple[Tensor, ...]:
    """(HR regions, kernels, parameters) of the realesrgan degradation -> (LR, HR) uint8, on the batch's device;
    (LR, HR, plain HR) with `plain_hr` (the HR before the unsharp mask: what the GAN stage's discriminator sees)."""
    regions, kernels, params = batch
    lr, hr, plain = degrade(regions.float().div_(255.0), kernels, params, scale=scale, margin=margin)
    out = (lr.mul_(255.0).round_().byte(), hr.mul(255.0).round_().byte())  # both on 8-bit levels: exact
    return (*out, plain.mul(255.0).round_().byte()) if plain_hr else out


class _DegradingCollate:
    """The loader's collate function for the realesrgan degradation made in the workers (a CPU run)."""

    def __init__(self, scale: int, margin: int, plain_hr: bool) -> None:
        self.scale = scale
        self.margin = margin
        self.plain_hr = plain_hr

    def __call__(self, samples: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        return degrade_batch(collate_samples(samples), self.scale, self.margin, self.plain_hr)


def batch_to_device(
    batch: Sequence[Tensor],
    device: torch.device,
    *,
    lr_on_device: bool,
    scale: int,
    channels_last: bool = False,
    plain_hr: bool = False,
) -> tuple[Tensor, ...]:
    """A loader batch (uint8, or int16 carrying 16 bits) -> (LR, HR) float32 in [0, 1] on `device` (asynchronous
    copy from pinned memory).

    With the realesrgan degradation: a batch of (HR regions, kernels, parameters) is degraded here, on `device`;
    with `plain_hr` the result is (LR, HR, plain HR), the third the HR before the unsharp mask (a worker-made batch
    then arrives with it: patch_loader's `plain_hr`).
    """
    made: tuple[Tensor, ...]
    if len(batch) == 3 and batch[2].dim() == 2:  # (N, N_PARAMS) parameters: a degradation still to make
        regions, kernels, params = batch
        regions = to_unit(regions.to(device, non_blocking=True))
        made = degrade(regions, kernels.to(device, non_blocking=True), params, scale=scale,
                       margin=_MARGIN_LR_REALESRGAN)[: 3 if plain_hr else 2]  # fmt: skip
    elif lr_on_device:  # (HR regions, HR): the LR made here
        bits = 8 if batch[0].dtype == torch.uint8 else 16
        made = lr_from_regions(to_unit(batch[0].to(device, non_blocking=True)), scale, bits)
    else:  # (LR, HR), or the collating worker's (LR, HR, plain HR)
        made = tuple(to_unit(t.to(device, non_blocking=True)) for t in batch)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return tuple(t.contiguous(memory_format=fmt) for t in made)


def worker_start_method(device_type: str) -> str | None:
    """How DataLoader workers start: forked on the CPU, a fresh interpreter otherwise (see the module docstring)."""
    if device_type == "cpu":
        return None  # the platform default (fork on Linux)
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


class _LoaderSamples(Dataset[tuple[Tensor, ...]]):
    """The dataset as the loader sees it: samples of carried levels (`PatchDataset.loader_sample`)."""

    def __init__(self, dataset: PatchDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, ...]:
        return self.dataset.loader_sample(key)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers resize small patches; more threads only oversubscribe the cores
    # A terminal's Ctrl-C reaches the whole process group. The training loop turns it into "finish the step, save,
    # stop" and then shuts the workers down itself; a worker that died of it instead could take a batch it had just
    # queued with it (its shared-memory handle then fails to arrive: ConnectionResetError in the main process).
    # SIGTERM keeps its default: it is how DataLoader and multiprocessing end a worker that does not stop on request
    # (Process.terminate), and a worker that ignored it would leave the main process waiting for it at exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def patch_loader(
    dataset: PatchDataset,
    *,
    batch_size: int,
    seed: int,
    start_sample: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    device_type: str = "cpu",
    plain_hr: bool = False,
) -> Iterator[tuple[Tensor, ...]]:
    """Endless iterator of batches of carried levels (uint8, or int16 with 16 bits) for one rank, starting after
    `start_sample` of this rank's samples.

    (LR, HR), or (HR regions, HR) with `dataset.lr_on_device`; `batch_to_device` makes float (LR, HR) of them.
    With the realesrgan degradation: (HR regions, kernels, parameters) with `lr_on_device`, else the batch is
    degraded by the worker that collates it and arrives as (LR, HR), or (LR, HR, plain HR) with `plain_hr`.
    `device_type` is the training device's: it decides how workers start and whether batches are pinned.
    """
    sampler = InfiniteSampler(len(dataset), seed=seed, start=start_sample, rank=rank, world_size=world_size)
    context: Any = None
    if num_workers:
        method = worker_start_method(device_type)
        if method is not None:
            import multiprocessing

            context = multiprocessing.get_context(method)
            dataset.share_memory()
    loader = DataLoader(
        _LoaderSamples(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers else None,
        multiprocessing_context=context,
        pin_memory=device_type == "cuda",
        collate_fn=(
            _DegradingCollate(dataset.scale, dataset.margin, plain_hr)
            if dataset.realesrgan is not None and not dataset.lr_on_device
            else None
        ),
    )
    return iter(loader)
