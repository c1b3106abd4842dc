"""torch.compile of RRDBNet, whole network vs one compile per RRDB block (RRDBNet.compile_blocks): the cold first
call (compile time, with an empty Inductor cache) and the steady time per call, for training (forward + backward)
and inference, against eager, each in a fresh process.

    PYTHONPATH=src .venv/bin/python bench/compile_time.py                 # the paper's G, CPU, fp32
    PYTHONPATH=src python3 bench/compile_time.py --device cuda --dtype bf16 --batch 16 --side 32

Prints a Markdown table; the CPU, torch and the sizes on the line above it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from hostinfo import cpu_name  # noqa: E402  (bench/, the script's own folder)

MODES = ("eager", "blocks", "whole")


def child(args: argparse.Namespace) -> None:
    """One mode, one task, in this process: prints a JSON line."""
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from esrgan.generator import RRDBNet

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    g = RRDBNet(num_block=args.blocks, num_feat=64, num_grow=32, scale=4).to(device)
    g = g.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    train = args.task == "train"
    if not train:
        g = g.to(dtype).eval().requires_grad_(False)
    x = torch.rand(args.batch, 3, args.side, args.side, device=device)
    x = x.to(memory_format=torch.channels_last)
    run: torch.nn.Module = g
    if args.mode == "whole":
        run = torch.compile(g)  # type: ignore[assignment]
    elif args.mode == "blocks":
        g.compile_blocks()

    def call() -> None:
        if train:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                y = run(x)
            y.float().mean().backward()
        else:
            with torch.inference_mode():
                run(x.to(dtype))
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"first_s": first, "median_s": sorted(times)[len(times) // 2]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--blocks", type=int, default=23)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--side", type=int, default=24, help="LR side of the input")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", default="train,infer")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode, args.task = args.child
        child(args)
        return
    import torch

    print(
        f"{cpu_name()} ({os.cpu_count()} threads), torch {torch.__version__}, {args.device} {args.dtype}; "
        f"RRDBNet {args.blocks} blocks x 64, input {args.batch}x3x{args.side}x{args.side}; "
        f"each cell a fresh process with an empty Inductor cache\n"
    )
    print("| task | mode | first call s | then s per call | vs eager |")
    print("|---|---|---:|---:|---:|")
    for task in args.tasks.split(","):
        eager = None
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(REPO / "src")}
                cmd = [sys.executable, __file__, "--child", mode, task, "--device", args.device, "--dtype",
                       args.dtype, "--blocks", str(args.blocks), "--batch", str(args.batch), "--side",
                       str(args.side), "--repeats", str(args.repeats)]  # fmt: skip
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                print(f"| {task} | {mode} | failed: {proc.stderr.strip().splitlines()[-1][:120]} | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            eager = r["median_s"] if mode == "eager" else eager
            ratio = f"{eager / r['median_s']:.2f}x" if eager else ""
            print(f"| {task} | {mode} | {r['first_s']:.1f} | {r['median_s']:.3f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
