"""Speed of esrgan.resize.imresize against the alternatives, on a DIV2K-sized photo (2040x1356 RGB).

    .venv/bin/python bench/resize.py [--threads N]

Rows: ours (the per-axis weight matrices as sparse COO products, the shipped code), the same weights applied as dense
(out x in) matmuls, and as a gather-and-add loop over the kernel taps (index_select per tap), a straightforward per-pixel numpy reference written from MATLAB's formulas (timed on a crop and
extrapolated: it would take minutes on the whole image), and PIL's bicubic (different borders and antialiasing; shown
for scale only). The max |difference| column checks each variant against our output on the same pixels.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from hostinfo import cpu_name  # bench/, the script's own folder
from PIL import Image

from esrgan.resize import _contributions, imresize


def _best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _ours(x: torch.Tensor, scale: float) -> torch.Tensor:
    return imresize(x, scale=scale)


def _dense(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The same 1-D weights as dense (out, in) matrices: rows first (MATLAB's order for equal scales)."""
    h, w = x.shape[-2:]
    mats = []
    for n in (h, w):
        out = math.ceil(n * scale)
        weights, index = _contributions(n, out, scale)
        m = np.zeros((out, n))
        np.add.at(m, (np.repeat(np.arange(out), index.shape[1]), index.ravel()), weights.ravel())
        mats.append(torch.from_numpy(m).to(x.dtype))
    return mats[0] @ x @ mats[1].T


def _tap_loop(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The same weights as (out, taps) gathers: one index_select + multiply-add per tap and axis."""
    for dim in (x.dim() - 2, x.dim() - 1):
        n = x.shape[dim]
        weights, index = _contributions(n, math.ceil(n * scale), scale)
        w = torch.from_numpy(weights).to(x.dtype)
        idx = torch.from_numpy(index)
        view = [1] * x.dim()
        view[dim] = w.shape[0]
        out = x.index_select(dim, idx[:, 0]) * w[:, 0].view(view)
        for k in range(1, idx.shape[1]):
            out.add_(x.index_select(dim, idx[:, k]) * w[:, k].view(view))
        x = out
    return x


def _cubic(t: float) -> float:
    a = abs(t)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _mirror(i: int, n: int) -> int:
    """0-based index folded into [0, n) with the edge pixel repeated (MATLAB 'symmetric')."""
    i %= 2 * n
    return i if i < n else 2 * n - 1 - i


def _taps(x: int, n: int, scale: float) -> list[tuple[int, float]]:
    """(source index, weight) of output pixel x (1-based) along an axis of length n, from MATLAB's imresize."""
    width = 4 / scale if scale < 1 else 4.0
    u = x / scale + 0.5 * (1 - 1 / scale)
    first = math.floor(u - width / 2)
    taps = []
    for j in range(first, first + math.ceil(width) + 2):
        w = scale * _cubic(scale * (u - j)) if scale < 1 else _cubic(u - j)
        taps.append((_mirror(j - 1, n), w))
    total = sum(w for _, w in taps)
    return [(i, w / total) for i, w in taps]


def _reference(img: np.ndarray, scale: float) -> np.ndarray:
    """Per output pixel: the 2-D weighted sum over its (taps x taps) input neighbourhood."""
    h, w, c = img.shape
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    rows = [_taps(y, h, scale) for y in range(1, oh + 1)]
    cols = [_taps(x, w, scale) for x in range(1, ow + 1)]
    out = np.zeros((oh, ow, c))
    for y in range(oh):
        for x in range(ow):
            acc = np.zeros(c)
            for i, wy in rows[y]:
                for j, wx in cols[x]:
                    acc += wy * wx * img[i, j]
            out[y, x] = acc
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from skimage import data

    # a real photo tiled to DIV2K's 2040x1356
    photo = np.tile(data.astronaut(), (3, 4, 1))[:1356, :2040]
    hr = torch.from_numpy(photo).permute(2, 0, 1).float()
    ours = imresize(hr, scale=0.25)

    print(cpu_name())
    print(
        f"torch threads: {args.threads}; input 2040x1356 RGB, scale 1/4 (output {ours.shape[2]}x{ours.shape[1]})"
    )
    print(f"{'method':<40} {'seconds':>10} {'max |diff| vs ours':>20}")
    rows: list[tuple[str, float, str]] = []
    rows.append(("ours: sparse matmuls, float32", _best_of(lambda: imresize(hr, scale=0.25)), "0"))
    hr64 = hr.double()
    t64 = _best_of(lambda: imresize(hr64, scale=0.25))
    rows.append(
        (
            "ours: sparse matmuls, float64",
            t64,
            f"{(imresize(hr64, scale=0.25) - ours.double()).abs().max():.1e}",
        )
    )
    dense = _dense(hr, 0.25)
    rows.append(
        (
            "same weights as dense matmuls, float32",
            _best_of(lambda: _dense(hr, 0.25)),
            f"{(dense - ours).abs().max():.1e}",
        )
    )
    taps = _tap_loop(hr, 0.25)
    rows.append(
        (
            "same weights as a tap loop, float32",
            _best_of(lambda: _tap_loop(hr, 0.25)),
            f"{(taps - ours).abs().max():.1e}",
        )
    )

    crop = photo[:96, :96].astype(np.float64)
    t_ref = _best_of(lambda: _reference(crop, 0.25), repeat=1)
    ref = _reference(crop, 0.25)
    ours_crop = imresize(torch.from_numpy(crop).permute(2, 0, 1), scale=0.25).permute(1, 2, 0).numpy()
    per_pixel = t_ref / (24 * 24)
    rows.append(
        (
            "per-pixel numpy reference (extrapolated)",
            per_pixel * ours.shape[1] * ours.shape[2],
            f"{np.abs(ref - ours_crop).max():.1e} (96x96 crop)",
        )
    )

    pil = Image.fromarray(photo)
    size = (ours.shape[2], ours.shape[1])
    pil_out = np.asarray(pil.resize(size, Image.Resampling.BICUBIC)).astype(np.float32)
    ours_u8 = ours.permute(1, 2, 0).round().clamp(0, 255).numpy()
    rows.append(
        (
            "PIL BICUBIC, uint8 (different kernel)",
            _best_of(lambda: pil.resize(size, Image.Resampling.BICUBIC)),
            f"{np.abs(pil_out - ours_u8).max():.0f} (uint8 levels)",
        )
    )

    for name, secs, diff in rows:
        print(f"{name:<40} {secs:>10.3f} {diff:>20}")

    print()
    print(f"{'other shapes, float32 (seconds)':<40} {'ours':>8} {'dense':>8} {'taps':>8}")
    cases = [
        ("training batch 16x3x128x128 x1/4", torch.rand(16, 3, 128, 128) * 255, 0.25),
        ("upscale 510x339 RGB x4", ours.unsqueeze(0), 4.0),
        ("outscale 2040x1356 RGB x0.875", hr, 0.875),
    ]
    for name, x, scale in cases:
        times = [_best_of(lambda f=f, x=x, scale=scale: f(x, scale)) for f in (_ours, _dense, _tap_loop)]
        print(f"{name:<40} " + " ".join(f"{t:>8.4f}" for t in times))


if __name__ == "__main__":
    main()
