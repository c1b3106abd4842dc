"""What 8-bit training data keeps of a real CT slice, against `data.bit_depth: 16`: levels and error.

Reads pydicom's own 693_J2KI.dcm (a 512x512 CT slice, 14 bits stored; installed with pydicom, never downloaded)
as training reads it (`esrgan.data.read_pixels`: stretched from its [min, max] as `esrgan upscale` stretches it) at
16 and at 8 bits, and prints the levels each holds, over the slice and inside a soft-tissue window (W400 L40: -160
to 240 HU), and the 8-bit data's error against the 16-bit values. Under a second:

    .venv/bin/python bench/bit_depth.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from esrgan.data import read_pixels
from esrgan.metrics import psnr


def main() -> None:
    try:
        import pydicom
    except ImportError:
        sys.exit('bench/bit_depth.py: needs pydicom (pip install "esrgan[dicom]")')
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "693_J2KI.dcm"
    if not source.is_file():
        sys.exit(f"bench/bit_depth.py: pydicom {pydicom.__version__} does not install {source.name}")
    ds = pydicom.dcmread(source)
    slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
    hu = ds.pixel_array.astype(np.float64) * slope + intercept
    v16 = read_pixels(source, 1, 16)[:, :, 0].astype(np.float64)
    v8 = read_pixels(source, 1, 8)[:, :, 0].astype(np.float64)
    lo, hi = float(hu.min()), float(hu.max())
    window = (hu >= -160) & (hu <= 240)
    err_levels = np.abs(v8 - v16 / 257.0)
    rows = [
        (
            "file",
            f"{source.name}: {ds.Rows}x{ds.Columns}, {ds.BitsStored} bits stored, {lo:.0f}..{hi:.0f} HU",
        ),
        ("distinct values in the file", f"{len(np.unique(hu))}"),
        ("levels, 16-bit training data", f"{len(np.unique(v16))}"),
        ("levels, 8-bit training data", f"{len(np.unique(v8))} (a level = {(hi - lo) / 255:.1f} HU)"),
        (
            "soft-tissue window (-160..240 HU)",
            f"{window.mean() * 100:.0f} % of the pixels; {len(np.unique(hu[window]))} values in the file, "
            f"{len(np.unique(v16[window]))} at 16 bits, {len(np.unique(v8[window]))} at 8 bits",
        ),
        (
            "8-bit data against the 16-bit values",
            f"PSNR {psnr(v8, v16 / 257.0, y_channel=False):.2f} dB (0..255 scale); at most "
            f"{err_levels.max():.3f} of an 8-bit level, {err_levels.max() / 255 * (hi - lo):.1f} HU",
        ),
    ]
    print("| | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
