"""Measurement TIFFs (esrgan.datatiff): does the value-range rule serve the model, and what does a band cost?

    .venv/bin/python bench/measurements.py [--images ../shared/data/benchmarks/Set5] [--model realesrgan-x4plus]
        [--gain 0.25]

Each photo of the folder becomes a "reflectance" raster, HR = RGB / 255 * gain (gain 0.25: the dark, low-range
values of surface reflectance); LR = its MATLAB-bicubic downscale by the model's scale. LR is upscaled by the code
`esrgan upscale` runs (read_image with measurements, Upscaler.upscale_image, write_image), twice:
- "as is": LR stored as a 16-bit RGB TIFF (a photograph's file): the model sees the values as they are (dark);
- "stretched": LR stored as a float32 TIFF (a measurement raster): esrgan.datatiff maps [min, max] of the values
  onto [0, 1] for the model and back, i.e. the model sees them contrast-stretched.
PSNR is against HR in the raster's own units (peak = gain), all bands, 4-pixel border cropped; bicubic is the
MATLAB-bicubic upscale of LR. A second table times one RGB raster against the same raster with its three bands
as separate grey bands (minisblack, 3 samples): the cost of a band through the model alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from esrgan.imageio import read_image, write_image
from esrgan.resize import imresize_np
from esrgan.upscale import Upscaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import cpu_name


def _psnr(a: np.ndarray, b: np.ndarray, peak: float, border: int) -> float:
    a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def _upscale_file(up: Upscaler, src: Path, dst: Path) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    write_image(dst, up.upscale_image(read_image(src, measurements=True)), overwrite=True)
    seconds = time.perf_counter() - start
    out = tifffile.imread(dst)
    return (np.moveaxis(out, 0, -1) if out.ndim == 3 and out.shape[0] < out.shape[-1] else out), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/benchmarks/Set5"))
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--gain", type=float, default=0.25)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    args = parser.parse_args()
    print(f"{cpu_name()} ({os.cpu_count()} threads)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}, gain {args.gain}"
    )
    up = Upscaler.from_pretrained(args.model, precision="fp32")
    scale = up.model.scale
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")
    paths = paths[: args.limit] if args.limit else paths
    rows = []
    timing: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for path in paths:
            rgb = read_image(path).pixels.astype(np.float64) / 255.0
            h, w = (rgb.shape[0] // scale) * scale, (rgb.shape[1] // scale) * scale
            hr = (rgb[:h, :w] * args.gain).astype(np.float32)
            lr = imresize_np(hr, scale=1 / scale).astype(np.float32)
            lr16 = np.rint(np.clip(lr, 0, 1) * 65535).astype(np.uint16)
            tifffile.imwrite(folder / "as_is.tif", lr16, photometric="rgb")
            tifffile.imwrite(folder / "stretched.tif", np.clip(lr, 0, 1), photometric="rgb")
            as_is16, _ = _upscale_file(up, folder / "as_is.tif", folder / "as_is_out.tif")
            as_is = as_is16.astype(np.float32) / 65535
            stretched, t_rgb = _upscale_file(up, folder / "stretched.tif", folder / "stretched_out.tif")
            bicubic = imresize_np(np.clip(lr, 0, 1), scale=scale).astype(np.float32)
            border = scale
            rows.append(
                (
                    path.stem,
                    lr.shape[1],
                    lr.shape[0],
                    _psnr(bicubic, hr, args.gain, border),
                    _psnr(as_is, hr, args.gain, border),
                    _psnr(stretched, hr, args.gain, border),
                )
            )
            planar = np.ascontiguousarray(np.moveaxis(np.clip(lr, 0, 1), -1, 0))
            tifffile.imwrite(folder / "bands.tif", planar, photometric="minisblack", planarconfig="separate")
            _, t_bands = _upscale_file(up, folder / "bands.tif", folder / "bands_out.tif")
            timing.append((path.stem, t_rgb, t_bands))
    print("\n| image | LR size | bicubic dB | as is dB | stretched dB |\n|---|---|---:|---:|---:|")
    for name, w, h, b, a, s in rows:
        print(f"| {name} | {w}x{h} | {b:.2f} | {a:.2f} | {s:.2f} |")
    mean = np.mean([r[3:] for r in rows], axis=0)
    print(f"| **mean** | | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.2f} |")
    print("\n| image | RGB raster s | 3 grey bands s | ratio |\n|---|---:|---:|---:|")
    for name, t_rgb, t_bands in timing:
        print(f"| {name} | {t_rgb:.2f} | {t_bands:.2f} | {t_bands / t_rgb:.2f} |")
    print(f"\nthreads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
