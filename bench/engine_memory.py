"""Peak memory of one forward pass per CPU engine and tile, against the estimate the automatic tile is sized by
(ModelRunner.activation_bytes: bytes per input pixel x the tile's pixels + the fixed bytes).

    .venv/bin/python bench/engine_memory.py [--model realesrgan-x4plus] [--tiles 32,64,96,128,192] [--size 384]
        [--engines ncnn-fp32,packed-fp32,packed-bf16]

Each (engine, precision, tile) runs in a child process: the model loaded, the peak RSS reset
(/proc/self/clear_refs), then one upscale of a --size x --size crop of scikit-image's astronaut (512x512, so at
most 512; default 384) at that --tile, the first pass included (ncnn builds its net then: its weights' Winograd
transforms). "peak" is VmHWM above the RSS before the upscale. Engines (--engines, ENGINE-PRECISION, default all
three where this machine has them): ncnn fp32 (where the runtime is installed), packed fp32, packed bf16 (where the
CPU packs bf16); module-fp32 / module-bf16 (the PyTorch module itself) are accepted too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINE_CHOICES = [
    (e, p) for e in ("ncnn", "packed", "module") for p in ("fp32", "bf16") if (e, p) != ("ncnn", "bf16")
]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(model: str, engine: str, precision: str, tile: int, size: int) -> dict[str, float]:
    import numpy as np
    import torch
    from skimage import data

    from esrgan.device import ModelRunner
    from esrgan.imageio import ImageData
    from esrgan.upscale import Upscaler

    up = Upscaler.from_pretrained(model, device="cpu", precision=precision, tile=tile)
    up.runner = ModelRunner(up.model, torch.device("cpu"), up.dtype, engine=engine)
    per_pixel, fixed = up.runner.activation_bytes()
    side = min(tile, size)
    image = ImageData(pixels=np.ascontiguousarray(data.astronaut()[:size, :size]))
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    up.upscale_image(image)
    return {"peak": _status("VmHWM") - before, "estimate": per_pixel * side * side + fixed, "fixed": fixed}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, engine, precision, tile, size = sys.argv[2:7]
        print(json.dumps(child(model, engine, precision, int(tile), int(size))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--tiles", default="32,64,96,128,192")
    parser.add_argument(
        "--size", type=int, default=384, help="side of the astronaut crop (at most 512; default 384)"
    )
    parser.add_argument(
        "--engines",
        help="comma-separated ENGINE-PRECISION, e.g. packed-bf16 (default: ncnn-fp32, packed-fp32, packed-bf16, "
        "those this machine has)",
    )
    args = parser.parse_args()
    if not 0 < args.size <= 512:
        parser.error("--size must be 1 to 512 (the astronaut is 512x512)")
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "src"))
    import torch
    from hostinfo import cpu_name

    from esrgan.device import cpu_packs_bf16, ncnn_runtime_available

    engines = [("packed", "fp32")]
    if ncnn_runtime_available():
        engines.insert(0, ("ncnn", "fp32"))
    if cpu_packs_bf16():
        engines.append(("packed", "bf16"))
    if args.engines:
        engines = []
        for item in args.engines.split(","):
            engine, _, precision = item.strip().partition("-")
            if (engine, precision) not in ENGINE_CHOICES:
                parser.error(
                    f"--engines: {item!r} is not one of {', '.join(f'{e}-{p}' for e, p in ENGINE_CHOICES)}"
                )
            engines.append((engine, precision))
    mib = 2**20
    print(
        f"# {cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__}; "
        f"{args.model}, {args.size}x{args.size} at --tile T"
    )
    print("| engine | tile | peak | estimate (fixed) | estimate / peak |\n|---|---|---|---|---|")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    for engine, precision in engines:
        for tile in args.tiles.split(","):
            command = [
                sys.executable,
                __file__,
                "--child",
                args.model,
                engine,
                precision,
                tile,
                str(args.size),
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
            if done.returncode != 0:
                why = (
                    f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
                )
                raise SystemExit(f"{engine} {precision} tile {tile}: {why}\n{done.stderr[-2000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {engine} {precision} | {tile} | {r['peak'] / mib:.0f} MiB | {r['estimate'] / mib:.0f} MiB"
                f" ({r['fixed'] / mib:.0f}) | {r['estimate'] / r['peak']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
