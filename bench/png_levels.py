"""Seconds and bytes of a 2048x2048 photo written as PNG by Pillow at zlib levels 0, 1, 3, 6 and 9.

    .venv/bin/python bench/png_levels.py [--repeat 3]

Two real-photo images: scikit-image's astronaut (512x512) upscaled x4 by MATLAB bicubic (what an upscaler's output
looks like: smooth at the pixel scale) and the astronaut tiled 2x2 mirrored then doubled by the same tiling
(native photo detail at 2048x2048, bench/upscale.py's photo()). Each save writes a real file (Pillow releases the
GIL when it encodes into a file, as esrgan's writers do); the best of --repeat runs is kept.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import cpu_name
from upscale import photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from skimage import data

    from esrgan.resize import imresize

    small = torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1).float() / 255
    upscaled = imresize(small, size=(2048, 2048)).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    images = {"astronaut x4 bicubic": upscaled, "astronaut tiled (native detail)": photo(2048)}
    print(f"{cpu_name()}; Pillow {Image.__version__}; best of {args.repeat}\n")
    print("| image (2048x2048 RGB) | level | ms | MB |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.png"
        for name, pixels in images.items():
            pil = Image.fromarray(np.ascontiguousarray(pixels))
            for level in (0, 1, 3, 6, 9):
                best = float("inf")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    pil.save(path, format="PNG", compress_level=level)
                    best = min(best, time.perf_counter() - t0)
                print(
                    f"| {name} | {level} | {best * 1000:.0f} | {path.stat().st_size / 1e6:.2f} |", flush=True
                )


if __name__ == "__main__":
    main()
