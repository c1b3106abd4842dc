"""Seams: tiled vs untiled output, esrgan.tiling against Real-ESRGAN's hard paste, at the same largest tile.

    PYTHONPATH=src .venv/bin/python bench/tiles.py [--model realesrgan-x4plus] [--sizes 128x128] [--tile 64]
        [--schemes 16:0,20:8,28:12,32:12] [--threads 2]

For each real-photo crop (scikit-image's astronaut and coffee, centre crops of --sizes): the untiled output, the
hard paste (tools/tile_reference.py: tiles of --tile pixels, each run with 10 real pixels of padding, pasted) and
esrgan.tiling for each OVERLAP:MARGIN in --schemes. "The same tile": ours runs tiles of at most --tile + 20
pixels, the hard paste's largest forward pass (same memory), balanced as Upscaler balances its automatic tile.
PSNR is over all RGB values of the float outputs in [0, 1] (clamped), against the untiled output; "compute" is the
input pixels run through the model, over the hard paste's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from tile_reference import hard_paste_tiled, tiled_pixels

from esrgan.device import ModelRunner
from esrgan.tiling import balanced_tile, upscale_tiled
from esrgan.upscale import CPU_MAX_TILE
from esrgan.zoo import load_model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def untiled(run: ModelRunner, image: torch.Tensor, scale: int, cache: Path | None, key: str) -> np.ndarray:
    """The untiled float output, from --cache when it holds it (written there atomically otherwise)."""
    path = None if cache is None else cache / f"{key}.npy"
    if path is not None and path.is_file():
        return np.load(path, allow_pickle=False)
    whole = upscale_tiled(run, image, scale=scale, tile=0, out_dtype=np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npy")
        np.save(partial, whole, allow_pickle=False)
        partial.replace(path)
    return whole


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
    parser.add_argument("--schemes", default="16:0,20:8,28:12,32:12", help="OVERLAP:MARGIN pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep each untiled output here as .npy and reuse it (a whole photo's untiled pass is the slowest part; "
        "the key is the model, photo and crop)",
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
    run = ModelRunner(model, torch.device("cpu"), torch.float32)
    scale = model.scale
    schemes = [tuple(int(v) for v in s.split(":")) for s in args.schemes.split(",")]
    print(f"{args.model}, fp32, {torch.get_num_threads()} threads; hard paste: tile {args.tile} + pad 10")
    print(
        "| photo | size | scheme | tile | PSNR vs untiled (dB) | vs hard paste (dB) | compute vs hard paste |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.photos.split(","):
        img = getattr(data, name)()
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            h, w = (h or img.shape[0], w or img.shape[1])
            y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
            crop = np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w])
            image = torch.from_numpy(crop).permute(2, 0, 1)
            t0 = time.perf_counter()
            whole = untiled(run, image, scale, args.cache, f"{args.model}-{name}-{h}x{w}")
            largest = CPU_MAX_TILE if args.auto else args.tile + 20
            hard, theirs = hard_paste_tiled(run, image.float() / 255, scale=scale, tile=largest - 20)
            base = psnr(hard.permute(1, 2, 0).numpy(), whole)
            print(
                f"| {name} | {h}x{w} | hard paste, pad 10 | {largest - 20} | {base:.1f} | 0 | 1.00 |",
                flush=True,
            )
            for overlap, margin in schemes:
                tile = balanced_tile(max(h, w), largest, overlap)
                ours = upscale_tiled(
                    run, image, scale=scale, tile=tile, overlap=overlap, margin=margin, out_dtype=np.float32
                )
                value = psnr(ours, whole)
                ratio = tiled_pixels(h, w, tile, overlap) / theirs
                print(
                    f"| {name} | {h}x{w} | overlap {overlap}, margin {margin} | {tile} | {value:.1f} | "
                    f"{value - base:+.1f} | {ratio:.2f} |",
                    flush=True,
                )
            print(f"<!-- {name} {size}: {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
