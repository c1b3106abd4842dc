"""The CPU's fp32 engines head to head: ncnn's runtime (the default where installed) against packed oneDNN.

    PYTHONPATH=src .venv/bin/python bench/engines.py [--model realesrgan-x4plus] [--sizes 128,272] [--rounds 3]

One forward pass of a real-photo crop (bench/speed.py's astronaut) per engine, interleaved (A B A B ...) after one
warm-up call each, so load from other processes hits both alike; prints every time and the ratio of the minima.
"""

from __future__ import annotations

import argparse
import time

import torch
from hostinfo import cpu_name  # bench/, the script's own folder
from speed import photo

from esrgan.device import ModelRunner
from esrgan.zoo import load_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--sizes", default="128,272", help="square LR crops, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = load_model(args.model).eval()
    cpu = torch.device("cpu")
    runners = {engine: ModelRunner(model, cpu, torch.float32, engine=engine) for engine in ("ncnn", "packed")}
    print(
        f"{cpu_name()}; {args.model}, fp32, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds"
    )
    print("| LR size | ncnn s | packed s | packed / ncnn (minima) |")
    print("|---:|---|---|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        x = photo(size)
        times: dict[str, list[float]] = {engine: [] for engine in runners}
        for run in runners.values():
            run(x)
        for _ in range(args.rounds):
            for engine, run in runners.items():
                t0 = time.perf_counter()
                run(x)
                times[engine].append(time.perf_counter() - t0)
        shown = {e: ", ".join(f"{t:.2f}" for t in ts) for e, ts in times.items()}
        ratio = min(times["packed"]) / min(times["ncnn"])
        print(f"| {size}x{size} | {shown['ncnn']} | {shown['packed']} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
