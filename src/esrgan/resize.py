"""MATLAB-compatible bicubic resize (imresize), the degradation the super-resolution literature is built on.

The LR images of every benchmark and of ESRGAN's training data were made with MATLAB's ``imresize(x, 1/4,
'bicubic')``: cubic kernel with a = -0.5, antialiased when downscaling (kernel widened by 1/scale), MATLAB's
pixel-centre mapping and symmetric (mirror) borders. PIL and OpenCV differ in antialiasing and borders, and a model
trained on one degradation loses PSNR on the other, so we reproduce MATLAB exactly instead of calling a library.

Each axis is a 1-D resampling ``out = W @ in`` with a fixed (out, in) weight matrix, mirrored borders folded into
its column indices. W has only ``taps`` (6 to 18) non-zeros per row, so it is applied as a sparse matrix product:
bench/resize.py measures it against a dense matmul and against a gather-and-add loop over the taps (index_select
per tap), and the sparse product is the fastest of the three for both downscaling and upscaling.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["imresize", "imresize_np", "imresize_rows", "output_size"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


@functools.lru_cache(maxsize=64)
def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len, taps) float64 and 0-based source indices (out_len, taps) int64 of one axis.

    Follows MATLAB's imresize contributions(): output pixel x (1-based) samples the input at
    u = x / scale + 0.5 * (1 - 1 / scale); a downscale widens the kernel to 4 / scale and flattens it by scale
    (antialiasing); weights are normalised to sum to 1; indices beyond the border are mirrored ('symmetric').
    """
    kernel_width = 4.0
    antialias = scale < 1
    if antialias:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = math.ceil(kernel_width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if antialias else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    # symmetric border: the sequence 1..n, n..1 repeated (MATLAB's aux = [1:n, n:-1:1]; mod(idx - 1, 2n))
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    # taps whose weight is zero for every output pixel (the kernel's outer edges) cost time and change nothing
    keep = np.any(w != 0, axis=0)
    return np.ascontiguousarray(w[:, keep]), np.ascontiguousarray(src[:, keep])


def output_size(in_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size for a scale factor: ceil(in * scale) per axis."""
    return (math.ceil(in_size[0] * scale), math.ceil(in_size[1] * scale))


@functools.lru_cache(maxsize=64)
def _matrix(in_len: int, out_len: int, scale: float) -> Tensor:
    """The (out_len, in_len) resampling matrix of one axis as a sparse COO tensor (float64, CPU)."""
    weights, index = _contributions(in_len, out_len, scale)
    rows = np.repeat(np.arange(out_len), index.shape[1])
    coords = torch.from_numpy(np.stack([rows, index.ravel()]))
    # coalesce sums the weights of taps that the mirror folded onto the same source pixel
    values = torch.from_numpy(weights.ravel())
    # invariants checked once per cached matrix: costs nothing and silences torch's warning about skipping them.
    # The switch, not the check_invariants argument: torch 2.11 warns even with the argument unless the global
    # switch was set explicitly (one "Sparse invariant checks are implicitly disabled" line per matrix on stderr)
    with torch.sparse.check_sparse_tensor_invariants(True):
        return torch.sparse_coo_tensor(coords, values, (out_len, in_len)).coalesce()


@functools.lru_cache(maxsize=64)
def _device_matrix(
    in_len: int, out_len: int, scale: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """_matrix on an accelerator, copied there once per shape: dense, since a batch's resize is one small matmul
    there (the sparse product suits the CPU), and sparse kernels are missing on e.g. MPS. The copy per call it
    replaces was a synchronous host-to-device transfer in every training step that makes LR on the GPU."""
    return _matrix(in_len, out_len, scale).to_dense().to(device=device, dtype=dtype)


def _resize_axis(x: Tensor, dim: int, out_len: int, scale: float) -> Tensor:
    if x.device.type == "cpu":
        m = _matrix(x.shape[dim], out_len, scale).to(dtype=x.dtype)
    else:
        m = _device_matrix(x.shape[dim], out_len, scale, x.device, x.dtype)
    moved = x.movedim(dim, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = torch.sparse.mm(m, flat) if m.is_sparse else m @ flat
    return out.reshape(out_len, *moved.shape[1:]).movedim(0, dim)


def imresize(x: Tensor, *, scale: float | None = None, size: tuple[int, int] | None = None) -> Tensor:
    """Resize the last two axes of ``x`` (..., H, W) like MATLAB's ``imresize(x, scale_or_size, 'bicubic')``.

    Give exactly one of ``scale`` (output size = ceil(in * scale), the kernel uses the scale as given, as MATLAB
    does) or ``size`` = (out_h, out_w) (per-axis scale = out / in). Works batched on any device. Float64 input is
    computed in float64, every other dtype in float32; the result has the input's dtype if it is floating point,
    float32 otherwise. Values are not clipped or rounded: bicubic overshoots, callers clip/round as they need.
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale= or size=")
    if x.dim() < 2:
        raise ValueError(f"imresize: need a (..., H, W) tensor, got shape {tuple(x.shape)}")
    in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
    if in_h == 0 or in_w == 0:
        raise ValueError(f"imresize: empty input of shape {tuple(x.shape)}")
    if scale is not None:
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"imresize: scale must be a positive number, got {scale}")
        out_h, out_w = output_size((in_h, in_w), scale)
        scales = (float(scale), float(scale))
    else:
        assert size is not None
        out_h, out_w = int(size[0]), int(size[1])
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize: size must be positive, got {size}")
        scales = (out_h / in_h, out_w / in_w)

    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(work)
    # MATLAB resizes along the axis with the smaller scale first (ties: rows first); the order changes rounding
    # only, but following it keeps us bit-close to MATLAB
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    for axis in order:
        dim = y.dim() - 2 + axis
        out_len = (out_h, out_w)[axis]
        if out_len != y.shape[dim] or scales[axis] != 1.0:
            y = _resize_axis(y, dim, out_len, scales[axis])
    return y.contiguous().to(out_dtype)


def imresize_np(
    arr: np.ndarray, *, scale: float | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """numpy front of :func:`imresize` for images: HxW or HxWxC, uint8 / uint16 / float.

    Returns float32 for float32 input and float64 for everything else, in the input's value range (0..255 stays
    0..255), UNROUNDED and unclipped: the rounding step differs between protocols (the literature rounds LR images
    to uint8), so the caller does it, e.g. ``np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)`` (MATLAB's
    halves away from zero; np.round's halves to even differ where a sum lands exactly on .5).
    """
    if arr.ndim not in (2, 3):
        raise ValueError(f"imresize_np: need an HxW or HxWxC array, got shape {arr.shape}")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    t = torch.from_numpy(np.array(arr, dtype=dtype))  # a writable copy: torch refuses read-only buffers
    if arr.ndim == 3:
        t = t.permute(2, 0, 1)
    out = imresize(t, scale=scale, size=size)
    if arr.ndim == 3:
        out = out.permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def imresize_rows(arr: np.ndarray, size: tuple[int, int], start: int, stop: int) -> np.ndarray:
    """Rows start:stop of ``imresize_np(arr, size=size)`` for a float32 HxWxC image, made from the input rows they
    need only: a result-sized image is never held (the web page's bicubic "before" of a 12 MP photo at x4 is 192 MP
    of float32, 2.3 GB, and its resize took as much again). Columns are resized first here where MATLAB's order
    may take rows first: equal up to float32 rounding (a few 1e-7), never a level apart after rounding to 8 bits
    but where a value sits on a half."""
    if arr.ndim != 3 or arr.dtype != np.float32:
        raise ValueError(f"imresize_rows: need a float32 HxWxC array, got {arr.dtype} {arr.shape}")
    in_h, in_w = arr.shape[:2]
    out_h, out_w = int(size[0]), int(size[1])
    if not 0 <= start < stop <= out_h:
        raise ValueError(f"imresize_rows: rows {start}:{stop} outside 0:{out_h}")
    weights, index = _contributions(in_h, out_h, out_h / in_h)
    weights, index = weights[start:stop], index[start:stop]
    rows, local = np.unique(index, return_inverse=True)  # the input rows this band reads, once each
    # the band's rows as a small dense matrix over those rows (taps the mirror folded together add up)
    matrix = np.zeros((stop - start, len(rows)), np.float64)
    np.add.at(matrix, (np.repeat(np.arange(stop - start), index.shape[1]), local.ravel()), weights.ravel())
    block = torch.from_numpy(np.ascontiguousarray(arr[rows]))  # n, in_w, C
    if out_w != in_w:
        block = _resize_axis(block, 1, out_w, out_w / in_w)  # n, out_w, C
    flat = block.reshape(len(rows), -1)
    band = torch.from_numpy(matrix.astype(np.float32)) @ flat
    return np.ascontiguousarray(band.reshape(stop - start, out_w, arr.shape[2]).numpy())
