"""Real-ESRGAN's second-order degradation (`data.degradation: realesrgan`), made for a whole batch at once.

Real-ESRGAN (Wang et al., ICCVW 2021) trains on LR images made from the HR ones by two rounds of blur -> resize ->
noise -> JPEG, then a resize to the LR size and a sinc filter before or after the last JPEG: it covers the ringing,
overshoot, blocking and noise of real photos that a plain bicubic downscale never shows the network. The settings are
`config.RealESRGANDegradationConfig` (the x4plus model's).

Two halves, so that it runs where the training runs:
- `draw` (in the DataLoader worker, per sample, numpy): every random choice of a sample from its own generator (the
  sample's seed, as every other choice of the data pipeline: the stream is a pure function of the config's seed):
  three blur kernels (21x21, zero-padded) and a vector of parameters (`P_*`).
- `degrade` (per batch, torch, on the batch's device): applies them. Like Real-ESRGAN, a batch shares its resize
  scales and modes, the order of the last JPEG and sinc, the JPEG block phase and the noise generator's seed (those of
  its first sample: the shapes in a batch must agree); everything else is per sample (also whether the second
  blur happens and which noise, which Real-ESRGAN decides once per batch). On a GPU this is a few dozen
  batched kernels per step instead of per-sample CPU work in the workers; on a CPU it runs in the worker that
  collates the batch (`data.patch_loader`).

The JPEG is computed in torch (`jpeg`): baseline JPEG as libjpeg does it at a given quality (JFIF YCbCr, 4:2:0
chroma by 2x2 averaging, the standard tables scaled as libjpeg scales them, 8x8 DCT, rounding, the decoder's
triangle "fancy" chroma upsampling), so a batch needs no encoder round trip per image. Pillow's libjpeg is the oracle
in the tests. Poisson noise is Real-ESRGAN's (BasicSR's `generate_poisson_noise_pt`): poisson(img x vals) / vals - img
on the image rounded to 8-bit levels (for grey noise its grey image, torchvision's weights), vals = 2^ceil(log2(the
number of distinct levels in the image)), counted per image on the device (`count_levels`: a table of the 256
levels, no host sync where Real-ESRGAN calls torch.unique per image). Photographs mostly have 256 after the first
blur and resize, not always: 128 or fewer in 17 % of the crops an audit measured, where the noise is stronger.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import RealESRGANDegradationConfig

log = logging.getLogger(__name__)

KERNEL_MAX = 21  # kernels travel zero-padded to this size
MODES = ("area", "bilinear", "bicubic")

# the parameter vector of one sample (float64); "batch" ones are read from the batch's first sample
P_SCALE1 = 0  # batch: first resize, relative to the HR region
P_MODE1 = 1  # batch: index into MODES
P_GAUSS1 = 2  # 1 = Gaussian noise, 0 = Poisson
P_SIGMA1 = 3  # Gaussian sigma, in 0..1 units
P_POISSON1 = 4  # Poisson noise scale
P_GRAY1 = 5  # 1 = the same noise in every channel
P_QUALITY1 = 6  # JPEG quality (integer-valued)
P_SCALE2 = 7  # batch: second resize, relative to the LR size
P_MODE2 = 8  # batch
P_GAUSS2 = 9
P_SIGMA2 = 10
P_POISSON2 = 11
P_GRAY2 = 12
P_QUALITY2 = 13
P_JPEG_LAST = 14  # batch: 1 = resize + sinc, then JPEG; 0 = JPEG, then resize + sinc
P_MODE3 = 15  # batch: the final resize's mode
P_SEED = 16  # batch: the noise generator's seed (< 2**52, exact in float64)
P_PHASE_Y = 17  # batch: JPEG block grid offset (0..15): patches are cut from inside larger images
P_PHASE_X = 18
P_SIZE1 = 19  # kernel sizes (1 = no blur): the batch's largest sets the convolution's size
P_SIZE2 = 20
P_SIZE3 = 21
P_USM = 22  # batch: the unsharp mask's weight on the HR (0 = none; a setting, carried with the draws)
N_PARAMS = 23


# ----------------------------------------------------------------------------------------------------------------
# kernels (numpy, float64, in the workers)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(ax, ax)  # x across columns, y down rows


def anisotropic_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float, *, beta: float = 1.0, shape: str = "gaussian"
) -> np.ndarray:
    """A size x size blur kernel from the rotated covariance diag(sigma_x^2, sigma_y^2), summing to 1.

    gaussian: exp(-q / 2); generalized: exp(-q^beta / 2); plateau: 1 / (1 + q^beta), q = x^T Sigma^-1 x.
    """
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    inv = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    x, y = _grid(size)
    q = inv[0, 0] * x * x + (inv[0, 1] + inv[1, 0]) * x * y + inv[1, 1] * y * y
    if shape == "gaussian":
        k = np.exp(-0.5 * q)
    elif shape == "generalized":
        k = np.exp(-0.5 * np.power(q, beta))
    elif shape == "plateau":
        k = 1.0 / (np.power(q, beta) + 1.0)
    else:
        raise ValueError(f"unknown kernel shape {shape!r}")
    return k / k.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """The circular low-pass (2-D sinc) filter of angular cutoff `cutoff` (radians per pixel), summing to 1."""
    x, y = _grid(size)
    r = np.hypot(x, y)
    j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * r)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * j1 / (2 * math.pi * r)
    k[size // 2, size // 2] = cutoff**2 / (4 * math.pi)  # the limit at r = 0
    return k / k.sum()


def pad_kernel(k: np.ndarray, size: int = KERNEL_MAX) -> np.ndarray:
    p = (size - k.shape[0]) // 2
    return np.pad(k, p)


def _beta(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Real-ESRGAN's draw: half of the time in [lo, 1] (for generalized Gaussians: heavier tails), half in [1, hi]
    # (flatter tops); with its plateau range [1, 2], beta is exactly 1 in half the plateau kernels. The validation
    # keeps lo <= 1 <= hi.
    if rng.random() < 0.5:
        return float(rng.uniform(lo, 1.0))
    return float(rng.uniform(1.0, hi))


_KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def random_kernel(
    rng: np.random.Generator,
    sizes: Sequence[int],
    probs: Sequence[float],
    sinc_prob: float,
    sigma: Sequence[float],
    betag: Sequence[float],
    betap: Sequence[float],
) -> np.ndarray:
    """One blur kernel of a random size: a sinc filter with `sinc_prob`, else a kernel of a type drawn by `probs`."""
    size = int(rng.choice(np.asarray(sizes)))
    if rng.random() < sinc_prob:
        # a small kernel cannot hold a low cutoff's ripples
        cutoff = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return sinc_kernel(size, float(cutoff))
    p = np.asarray(probs, dtype=np.float64)
    kind = _KERNEL_TYPES[int(rng.choice(len(_KERNEL_TYPES), p=p / p.sum()))]
    sx = float(rng.uniform(sigma[0], sigma[1]))
    if kind.endswith("aniso"):
        sy, theta = float(rng.uniform(sigma[0], sigma[1])), float(rng.uniform(-math.pi, math.pi))
    else:
        sy, theta = sx, 0.0
    if kind.startswith("generalized"):
        return anisotropic_kernel(size, sx, sy, theta, beta=_beta(rng, *betag), shape="generalized")
    if kind.startswith("plateau"):
        return anisotropic_kernel(size, sx, sy, theta, beta=_beta(rng, *betap), shape="plateau")
    return anisotropic_kernel(size, sx, sy, theta)


def _resize_scale(rng: np.random.Generator, probs: Sequence[float], lo_hi: Sequence[float]) -> float:
    p = np.asarray(probs, dtype=np.float64)
    kind = int(rng.choice(3, p=p / p.sum()))  # up, down, keep (the validation keeps lo <= 1 <= hi)
    if kind == 0:
        return float(rng.uniform(1.0, lo_hi[1]))
    if kind == 1:
        return float(rng.uniform(lo_hi[0], 1.0))
    return 1.0


def draw(rng: np.random.Generator, cfg: RealESRGANDegradationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every random choice of one sample: kernels (3, 21, 21) float32 (blur 1, blur 2, final sinc) and the
    parameter vector (N_PARAMS,) float64. The order of the draws is fixed (the stream must not change)."""
    kernels = np.zeros((3, KERNEL_MAX, KERNEL_MAX), dtype=np.float32)
    params = np.zeros(N_PARAMS, dtype=np.float64)
    c = KERNEL_MAX // 2
    k1 = random_kernel(
        rng, cfg.kernel_sizes, cfg.kernel_prob, cfg.sinc_prob, cfg.blur_sigma, cfg.betag, cfg.betap
    )
    kernels[0] = pad_kernel(k1)
    params[P_SIZE1] = k1.shape[0]
    if rng.random() < cfg.second_blur_prob:
        k2 = random_kernel(
            rng, cfg.kernel_sizes, cfg.kernel_prob, cfg.sinc_prob2, cfg.blur_sigma2, cfg.betag2, cfg.betap2
        )
        kernels[1] = pad_kernel(k2)
        params[P_SIZE2] = k2.shape[0]
    else:
        kernels[1, c, c] = 1.0
        params[P_SIZE2] = 1
    if rng.random() < cfg.final_sinc_prob:
        size = int(rng.choice(np.asarray(cfg.kernel_sizes)))
        k3 = sinc_kernel(size, float(rng.uniform(math.pi / 3, math.pi)))
        kernels[2] = pad_kernel(k3)
        params[P_SIZE3] = size
    else:
        kernels[2, c, c] = 1.0
        params[P_SIZE3] = 1
    orders = (
        (P_SCALE1, P_MODE1, P_GAUSS1, P_SIGMA1, P_POISSON1, P_GRAY1, P_QUALITY1),
        (P_SCALE2, P_MODE2, P_GAUSS2, P_SIGMA2, P_POISSON2, P_GRAY2, P_QUALITY2),
    )
    settings = (
        (cfg.resize_prob, cfg.resize_range, cfg.gaussian_noise_prob, cfg.noise_sigma, cfg.poisson_scale,
         cfg.gray_noise_prob, cfg.jpeg_quality),
        (cfg.resize_prob2, cfg.resize_range2, cfg.gaussian_noise_prob2, cfg.noise_sigma2, cfg.poisson_scale2,
         cfg.gray_noise_prob2, cfg.jpeg_quality2),
    )  # fmt: skip
    for (i_scale, i_mode, i_gauss, i_sigma, i_poisson, i_gray, i_q), s in zip(orders, settings, strict=True):
        resize_prob, resize_range, gauss_prob, sigma, poisson, gray_prob, quality = s
        params[i_scale] = _resize_scale(rng, resize_prob, resize_range)
        params[i_mode] = int(rng.integers(0, len(MODES)))
        params[i_gauss] = float(rng.random() < gauss_prob)
        params[i_sigma] = rng.uniform(sigma[0], sigma[1]) / 255.0
        params[i_poisson] = rng.uniform(poisson[0], poisson[1])
        params[i_gray] = float(rng.random() < gray_prob)
        params[i_q] = round(float(rng.uniform(quality[0], quality[1])))
    params[P_JPEG_LAST] = float(rng.random() < 0.5)
    params[P_MODE3] = int(rng.integers(0, len(MODES)))
    params[P_SEED] = int(rng.integers(0, 2**52))
    params[P_PHASE_Y], params[P_PHASE_X] = (int(v) for v in rng.integers(0, 16, size=2))
    params[P_USM] = cfg.usm_weight  # not a draw: the stream of draws is the same with and without it
    return kernels, params


def _check_images(x: Tensor, what: str, scale: int) -> None:
    """One ValueError naming what is wrong with an image input of `degrade` / `degrade_image`: float32 RGB or grey in
    [0, 1], (N, 3 or 1, H, W) or (3 or 1, H, W), H and W multiples of `scale` (deep inside, a wrong one fails
    obscurely: "not enough values to unpack", "expected scalar type Double", or a silently misaligned or saturated
    LR)."""
    dims, shape = (4, "(N, C, H, W)") if what == "regions" else (3, "(C, H, W)")
    got = f"got {x.dtype} {tuple(x.shape)}"
    if x.dim() != dims or x.shape[-3] not in (1, 3):
        raise ValueError(f"{what}: must be RGB or grey images {shape} (C = 3 or 1), {got}")
    if x.dtype != torch.float32:
        raise ValueError(f"{what}: must be float32 in [0, 1] (x.float() / 255 for uint8), {got}")
    if x.shape[-1] % scale or x.shape[-2] % scale:
        raise ValueError(f"{what}: height and width must be multiples of the scale ({scale}), {got}")


def degrade_image(hr: Tensor, cfg: RealESRGANDegradationConfig, scale: int, seed: int) -> Tensor:
    """A whole image's LR (C, H / scale, W / scale) by the degradation, its draws from `seed`, the HR not
    sharpened: a fixed real-world LR for validation. `hr` (C, H, W) float32 in [0, 1], C = 3 or 1, H and W multiples
    of `scale` (otherwise a ValueError)."""
    _check_images(hr, "hr", scale)
    kernels, params = draw(np.random.default_rng(seed), cfg)
    params[P_USM] = 0.0  # validation compares with the HR as it is
    lr, _, _ = degrade(
        hr[None], torch.from_numpy(kernels)[None], torch.from_numpy(params)[None], scale=scale, margin=0
    )
    return lr[0]


# ----------------------------------------------------------------------------------------------------------------
# JPEG in torch

# ITU-T T.81 Annex K tables (what libjpeg scales by the quality)
_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
]  # fmt: skip


def quant_tables(quality: Tensor) -> tuple[Tensor, Tensor]:
    """libjpeg's jpeg_set_quality(q, force_baseline): the luma and chroma tables (N, 8, 8) for integer qualities."""
    q = quality.round().clamp(1, 100)
    scale = torch.where(q < 50, torch.floor(5000.0 / q), 200.0 - 2.0 * q)
    tables = []
    for base in (_LUMA, _CHROMA):
        t = torch.tensor(base, dtype=torch.float32, device=quality.device).view(1, 8, 8)
        tables.append(torch.floor((t * scale.view(-1, 1, 1) + 50.0) / 100.0).clamp(1, 255))
    return tables[0], tables[1]


def _dct_matrix(device: torch.device) -> Tensor:
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * 0.5
    d[0] = math.sqrt(1 / 8)
    return d.to(device=device, dtype=torch.float32)  # orthonormal: JPEG's 2-D DCT is D B D^T


def _codec(plane: Tensor, table: Tensor, dct: Tensor) -> Tensor:
    """Quantize the 8x8 blocks of (N, K, H, W) 0..255 samples (H, W multiples of 8) and decode them again."""
    n, k, h, w = plane.shape
    blocks = plane.reshape(n, k, h // 8, 8, w // 8, 8).transpose(3, 4) - 128.0
    coef = dct @ blocks @ dct.T
    qt = table.view(n, 1, 1, 1, 8, 8)
    coef = torch.round(coef / qt) * qt
    out = (dct.T @ coef @ dct + 128.0).round_().clamp_(0.0, 255.0)
    return out.transpose(3, 4).reshape(n, k, h, w)


def jpeg(x: Tensor, quality: Tensor, phase: tuple[int, int] = (0, 0)) -> Tensor:
    """Baseline JPEG of an (N, 3, H, W) batch in [0, 1] at per-image integer `quality` (N,), decoded: values on
    8-bit levels. `phase` shifts the 16x16 block grid (rows, columns) as if the image were cut from a larger one.
    A grey batch (N, 1, H, W) is its luma plane alone: what the colour path gives three equal channels (their
    chroma is 128 everywhere, which the codec keeps exactly), at a third of the work."""
    _, c, h, w = x.shape
    v = x.clamp(0.0, 1.0).mul(255.0).round()
    py, px = phase[0] % 16, phase[1] % 16
    hh, ww = -(-(h + py) // 16) * 16, -(-(w + px) // 16) * 16
    dct = _dct_matrix(x.device)
    luma_t, chroma_t = quant_tables(quality.to(device=x.device, dtype=torch.float32))
    if c == 1:
        grey = _codec(F.pad(v, (px, ww - w - px, py, hh - h - py), mode="replicate"), luma_t, dct)
        return grey[:, :, py : py + h, px : px + w].div_(255.0)
    r, g, b = v.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0
    ycc = torch.stack((y, cb, cr), 1).round_().clamp_(0.0, 255.0)
    # libjpeg extends a partial block by repeating the edge sample
    ycc = F.pad(ycc, (px, ww - w - px, py, hh - h - py), mode="replicate")
    luma = _codec(ycc[:, :1], luma_t, dct)
    chroma = F.avg_pool2d(ycc[:, 1:], 2).round_()  # 4:2:0
    chroma = _codec(chroma, chroma_t, dct)
    # the decoder's "fancy" upsampling: each output sample 3/4 the nearer and 1/4 the farther input sample in
    # each direction, edges repeated: exactly bilinear interpolation by 2 with half-pixel centres
    chroma = F.interpolate(chroma, scale_factor=2.0, mode="bilinear", align_corners=False)
    yy, cb, cr = luma[:, 0], chroma[:, 0] - 128.0, chroma[:, 1] - 128.0
    rgb = torch.stack((yy + 1.402 * cr, yy - 0.344136286 * cb - 0.714136286 * cr, yy + 1.772 * cb), 1)
    rgb = rgb[:, :, py : py + h, px : px + w]
    return rgb.round_().clamp_(0.0, 255.0).div_(255.0)


# ----------------------------------------------------------------------------------------------------------------
# the batch (torch, on the batch's device)


def filter2d(x: Tensor, kernels: Tensor, size: int) -> Tensor:
    """Convolve each image of (N, C, H, W) with its own kernel: the centre size x size of (N, 21, 21), reflected
    edges (replicated where the image is too small to reflect). Kernels larger than 15x15 go through the FFT,
    which is faster there (a batch of 16 192x192 regions, 21x21 kernels, one Zen 3 thread: 24 ms against 34 ms
    for conv2d; 15x15: 23 against 18)."""
    if size <= 1:
        return x
    n, c, h, w = x.shape
    lo = (KERNEL_MAX - size) // 2
    k = kernels[:, lo : lo + size, lo : lo + size].to(x.dtype)
    p = size // 2
    mode = "reflect" if p < h and p < w else "replicate"
    y = F.pad(x, (p, p, p, p), mode=mode)
    if size <= 15:
        weight = k.repeat_interleave(c, 0).unsqueeze(1)  # (N*C, 1, size, size)
        y = F.conv2d(y.reshape(1, n * c, h + 2 * p, w + 2 * p), weight, groups=n * c)
        return y.view(n, c, h, w)  # symmetric kernels: convolution and correlation agree
    # circular convolution of the padded image with the kernel at the origin; rows and columns p.. of the valid
    # part (the last h x w) are each pixel's window, centred, as conv2d would compute it
    # (zero-extended to sizes whose only factors are 2, 3 and 5: an FFT of 212 = 4 x 53 took longer than conv2d)
    shape = (_smooth(h + 2 * p), _smooth(w + 2 * p))
    fy = torch.fft.rfft2(y, s=shape)
    fk = torch.fft.rfft2(k, s=shape).unsqueeze(1)
    out = torch.fft.irfft2(fy * fk, s=shape)
    return out[..., 2 * p : 2 * p + h, 2 * p : 2 * p + w].contiguous()


def _smooth(n: int) -> int:
    """The least m >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, which Real-ESRGAN's grey Poisson noise uses


def count_levels(levels: Tensor) -> Tensor:
    """The number of distinct values in each image of `levels` (N, ...), integer-valued floats in 0..255: (N,)
    float, Real-ESRGAN's len(torch.unique(image)), from a table of the 256 levels each image holds, on the device
    without waiting for it (no host sync)."""
    idx = levels.flatten(1).long()
    seen = torch.zeros((idx.shape[0], 256), dtype=torch.float32, device=levels.device)
    seen.scatter_(1, idx, 1.0)  # every write puts the same 1: the order of the writes cannot change the table
    return seen.sum(1)


def poisson_vals(levels: Tensor) -> Tensor:
    """Real-ESRGAN's Poisson `vals` per image of `levels` (see `count_levels`): 2^ceil(log2(distinct levels)),
    (N,) float, as the least power of two from 1 to 256 not below the count (exact, no logarithm's rounding)."""
    count = count_levels(levels)
    powers = 2.0 ** torch.arange(9, dtype=torch.float32, device=levels.device)
    return powers[(powers.view(1, -1) < count.view(-1, 1)).sum(1)]


def add_noise(
    x: Tensor, gauss: Tensor, sigma: Tensor, poisson_scale: Tensor, gray: Tensor, generator: torch.Generator
) -> Tensor:
    """Per image: Gaussian noise of `sigma` where `gauss` is 1, else Poisson noise times `poisson_scale`; the same
    noise in every channel where `gray` is 1. Clipped to [0, 1]. `gauss` and `gray` are read on the host (they
    split the batch: each image draws only the noise it gets; Poisson draws cost 8x Gaussian ones on a CPU).

    Poisson noise as Real-ESRGAN makes it: of the image rounded as it rounds it, clamp(round(x * 255), 0, 255)
    (grey noise: of its grey image so rounded), poisson(levels / 255 x vals) / vals - levels / 255, with `vals`
    from the number of distinct levels of that image (`poisson_vals`): few levels, strong noise."""
    _, c, h, w = x.shape
    dev = x.device
    noise = torch.zeros_like(x)
    is_gauss, is_gray = gauss.detach().cpu().bool(), gray.detach().cpu().bool()
    for want_gauss in (True, False):
        for want_gray in (False, True):
            rows = torch.nonzero((is_gauss == want_gauss) & (is_gray == want_gray)).flatten()
            if not len(rows):
                continue
            idx = rows.to(dev)
            channels = 1 if want_gray else c
            if want_gauss:
                z = torch.randn((len(rows), channels, h, w), generator=generator, device=dev)
                part = z * sigma[idx].view(-1, 1, 1, 1)
            else:
                src = x[idx]
                if want_gray and c == 3:
                    src = GREY[0] * src[:, 0:1] + GREY[1] * src[:, 1:2] + GREY[2] * src[:, 2:3]
                elif want_gray:
                    # a grey image's grey as three equal channels give it (the weights sum to 0.9999)
                    src = GREY[0] * src[:, :1] + GREY[1] * src[:, :1] + GREY[2] * src[:, :1]
                levels = src.mul(255.0).round_().clamp_(0.0, 255.0)
                vals = poisson_vals(levels).view(-1, 1, 1, 1)
                src = levels.div_(255.0)
                part = torch.poisson(src * vals, generator=generator) / vals - src
                part = part * poisson_scale[idx].view(-1, 1, 1, 1)
            noise[idx] = part.expand(len(rows), c, h, w)
    return (x + noise).clamp_(0.0, 1.0)


def _gaussian_1d(size: int, sigma: float, device: torch.device) -> Tensor:
    t = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return (k / k.sum()).to(torch.float32)


USM_SIZE, USM_SIGMA, USM_THRESHOLD = (
    51,
    8.0,
    10.0,
)  # Real-ESRGAN's: radius 50 (OpenCV's sigma for a 51 px kernel)


def _blur_matrix(n: int, k: Tensor) -> Tensor:
    """(n, n) matrix M with M @ v = v convolved with the symmetric 1-D kernel k, edges reflected as torch's
    'reflect' (OpenCV's default, reflect-101) or replicated where n is too short to reflect."""
    p = k.numel() // 2
    i = torch.arange(n).view(-1, 1)
    j = i + torch.arange(-p, p + 1).view(1, -1)
    if p < n:
        j = torch.where(j < 0, -j, j)
        j = torch.where(j > n - 1, 2 * (n - 1) - j, j)
    else:
        j = j.clamp(0, n - 1)
    # built on the host in float64: an accumulating index_put_ on a GPU adds in no fixed order (the batches of a
    # GPU run must repeat exactly)
    taps = k.detach().to("cpu", torch.float64).view(1, -1).expand_as(j)
    m = torch.zeros(n, n, dtype=torch.float64).index_put_((i.expand_as(j), j), taps, accumulate=True)
    return m.to(device=k.device, dtype=k.dtype)


def _blur_separable(x: Tensor, k: Tensor) -> Tensor:
    # two matrix products with the edge handling inside the matrices: BLAS, where a 51-tap single-channel conv2d
    # ran at a fraction of the speed (a batch of 16 192x192 regions, one Zen 3 thread: see bench/degrade.py)
    _, _, h, w = x.shape
    return _blur_matrix(h, k) @ x @ _blur_matrix(w, k).T


def usm_sharpen(img: Tensor, weight: float) -> Tensor:
    """Real-ESRGAN's unsharp mask of the HR images (N, C, H, W) in [0, 1]: img + weight x (img - Gaussian blur),
    clipped, applied where the detail exceeds 10 levels (a blurred mask, so that flat areas and their noise stay).
    float32 or float64, computed in that dtype; anything else is a ValueError."""
    if img.dim() != 4 or img.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"img: must be float32 or float64 images (N, C, H, W), got {img.dtype} {tuple(img.shape)}"
        )
    k = _gaussian_1d(USM_SIZE, USM_SIGMA, img.device).to(img.dtype)
    _, _, h, w = img.shape
    rows, cols = _blur_matrix(h, k), _blur_matrix(w, k).T  # built once for both blurs (_blur_separable's)
    residual = img - rows @ img @ cols
    mask = (residual.abs() * 255.0 > USM_THRESHOLD).to(img.dtype)
    soft = rows @ mask @ cols
    sharp = (img + weight * residual).clamp_(0.0, 1.0)
    return torch.lerp(img, sharp, soft)


def degrade(
    regions: Tensor, kernels: Tensor, params: Tensor, *, scale: int, margin: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(LR, HR, plain HR) float batches from float HR regions (N, 3, H, W) with `margin` LR pixels of context on
    every side (H and W multiples of `scale`), their kernels (N, 3, 21, 21) and parameters (N, N_PARAMS), on the
    regions' device. Grey regions (N, 1, H, W) give what three equal channels with grey noise would give, channel
    for channel (a grey sensor's noise, not a colour one's, whatever the parameters drew). LR on 8-bit levels; HR
    the regions' centres, sharpened where the parameters say so (the target); plain HR the centres as they are (what
    Real-ESRGAN's discriminator sees; HR itself without sharpening). Regions of another shape or dtype, or kernels
    and parameters that are not one per region, are a ValueError."""
    _check_images(regions, "regions", scale)
    n = regions.shape[0]
    if tuple(kernels.shape) != (n, 3, KERNEL_MAX, KERNEL_MAX) or tuple(params.shape) != (n, N_PARAMS):
        raise ValueError(
            f"kernels and params: must be ({n}, 3, {KERNEL_MAX}, {KERNEL_MAX}) and ({n}, {N_PARAMS}) for {n} regions "
            f"(esrgan.degrade.draw's, stacked), got {tuple(kernels.shape)} and {tuple(params.shape)}"
        )
    dev = regions.device
    host = params.detach().to("cpu", torch.float64)
    if regions.shape[1] == 1:
        # grey: a grey sensor's noise, the same in every channel of the RGB it stands for
        host = host.clone()  # `.to` returned the caller's own tensor if it was on the CPU in float64
        host[:, P_GRAY1] = host[:, P_GRAY2] = 1.0
    first = host[0].tolist()
    per = params.to(dev, torch.float32)
    kernels = kernels.to(dev, torch.float32)
    _, _, rh, rw = regions.shape
    lh, lw = rh // scale, rw // scale
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(first[P_SEED]))
    phase = (int(first[P_PHASE_Y]), int(first[P_PHASE_X]))

    def largest(i: int) -> int:
        return int(host[:, i].max())

    plain = regions
    if first[P_USM] > 0:
        # as Real-ESRGAN: the sharpened HR is the target and the source of the LR
        regions = usm_sharpen(regions, first[P_USM]).mul_(255.0).round_().div_(255.0)
    x = filter2d(regions, kernels[:, 0], largest(P_SIZE1))
    s1 = first[P_SCALE1]
    x = resize(x, (max(8, int(rh * s1)), max(8, int(rw * s1))), MODES[int(first[P_MODE1])])
    # the Gaussian/Poisson and grey choices from the host copy: reading them from the GPU would wait for it
    x = add_noise(x, host[:, P_GAUSS1], per[:, P_SIGMA1], per[:, P_POISSON1], host[:, P_GRAY1], gen)
    x = jpeg(x, per[:, P_QUALITY1], phase)
    x = filter2d(x, kernels[:, 1], largest(P_SIZE2))
    s2 = first[P_SCALE2]
    x = resize(x, (max(8, int(lh * s2)), max(8, int(lw * s2))), MODES[int(first[P_MODE2])])
    x = add_noise(x, host[:, P_GAUSS2], per[:, P_SIGMA2], per[:, P_POISSON2], host[:, P_GRAY2], gen)
    final_mode = MODES[int(first[P_MODE3])]
    if first[P_JPEG_LAST]:
        x = filter2d(resize(x, (lh, lw), final_mode), kernels[:, 2], largest(P_SIZE3))
        x = jpeg(x, per[:, P_QUALITY2], phase)
    else:
        x = jpeg(x, per[:, P_QUALITY2], phase)
        x = filter2d(resize(x, (lh, lw), final_mode), kernels[:, 2], largest(P_SIZE3))
    lr = x.clamp(0.0, 1.0).mul(255.0).round_().div_(255.0)
    ph, pw = lh - 2 * margin, lw - 2 * margin
    centre = (..., slice(margin * scale, (margin + ph) * scale), slice(margin * scale, (margin + pw) * scale))
    return lr[..., margin : margin + ph, margin : margin + pw].contiguous(), regions[centre], plain[centre]


# ----------------------------------------------------------------------------------------------------------------
# the training pair pool


class PairPool:
    """Real-ESRGAN's training pair pool (`data.realesrgan.pool_size`; its `queue_size`, 180 for a batch of 12).

    The images of a batch share the degradation's resize scales and modes (see `degrade`); the pool mixes batches:
    degraded batches fill it first (and are trained on as they come), then each step trains on `n` pairs drawn at
    random from it and the new batch takes their places. Real-ESRGAN shuffles the whole queue and takes its head,
    which leaves the same random mixture; drawing the places costs `n` copies instead of the pool's size.

    Held as uint8 on the batch's device: every image of a degraded batch is on 8-bit levels (the LR as Real-ESRGAN
    rounds it, the HR before and after the unsharp mask as the photos and `degrade` round them), so the round trip is
    exact, at a quarter of float32's memory (180 pairs of 256x256 HR with their plain HR: 73 MB). The draw of step
    `s` comes from its own generator (seed, s), so a resumed run draws what the uninterrupted one did once the pool
    is restored from the checkpoint (`state_dict`).

    Under DDP every process holds the same pool of all processes' pairs: each step's batches are gathered
    (`gather`: the ranks' tensors concatenated in rank order), the same places drawn on every rank, and each rank
    trains on its share of the draw, so rank 0's pool is the whole state a checkpoint needs. `size` counts pairs
    over all processes (Real-ESRGAN's queue is per GPU: 4 GPUs x 180 = 720 here for the same mixture).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        *,
        rank: int = 0,
        gather: Callable[[Tensor], Tensor] | None = None,
        channels_last: bool = False,
    ) -> None:
        self.size, self.seed, self.rank, self.gather = size, seed, rank, gather
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.images: list[Tensor] = []  # one uint8 (size, C, H, W) tensor per image of a pair
        self.filled = 0

    def __call__(self, batch: Sequence[Tensor], step: int) -> tuple[Tensor, ...]:
        """The pairs to train step `step` on: `batch` itself while the pool fills, then a draw from the pool."""
        local = [t.mul(255.0).round_().to(torch.uint8).contiguous() for t in batch]
        every = [self.gather(t) for t in local] if self.gather is not None else local
        n, b = every[0].shape[0], local[0].shape[0]
        shapes = [tuple(t.shape[1:]) for t in every]
        if [tuple(p.shape[1:]) for p in self.images] != shapes:
            if self.filled:  # restored from a checkpoint of other patch sizes, channels or images per pair
                log.warning(
                    "the training pair pool in the checkpoint holds other images than this run makes: it refills"
                )
            self.images = [
                torch.zeros((self.size, *shape), dtype=torch.uint8, device=t.device)
                for shape, t in zip(shapes, every, strict=True)
            ]
            self.filled = 0
        self.images = [p.to(t.device) for p, t in zip(self.images, every, strict=True)]
        if self.filled % n:  # filling when saved, resumed with another batch size: whole batches only
            log.warning("the training pair pool was saved %d of %d pairs full: %d kept", self.filled, self.size,
                        self.filled - self.filled % n)  # fmt: skip
            self.filled -= self.filled % n
        if self.filled < self.size:
            for p, t in zip(self.images, every, strict=True):
                p[self.filled : self.filled + n] = t
            self.filled += n
            return tuple(batch)
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, step, 0x706F6F6C]).generate_state(1)[0])
        )
        places = torch.randperm(self.size, generator=gen)[:n]  # the same draw on every device
        device = every[0].device
        if device.type == "cuda":  # a pageable copy would make the host wait for the step before
            places = places.pin_memory()
        places = places.to(device, non_blocking=True)
        mine = slice(self.rank * b, (self.rank + 1) * b)
        out = []
        for p, t in zip(self.images, every, strict=True):
            out.append(p[places[mine]].float().div_(255.0).contiguous(memory_format=self.format))
            p[places] = t
        return tuple(out)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "filled": self.filled, "images": [p.cpu() for p in self.images]}

    def load_state_dict(self, state: dict[str, Any] | None) -> bool:
        """Restore a pool saved by `state_dict`; False (the pool refills) when there is none or it has another size
        than this run's (pool_size changed; auto follows data.batch_size). Malformed contents are a ValueError."""
        if state is None or state["size"] != self.size:
            return False
        images, filled = state["images"], state["filled"]
        if (
            not isinstance(images, list)
            or type(filled) is not int
            or not 0 <= filled <= self.size
            or (filled and not images)
            or any(
                not isinstance(p, Tensor)
                or p.layout != torch.strided
                or p.device.type != "cpu"
                or p.dtype != torch.uint8
                or p.dim() != 4
                or p.shape[0] != self.size
                for p in images
            )
        ):
            raise ValueError("the pair pool is not one this version writes")
        # copies: a crafted file's tensors may share storage or be expanded views, which writes would alias
        self.images = [p.clone(memory_format=torch.contiguous_format) for p in images]
        self.filled = filled
        return True
