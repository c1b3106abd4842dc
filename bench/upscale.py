"""Seconds and peak memory of `Upscaler.upscale` with the default model, per input size, precision and tiling.

    .venv/bin/python bench/upscale.py [--model realesrgan-x4plus] [--sizes 128,512,1024] [--tile N] [--quick]

Each case runs in a fresh subprocess (this script with --child), so its peak RSS is its own: the parent reads it
from the child's resource usage when reaping it (os.wait4, the per-child form of getrusage(RUSAGE_CHILDREN), which
only gives the maximum over all children so far). The input is a real photo: scikit-image's astronaut (512x512),
cropped to 128x128 and tiled 2x2 (mirrored, so no hard edges) for 1024x1024. "untiled" is one forward pass over
the whole image; "auto" is the default of `esrgan upscale` (the automatic, balanced tile, shown in brackets);
--tile N adds rows with that fixed tile (at most half the image side). All with the default blended overlap.
"load s" is reading the model file; "upscale s" is one upscale call (the first in the process, as a CLI user sees it).
--quick: the 128x128 cases only, as a smoke check. Cases that fail (e.g. out of memory) are reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from hostinfo import cpu_name  # bench/, the script's own folder


def photo(size: int) -> np.ndarray:
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    if size <= img.shape[0]:
        top = (img.shape[0] - size) // 2
        return np.ascontiguousarray(img[top : top + size, top : top + size])
    tiled = np.block([[[img], [img[:, ::-1]]], [[img[::-1]], [img[::-1, ::-1]]]])
    while tiled.shape[0] < size:
        tiled = np.block([[[tiled], [tiled[:, ::-1]]], [[tiled[::-1]], [tiled[::-1, ::-1]]]])
    return np.ascontiguousarray(tiled[:size, :size])


def child(model: str, size: int, precision: str, tile: int | None) -> None:
    """One case: load, upscale once, print a JSON line with the timings."""
    from esrgan.device import precision_name
    from esrgan.upscale import Upscaler

    image = photo(size)
    start = time.perf_counter()
    up = Upscaler.from_pretrained(model, device="cpu", precision=precision, tile=tile)
    loaded = time.perf_counter()
    out = up.upscale(image)
    done = time.perf_counter()
    assert out.shape == (size * up.model.scale, size * up.model.scale, 3)
    print(
        json.dumps(
            {
                "load": loaded - start,
                "upscale": done - loaded,
                "precision": precision_name(up.dtype),
                "tile": up.tile_size(size, size),
            }
        )
    )


def run_case(model: str, size: int, precision: str, tile: int | None) -> dict[str, object]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        model,
        str(size),
        precision,
        "auto" if tile is None else str(tile),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # read the pipes before reaping, or a child that writes a lot would block
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result: dict[str, object] = {"rss_mb": usage.ru_maxrss / 1024}  # Linux: kilobytes
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        reason = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        result["error"] = reason[:80]
    else:
        result.update(json.loads(lines[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--sizes", default="128,512,1024")
    parser.add_argument(
        "--tile", type=int, default=0, help="also run with this fixed tile side (0: only auto)"
    )
    parser.add_argument("--quick", action="store_true", help="128x128 only")
    parser.add_argument(
        "--child", nargs=4, metavar=("MODEL", "SIZE", "PRECISION", "TILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        model, size, precision, tile = args.child
        child(model, int(size), precision, None if tile == "auto" else int(tile))
        return
    sizes = [128] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"model {args.model}, {cpu_name()}, {os.cpu_count()} cores; one fresh process per row\n")
    print("| input | precision | tiling | load s | upscale s | peak RSS MB |")
    print("|---|---|---|---:|---:|---:|")
    for size in sizes:
        for precision in ("fp32", "bf16"):
            tiles: list[int | None] = [0, None] + ([min(args.tile, size // 2)] if args.tile else [])
            for tile in tiles:
                r = run_case(args.model, size, precision, tile)
                tiling = (
                    "untiled"
                    if tile == 0
                    else f"tile {tile}"
                    if tile
                    else f"auto ({r.get('tile') or 'whole'})"
                )
                if "error" in r:
                    print(
                        f"| {size}x{size} | {precision} | {tiling} | - | failed: {r['error']} | {r['rss_mb']:.0f} |"
                    )
                else:
                    print(
                        f"| {size}x{size} | {r['precision']} | {tiling} | {r['load']:.2f} | {r['upscale']:.2f} "
                        f"| {r['rss_mb']:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
