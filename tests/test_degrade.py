"""Real-ESRGAN's second-order degradation: libjpeg as the JPEG oracle, kernels by their moments and spectra, the
config's probabilities honoured, the LR aligned with the HR, the same batches wherever they are made."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from esrgan.config import RealESRGANDegradationConfig, config_from_dict
from esrgan.data import PatchDataset, batch_to_device, collate_samples, degrade_batch, patch_loader
from esrgan.degrade import (
    GREY,
    KERNEL_MAX,
    P_GAUSS1,
    P_GAUSS2,
    P_GRAY1,
    P_GRAY2,
    P_JPEG_LAST,
    P_MODE1,
    P_QUALITY1,
    P_SCALE1,
    P_SIZE2,
    P_SIZE3,
    PairPool,
    add_noise,
    anisotropic_kernel,
    count_levels,
    degrade,
    degrade_image,
    draw,
    filter2d,
    jpeg,
    poisson_vals,
    quant_tables,
    sinc_kernel,
    usm_sharpen,
)
from esrgan.errors import ConfigError
from esrgan.train import lr_on_device

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

OFF = {  # every degradation at its mildest: keep the size, no noise, JPEG at quality 100, no sinc, 3x3 near-delta blur
    "kernel_sizes": [3], "kernel_prob": [1, 0, 0, 0, 0, 0], "blur_sigma": [0.01, 0.01], "sinc_prob": 0.0,
    "second_blur_prob": 0.0, "final_sinc_prob": 0.0, "resize_prob": [0, 0, 1], "resize_prob2": [0, 0, 1],
    "gaussian_noise_prob": 1.0, "gaussian_noise_prob2": 1.0, "noise_sigma": [0, 0], "noise_sigma2": [0, 0],
    "jpeg_quality": [100, 100], "jpeg_quality2": [100, 100], "usm_weight": 0.0,
}  # fmt: skip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / mse)


def pillow_jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def ours(pixels: np.ndarray, qualities: list[int], phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255).expand(len(qualities), -1, -1, -1)
    out = jpeg(x, torch.tensor(qualities, dtype=torch.float32), phase)
    return out.mul(255).round().byte().permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    data = pytest.importorskip("skimage.data")
    # odd sizes: partial 8x8 and 16x16 blocks at the right and bottom edges
    return [np.ascontiguousarray(getattr(data, n)()[:203, :301]) for n in ("astronaut", "coffee", "chelsea")]


def test_jpeg_matches_libjpeg_at_every_quality(photos: list[np.ndarray]) -> None:
    """Our batch JPEG against Pillow's libjpeg on real photos: the same artefacts (40+ dB apart, where each is
    26-40 dB from the original), and the same loss at each quality to 0.3 dB. One batch, one quality per image."""
    qualities = [10, 30, 50, 75, 95]
    for pixels in photos:
        batch = ours(pixels, qualities)
        for q, mine in zip(qualities, batch, strict=True):
            theirs = pillow_jpeg(pixels, q)
            assert psnr(mine, theirs) > 40.0, (q, psnr(mine, theirs))
            assert abs(psnr(pixels, mine) - psnr(pixels, theirs)) < 0.3, q
            assert psnr(pixels, theirs) < 41.0  # the comparison means something: JPEG did change the photo


def test_a_grey_jpeg_is_libjpegs_grey_jpeg_and_the_colour_path_of_three_equal_channels(
    photos: list[np.ndarray],
) -> None:
    """A grey batch (a grey model's training data) goes through the luma plane alone: as close to Pillow's grey
    JPEG as the colour path is to its colour one, and equal to the colour path given the grey as three channels."""
    qualities = [10, 50, 95]
    for pixels in photos:
        grey = np.array(Image.fromarray(pixels).convert("L"))
        x = torch.from_numpy(grey)[None, None].float().div(255).expand(len(qualities), -1, -1, -1)
        batch = jpeg(x, torch.tensor(qualities, dtype=torch.float32))
        assert batch.shape == x.shape
        as_colour = jpeg(x.expand(-1, 3, -1, -1), torch.tensor(qualities, dtype=torch.float32))
        assert torch.equal(batch, as_colour[:, :1]) and torch.equal(as_colour[:, 0], as_colour[:, 2])
        for q, mine in zip(qualities, batch.mul(255).round().byte()[:, 0].numpy(), strict=True):
            buf = io.BytesIO()
            Image.fromarray(grey).save(buf, format="JPEG", quality=q)
            theirs = np.asarray(Image.open(buf))
            assert theirs.ndim == 2 and psnr(mine, theirs) > 40.0, (q, psnr(mine, theirs))
            assert abs(psnr(grey, mine) - psnr(grey, theirs)) < 0.3, q
            assert psnr(grey, theirs) < 46.0  # the comparison means something: JPEG did change the photo


def test_jpeg_quality_tables_are_libjpegs() -> None:
    luma, chroma = quant_tables(torch.tensor([50.0, 10.0, 100.0, 75.0]))
    assert luma[0, 0, 0] == 16 and chroma[0, 7, 7] == 99  # quality 50: the standard tables themselves
    assert luma[1, 0, 0] == 80 and luma[1, 7, 7] == 255  # 5000 / 10 = 500 %, clamped to 255 (baseline)
    assert torch.all(luma[2] == 1) and torch.all(chroma[2] == 1)
    assert luma[3, 0, 0] == 8 and luma[3, 0, 1] == 6  # (16 * 50 + 50) // 100, (11 * 50 + 50) // 100


def test_jpeg_block_phase_is_that_of_a_crop_from_a_larger_image(photos: list[np.ndarray]) -> None:
    """A patch cut at (5, 11) from a JPEG-compressed photo has its block grid shifted by (5, 11): `phase` does that.
    Away from the first (padded) blocks, ours with the phase matches libjpeg's crop; without it, it does not."""
    big = photos[1]
    theirs = pillow_jpeg(big, 40)[5:, 11:][16:, 16:]
    crop = np.ascontiguousarray(big[5:, 11:])
    shifted = ours(crop, [40], (5, 11))[0][16:, 16:]
    unshifted = ours(crop, [40])[0][16:, 16:]
    assert psnr(shifted, theirs) > 40.0
    assert psnr(unshifted, theirs) < psnr(shifted, theirs) - 6.0


def test_kernels_have_the_shapes_they_are_drawn_for() -> None:
    size = 21
    x, y = np.meshgrid(np.arange(size) - 10.0, np.arange(size) - 10.0)
    theta = 0.6
    k = anisotropic_kernel(size, 3.0, 1.5, theta)
    cov = np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    np.testing.assert_allclose(cov, rot @ np.diag([9.0, 2.25]) @ rot.T, rtol=0.01, atol=0.01)
    np.testing.assert_allclose(anisotropic_kernel(size, 2.0, 2.0, 0.0, beta=1.0, shape="generalized"),
                               anisotropic_kernel(size, 2.0, 2.0, 0.0))  # fmt: skip
    flat = anisotropic_kernel(size, 2.0, 2.0, 0.0, beta=4.0, shape="generalized")
    peaked = anisotropic_kernel(size, 2.0, 2.0, 0.0, beta=0.5, shape="generalized")
    gauss = anisotropic_kernel(size, 2.0, 2.0, 0.0)

    def falloff(kern: np.ndarray) -> float:  # one pixel from the centre, relative to the centre
        return float(kern[10, 11] / kern[10, 10])

    assert (
        falloff(flat) > falloff(gauss) > falloff(peaked)
    )  # beta > 1: a flatter top; beta < 1: a sharper peak
    assert flat[10, 16] < gauss[10, 16] < peaked[10, 16]  # and the tails the other way round
    plateau = anisotropic_kernel(size, 2.0, 2.0, 0.0, beta=2.0, shape="plateau")
    assert plateau[10, 10] == plateau.max() and plateau[10, 11] > 0.9 * plateau[10, 10]
    for kern in (k, flat, peaked, plateau):
        assert kern.sum() == pytest.approx(1.0) and np.allclose(
            kern, kern[::-1, ::-1]
        )  # no shift of the image


@pytest.mark.parametrize("cutoff", [math.pi / 3, math.pi / 2, 0.8 * math.pi])
def test_sinc_kernel_passes_below_its_cutoff_and_stops_above(cutoff: float) -> None:
    k = sinc_kernel(21, cutoff)
    n = 128
    response = np.abs(np.fft.fft2(np.pad(k, (0, n - 21))))[0]

    def at(w: float) -> float:
        return float(response[round(w / (2 * math.pi) * n)])

    assert 0.8 < at(0.5 * cutoff) < 1.25 and 0.8 < at(0.8 * cutoff) < 1.25
    assert at(min(1.25 * cutoff, math.pi)) < 0.15


def test_draws_follow_the_configured_probabilities() -> None:
    cfg = RealESRGANDegradationConfig(sinc_prob=0.3, second_blur_prob=0.6, final_sinc_prob=0.25,
                                      gaussian_noise_prob=0.7, resize_prob=[0.5, 0.3, 0.2])  # fmt: skip
    n = 1500
    draws = [draw(np.random.default_rng(i), cfg) for i in range(n)]
    kernels = np.stack([k for k, _ in draws])
    params = np.stack([p for _, p in draws])
    sinc = [bool((k[0] < -1e-6).any()) for k in kernels]  # only a sinc has negative lobes
    assert np.mean(sinc) == pytest.approx(0.3 * 0.9, abs=0.05)  # small sinc kernels may have no negative lobe
    assert np.mean(params[:, P_SIZE2] > 1) == pytest.approx(0.6, abs=0.04)
    assert np.mean(params[:, P_SIZE3] > 1) == pytest.approx(0.25, abs=0.04)
    assert np.mean(params[:, P_GAUSS1]) == pytest.approx(0.7, abs=0.04)
    scale = params[:, P_SCALE1]
    shares = [np.mean(scale > 1), np.mean(scale < 1), np.mean(scale == 1)]
    np.testing.assert_allclose(shares, [0.5, 0.3, 0.2], atol=0.04)
    assert scale.min() >= 0.15 and scale.max() <= 1.5
    q = params[:, P_QUALITY1]
    assert q.min() >= 30 and q.max() <= 95 and np.all(q == np.round(q))
    assert np.mean(params[:, P_JPEG_LAST]) == pytest.approx(0.5, abs=0.05)
    assert np.allclose(kernels.sum(axis=(2, 3)), 1.0, atol=1e-5)
    again = draw(np.random.default_rng(7), cfg)
    assert np.array_equal(again[0], draws[7][0]) and np.array_equal(again[1], draws[7][1])


def test_noise_has_the_drawn_strength() -> None:
    """Gaussian noise of sigma; Poisson noise of variance x / 256 (times scale^2) in an image of all 256 levels;
    grey noise equal in R, G, B."""
    x = torch.full((4, 3, 96, 96), 0.5)
    x[:, :, :3] = torch.arange(288).remainder(256).div(255).view(3, 96)  # every level: Poisson's vals = 256
    gen = torch.Generator().manual_seed(0)
    gauss = torch.tensor([1.0, 1.0, 0.0, 0.0])
    sigma = torch.full((4,), 10 / 255)
    scale = torch.tensor([1.0, 1.0, 1.0, 2.0])
    gray = torch.tensor([0.0, 1.0, 0.0, 0.0])
    noise = (add_noise(x, gauss, sigma, scale, gray, gen) - x)[:, :, 3:]  # where x is 0.5 (level 128)
    std = noise.std(dim=(1, 2, 3))
    assert std[0].item() == pytest.approx(10 / 255, rel=0.05) and std[1].item() == pytest.approx(
        10 / 255, rel=0.05
    )
    assert torch.equal(noise[1, 0], noise[1, 2]) and not torch.equal(noise[0, 0], noise[0, 2])
    assert std[2].item() == pytest.approx(math.sqrt(128 / 255 / 256), rel=0.05)
    assert std[3].item() == pytest.approx(2 * math.sqrt(128 / 255 / 256), rel=0.05)
    assert abs(noise.mean().item()) < 2e-3


def test_poisson_noise_is_as_strong_as_real_esrgans_for_an_image_of_few_levels() -> None:
    """Real-ESRGAN's Poisson noise: poisson(x vals) / vals - x, vals = 2^ceil(log2(distinct levels of the image)).
    An image of two levels (0 and 128/255, colour or grey) has vals = 2: where x = 128/255 the noisy value is
    clip(k / 2) with k ~ Poisson(2x), so its std is that of a variable 0, 1/2, 1 with probabilities P(k = 0),
    P(k = 1), P(k >= 2): ~0.39, 100 levels (256 levels for every image made it 0.044, 11 levels). The other half
    (x = 0) stays 0. The third image, a photo's 256 levels beside the same flat half, keeps vals = 256 (per image)."""
    x = torch.zeros(3, 3, 128, 128)
    x[..., 64:] = 128 / 255
    x[2, :, :, :64] = torch.arange(3 * 128 * 64).remainder(256).div(255).view(3, 128, 64)
    gen = torch.Generator().manual_seed(0)
    zero = torch.zeros(3)
    noisy = add_noise(x, zero, zero, torch.ones(3), torch.tensor([0.0, 1.0, 0.0]), gen)
    lam = 2 * 128 / 255
    p0, p1 = math.exp(-lam), lam * math.exp(-lam)
    mean = 0.5 * p1 + (1 - p0 - p1)
    expected = math.sqrt(0.25 * p1 + (1 - p0 - p1) - mean**2)
    half = noisy[..., 64:]
    assert half[0].std().item() == pytest.approx(expected, rel=0.03)  # colour noise
    assert half[1].std().item() == pytest.approx(
        expected, rel=0.03
    )  # grey noise: its grey image has 2 levels
    assert torch.equal(half[1, 0], half[1, 2])
    assert half[0].mean().item() == pytest.approx(mean, abs=0.01)
    assert torch.all(noisy[:2, ..., :64] == 0)
    assert half[2].std().item() == pytest.approx(math.sqrt(128 / 255 / 256), rel=0.05)


def test_poisson_levels_are_counted_per_image_as_torch_unique_counts_them(photos: list[np.ndarray]) -> None:
    """The levels of real photo crops, as they are, dark (few levels), resized by bicubic (values between levels and
    outside [0, 1]) and their grey images, counted on the device as Real-ESRGAN counts them with torch.unique per
    image after clamp(round(x * 255), 0, 255); and vals = 2^ceil(log2(count))."""
    crops = torch.stack([torch.from_numpy(p[y : y + 96, x : x + 96]).permute(2, 0, 1).float().div(255)
                         for p in photos for y, x in ((0, 0), (100, 200))])  # fmt: skip
    batches = [crops, crops * 0.05, F.interpolate(crops, scale_factor=0.7, mode="bicubic")]
    counted = []
    for x in batches:
        grey = GREY[0] * x[:, 0:1] + GREY[1] * x[:, 1:2] + GREY[2] * x[:, 2:3]
        for images in (x, grey):
            levels = images.mul(255).round().clamp(0, 255)
            count = count_levels(levels)
            unique = [len(torch.unique(im)) for im in levels]
            assert count.tolist() == unique
            assert poisson_vals(levels).tolist() == [2.0 ** math.ceil(math.log2(n)) for n in unique]
            counted += unique
    assert min(counted) < 64 and max(counted) == 256  # dark crops have few levels, others every one


@pytest.fixture()
def hr_dir(tmp_path: Path, photo: np.ndarray) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(photo[:203, :250]).save(folder / "a.png")
    Image.fromarray(photo[250:, 201:]).save(folder / "b.png")
    return folder


def test_lr_is_aligned_with_hr(hr_dir: Path) -> None:
    """With every degradation at its mildest, the LR patch is the HR patch downscaled in place: closest to the
    4x4 box average at no shift, and 1 px off is far worse (a misaligned pair teaches the network to shift)."""
    ds = PatchDataset(hr_dir, scale=4, patch_size=64, realesrgan=RealESRGANDegradationConfig(**OFF))  # type: ignore[arg-type]
    lr, hr = degrade_batch(
        collate_samples([ds.loader_sample((i % 2, 40 + i)) for i in range(8)]), 4, ds.margin
    )
    assert lr.shape == (8, 3, 16, 16) and hr.shape == (8, 3, 64, 64)
    box = F.avg_pool2d(hr.float(), 4)

    def err(dy: int, dx: int) -> float:
        d = lr.float()[..., 2:-2, 2:-2] - torch.roll(box, (dy, dx), (2, 3))[..., 2:-2, 2:-2]
        return float(d.pow(2).mean())

    errors = {(dy, dx): err(dy, dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2)}
    assert min(errors, key=errors.__getitem__) == (0, 0)
    assert all(e > 4 * errors[(0, 0)] for k, e in errors.items() if k != (0, 0))


def test_default_degradation_changes_the_lr_and_keeps_the_hr(hr_dir: Path) -> None:
    """The x4plus settings: LR patches far from a plain downscale (blur, noise, JPEG), HR patches untouched crops."""
    mild = PatchDataset(hr_dir, scale=4, patch_size=64, realesrgan=RealESRGANDegradationConfig(**OFF))  # type: ignore[arg-type]
    # (the default unsharp mask of the HR off here: test_sharpened_hr_is_the_target_and_the_source)
    full = PatchDataset(
        hr_dir, scale=4, patch_size=64, realesrgan=RealESRGANDegradationConfig(usm_weight=0.0)
    )
    keys = [(i % 2, 90 + i) for i in range(16)]
    lr_mild, hr_mild = degrade_batch(collate_samples([mild.loader_sample(k) for k in keys]), 4, mild.margin)
    lr_full, hr_full = degrade_batch(collate_samples([full.loader_sample(k) for k in keys]), 4, full.margin)
    assert torch.equal(hr_mild, hr_full)  # the geometry draws come first, the same for both
    diff = (lr_full.float() - lr_mild.float()).abs().mean(dim=(1, 2, 3))
    assert float(diff.median()) > 4.0  # levels of 255
    assert lr_full.dtype == torch.uint8


def test_batches_are_the_same_in_the_workers_on_the_device_and_after_a_resume(hr_dir: Path) -> None:
    """Made by the collating worker (a CPU run, 0 or 2 workers) or by batch_to_device (a GPU run, here on the CPU):
    the same (LR, HR) batches; a loader started mid-stream continues the same stream."""
    cfg = RealESRGANDegradationConfig()
    cpu = torch.device("cpu")
    in_loader = PatchDataset(hr_dir, scale=4, patch_size=32, realesrgan=cfg)
    on_device = PatchDataset(hr_dir, scale=4, patch_size=32, realesrgan=cfg, lr_on_device=True)
    a = list(itertools.islice(patch_loader(in_loader, batch_size=3, seed=2, num_workers=0), 4))
    b = list(itertools.islice(patch_loader(in_loader, batch_size=3, seed=2, num_workers=2), 4))
    c = list(itertools.islice(patch_loader(on_device, batch_size=3, seed=2, num_workers=0), 4))
    d = list(itertools.islice(patch_loader(in_loader, batch_size=3, seed=2, start_sample=6), 2))
    assert len(c[0]) == 3 and c[0][0].shape == (
        3,
        3,
        32 + 2 * 8 * 4,
        32 + 2 * 8 * 4,
    )  # regions, kernels, params
    for (la, ha), (lb, hb), batch in zip(a, b, c, strict=True):
        lc, hc = batch_to_device(batch, cpu, lr_on_device=True, scale=4)
        assert torch.equal(la, lb) and torch.equal(ha, hb)
        assert torch.equal(la, lc.mul(255).round().byte()) and torch.equal(ha, hc.mul(255).round().byte())
    assert torch.equal(a[2][0], d[0][0]) and torch.equal(a[3][1], d[1][1])
    assert not torch.equal(a[0][0], a[1][0])


def test_degrade_handles_tiny_intermediate_images() -> None:
    """The smallest first resize (0.15) of a small region with the largest kernels: no reflect-padding error."""
    cfg = RealESRGANDegradationConfig(resize_prob=[0, 1, 0], resize_range=[0.15, 0.15], kernel_sizes=[21],
                                      second_blur_prob=1.0, final_sinc_prob=1.0)  # fmt: skip
    draws = [draw(np.random.default_rng(i), cfg) for i in range(2)]
    kernels = torch.from_numpy(np.stack([k for k, _ in draws]))
    params = torch.from_numpy(np.stack([p for _, p in draws]))
    regions = torch.rand(2, 3, 8 * 4 + 2 * 8 * 4, 8 * 4 + 2 * 8 * 4)
    lr, hr, plain = degrade(regions, kernels, params, scale=4, margin=8)
    assert lr.shape == (2, 3, 8, 8) and hr.shape == (2, 3, 32, 32) and torch.isfinite(lr).all()
    assert torch.equal(plain, regions[..., 32:-32, 32:-32])  # the centres as they were
    assert kernels.shape[-1] == KERNEL_MAX


@pytest.mark.parametrize(
    ("hr", "problem"),
    [
        (
            torch.rand(2, 64, 64),
            r"must be RGB or grey images \(.*C, H, W\) \(C = 3 or 1\), got torch.float32 \(.*2, 64, 64\)",
        ),
        (torch.rand(4, 64, 64), r"must be RGB or grey images .* \(.*4, 64, 64\)"),
        (torch.rand(64, 64), r"must be RGB or grey images .* \(.*64, 64\)"),
        (torch.rand(3, 64, 64, dtype=torch.float64), r"must be float32 in \[0, 1\] .*got torch.float64"),
        (torch.zeros(3, 64, 64, dtype=torch.uint8), r"must be float32 .*x.float\(\) / 255 for uint8"),
        (torch.rand(3, 66, 64), r"height and width must be multiples of the scale \(4\)"),
    ],
)
def test_a_library_callers_wrong_image_is_one_clear_error(hr: torch.Tensor, problem: str) -> None:
    """degrade_image and degrade take float32 RGB or grey (what the loader and the validation give them); another shape or
    dtype was a deep "not enough values to unpack" or dtype error, or (uint8, sizes off the scale) a wrong LR."""
    with pytest.raises(ValueError, match="^hr: " + problem):
        degrade_image(hr, RealESRGANDegradationConfig(), 4, seed=0)
    kernels, params = (
        torch.from_numpy(a)[None] for a in draw(np.random.default_rng(0), RealESRGANDegradationConfig())
    )
    with pytest.raises(ValueError, match="^regions: " + problem):
        degrade(hr[None], kernels, params, scale=4, margin=0)
    with pytest.raises(ValueError, match=r"kernels and params: must be \(2, 3, 21, 21\) and \(2, 23\)"):
        degrade(torch.rand(2, 3, 64, 64), kernels, params, scale=4, margin=0)


def test_a_grey_batch_is_degraded_as_three_equal_channels_with_grey_noise(photos: list[np.ndarray]) -> None:
    """A grey model's batch (N, 1, H, W) gets Real-ESRGAN's degradation of its images read as RGB, with the noise
    every grey sensor has (the same in each channel, whatever the draws said): LR, sharpened HR and plain HR equal
    channel for channel, Gaussian and Poisson noise, JPEG before and after the last resize."""
    grey = [np.asarray(Image.fromarray(p).convert("L"))[:160, :160] for p in photos]
    regions = torch.from_numpy(np.stack(grey + grey[:1]))[:, None].float().div(255)  # (4, 1, 160, 160)
    draws = [draw(np.random.default_rng(i), RealESRGANDegradationConfig()) for i in range(4)]
    kernels = torch.from_numpy(np.stack([k for k, _ in draws]))
    params = torch.from_numpy(np.stack([p for _, p in draws]))
    params[:, P_GAUSS1] = params[:, P_GAUSS2] = torch.tensor([1.0, 0.0, 1.0, 0.0])  # both kinds of noise
    params[:, P_GRAY1] = params[:, P_GRAY2] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # colour noise drawn for two
    grey_noise = params.clone()
    grey_noise[:, P_GRAY1] = grey_noise[:, P_GRAY2] = 1.0
    for jpeg_last in (0.0, 1.0):
        params[0, P_JPEG_LAST] = grey_noise[0, P_JPEG_LAST] = jpeg_last  # the batch's: the first image's
        drawn = params.clone()
        one = degrade(regions, kernels, params, scale=4, margin=8)
        assert torch.equal(params, drawn)  # the caller's parameters are left as they were
        three = degrade(regions.expand(-1, 3, -1, -1), kernels, grey_noise, scale=4, margin=8)
        assert one[0].shape == (4, 1, 24, 24) and one[1].shape == one[2].shape == (4, 1, 96, 96)
        for a, b in zip(one, three, strict=True):
            assert torch.equal(b[:, :1], b[:, 1:2]) and torch.equal(b[:, :1], b[:, 2:])  # still grey
            assert torch.equal(a, b[:, :1])
        plain_lr = F.interpolate(regions, scale_factor=0.25, mode="area")[:, :, 8:-8, 8:-8]
        assert psnr(one[0].mul(255).numpy(), plain_lr.mul(255).numpy()) < 35  # the LR was degraded


def test_unsharp_mask_takes_float64_and_refuses_other_dtypes(photo: np.ndarray) -> None:
    img = torch.from_numpy(photo[:64, :80].copy()).permute(2, 0, 1)[None].float().div(255)
    sharp32, sharp64 = usm_sharpen(img, 0.5), usm_sharpen(img.double(), 0.5)
    assert sharp64.dtype == torch.float64 and float((sharp64 - sharp32).abs().max()) < 1e-5
    with pytest.raises(
        ValueError, match=r"img: must be float32 or float64 images \(N, C, H, W\), got torch.float16"
    ):
        usm_sharpen(img.half(), 0.5)


def test_jpeg_quality_one_draw_is_an_integer_the_encoder_could_use() -> None:
    _, params = draw(np.random.default_rng(3), RealESRGANDegradationConfig(jpeg_quality=[30.4, 30.4]))
    assert params[P_QUALITY1] == 30


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"sinc_prob": 1.5}, r"data\.realesrgan\.sinc_prob: must be a probability"),
        ({"resize_prob": [0.2, 0.8]}, r"data\.realesrgan\.resize_prob: must be 3 weights"),
        ({"kernel_prob": [0, 0, 0, 0, 0, 0]}, r"data\.realesrgan\.kernel_prob: .*positive sum"),
        (
            {"kernel_prob": [math.inf, 0, 0, 0, 0, 0]},
            r"data\.realesrgan\.kernel_prob: must be 6 weights, finite",
        ),
        ({"resize_prob2": [1, math.nan, 0]}, r"data\.realesrgan\.resize_prob2: must be 3 weights, finite"),
        ({"resize_prob": [1e308, 1e308, 0]}, r"data\.realesrgan\.resize_prob: must have a finite sum"),
        ({"resize_range": [1.5, 0.15]}, r"data\.realesrgan\.resize_range: must be a \[low, high\] pair"),
        ({"jpeg_quality2": [30, 101]}, r"data\.realesrgan\.jpeg_quality2: must be a \[low, high\] pair"),
        ({"kernel_sizes": [7, 8]}, r"data\.realesrgan\.kernel_sizes: must be odd sizes from 3 to 21"),
        ({"kernel_sizes": [23]}, r"data\.realesrgan\.kernel_sizes"),
        (
            {"resize_range2": [1.1, 1.2]},
            r"data\.realesrgan\.resize_range2: must hold 1 \(1 = keep the size\)",
        ),
        ({"betag": [0.5, 0.8]}, r"data\.realesrgan\.betag: must hold 1"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(override: dict[str, object], message: str) -> None:
    raw = {"data": {"hr_dir": "x", "degradation": "realesrgan", "realesrgan": override}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_realesrgan_with_an_lr_folder_is_refused() -> None:
    raw = {"data": {"hr_dir": "x", "lr_dir": "y", "degradation": "realesrgan"}}
    with pytest.raises(ConfigError, match=r"data\.lr_dir: the realesrgan degradation makes the LR"):
        config_from_dict(raw)


def test_auto_makes_the_realesrgan_lr_on_cuda_only() -> None:
    """On MPS torch.poisson has no kernel and area resizes to sizes that do not divide fail (the degradation uses
    both): auto leaves the realesrgan batches to the loader there; the bicubic LR stays on any GPU."""
    realesrgan = config_from_dict({"data": {"hr_dir": "x", "degradation": "realesrgan"}})
    bicubic = config_from_dict({"data": {"hr_dir": "x"}})
    mps, cuda, cpu = torch.device("mps"), torch.device("cuda"), torch.device("cpu")  # nothing allocated
    assert [lr_on_device(realesrgan, d) for d in (mps, cuda, cpu)] == [False, True, False]
    assert [lr_on_device(bicubic, d) for d in (mps, cuda, cpu)] == [True, True, False]
    forced = config_from_dict({"data": {"hr_dir": "x", "degradation": "realesrgan", "lr_on_device": True}})
    assert lr_on_device(forced, mps)  # an explicit setting is obeyed


@pytest.mark.parametrize("size", [5, 15, 17, 21])
def test_blur_equals_a_reflect_padded_convolution_with_each_images_kernel(size: int) -> None:
    """filter2d (grouped conv2d up to 15x15, FFT above) against conv2d of each image alone with its own kernel."""
    rng = np.random.default_rng(size)
    cfg = RealESRGANDegradationConfig(kernel_sizes=[size], sinc_prob=0.3)
    kernels = torch.from_numpy(np.stack([draw(rng, cfg)[0][0] for _ in range(3)]))
    x = torch.rand(3, 3, 40, 52)
    got = filter2d(x, kernels, size)
    lo, p = (KERNEL_MAX - size) // 2, size // 2
    for i in range(3):
        k = kernels[i, lo : lo + size, lo : lo + size].expand(3, 1, size, size)
        ref = F.conv2d(F.pad(x[i : i + 1], (p, p, p, p), mode="reflect"), k, groups=3)
        torch.testing.assert_close(got[i : i + 1], ref, atol=2e-6, rtol=0)


def test_unsharp_mask_sharpens_edges_and_leaves_flat_areas(photo: np.ndarray) -> None:
    """Real-ESRGAN's USM of the HR: on a real photo, stronger edges (gradient energy up), values in [0, 1]; a flat
    image and detail under 10 levels unchanged; where the mask is fully on, exactly img + 0.5 (img - blur)."""
    img = torch.from_numpy(photo[:160, :160]).permute(2, 0, 1)[None].float().div(255)
    out = usm_sharpen(img, 0.5)

    def gradient_energy(x: torch.Tensor) -> float:
        return float(
            (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
        )

    assert gradient_energy(out) > 1.2 * gradient_energy(img) and out.min() >= 0.0 and out.max() <= 1.0
    flat = torch.full((1, 3, 64, 64), 0.4)
    assert torch.equal(usm_sharpen(flat, 0.5), flat)
    faint = 0.5 + 0.02 * torch.sin(torch.arange(64.0) / 3).expand(1, 3, 64, 64)  # +-5 levels of detail
    torch.testing.assert_close(usm_sharpen(faint, 0.5), faint)
    edge = torch.zeros(1, 1, 64, 64)
    edge[..., 32:] = 0.6  # a strong step: the mask is on across it
    sharp = usm_sharpen(edge, 0.5)
    assert sharp[0, 0, 10, 31] == 0.0 and sharp[0, 0, 10, 32] > 0.6  # undershoot clipped, overshoot kept
    assert torch.equal(usm_sharpen(edge, 0.0), edge)


def test_sharpened_hr_is_the_target_and_the_source(hr_dir: Path) -> None:
    """usm_weight > 0: the HR patches of a batch are the sharpened crops (on 8-bit levels); 0: the plain crops."""
    plain_cfg = RealESRGANDegradationConfig(**{**OFF, "usm_weight": 0.0})  # type: ignore[arg-type]
    sharp_cfg = RealESRGANDegradationConfig(**{**OFF, "usm_weight": 0.5})  # type: ignore[arg-type]
    plain = PatchDataset(hr_dir, scale=4, patch_size=64, realesrgan=plain_cfg)
    sharp = PatchDataset(hr_dir, scale=4, patch_size=64, realesrgan=sharp_cfg)
    keys = [(i % 2, 300 + i) for i in range(4)]
    samples = [sharp.loader_sample(k) for k in keys]
    _, hr_plain = degrade_batch(collate_samples([plain.loader_sample(k) for k in keys]), 4, plain.margin)
    _, hr_sharp = degrade_batch(collate_samples(samples), 4, sharp.margin)
    regions = collate_samples(samples)[0].float().div(255)
    m = 8 * 4
    expected = usm_sharpen(regions, 0.5)[..., m:-m, m:-m].mul(255).round().byte()
    assert torch.equal(hr_sharp, expected) and not torch.equal(hr_sharp, hr_plain)
    assert torch.equal(hr_plain, collate_samples(samples)[0][..., m:-m, m:-m])
    # the GAN stage's third image (what D sees as real, as in Real-ESRGAN): the crops before the unsharp mask, made
    # alike by the collating worker and on the device
    lr3, hr3, real3 = degrade_batch(collate_samples(samples), 4, sharp.margin, plain_hr=True)
    assert torch.equal(hr3, hr_sharp) and torch.equal(real3, hr_plain)
    lr_d, hr_d, real_d = batch_to_device(collate_samples(samples), torch.device("cpu"), lr_on_device=True, scale=4,
                                         plain_hr=True)  # fmt: skip
    assert torch.equal(real_d, hr_plain.float().div(255)) and torch.equal(hr_d.mul(255).round().byte(), hr3)
    assert torch.equal(lr_d.mul(255).round().byte(), lr3)
    worker_made = batch_to_device((lr3, hr3, real3), torch.device("cpu"), lr_on_device=False, scale=4)
    assert [t.shape for t in worker_made] == [lr3.shape, hr3.shape, real3.shape]
    assert torch.equal(worker_made[2], real_d)


def test_plateau_and_generalized_shapes_are_drawn_as_real_esrgan_draws_them() -> None:
    """Half the betas in [lo, 1], half in [1, hi]: with the plateau range [1, 2], beta is exactly 1 in half the
    plateau kernels (the reviewer's find: they were all drawn in [1, 2], flatter-topped than x4plus's)."""
    from esrgan.degrade import _beta

    rng = np.random.default_rng(0)
    plateau = np.array([_beta(rng, 1.0, 2.0) for _ in range(2000)])
    assert np.mean(plateau == 1.0) == pytest.approx(0.5, abs=0.04) and plateau.max() <= 2.0
    generalized = np.array([_beta(rng, 0.5, 4.0) for _ in range(2000)])
    assert np.mean(generalized < 1.0) == pytest.approx(0.5, abs=0.04) and generalized.min() >= 0.5


def test_validation_lr_can_be_real_world_and_is_fixed(hr_dir: Path) -> None:
    """validation.lr: realesrgan: each image's LR made once by the degradation (whole image, any aspect), the same
    in every run, unlike the bicubic LR, and aligned with the HR."""
    from esrgan.train import _load_validation

    cfg = RealESRGANDegradationConfig()
    bicubic = _load_validation(str(hr_dir), 4, 0)
    real = _load_validation(str(hr_dir), 4, 0, cfg)
    again = _load_validation(str(hr_dir), 4, 0, cfg)
    for (name, hr, lr_b), (name2, hr2, lr_r), (_, _, lr_again) in zip(bicubic, real, again, strict=True):
        assert name == name2 and np.array_equal(hr, hr2) and lr_r.shape == lr_b.shape
        assert lr_b.shape[1:] == (hr.shape[0] // 4, hr.shape[1] // 4) and hr.shape[0] != hr.shape[1]
        assert torch.equal(lr_r, lr_again) and (lr_r - lr_b).abs().mean() > 0.01
    mild = _load_validation(str(hr_dir), 4, 0, RealESRGANDegradationConfig(**OFF))  # type: ignore[arg-type]
    for (
        _,
        hr,
        lr,
    ) in mild:  # at the mildest settings: the HR downscaled in place (nearest the box average at 0)
        box = F.avg_pool2d(torch.from_numpy(hr.copy()).permute(2, 0, 1).float().div(255)[None], 4)[0]
        errors = {
            shift: float((lr[:, 2:-2, 2:-2] - torch.roll(box, shift, (1, 2))[:, 2:-2, 2:-2]).pow(2).mean())
            for shift in itertools.product((-1, 0, 1), repeat=2)
        }
        assert min(errors, key=errors.__getitem__) == (0, 0)


@pytest.mark.parametrize("shape", [(192, 160), (40, 30)])
def test_unsharp_mask_blur_equals_a_reflect_padded_separable_convolution(shape: tuple[int, int]) -> None:
    """The 51-tap Gaussian as two matrix products equals conv2d on the reflect-padded image (OpenCV's border);
    an axis shorter than the radius is replicated instead."""
    from esrgan.degrade import USM_SIGMA, USM_SIZE, _blur_separable, _gaussian_1d

    k = _gaussian_1d(USM_SIZE, USM_SIGMA, torch.device("cpu"))
    opencv_sigma = 0.3 * ((USM_SIZE - 1) * 0.5 - 1) + 0.8  # what OpenCV uses for a 51 px kernel and sigma 0
    assert float(k.sum()) == pytest.approx(1.0) and abs(USM_SIGMA - opencv_sigma) < 1e-9
    x = torch.rand(2, 3, *shape)
    p = USM_SIZE // 2
    y = x.reshape(6, 1, *shape)
    y = F.pad(y, (p, p, 0, 0), mode="reflect" if p < shape[1] else "replicate")
    y = F.pad(y, (0, 0, p, p), mode="reflect" if p < shape[0] else "replicate")
    ref = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1)).view(2, 3, *shape)
    torch.testing.assert_close(_blur_separable(x, k), ref, atol=2e-6, rtol=0)


def degraded_batches(
    hr_dir: Path, count: int, batch: int = 3, seed: int = 5
) -> list[tuple[torch.Tensor, ...]]:
    """Real degraded (LR, HR, plain HR) float batches of the photo, as the training loop gets them."""
    return [b for b, _ in degraded_batches_and_resizes(hr_dir, count, batch, seed)]


def degraded_batches_and_resizes(
    hr_dir: Path, count: int, batch: int = 3, seed: int = 5
) -> list[tuple[tuple[torch.Tensor, ...], tuple[float, float]]]:
    """degraded_batches with each batch's shared first resize (scale, mode), which all its pairs went through."""
    ds = PatchDataset(
        hr_dir, scale=4, patch_size=32, realesrgan=RealESRGANDegradationConfig(), lr_on_device=True
    )
    loader = patch_loader(ds, batch_size=batch, seed=seed, num_workers=0)
    cpu = torch.device("cpu")
    return [
        (batch_to_device(b, cpu, lr_on_device=True, scale=4, plain_hr=True),
         (float(b[2][0, P_SCALE1]), float(b[2][0, P_MODE1])))
        for b in itertools.islice(loader, count)
    ]  # fmt: skip


def pair_keys(batch: tuple[torch.Tensor, ...]) -> list[bytes]:
    """One key per pair: its three images' bytes (so an LR travelling with another pair's HR would not match)."""
    u8 = [t.mul(255).round().byte() for t in batch]
    return [b"".join(t[i].contiguous().numpy().tobytes() for t in u8) for i in range(batch[0].shape[0])]


def test_the_pair_pool_mixes_batches_and_loses_no_pair(hr_dir: Path) -> None:
    """Real-ESRGAN's training pair pool on real degraded batches: the first batches pass through while it fills,
    then every step trains on pairs that entered earlier (LR, HR and plain HR still together, bit for bit, in the
    run's memory layout), none twice, none lost, and a batch mixes pairs of several batches, i.e. of several
    shared resize settings (what the pool is for)."""
    made = degraded_batches_and_resizes(hr_dir, 14)
    batches = [b for b, _ in made]
    resizes = [r for _, r in made]
    assert len(set(resizes)) >= 12  # each batch shares one first resize (1.0 for "keep": the same for some)
    pool = PairPool(9, seed=1, channels_last=True)
    entered: dict[bytes, int] = {}  # pair -> the batch it came in
    floats: dict[bytes, tuple[torch.Tensor, ...]] = {}
    out_keys: list[bytes] = []
    mixed = 0
    for step, batch in enumerate(batches, 1):
        keys = pair_keys(batch)
        for i, key in enumerate(keys):
            entered[key] = step
            floats[key] = tuple(t[i] for t in batch)
        out = pool(batch, step)
        assert len(out) == 3 and [t.shape for t in out] == [t.shape for t in batch]
        if step <= 3:  # 9 places, 3 pairs a step: the first three batches pass through
            assert all(o is t for o, t in zip(out, batch, strict=True))
            continue
        assert all(t.is_contiguous(memory_format=torch.channels_last) for t in out)
        got = pair_keys(out)
        for i, key in enumerate(got):
            assert entered[key] < step, "a pair of this very batch or one never seen"
            assert all(torch.equal(o[i], f) for o, f in zip(out, floats[key], strict=True))
        out_keys += got
        mixed += len({resizes[entered[k] - 1] for k in got}) > 1
    assert len(out_keys) == len(set(out_keys)) == 3 * 11  # none twice
    held = pair_keys(tuple(p.float().div(255) for p in pool.images))
    assert sorted(held + out_keys) == sorted(entered)  # none lost: trained on or still waiting
    assert mixed >= 8  # of 11 draws (3 pairs of one batch: probability < 1/10 a step); without a pool: none


def test_the_pair_pool_resumes_from_its_state_and_draws_by_step(hr_dir: Path) -> None:
    """A pool restored from its state_dict (as a checkpoint carries it) continues exactly as the uninterrupted one;
    the draw depends on the seed and the step, not on how many draws came before; other sizes refill."""
    batches = degraded_batches(hr_dir, 8, batch=2)
    straight = PairPool(4, seed=3)
    outs = [straight(b, s) for s, b in enumerate(batches, 1)]
    first = PairPool(4, seed=3)
    for s, b in enumerate(batches[:4], 1):
        first(b, s)
    state = first.state_dict()
    assert state["filled"] == 4 and [p.dtype for p in state["images"]] == [torch.uint8] * 3
    second = PairPool(4, seed=3)
    assert second.load_state_dict(state)
    for s, b in enumerate(batches[4:], 5):
        assert all(torch.equal(x, y) for x, y in zip(second(b, s), outs[s - 1], strict=True))
    other_seed = PairPool(4, seed=4)
    other_seed.load_state_dict(state)
    assert not all(torch.equal(x, y) for x, y in zip(other_seed(batches[4], 5), outs[4], strict=True))
    assert not PairPool(6, seed=3).load_state_dict(state)  # another size: refills
    assert not PairPool(4, seed=3).load_state_dict(None)  # a checkpoint written without a pool


def test_a_pool_saved_while_filling_resumes_with_another_batch_size(
    hr_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Saved 4 of 12 pairs full with batches of 4, resumed with batches of 3: the whole batches that fit are kept
    (3 pairs, said in the log), the pool fills on and draws, where the filling overran the pool before."""
    first = PairPool(12, seed=0)
    first(degraded_batches(hr_dir, 1, batch=4)[0], 1)
    pool = PairPool(12, seed=0)
    assert pool.load_state_dict(first.state_dict())
    with caplog.at_level("WARNING"):
        outs = [pool(b, s) for s, b in enumerate(degraded_batches(hr_dir, 6, batch=3), 2)]
    assert "saved 4 of 12 pairs full: 3 kept" in caplog.text
    assert pool.filled == 12 and all(o[0].shape[0] == 3 for o in outs)


def test_a_crafted_pool_is_refused_or_copied(hr_dir: Path) -> None:
    """A checkpoint's pool is hostile input: other types, a bool count, tensors on the meta device or sparse, no
    images for a filled pool are refused (ValueError: one line at the resume); views sharing one storage or
    expanded are copied, so that a draw writes one place, not all."""
    pool = PairPool(4, seed=3)
    for b, s in zip(degraded_batches(hr_dir, 2, batch=2), (1, 2), strict=True):
        pool(b, s)
    state = pool.state_dict()
    lr, hr, plain = state["images"]
    bad = {
        "float": [lr.float(), hr, plain],
        "meta": [lr.to("meta"), hr, plain],
        "sparse": [lr.to_sparse(), hr, plain],
    }
    for images in bad.values():
        with pytest.raises(ValueError, match="pair pool"):
            PairPool(4, seed=3).load_state_dict({**state, "images": images})
    for changes in ({"filled": True}, {"images": []}):  # a bool count; a filled pool without images
        with pytest.raises(ValueError, match="pair pool"):
            PairPool(4, seed=3).load_state_dict({**state, **changes})
    expanded = hr[:1].expand(4, -1, -1, -1)
    shared = PairPool(4, seed=3)
    assert shared.load_state_dict({**state, "images": [lr, expanded, expanded]})
    shared(degraded_batches(hr_dir, 3, batch=2)[2], 3)
    assert shared.images[1].data_ptr() != shared.images[2].data_ptr()
    assert len({shared.images[1][i].numpy().tobytes() for i in range(4)}) == 3  # 2 places written, 2 not


@pytest.mark.parametrize(
    ("pool_size", "message"),
    [(7, r"data\.realesrgan\.pool_size: must be auto, 0 \(off\) or a multiple of data\.batch_size \(4: e\.g\. 60\)"),
     (-4, r"data\.realesrgan\.pool_size"), ("big", r"data\.realesrgan\.pool_size: expected int or 'auto'"),
     (40000, r"data\.realesrgan\.pool_size: 40000 pairs of 256 px hold 15\.1 GiB, in memory and in every checkpoint")],
)  # fmt: skip
def test_a_pool_size_that_does_not_fit_the_batch_is_one_line(pool_size: object, message: str) -> None:
    raw = {"data": {"hr_dir": "x", "batch_size": 4, "patch_size": 256, "degradation": "realesrgan",
                    "realesrgan": {"pool_size": pool_size}}}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_a_grey_models_pool_counts_one_channel() -> None:
    """A grey model's pairs are a third of an RGB model's bytes: 8000 pairs of 256 px (3.0 GiB in RGB) fit it."""
    raw = {"data": {"hr_dir": "x", "batch_size": 4, "patch_size": 256, "degradation": "realesrgan",
                    "realesrgan": {"pool_size": 8000}}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"8000 pairs of 256 px hold 3\.0 GiB"):
        config_from_dict(raw)
    assert config_from_dict({**raw, "model": {"num_in_ch": 1, "num_out_ch": 1}}).data.pool_pairs == 8000
    more = {**raw["data"], "realesrgan": {"pool_size": 16000}}
    with pytest.raises(ConfigError, match=r"16000 pairs of 256 px hold 2\.0 GiB"):
        config_from_dict({"data": more, "model": {"num_in_ch": 1, "num_out_ch": 1}})
