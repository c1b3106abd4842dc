"""Choices and defaults shared by the library, the CLI and the web page, each written once.

Plain values and no imports: `esrgan --help` builds every subcommand's options from them without loading torch
(which esrgan.device and esrgan.tiling need). Those modules re-export the values under the names they had.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ALPHA_MODES = ("model", "bicubic")
DEFAULT_MODEL = "realesrgan-x4plus"
DEFAULT_OVERLAP = 16
"""Overlap between neighbouring tiles, in input pixels (blended with a raised cosine over all of it: MARGIN_SHARE 0).
Measured tiled vs untiled (float RGB, bench/tiles.py, tests/test_tiling.py), against Real-ESRGAN's hard paste
(tile_pad 10) with tiles no larger than its largest forward pass: this default is no better than the hard paste
(realesrgan-x4plus, 96x96 crop, tile 48+20: 42.6 dB vs 43.2; a small 8-block model: ~38 dB worse), because pixels
next to a tile's zero-padded edge keep some weight. Discarding a margin and blending inside what is kept does
better: overlap 20 with margin 8: 47.0 dB (+3.8 dB over the hard paste at 1.22x its compute), overlap 28 with
margin 12: 47.3 dB; the small model: overlap 24, margin 10, +15-18 dB at 1.14-1.22x. Not yet the default: the
>= 50 dB target vs untiled on large photos with realesrgan-x4plus is unmeasured (a 960x480 photo at the automatic
tile gave 44.4 dB with this default), and a larger overlap raises the smallest tile (>= 2x the overlap)."""
MARGIN_SHARE = 0.0
"""Share of the overlap discarded at each inner tile edge when no margin is given (esrgan.tiling: margin =
int(overlap * MARGIN_SHARE)); the rest, overlap - 2 * margin, is the band where neighbours blend. 0: the whole
overlap blends (the behaviour before margins; see DEFAULT_OVERLAP for what a margin measured)."""
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest input read by default: 64 megapixels (an 8192x8192 photo). 16-bit RGBA at this size is 512 MiB of
pixels before the upscaler's float copy; raise it per call with read_image(..., max_pixels=...)."""
DEFAULT_NAME = "{name}_x{scale}.{ext}"
"""Output file name pattern of `esrgan upscale`."""
