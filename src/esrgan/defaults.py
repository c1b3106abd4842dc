"""Choices and defaults shared by the library, the CLI and the web page, each written once.

Plain values and no imports: `esrgan --help` builds every subcommand's options from them without loading torch
(which esrgan.device and esrgan.tiling need). Those modules re-export the values under the names they had.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ALPHA_MODES = ("model", "bicubic")
DEFAULT_MODEL = "realesrgan-x4plus"
DENOISE_MODEL = "realesr-general-x4v3"
DENOISE_OTHER = "realesr-general-wdn-x4v3"
"""Real-ESRGAN's denoise strength (`esrgan upscale --denoise`, its -dn): the model and its without-denoising twin,
interpolated (esrgan.zoo lists both)."""
DEFAULT_OVERLAP = 24
"""Overlap between neighbouring tiles, in input pixels, for tiles up to ~100 pixels; larger tiles get more
(esrgan.tiling.default_overlap: up to MAX_DEFAULT_OVERLAP, within 1.1x a side of what Real-ESRGAN's 10-pixel
padding recomputes at the same tile). MARGIN_SHARE of it is discarded at each inner edge and the rest blended
with a raised cosine (24 = 2 x 10 + 4). A tile given without an overlap uses at most half of it as overlap
(--tile 32: 16). Measured against the untiled output (float RGB, realesrgan-x4plus fp32, bench/tiles.py; the
numbers are in docs/benchmarks.md, "Tile seams"): overlap 16 blended whole (the default until session 6) was
below Real-ESRGAN's hard paste; overlap 24 with margin 10 beat it by 4 dB at tile 64 but by 1 dB only at the
CPU's automatic tile on a whole photo, where the network's padding error reaches ~40 pixels in: hence the wider
overlap for large tiles."""
MAX_DEFAULT_OVERLAP = 64
"""The largest default overlap (esrgan.tiling.default_overlap: it grows with the tile from DEFAULT_OVERLAP)."""
MARGIN_SHARE = 10 / 24
"""Share of the overlap discarded at each inner tile edge when no margin is given (esrgan.tiling.default_margin):
the pixels next to a tile's zero-padded edge, which the network computed without their true neighbours."""
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest input read by default: 64 megapixels (an 8192x8192 photo). 16-bit RGBA at this size is 512 MiB of
pixels before the upscaler's float copy; raise it per call with read_image(..., max_pixels=...)."""
DEFAULT_NAME = "{name}_x{scale}.{ext}"
"""Output file name pattern of `esrgan upscale`."""
