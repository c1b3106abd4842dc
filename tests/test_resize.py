"""MATLAB bicubic imresize from first principles (the match with MATLAB's numbers is in test_protocol.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from esrgan.resize import imresize, imresize_np, imresize_rows, output_size

SCALES = [0.25, 0.5, 1 / 3, 0.7, 1.5, 2.0, 2.3, 3.0, 4.0]


@pytest.mark.parametrize("scale", SCALES)
def test_constant_image_stays_constant(scale: float) -> None:
    x = torch.full((3, 37, 52), 123.25, dtype=torch.float64)
    y = imresize(x, scale=scale)
    assert y.shape == (3, math.ceil(37 * scale), math.ceil(52 * scale))
    torch.testing.assert_close(y, torch.full_like(y, 123.25), rtol=0, atol=1e-10)


def test_constant_image_stays_constant_with_size() -> None:
    x = torch.full((2, 1, 41, 29), -7.5)
    y = imresize(x, size=(17, 60))  # down on one axis, up by a non-integer factor on the other
    assert y.shape == (2, 1, 17, 60)
    torch.testing.assert_close(y, torch.full_like(y, -7.5), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 1.5, 2.0, 2.3, 3.0, 4.0])
def test_linear_ramp_follows_matlab_index_mapping(scale: float) -> None:
    """Output pixel x (1-based) samples the input at u = x/scale + 0.5(1 - 1/scale).

    The cubic kernel reproduces linear functions exactly when upscaling, and when downscaling by 1/k (the widened
    kernel sampled at a whole number of taps per unit); for other downscales (e.g. 0.7) it does only approximately,
    so those are not asserted exactly here.
    """
    n = 80
    ramp = torch.arange(1, n + 1, dtype=torch.float64).repeat(4, 1)  # value = 1-based column index
    y = imresize(ramp, scale=scale)[0].numpy()
    x = np.arange(1, y.shape[0] + 1)
    u = x / scale + 0.5 * (1 - 1 / scale)
    reach = 3 / min(
        scale, 1.0
    )  # kernel half-width in input pixels, plus margin: away from the mirrored border
    interior = (u > reach) & (u < n + 1 - reach)
    assert interior.sum() > 10
    np.testing.assert_allclose(y[interior], u[interior], atol=1e-9)
    # at the border the mirror folds the ramp back, so the output there is NOT the extrapolated line
    assert abs(y[0] - u[0]) > 0.01


@pytest.mark.parametrize(("scale", "pad"), [(0.25, 16), (0.5, 8), (2.0, 4), (3.0, 4)])
def test_border_is_symmetric_padding(photo: np.ndarray, scale: float, pad: int) -> None:
    """Resizing equals resizing the explicitly mirror-padded image ('symmetric', edge pixel repeated), cropped."""
    img = photo[100:164, 200:248, 1].astype(np.float64)
    padded = np.pad(img, pad, mode="symmetric")
    ours = imresize_np(img, scale=scale)
    off = int(pad * scale)
    ref = imresize_np(padded, scale=scale)[off : off + ours.shape[0], off : off + ours.shape[1]]
    np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize(
    ("scale", "shape"), [(0.25, (64, 48)), (0.5, (50, 38)), (3.0, (21, 16)), (4.0, (16, 12))]
)
def test_flip_commutes_with_resize(photo: np.ndarray, scale: float, shape: tuple[int, int]) -> None:
    """With out = in * scale exactly, MATLAB's mapping is symmetric about the image centre."""
    img = torch.from_numpy(photo[: shape[0], 100 : 100 + shape[1]].astype(np.float64)).permute(2, 0, 1)
    for dims in ([-1], [-2], [-1, -2]):
        torch.testing.assert_close(
            imresize(img.flip(dims), scale=scale), imresize(img, scale=scale).flip(dims), rtol=0, atol=1e-9
        )


def test_upscale_interior_matches_pil_bicubic_but_borders_differ(photo: np.ndarray) -> None:
    """PIL's BICUBIC is the same a = -0.5 kernel and pixel-centre mapping; it differs at borders (it renormalises
    the truncated kernel instead of mirroring)."""
    img = photo[200:264, 150:214, 0].astype(np.float32)
    ours = imresize_np(img, scale=3)
    pil = np.asarray(Image.fromarray(img, mode="F").resize((192, 192), Image.Resampling.BICUBIC))
    diff = np.abs(ours - pil)
    assert diff[6:-6, 6:-6].max() < 1e-3  # float32 rounding only
    assert diff[:2].max() > 0.05


@pytest.mark.parametrize(
    ("in_size", "scale", "expected"),
    [
        ((101, 77), 0.25, (26, 20)),
        ((512, 512), 0.25, (128, 128)),
        ((7, 5), 1 / 3, (3, 2)),
        ((10, 3), 2.5, (25, 8)),
    ],
)
def test_output_size_is_ceil(in_size: tuple[int, int], scale: float, expected: tuple[int, int]) -> None:
    assert output_size(in_size, scale) == expected
    assert imresize(torch.zeros(in_size), scale=scale).shape == expected


def test_batched_equals_one_by_one_and_dtypes(photo: np.ndarray) -> None:
    crop = photo[:90, :70]
    batch = torch.from_numpy(np.stack([crop, crop[::-1].copy()])).permute(0, 3, 1, 2).double()
    out = imresize(batch, scale=0.25)
    for i in range(2):
        torch.testing.assert_close(out[i], imresize(batch[i], scale=0.25))
    out32 = imresize(batch.float(), scale=0.25)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=0, atol=2e-3)
    assert imresize(batch.half(), scale=0.25).dtype == torch.float16
    # numpy front: uint8 in, float64 out, same values as the tensor path, unrounded
    np_out = imresize_np(crop, scale=0.25)
    assert np_out.dtype == np.float64 and np_out.shape == (23, 18, 3)
    np.testing.assert_allclose(np_out, out[0].permute(1, 2, 0).numpy(), atol=1e-9)
    assert not np.allclose(np_out, np.round(np_out))
    assert imresize_np(crop.astype(np.float32), scale=2).dtype == np.float32
    assert imresize_np(crop[:, :, 0].astype(np.uint16), scale=0.5).shape == (45, 35)


def test_bad_arguments() -> None:
    x = torch.zeros(8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x, scale=2, size=(4, 4))
    with pytest.raises(ValueError, match="positive"):
        imresize(x, scale=-1)
    with pytest.raises(ValueError, match="HxW"):
        imresize_np(np.zeros((2, 2, 2, 2)), scale=2)


def test_the_resize_warns_nothing_on_stderr() -> None:
    """Every training run and evaluation resizes: torch 2.11 printed "Sparse invariant checks are implicitly disabled"
    once per resampling matrix, even with check_invariants=True, until the global switch was set explicitly. A fresh
    process (torch warns once per process) with warnings as errors."""
    import subprocess
    import sys

    code = "import torch; from esrgan.resize import imresize; imresize(torch.rand(1, 3, 40, 36), scale=0.25)"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-800:]


@pytest.mark.parametrize(
    ("size", "band"),
    [((492, 388), 64), ((300, 200), 7), ((123, 300), 50), ((60, 40), 64), ((41, 29), 5), ((123, 97), 123)],
)
def test_rows_made_a_band_at_a_time_are_the_whole_resize(
    photo: np.ndarray, size: tuple[int, int], band: int
) -> None:
    """imresize_rows (the web page's previews, made without a result-sized array): every band of output rows, from
    the input rows it needs only, is the whole image's resize up to float32 rounding; upscales, downscales with
    their wider kernel (and mirrored borders), one axis only, and bands of 5 rows to the whole height."""
    arr = np.ascontiguousarray(photo[:123, 40:137]).astype(np.float32) / 255
    whole = imresize_np(arr, size=size)
    bands = [imresize_rows(arr, size, start, min(size[0], start + band)) for start in range(0, size[0], band)]
    assert all(b.dtype == np.float32 for b in bands)
    np.testing.assert_allclose(np.concatenate(bands), whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        imresize_rows(arr, size, 0, size[0] + 1)
    with pytest.raises(ValueError, match="float32"):
        imresize_rows(arr.astype(np.float64), size, 0, 1)
