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
"""Overlap between neighbouring tiles, in input pixels (blended with a linear ramp). Tiled vs untiled PSNR (RGB, 8-bit)
on real photo crops (tests/test_tiling.py): realesrgan-x4plus at tile 96 on 128x128: 52.6 dB fp32, 51.1 dB bf16
(47.5 dB with no overlap; 55.1 dB with overlap 32); a tiny wide-field model at tile 40: 61 dB (32 dB with none).
The 23-block model sees further than any overlap, so very small tiles do worse (tile 48 on 96x96: 42 dB); the
automatic tile is up to 352 on the CPU (balanced: fewest tiles, then the smallest side), where the overlap computes
1.06-1.14x the image's pixels for 512-2048 inputs (docs/benchmarks.md)."""
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest input read by default: 64 megapixels (an 8192x8192 photo). 16-bit RGBA at this size is 512 MiB of
pixels before the upscaler's float copy; raise it per call with read_image(..., max_pixels=...)."""
DEFAULT_NAME = "{name}_x{scale}.{ext}"
"""Output file name pattern of `esrgan upscale`."""
