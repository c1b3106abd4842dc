"""Images per second of a batch (esrgan.pipeline.upscale_files) one file after the other and overlapped, against the
rate of the model alone on the same decoded images.

    .venv/bin/python bench/pipeline.py [--n 24] [--size 128] [--format png,jpg] [--blocks 1] [--feat 32]
                                       [--model FILE] [--device cpu] [--repeat 2] [--writers N]

The inputs are real photos: crops of scikit-image's astronaut, coffee, chelsea and rocket (size x size, PNG),
written once to a temporary folder. Without --model the network is a tiny random RRDBNet (--blocks, --feat; x4),
where decoding and encoding weigh as much as the model: the case the overlap is for on a CPU. "model alone" is
Upscaler.upscale_image over the images decoded beforehand (no file I/O); "sequential" reads, upscales and writes
one file after the other (upscale_files(overlap=False), what esrgan upscale did before); "overlapped" is the
default: a reader thread, the model in this thread and writer threads. All in one process, model loaded and warmed
up first; each row is the best of --repeat runs into a fresh output folder. PNG at the default compression level.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hostinfo import cpu_name
from PIL import Image


def make_inputs(folder: Path, n: int, size: int) -> list[Path]:
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        img = np.ascontiguousarray(sources[k % len(sources)])
        h, w = img.shape[:2]
        top = (k * 53) % max(1, h - size)
        left = (k * 97) % max(1, w - size)
        path = folder / f"photo{k:03d}.png"
        Image.fromarray(img[top : top + size, left : left + size]).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="photos in the batch (default 24)")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (default 128)")
    parser.add_argument(
        "--format", default="png,jpg", help="output formats, comma-separated (default png,jpg)"
    )
    parser.add_argument("--model", help="model name or file (default: a tiny random x4 RRDBNet)")
    parser.add_argument("--blocks", type=int, default=1, help="RRDB blocks of the tiny model (default 1)")
    parser.add_argument("--feat", type=int, default=32, help="features of the tiny model (default 32)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="runs per row, the best is kept (default 2)")
    parser.add_argument(
        "--writers", type=int, help="writer threads (default: esrgan.pipeline.default_writers())"
    )
    args = parser.parse_args()

    from esrgan.generator import RRDBNet
    from esrgan.imageio import read_image
    from esrgan.pipeline import Job, default_writers, upscale_files
    from esrgan.upscale import Upscaler

    if args.model:
        up = Upscaler.from_pretrained(args.model, device=args.device, precision=args.precision)
        model_name = args.model
    else:
        torch.manual_seed(0)
        net = RRDBNet(num_feat=args.feat, num_block=args.blocks, num_grow=args.feat // 2, scale=4).eval()
        up = Upscaler(net, device=args.device, precision=args.precision)
        model_name = f"tiny RRDBNet x4 ({args.blocks} block, {args.feat} features, random)"
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        inputs = make_inputs(work / "in", args.n, args.size)
        decoded = [read_image(p) for p in inputs]
        up.upscale_image(decoded[0])  # warm-up: kernels, allocator, tile plan

        def sync() -> None:
            if up.device.type == "cuda":
                torch.cuda.synchronize()

        def model_alone() -> float:
            sync()
            t0 = time.perf_counter()
            for image in decoded:
                up.upscale_image(image)
            sync()
            return time.perf_counter() - t0

        def batch(fmt: str, overlap: bool) -> float:
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            jobs = [Job(p, out / f"{p.stem}.{fmt}") for p in inputs]
            t0 = time.perf_counter()
            result = upscale_files(
                up, jobs, format=fmt, progress="quiet", overlap=overlap, writers=args.writers
            )
            seconds = time.perf_counter() - t0
            assert len(result.written) == len(jobs), result.summary()
            return seconds

        alone = min(model_alone() for _ in range(args.repeat))
        rate = args.n / alone
        writers = args.writers or default_writers()
        print(f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, device {up.device}, "
              f"precision {up.last_precision}; load average {os.getloadavg()[0]:.1f} at the start")  # fmt: skip
        print(f"model: {model_name}; {args.n} photos {args.size}x{args.size} -> "
              f"{args.size * 4}x{args.size * 4}; writers {writers}; best of {args.repeat}\n")  # fmt: skip
        print("| format | run | seconds | images/s | of the model-alone rate |")
        print("|---|---|---:|---:|---:|")
        print(f"| - | model alone (decoded in memory) | {alone:.2f} | {rate:.2f} | 100 % |", flush=True)
        for fmt in args.format.split(","):
            for overlap, label in ((False, "sequential"), (True, "overlapped")):
                seconds = min(batch(fmt, overlap) for _ in range(args.repeat))
                r = args.n / seconds
                print(f"| {fmt} | {label} | {seconds:.2f} | {r:.2f} | {r / rate:.0%} |", flush=True)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
