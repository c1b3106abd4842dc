"""PSNR and SSIM exactly as the super-resolution literature computes them (MATLAB protocol, as in BasicSR).

Numbers in papers are on the Y channel of MATLAB's rgb2ycbcr (BT.601, "studio" range 16..235), with ``scale``
pixels cropped from every border, and SSIM with an 11x11 Gaussian window (sigma 1.5) averaged over the 'valid'
region only. Generic library defaults (full-range luma, 7x7 uniform windows, padded borders) give different numbers,
which is why this is written out here.

Inputs are HxWxC (RGB) or HxW / HxWx1 (grey) arrays, uint8 or float in [0, 255]. Other integer dtypes (uint16,
int64, ...) and bool are refused with a ValueError naming the dtype: the data range is 255, so a 16-bit image taken
as it is would be scored against the wrong peak (a one-level error of 1000/65535 read as 30 dB, not 78). Convert
first: ``img / 257.0`` for 16-bit, ``img.astype(np.uint8)`` for integers already on 0..255.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_pixels", "psnr", "rgb_to_y", "ssim"]

# MATLAB rgb2ycbcr, Y row, for RGB in [0, 1]; the coefficients sum to 219 (= 235 - 16)
_Y_COEFFS = np.array([65.481, 128.553, 24.966])


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y of BT.601 YCbCr (MATLAB rgb2ycbcr) as float64 in [16, 235], for RGB (RGBA: alpha ignored) or grey input
    in [0, 255].

    A grey image is treated as RGB with three equal channels, so Y = 16 + 219 * v / 255 (not v itself): the same
    formula a colour image of that content gets.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return 16.0 + a * (_Y_COEFFS.sum() / 255.0)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return 16.0 + a[:, :, :3] @ (_Y_COEFFS / 255.0)
    raise ValueError(f"rgb_to_y: need an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {a.shape}")


def check_pixels(img: np.ndarray, where: str) -> np.ndarray:
    """``img`` as an array, refused (ValueError naming ``where`` and the dtype) unless uint8 or float: the metrics'
    data range is 255, and an integer array of another type would be taken on the wrong scale without a word."""
    a = np.asarray(img)
    if a.dtype.kind == "b" or (a.dtype.kind in "iu" and a.dtype != np.uint8):
        raise ValueError(
            f"{where}: {a.dtype} pixels are not accepted (data range 255): pass uint8, or float on the 0..255 scale "
            "(a 16-bit image: img / 257.0; integers already on 0..255: img.astype(np.uint8))"
        )
    return a


def _prepare(
    a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool, round_y: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 HxWxC (C = 1 for Y), borders cropped."""
    a, b = check_pixels(a, "psnr/ssim"), check_pixels(b, "psnr/ssim")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    out = []
    for img in (a, b):
        if y_channel:
            x = rgb_to_y(img)
            if round_y:
                x = np.round(x)
            x = x[:, :, None]
        else:
            x = np.asarray(img, dtype=np.float64)
            if x.ndim == 2:
                x = x[:, :, None]
        if crop_border:
            x = x[crop_border:-crop_border, crop_border:-crop_border]
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {a.shape} image")
        out.append(x)
    return out[0], out[1]


def psnr(
    a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = True, round_y: bool = False
) -> float:
    """PSNR in dB with data range 255; ``inf`` for identical images (no error to measure).

    y_channel=True compares MATLAB's Y (unrounded unless round_y, which mimics rgb2ycbcr on uint8 images);
    y_channel=False compares all channels together.
    """
    x, y = _prepare(a, b, crop_border, y_channel, round_y)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering with a symmetric 1-D kernel: no padding, so no invented border pixels."""
    k = g.shape[0]
    h, w = img.shape
    rows = sum(g[i] * img[i : h - k + 1 + i, :] for i in range(k))
    return sum(g[j] * rows[:, j : w - k + 1 + j] for j in range(k))


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    g = _gaussian_kernel()
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x**2
    var_y = _filter_valid(y * y, g) - mu_y**2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def ssim(
    a: np.ndarray, b: np.ndarray, *, crop_border: int = 0, y_channel: bool = True, round_y: bool = False
) -> float:
    """SSIM (Wang et al. 2004) with the 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 255.

    The SSIM map is averaged over the 'valid' region (pixels whose whole window lies inside the cropped image), as
    MATLAB's ssim_index.m and BasicSR do. With y_channel=False it is the mean of the per-channel SSIMs.
    """
    x, y = _prepare(a, b, crop_border, y_channel, round_y)
    if x.shape[0] < 11 or x.shape[1] < 11:
        raise ValueError(f"ssim needs at least 11x11 pixels after cropping, got {x.shape[:2]}")
    return float(np.mean([_ssim_channel(x[:, :, c], y[:, :, c]) for c in range(x.shape[2])]))
