"""Seconds and bytes of a 2048x2048 photo written as PNG by Pillow and by esrgan's writer at zlib levels 0-9.

    .venv/bin/python bench/png_levels.py [--repeat 3]

Two real-photo images: scikit-image's astronaut (512x512) upscaled x4 by MATLAB bicubic (what an upscaler's output
looks like: smooth at the pixel scale) and the astronaut tiled 2x2 mirrored then doubled by the same tiling
(native photo detail at 2048x2048, bench/upscale.py's photo()). Each save writes a real file (Pillow releases the
GIL when it encodes into a file, as esrgan's writers do); the best of --repeat runs is kept. esrgan's writer
(esrgan.imageio.write_image: the same per-row filter heuristic, rows deflated in ~1 MiB blocks in parallel) runs
with its pool of one thread per core and with one thread, on the same pixels in the same process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 3, 6, 9])
    args = parser.parse_args()
    from skimage import data

    from esrgan.resize import imresize

    small = torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1).float() / 255
    upscaled = imresize(small, size=(2048, 2048)).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    images = {"astronaut x4 bicubic": upscaled, "astronaut tiled (native detail)": photo(2048)}
    print(f"{cpu_name()}; Pillow {Image.__version__}; best of {args.repeat}\n")
    import esrgan.imageio as imageio

    threads = os.cpu_count() or 1
    print(f"| image (2048x2048 RGB) | level | Pillow ms | Pillow MB | esrgan ms, {threads} threads | esrgan ms, 1 thread "
          "| esrgan MB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    many = imageio._png_executor()
    one = ThreadPoolExecutor(max_workers=1)

    def best_of(write: Callable[..., object], *write_args: object, **options: object) -> float:
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            write(*write_args, **options)
            best = min(best, time.perf_counter() - t0)
        return best

    def write_ours(path: Path, image: imageio.ImageData, level: int) -> None:
        with open(path, "wb") as fh:  # the writer itself (write_image leaves level 0 to Pillow)
            imageio._write_png(fh, image, level)

    with tempfile.TemporaryDirectory() as tmp:
        path, ours = Path(tmp) / "out.png", Path(tmp) / "ours.png"
        for name, pixels in images.items():
            pil = Image.fromarray(np.ascontiguousarray(pixels))
            image = imageio.ImageData(pixels=np.ascontiguousarray(pixels), bit_depth=8)
            for level in args.levels:
                t_pil = best_of(pil.save, path, format="PNG", compress_level=level)
                times = []
                for pool in (many, one):
                    imageio._png_pool = pool
                    times.append(best_of(write_ours, ours, image, level))
                imageio._png_pool = many
                print(f"| {name} | {level} | {t_pil * 1000:.0f} | {path.stat().st_size / 1e6:.2f} | "
                      f"{times[0] * 1000:.0f} | {times[1] * 1000:.0f} | {ours.stat().st_size / 1e6:.2f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
