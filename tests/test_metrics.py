"""PSNR / SSIM by the literature's protocol, checked by hand and against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from esrgan.metrics import psnr, rgb_to_y, ssim


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def test_rgb_to_y_matlab_values() -> None:
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(px)[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    grey = np.array([[0, 100, 255]], dtype=np.uint8)
    # a grey image is RGB with equal channels
    np.testing.assert_allclose(rgb_to_y(grey), rgb_to_y(np.repeat(grey[:, :, None], 3, axis=2)))
    np.testing.assert_allclose(rgb_to_y(grey[:, :, None]), rgb_to_y(grey))


def test_psnr_hand_computed(photo: np.ndarray) -> None:
    a = photo[:64, :64]
    b = a.astype(np.int16)
    assert a[10, 10, 0] <= 235
    b[10, 10, 0] += 20  # one RGB pixel changed by (20, 0, 0) ...
    b = b.astype(np.uint8)
    # ... changes Y by 65.481 * 20 / 255 at one of 4096 pixels
    mse_y = (65.481 * 20 / 255) ** 2 / 4096
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse_y), abs=1e-9)
    # RGB: 20^2 at one of 3 * 4096 values
    assert psnr(a, b, y_channel=False) == pytest.approx(10 * math.log10(255**2 * 3 * 4096 / 400), abs=1e-9)
    assert psnr(a, a) == math.inf


def test_round_y_changes_result(photo: np.ndarray) -> None:
    noisy = _noisy(photo, 3)
    assert psnr(photo, noisy, round_y=True) != pytest.approx(psnr(photo, noisy), abs=1e-6)
    assert abs(psnr(photo, noisy, round_y=True) - psnr(photo, noisy)) < 0.5
    # exactly MATLAB's rgb2ycbcr on uint8 images: Y rounded to integers (not floored, not truncated), then PSNR
    ya, yb = (np.round(rgb_to_y(x))[4:-4, 4:-4] for x in (photo, noisy))
    expected = 10 * math.log10(255.0**2 / float(np.mean((ya - yb) ** 2)))
    assert psnr(photo, noisy, crop_border=4, round_y=True) == pytest.approx(expected, abs=1e-12)


def test_crop_border_hides_a_border_difference(photo: np.ndarray) -> None:
    damaged = photo.copy()
    damaged[:4] = 0
    damaged[:, -4:] = 255
    assert psnr(photo, damaged) < 30
    assert ssim(photo, damaged) < 0.99
    assert psnr(photo, damaged, crop_border=4) == math.inf
    assert ssim(photo, damaged, crop_border=4) == pytest.approx(1.0, abs=1e-12)
    assert psnr(photo, damaged, crop_border=3) < 40  # one pixel less and the damage shows


def test_shape_mismatch_names_both_shapes(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(512, 512, 3\).*\(511, 512, 3\)"):
        psnr(photo, photo[1:])
    with pytest.raises(ValueError, match=r"\(512, 512, 3\).*\(512, 512\)"):
        ssim(photo, photo[:, :, 0])


@pytest.mark.parametrize("sigma", [2.0, 8.0, 25.0])
def test_ssim_matches_scikit_image(photo: np.ndarray, sigma: float) -> None:
    """skimage with Gaussian weights (sigma 1.5, truncated at 3.5 sigma = an 11x11 window), population covariance
    and data range 255 computes the same formula and averages over the same valid region (it crops (11-1)/2
    pixels of its padded result). The only difference is floating-point summation order, hence 1e-9."""
    metrics = pytest.importorskip("skimage.metrics")
    noisy = _noisy(photo, sigma, seed=int(sigma))
    kw = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}
    ya, yb = rgb_to_y(photo), rgb_to_y(noisy)
    assert ssim(photo, noisy) == pytest.approx(metrics.structural_similarity(ya, yb, **kw), abs=1e-9)
    per_channel = metrics.structural_similarity(
        photo.astype(np.float64), noisy.astype(np.float64), channel_axis=2, **kw
    )
    assert ssim(photo, noisy, y_channel=False) == pytest.approx(per_channel, abs=1e-9)


def test_ssim_ranks_degradation(photo: np.ndarray) -> None:
    scores = [ssim(photo, _noisy(photo, s)) for s in (2, 8, 25)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0
    assert ssim(photo, photo) == pytest.approx(1.0, abs=1e-12)


def test_grey_and_float_inputs(photo: np.ndarray) -> None:
    grey = photo[:, :, 1]
    noisy = _noisy(grey, 5)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb_noisy = np.repeat(noisy[:, :, None], 3, axis=2)
    assert psnr(grey, noisy) == pytest.approx(psnr(rgb, rgb_noisy), abs=1e-9)
    assert ssim(grey, noisy) == pytest.approx(ssim(rgb, rgb_noisy), abs=1e-12)
    assert psnr(grey.astype(np.float32), noisy.astype(np.float64)) == pytest.approx(
        psnr(grey, noisy), abs=1e-9
    )


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.int16, np.bool_])
def test_integer_pixels_other_than_uint8_are_refused(photo: np.ndarray, dtype: type) -> None:
    """A uint16 image was taken on the 255 scale without a word: one 16-bit level step of 1000 in a 32x32 crop gave
    30.04 dB where its real PSNR (peak 65535) is 78.2 (review 58). Every integer dtype but uint8 is refused now,
    naming the dtype; float on 0..255 and uint8 are what the metrics take."""
    from esrgan.niqe import niqe

    a = photo[:200, :200]
    b = _noisy(a, 3)
    wide = a.astype(np.uint16) * 257 if dtype is np.uint16 else a.astype(dtype)
    for metric in (psnr, ssim):
        with pytest.raises(
            ValueError, match=rf"psnr/ssim: {np.dtype(dtype)} pixels are not accepted .*uint8"
        ):
            metric(wide, b)
        with pytest.raises(ValueError, match=rf"{np.dtype(dtype)} pixels"):
            metric(b, wide)
    with pytest.raises(ValueError, match=rf"niqe: {np.dtype(dtype)} pixels are not accepted"):
        niqe(wide)
    # the conversion the message names gives the 8-bit numbers
    if dtype is np.uint16:
        assert psnr(wide / 257.0, b) == psnr(a, b)
        assert ssim(wide / 257.0, b) == ssim(a, b)
        assert niqe(wide / 257.0) == niqe(a)
