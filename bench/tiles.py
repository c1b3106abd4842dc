"""Seams: tiled vs untiled output, esrgan.tiling against Real-ESRGAN's hard paste, at the same largest tile.

    PYTHONPATH=src .venv/bin/python bench/tiles.py [--model realesrgan-x4plus] [--sizes 128x128] [--tile 64]
        [--schemes 16:0,20:8,28:12,32:12,blend,default] [--threads 2] [--cache DIR] [--engine packed]

For each real-photo crop (scikit-image's astronaut and coffee, centre crops of --sizes): the untiled output, the
hard paste (tools/tile_reference.py: tiles of --tile pixels, each run with 10 real pixels of padding, pasted) and
esrgan.tiling for each OVERLAP:MARGIN in --schemes. "The same tile": ours runs tiles of at most --tile + 20
pixels, the hard paste's largest forward pass (same memory), balanced as Upscaler balances its automatic tile
(and then each axis on its own, as upscale_tiled does).
PSNR is over all RGB values of the float outputs in [0, 1] (clamped), against the untiled output; "compute" is the
input pixels run through the model, over the hard paste's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from hostinfo import cpu_name  # bench/, the script's own folder
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from tile_reference import hard_paste_tiled, tiled_pixels

from esrgan.device import ENGINES, ModelRunner
from esrgan.tiling import balanced_tile, default_margin, default_overlap, tile_grid, upscale_tiled
from esrgan.upscale import CPU_MAX_TILE, Upscaler
from esrgan.zoo import load_model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def cached(cache: Path | None, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """make(), or its result kept in --cache under key (written there atomically)."""
    path = None if cache is None else cache / f"{key}.npy"
    if path is not None and path.is_file():
        return np.load(path, allow_pickle=False)
    value = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".partial.npy")
        np.save(part, value, allow_pickle=False)
        part.replace(path)
    return value


def untiled(run: ModelRunner, image: torch.Tensor, scale: int) -> np.ndarray:
    return upscale_tiled(run, image, scale=scale, tile=0, out_dtype=np.float32)


def paste(run: ModelRunner, image: torch.Tensor, scale: int, tile: int) -> np.ndarray:
    """The hard paste's pixels computed, then its (C, H, W) output, flat (one array to cache)."""
    out, computed = hard_paste_tiled(run, image.float() / 255, scale=scale, tile=tile)
    return np.concatenate([np.array([computed], np.float32), out.numpy().ravel()])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--sizes", default="128x128", help="HxW crops, comma-separated")
    parser.add_argument("--photos", default="astronaut,coffee")
    parser.add_argument(
        "--tile", type=int, default=64, help="the hard paste's tile (ours: tile + 20 at most)"
    )
    parser.add_argument(
        "--schemes",
        default="16:0,20:8,28:12,32:12,default",
        help="OVERLAP:MARGIN pairs, 'blend' (tiling.default_overlap of the tile and its margin) or 'default' "
        "(what Upscaler does: the exact overlap where the model's receptive radius allows, else the blend)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="ModelRunner engine; 'packed' for large untiled references (ncnn held 19 GB for 480x960 untiled)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep the untiled and hard-paste outputs here as .npy and reuse them (on whole photos each costs a "
        "full pass; the key is the model, photo, crop and the hard paste's tile)",
    )
    parser.add_argument(
        "--auto",
        action="store_true",
        help="ours at the automatic CPU tile (balanced, at most upscale.CPU_MAX_TILE), the hard paste at that tile "
        "- 20; --sizes 0x0 = the whole photo",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    run = ModelRunner(model, torch.device("cpu"), torch.float32, engine=args.engine)
    scale = model.scale
    schemes = [s.split(":") for s in args.schemes.split(",")]
    paste_tile = f"CPU_MAX_TILE - 20 = {CPU_MAX_TILE - 20}" if args.auto else str(args.tile)
    print(
        f"{cpu_name()}; {args.model}, fp32, {torch.get_num_threads()} threads; hard paste: tile {paste_tile} + pad 10"
    )
    print(
        "| photo | size | scheme | tile | PSNR vs untiled (dB) | vs hard paste (dB) | compute vs hard paste |"
    )
    print("|---|---|---|---|---|---|---|")
    up = Upscaler(model, device="cpu", precision="fp32", tile=None if args.auto else args.tile + 20)
    for name in args.photos.split(","):
        img = getattr(data, name)()
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            h, w = (h or img.shape[0], w or img.shape[1])
            y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
            crop = np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w])
            image = torch.from_numpy(crop).permute(2, 0, 1)
            t0 = time.perf_counter()
            key = f"{args.model}-{name}-{h}x{w}"
            whole = cached(args.cache, key, partial(untiled, run, image, scale))
            largest = CPU_MAX_TILE if args.auto else args.tile + 20
            packed = cached(
                args.cache, f"{key}-hardpaste-{largest - 20}", partial(paste, run, image, scale, largest - 20)
            )
            theirs, hard = int(packed[0]), packed[1:].reshape(3, h * scale, w * scale)
            base = psnr(hard.transpose(1, 2, 0), whole)
            print(
                f"| {name} | {h}x{w} | hard paste, pad 10 | {largest - 20} | {base:.1f} | 0 | 1.00 |",
                flush=True,
            )
            for scheme in schemes:
                label = ""
                if scheme == ["default"]:
                    # what Upscaler does: balanced with the largest tile's overlap, run with the tile's own (the
                    # exact overlap where the model's receptive radius allows, else the blend below)
                    label = "default: "
                    layout = up.tiling(h, w, up.tile_size(h, w) or max(h, w))
                    tile, overlap = layout.tile, layout.overlap
                    margin = default_margin(overlap) if layout.margin is None else layout.margin
                elif scheme == ["blend"]:  # tiling.default_overlap and its margin, whatever the model
                    label = "blend: "
                    tile = balanced_tile(max(h, w), largest, default_overlap(largest))
                    overlap = default_overlap(tile)
                    margin = default_margin(overlap)
                else:
                    overlap, margin = int(scheme[0]), int(scheme[1])
                    tile = balanced_tile(max(h, w), largest, overlap)
                ours = upscale_tiled(
                    run, image, scale=scale, tile=tile, overlap=overlap, margin=margin, out_dtype=np.float32
                )
                value = psnr(ours, whole)
                ratio = tiled_pixels(h, w, tile, overlap) / theirs
                th, tw, _, _ = tile_grid(h, w, tile, overlap)
                print(
                    f"| {name} | {h}x{w} | {label}overlap {overlap}, margin {margin} | {th}x{tw} | {value:.1f} | "
                    f"{value - base:+.1f} | {ratio:.2f} |",
                    flush=True,
                )
            print(f"<!-- {name} {size}: {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
