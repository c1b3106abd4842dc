"""The hard-paste tiling of Real-ESRGAN's inference script (RealESRGANer.tile_process, tile_pad=10), as the
reference tests/test_tiling.py and bench/tiles.py compare esrgan.tiling against.

Each tile of `tile` x `tile` input pixels (the last of a row or column shorter) is run with `pad` real pixels
around it (fewer at the image border); the padding's output is dropped and the tile's output is pasted, no
blending. So every tile is computed at up to (tile + 2 * pad)^2 pixels, and the seams sit `pad` pixels from where
the model saw zero padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from esrgan.tiling import tile_grid


def hard_paste_tiled(
    forward: Callable[[Tensor], Tensor], image: Tensor, *, scale: int, tile: int, pad: int = 10
) -> tuple[Tensor, int]:
    """(output (C, H * scale, W * scale) float32 on the host, input pixels computed) for a float (C, H, W) image
    in [0, 1]."""
    _, h, w = image.shape
    out = torch.zeros(image.shape[0], h * scale, w * scale)
    computed = 0
    for ty in range(math.ceil(h / tile)):
        for tx in range(math.ceil(w / tile)):
            y0, x0 = ty * tile, tx * tile
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
            res = forward(image[None, :, py0:py1, px0:px1].float().contiguous())[0].float().cpu()
            computed += (py1 - py0) * (px1 - px0)
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = res[
                :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return out, computed


def tiled_pixels(h: int, w: int, tile: int, overlap: int) -> int:
    """Input pixels esrgan.tiling.upscale_tiled computes for an h x w image (every tile full-size)."""
    th, tw, ys, xs = tile_grid(h, w, tile, overlap)
    return len(ys) * th * len(xs) * tw
