"""Choices and defaults shared by the library, the CLI and the web page, each written once.

Plain values and no imports: `esrgan --help` builds every subcommand's options from them without loading torch
(which esrgan.device and esrgan.tiling need). Those modules re-export the values under the names they had.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ALPHA_MODES = ("model", "bicubic")
DEFAULT_MODEL = "realesrgan-x4plus"
DEFAULT_OVERLAP = 24
"""Overlap between neighbouring tiles, in input pixels, of which MARGIN_SHARE is discarded at each inner edge and
the rest (overlap - 2 x margin = 4) blended with a raised cosine. A tile given without an overlap uses at most half
of it as overlap (--tile 32: 16). Measured against the untiled output (float RGB, bench/tiles.py --auto,
realesrgan-x4plus fp32, whole 512x512 photo, the automatic CPU tile): the old default (overlap 16 blended whole,
no margin) 50.7 dB, below Real-ESRGAN's hard paste at the same largest forward pass (54.5 dB); overlap 24 with
margin 10: 55.5 dB (+4.8 dB, 1.05x the hard paste's computed pixels). At small tiles (96x96 crop, tile 48+20) the
old default was 42.6 dB vs the hard paste's 43.2, margin 8 of 20: 47.0; a small 8-block model: +15-18 dB over the
hard paste at 1.14-1.22x its compute (tests/test_tiling.py)."""
MARGIN_SHARE = 10 / 24
"""Share of the overlap discarded at each inner tile edge when no margin is given (esrgan.tiling.default_margin):
the pixels next to a tile's zero-padded edge, which the network computed without their true neighbours."""
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest input read by default: 64 megapixels (an 8192x8192 photo). 16-bit RGBA at this size is 512 MiB of
pixels before the upscaler's float copy; raise it per call with read_image(..., max_pixels=...)."""
DEFAULT_NAME = "{name}_x{scale}.{ext}"
"""Output file name pattern of `esrgan upscale`."""
