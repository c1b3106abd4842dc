"""NIQE, the no-reference "naturalness" score of the perceptual SR literature (Mittal, Soundararajan, Bovik 2013).

Lower is better. The score is the distance between a multivariate Gaussian fitted to local statistics of the image
and the published model of pristine natural images (assets/niqe_pris_params.npz). Reproducing published numbers
depends on details of the MATLAB release that libraries do not share (replicate-padded 7x7 window, per-block
AGGD fits by grid search, MATLAB bicubic for the second scale, rounded Y), so they are followed here step by step.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import numpy as np
import torch

from .metrics import check_pixels, rgb_to_y
from .resize import imresize

__all__ = ["niqe"]

BLOCK = 96
# the grid the MATLAB code searches for the generalised-Gaussian shape parameter
_SHAPES = np.arange(0.2, 10.0005, 0.001)


@functools.lru_cache(maxsize=1)
def _pristine() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu 36, cov 36x36, 7x7 window) of the pristine model."""
    with resources.files("esrgan").joinpath("assets/niqe_pris_params.npz").open("rb") as fh:
        data = np.load(fh)
        return (
            np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(-1),
            np.asarray(data["cov_pris_param"], dtype=np.float64),
            np.asarray(data["gaussian_window"], dtype=np.float64),
        )


@functools.lru_cache(maxsize=1)
def _aggd_ratio() -> np.ndarray:
    """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) over the shape grid: the moment ratio an AGGD of shape a has."""
    gamma = np.vectorize(math.gamma)  # once, 9801 values: not worth a scipy dependency
    return gamma(2 / _SHAPES) ** 2 / (gamma(1 / _SHAPES) * gamma(3 / _SHAPES))


def _aggd_fit(v: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit by moment matching: (shape, left scale, right scale).

    A flat or one-sided block (e.g. a uniform area) has no two-sided distribution. MATLAB then gets NaN moments,
    and its min() over the all-NaN distance picks the first grid shape (0.2); we return the same values (NaN for
    the scales without data), because that 0.2 enters the published nanmean and so the published scores.
    """
    v = v.ravel()
    neg, pos = v[v < 0], v[v > 0]
    left_std = math.sqrt(float(np.mean(neg**2))) if neg.size else math.nan
    right_std = math.sqrt(float(np.mean(pos**2))) if pos.size else math.nan
    if neg.size and pos.size:
        g = left_std / right_std
        rhat = float(np.mean(np.abs(v))) ** 2 / float(np.mean(v**2))
        rhat_norm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
        shape = float(_SHAPES[np.argmin((_aggd_ratio() - rhat_norm) ** 2)])
    else:
        shape = float(_SHAPES[0])
    k = math.sqrt(math.gamma(1 / shape) / math.gamma(3 / shape))
    return shape, left_std * k, right_std * k


def _block_features(block: np.ndarray) -> list[float]:
    """The 18 features of one block of MSCN coefficients: their AGGD fit, then that of 4 neighbour products."""
    shape, bl, br = _aggd_fit(block)
    feat = [shape, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        # MATLAB's circshift inside the block: neighbours wrap around at the block edge
        shape, bl, br = _aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * math.gamma(2 / shape) / math.gamma(1 / shape)
        feat += [shape, mean, bl, br]
    return feat


def _filter_replicate(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """2-D filtering with edge-replicated borders (MATLAB imfilter 'replicate'); the window is symmetric."""
    r = window.shape[0] // 2
    p = np.pad(img, r, mode="edge")
    h, w = img.shape
    out = np.zeros_like(img)
    for i in range(window.shape[0]):
        for j in range(window.shape[1]):
            out += window[i, j] * p[i : i + h, j : j + w]
    return out


def _scale_features(img: np.ndarray, window: np.ndarray, block: int) -> np.ndarray:
    mu = _filter_replicate(img, window)
    sigma = np.sqrt(np.abs(_filter_replicate(img * img, window) - mu * mu))
    mscn = (img - mu) / (sigma + 1)
    rows, cols = img.shape[0] // block, img.shape[1] // block
    return np.array(
        [
            _block_features(mscn[r * block : (r + 1) * block, c * block : (c + 1) * block])
            for r in range(rows)
            for c in range(cols)
        ]
    )


def niqe(img: np.ndarray, *, crop_border: int = 0, bits: int = 8) -> float:
    """NIQE of an RGB (HxWx3, Y channel used) or grey (HxW, used as is) image, uint8 or float in [0, 255].

    Other integer dtypes (uint16, int64, ...) and bool are refused (ValueError naming the dtype; see
    esrgan.metrics.check_pixels): convert a 16-bit image with img / 257.0 first. Y is rounded to integers as
    MATLAB's rgb2ycbcr does for uint8 images (`bits` 16: to 1/257, as it does for uint16 ones: a 16-bit image
    keeps its precision; the pristine model was fitted on 8-bit images); the image is cut to whole 96x96 blocks
    (top-left kept). Needs at least two blocks (a covariance of one sample is undefined).
    """
    a = check_pixels(img, "niqe")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    step = 257.0 if bits == 16 else 1.0
    y = np.round((rgb_to_y(a) if a.ndim == 3 else a.astype(np.float64)) * step) / step
    if y.ndim != 2:
        raise ValueError(f"niqe: need an HxW or HxWx3 image, got shape {np.asarray(img).shape}")
    if crop_border:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    rows, cols = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    if rows * cols < 2:
        raise ValueError(
            f"niqe: image of {y.shape[1]}x{y.shape[0]} has fewer than two {BLOCK}x{BLOCK} blocks"
        )
    y = y[: rows * BLOCK, : cols * BLOCK]

    mu_p, cov_p, window = _pristine()
    feat1 = _scale_features(y, window, BLOCK)
    half = imresize(torch.from_numpy(y), scale=0.5).numpy()
    feat2 = _scale_features(half, window, BLOCK // 2)
    feats = np.concatenate([feat1, feat2], axis=1)

    mu_d = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    cov_d = np.cov(complete, rowvar=False)
    diff = mu_p - mu_d
    return float(np.sqrt(diff @ np.linalg.pinv((cov_p + cov_d) / 2) @ diff))
