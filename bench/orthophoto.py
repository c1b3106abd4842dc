"""An 8-bit orthophoto (an RGB GeoTIFF) through `esrgan upscale`'s code: what computing it at 8 bits buys.

    .venv/bin/python bench/orthophoto.py [--image PHOTO] [--size 256] [--model realesrgan-x4plus] [--repeat 3]

Until session 35 an 8-bit GeoTIFF was stretched from its own min..max to 16-bit planes and computed in fp32; now it
is read over 0..255 and computed as the same pixels in a PNG are (bf16 on a CPU that has it, fp16 on CUDA). Both
ways run here, in one process, on one crop of a real photograph written as a georeferenced TIFF:
- "8-bit (today)": read_image(measurements=True) then Upscaler.upscale_image at the default precision;
- "16-bit planes in fp32 (before)": the same stored pixels as 16-bit planes (x 257) through the same Upscaler,
  which computes 16-bit images in fp32 (the stretch itself is left out: it costs nothing next to the model).
Printed: seconds (median of --repeat), the ratio, and how far apart the two outputs are (8-bit levels).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from esrgan.imagedata import ImageData
from esrgan.imageio import read_image
from esrgan.upscale import Upscaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import cpu_name

GEOTAGS = [
    (33550, "d", 3, (0.5, 0.5, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4200000.0, 0.0), True),
    (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="a photograph (default: scikit-image's astronaut)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.image is not None:
        photo = read_image(args.image).pixels
    else:
        from skimage import data

        photo = data.astronaut()
    if photo.shape[2] != 3 or photo.dtype != np.uint8:
        parser.error("--image: an 8-bit RGB photograph")
    s = args.size
    top, left = (photo.shape[0] - s) // 2, (photo.shape[1] - s) // 2
    crop = np.ascontiguousarray(photo[top : top + s, left : left + s])
    up = Upscaler.from_pretrained(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ortho.tif"
        tifffile.imwrite(path, crop, photometric="rgb", extratags=GEOTAGS)
        ortho = read_image(path, measurements=True)
    planes16 = ImageData.from_array(crop.astype(np.uint16) * np.uint16(257))
    runs = {"8-bit (today)": ortho, "16-bit planes in fp32 (before)": planes16}
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, np.ndarray] = {}
    precision: dict[str, str] = {}
    for image in runs.values():  # one warm-up each
        up.upscale_image(image)
    for _ in range(args.repeat):
        for name, image in runs.items():
            start = time.perf_counter()
            out = up.upscale_image(image)
            times[name].append(time.perf_counter() - start)
            outputs[name] = out.pixels
            precision[name] = str(up.last_precision)
    today, before = (statistics.median(times[name]) for name in runs)
    print(f"CPU: {cpu_name()}; {args.model}, {s}x{s} RGB crop, median of {args.repeat}")
    print("| path | precision | seconds | vs before |")
    print("|---|---|---:|---:|")
    for name, median in zip(runs, (today, before), strict=True):
        print(f"| {name} | {precision[name]} | {median:.2f} | {before / median:.2f}x |")
    a = outputs["8-bit (today)"].astype(np.float64) / 257
    b = outputs["16-bit planes in fp32 (before)"].astype(np.float64) / 257
    diff = np.abs(a - b)
    psnr = 10 * np.log10(255.0**2 / max(float(np.mean(diff**2)), 1e-12))
    print(f"outputs apart: max {diff.max():.2f} levels, {psnr:.1f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
