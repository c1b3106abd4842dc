"""How long `esrgan evaluate` takes on a benchmark set on this machine, and where the time goes.

    .venv/bin/python bench/evaluate.py [--model realesrgan-x4plus] [--set DIR ...] [--no-niqe]

Runs the library function (as the CLI does) once per set and prints: images, LR megapixels, wall time, the time
spent in the model, and the rest (MATLAB bicubic down/up, PSNR/SSIM, NIQE of every output and of HR). The load
average is printed before and after: on a shared machine the numbers are only as good as the CPU was idle.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from hostinfo import cpu_name  # bench/, the script's own folder

from esrgan.evaluate import evaluate

SETS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="realesrgan-x4plus")
    ap.add_argument(
        "--set", dest="sets", action="append", type=Path, help="HR folder (default: Set5 and Set14)"
    )
    ap.add_argument("--no-niqe", action="store_true")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--tile", type=int, default=None)
    args = ap.parse_args()
    sets = args.sets or [SETS / "Set5", SETS / "Set14"]
    missing = [s for s in sets if not s.is_dir()]
    if missing:
        print(f"not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    print(
        f"model {args.model}; {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"os.cpu_count()={os.cpu_count()}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for folder in sets:
        r = evaluate(folder, [args.model], niqe=not args.no_niqe, precision=args.precision, tile=args.tile)
        lr_mpix = sum(im.hr_size[0] * im.hr_size[1] for im in r.images) / r.scale**2 / 1e6
        model_s = sum(sum(im.seconds.values()) for im in r.images)
        rows.append((folder.name, len(r.images), lr_mpix, r.seconds, model_s, r.seconds - model_s))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'set':<8} {'images':>6} {'LR Mpx':>7} {'wall s':>8} {'model s':>8} {'rest s':>7} {'s/image':>8}")
    for name, n, mpix, wall, model_s, rest in rows:
        print(
            f"{name:<8} {n:>6} {mpix:>7.3f} {wall:>8.1f} {model_s:>8.1f} {rest:>7.1f} {wall / max(n, 1):>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
