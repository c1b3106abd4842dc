"""What one training batch costs to make, per degradation, on this machine's CPU (one thread: a DataLoader worker).

Rows: the paper's batch (16 HR patches of 128 px at x4) made the way each `data.degradation` makes it on a CPU run:
bicubic per sample (MATLAB bicubic of each patch), bicubic per batch (`lr_on_device`), realworld per sample (blur,
bicubic, noise, Pillow JPEG), realesrgan per batch (`esrgan.degrade`, in the worker that collates the batch), and
the realesrgan JPEG alone against Pillow's libjpeg encoding and decoding the same 16 patches one by one, and Real-ESRGAN's
training pair pool (`data.realesrgan.pool_size: auto`, 15 batches) trading one batch of (LR, HR, plain HR). Each row is
the median of `--repeats` batches; the last column is the row's time over bicubic per sample, measured in the same
run. Photos: scikit-image's bundled ones. Run on a quiet machine:

    .venv/bin/python bench/degrade.py
    .venv/bin/python bench/degrade.py --repeats 3 --patch 96
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from esrgan.config import POOL_BATCHES, RealESRGANDegradationConfig
from esrgan.data import Degradation, PatchDataset, collate_samples, degrade_batch, lr_from_regions
from esrgan.degrade import PairPool, jpeg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import cpu_name  # bench/, the script's own folder

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def median_ms(fn: Callable[[int], object], repeats: int) -> float:
    fn(0)  # warm-up
    times = []
    for r in range(1, repeats + 1):
        t = time.perf_counter()
        fn(r)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=128, help="HR patch side (x4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from skimage import data

    n, p = args.batch, args.patch
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in PHOTOS:
            pixels = getattr(data, name)()
            if pixels.ndim == 2:
                pixels = np.stack([pixels] * 3, axis=2)
            Image.fromarray(pixels[:, :, :3]).save(folder / f"{name}.png")
        plain = PatchDataset(folder, scale=4, patch_size=p, flip=True, rot90=True)
        regions = PatchDataset(folder, scale=4, patch_size=p, lr_on_device=True)
        realworld = PatchDataset(folder, scale=4, patch_size=p, degradation=Degradation(1.0, (0.2, 2.0), 1.0,
                                                                                         (1.0, 15.0), 1.0, (40, 95)))  # fmt: skip
        high = PatchDataset(folder, scale=4, patch_size=p, realesrgan=RealESRGANDegradationConfig())
        k = len(PHOTOS)

        def keys(r: int) -> list[tuple[int, int]]:
            return [(i % k, 1000 * r + i) for i in range(n)]

        def per_sample(ds: PatchDataset) -> Callable[[int], object]:
            return lambda r: collate_samples([ds.loader_sample(key) for key in keys(r)])

        def bicubic_batch(r: int) -> object:
            batch = collate_samples([regions.loader_sample(key) for key in keys(r)])
            return lr_from_regions(batch[0].float().div_(255.0), 4)

        def realesrgan_batch(r: int) -> object:
            return degrade_batch(
                collate_samples([high.loader_sample(key) for key in keys(r)]), 4, high.margin
            )

        def draws_only(r: int) -> object:
            return collate_samples([high.loader_sample(key) for key in keys(r)])

        lr_side = p // 4 + 2 * high.margin
        patches = torch.rand(n, 3, lr_side, lr_side)
        quality = torch.full((n,), 60.0)
        u8 = patches.mul(255).round().byte().permute(0, 2, 3, 1).numpy()

        def pillow_jpeg(_: int) -> object:
            out = []
            for a in u8:
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="JPEG", quality=60)
                with Image.open(buf) as im:
                    out.append(np.asarray(im.convert("RGB")))
            return out

        pool = PairPool(POOL_BATCHES * n, seed=0)
        gen = torch.Generator().manual_seed(0)
        shapes = ((n, 3, p // 4, p // 4), (n, 3, p, p), (n, 3, p, p))
        pairs = tuple(torch.randint(0, 256, s, generator=gen).float().div_(255.0) for s in shapes)
        for step in range(POOL_BATCHES):  # full: every call below draws
            pool(pairs, step)

        rows = [
            ("bicubic, per sample (worker)", per_sample(plain)),
            ("bicubic, per batch (lr_on_device)", bicubic_batch),
            ("realworld, per sample (worker)", per_sample(realworld)),
            ("realesrgan, per batch (worker collates)", realesrgan_batch),
            ("realesrgan, the worker's share on a GPU run (crops + draws)", draws_only),
            (f"JPEG of {n} patches {lr_side}x{lr_side}: esrgan.degrade.jpeg, one batch", lambda _: jpeg(patches, quality)),
            (f"JPEG of {n} patches {lr_side}x{lr_side}: Pillow, one by one", pillow_jpeg),
            (f"pair pool of {POOL_BATCHES * n}: a batch traded (LR, HR, plain HR)", lambda r: pool(pairs, 100 + r)),
        ]  # fmt: skip
        print(f"CPU: {cpu_name()}, torch {torch.__version__}, 1 thread; batch {n} x {p} px HR (x4)\n")
        print("| batch made by | ms | x bicubic per sample |")
        print("|---|---:|---:|")
        base = None
        for label, fn in rows:
            ms = median_ms(fn, args.repeats)
            base = ms if base is None else base
            print(f"| {label} | {ms:.1f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
