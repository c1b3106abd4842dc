"""16-bit training data (`data.bit_depth: 16`): every bit of 16-bit photos and measurements reaches the model.

The 16-bit photo is real: scikit-image's astronaut downscaled 2x by MATLAB bicubic in float64 and stored with 16
bits (an average of 16 pixels holds detail between the 8-bit levels); the CT slice is one pydicom installs.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_data import draws

from esrgan.data import (
    Degradation,
    InfiniteSampler,
    PatchDataset,
    batch_to_device,
    bicubic_lr,
    patch_loader,
    read_pixels,
    to_carrier,
    to_tensor,
    to_unit,
)
from esrgan.errors import ConfigError
from esrgan.imagedata import ImageData
from esrgan.imageio import read_image, write_image
from esrgan.resize import imresize_np

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def deep(photo: np.ndarray) -> np.ndarray:
    """A real 16-bit image: the photo MATLAB-bicubic downscaled 2x in float64, rounded to 16-bit levels."""
    return np.clip(np.floor(imresize_np(photo, scale=0.5) * 257.0 + 0.5), 0, 65535).astype(np.uint16)


@pytest.fixture()
def hr_dir(tmp_path: Path, photo: np.ndarray) -> Path:
    """A 16-bit RGB PNG (203x150, not a multiple of 4) and an 8-bit one."""
    folder = tmp_path / "hr"
    folder.mkdir()
    write_image(
        folder / "a.png", ImageData(pixels=np.ascontiguousarray(deep(photo)[:203, :150]), bit_depth=16)
    )
    Image.fromarray(photo[250:, 301:]).save(folder / "b.png")
    return folder


def on_levels(x: torch.Tensor, top: float) -> bool:
    """Whether every value of a float32 image is some k / top (within float32's rounding)."""
    y = x.double() * top
    return bool(torch.all((y - y.round()).abs() < 1e-2))


def on_8bit_levels(x: torch.Tensor) -> bool:
    return on_levels(x, 255.0)


def test_patches_keep_16_bits_and_their_lr_is_the_whole_image_bicubic_at_16_bit_levels(hr_dir: Path) -> None:
    ds = PatchDataset(hr_dir, scale=4, patch_size=32, bits=16)
    hr16 = np.asarray(read_image(hr_dir / "a.png").pixels)
    assert hr16.dtype == np.uint16  # the file holds 16 bits
    hr16 = hr16[:200, :148]
    # the whole image's LR, independently: MATLAB bicubic in float64, halves rounded up, 16-bit levels
    exact = imresize_np(hr16.astype(np.float64), scale=0.25)
    matlab = np.clip(np.floor(exact + 0.5), 0, 65535)
    lr_full = bicubic_lr(to_tensor(hr16), 4, 16)
    got = (lr_full.double() * 65535).round().permute(1, 2, 0).numpy()
    assert np.abs(got - matlab).max() <= 1 and (got != matlab).mean() < 1e-3  # float sums at a .5 boundary
    assert not on_8bit_levels(lr_full)  # the LR keeps what lies between the 8-bit levels
    for seed in range(30):
        lr, hr = ds[(0, seed)]
        top, left, flip, k = draws(seed, 50, 37, 8)
        exp_lr = lr_full[:, top : top + 8, left : left + 8]
        exp_hr = torch.from_numpy(hr16[top * 4 : top * 4 + 32, left * 4 : left * 4 + 32].astype(np.float32))
        exp_hr = exp_hr.permute(2, 0, 1) / 65535
        if flip:
            exp_lr, exp_hr = exp_lr.flip(-1), exp_hr.flip(-1)
        exp_lr, exp_hr = torch.rot90(exp_lr, k, (-2, -1)), torch.rot90(exp_hr, k, (-2, -1))
        assert torch.equal(hr, exp_hr), seed  # the file's 16-bit values
        assert torch.equal(lr, exp_lr), seed  # bit-identical, borders included
    # an 8-bit file trains on the same HR at either depth; its LR is the finer rounding of the same sums
    ds8 = PatchDataset(hr_dir, scale=4, patch_size=32)
    for seed in range(10):
        (lr8, hr8), (lr16, hr16_t) = ds8[(1, seed)], ds[(1, seed)]
        assert torch.equal(hr8, hr16_t)
        assert float((lr8 - lr16).abs().max()) <= 0.5 / 255 + 1e-6
        assert on_8bit_levels(lr8) and not on_8bit_levels(lr16)


def test_16_bit_batches_travel_as_int16_and_come_back_exactly(hr_dir: Path) -> None:
    """The loader carries 16-bit levels as int16 (torch's uint16 lacks operations); batch_to_device gives the same
    floats as the dataset, with 0, 2 forked or 2 forkserver workers (shared memory), and from a resumed start."""
    ds = PatchDataset(hr_dir, scale=4, patch_size=32, bits=16)
    a = list(itertools.islice(patch_loader(ds, batch_size=3, seed=1, num_workers=0), 4))
    assert all(t.dtype == torch.int16 for batch in a for t in batch)
    sampler = iter(InfiniteSampler(len(ds), seed=1))
    for lr_c, hr_c in a[:2]:
        lr, hr = batch_to_device((lr_c, hr_c), torch.device("cpu"), lr_on_device=False, scale=4)
        for j in range(3):
            exp_lr, exp_hr = ds[next(sampler)]
            assert torch.equal(lr[j], exp_lr) and torch.equal(hr[j], exp_hr)
    assert any(bool((hr_c < 0).any()) for _, hr_c in a)  # values above 32767 ride as negative int16
    forked = list(itertools.islice(patch_loader(ds, batch_size=3, seed=1, num_workers=2), 4))
    served = PatchDataset(hr_dir, scale=4, patch_size=32, bits=16)
    shared = list(
        itertools.islice(
            patch_loader(served, batch_size=3, seed=1, num_workers=2, device_type="cuda-like"), 4
        )
    )
    assert served._shared is not None and served._shared[0][0].dtype == torch.int16
    assert served.cache is not None and served.cache[0][0].dtype == np.uint16
    resumed = list(itertools.islice(patch_loader(ds, batch_size=3, seed=1, start_sample=6), 2))
    for batch, f, s in zip(a, forked, shared, strict=True):
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(batch, f, s, strict=True))
    assert torch.equal(a[2][1], resumed[0][1]) and torch.equal(a[3][0], resumed[1][0])


def test_carried_levels_round_trip_every_16_bit_value() -> None:
    levels = torch.arange(65536, dtype=torch.float64)
    x = (levels / 65535).float()
    carried = to_carrier(x, 16)
    assert carried.dtype == torch.int16
    assert torch.equal((to_unit(carried).double() * 65535).round(), levels)
    assert torch.equal(to_unit(carried), x)
    with pytest.raises(TypeError, match="uint8 or int16"):
        to_unit(torch.zeros(2, dtype=torch.int32))


def test_16_bit_lr_made_on_the_device_equals_the_per_sample_patches(hr_dir: Path) -> None:
    per_sample = PatchDataset(hr_dir, scale=4, patch_size=32, bits=16)
    batched = PatchDataset(hr_dir, scale=4, patch_size=32, lr_on_device=True, bits=16)
    keys = [(i, seed) for i in (0, 1) for seed in range(40)]
    regions = torch.stack([batched.loader_sample(k)[0] for k in keys])
    assert regions.dtype == torch.int16
    lr, hr = batch_to_device((regions, torch.empty(0)), torch.device("cpu"), lr_on_device=True, scale=4)
    exp = [per_sample[k] for k in keys]
    assert torch.equal(hr, torch.stack([e[1] for e in exp]))
    diff = (lr - torch.stack([e[0] for e in exp])).abs() * 65535
    assert diff.max() <= 1.0 + 1e-2  # float32 sums against float64 ones: a level either side of a boundary
    assert not on_8bit_levels(lr)
    for k, (exp_lr, exp_hr) in zip(keys[:6], exp, strict=False):  # the dataset's own items, one at a time
        one_lr, one_hr = batched[k]
        assert torch.equal(one_hr, exp_hr) and float((one_lr - exp_lr).abs().max()) * 65535 <= 1.0 + 1e-2
        assert not on_8bit_levels(one_lr)


def test_16_bit_paired_folders_and_shrunk_images(hr_dir: Path, tmp_path: Path) -> None:
    """Paired 16-bit LR files give what the on-the-fly LR gives; hr_downscale shrinks at 16-bit precision."""
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for name in ("a", "b"):
        hr = read_pixels(hr_dir / f"{name}.png", 3, 16)
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        lr = np.clip(np.floor(imresize_np(hr.astype(np.float64), scale=0.25) + 0.5), 0, 65535)
        write_image(lr_dir / f"{name}.png", ImageData(pixels=lr.astype(np.uint16), bit_depth=16))
    paired = PatchDataset(hr_dir, scale=4, patch_size=32, lr_dir=lr_dir, bits=16)
    onthefly = PatchDataset(hr_dir, scale=4, patch_size=32, bits=16)
    for key in [(0, 3), (1, 4), (0, 9)]:
        (lp, hp), (lo, ho) = paired[key], onthefly[key]
        assert torch.equal(hp, ho)
        assert float((lp - lo).abs().max()) * 65535 <= 1.0 + 1e-2  # numpy's float64 sums against torch's
    shrunk = PatchDataset(hr_dir, scale=4, patch_size=32, hr_downscale=2.0, bits=16)
    assert shrunk.cache is not None
    cached = shrunk.cache[0][0]
    hr16 = np.asarray(read_image(hr_dir / "a.png").pixels).astype(np.float64)
    small = np.clip(np.floor(imresize_np(hr16, scale=0.5) + 0.5), 0, 65535)[
        : cached.shape[0], : cached.shape[1]
    ]
    assert cached.dtype == np.uint16 and np.abs(cached - small).max() <= 1
    assert len(np.unique(cached % 257)) > 200  # not 8-bit levels times 257


def test_realworld_degradation_at_16_bits(hr_dir: Path) -> None:
    """blur, bicubic and noise at 16-bit levels, the noise as strong as at 8 bits (noise_sigma is in 8-bit levels
    at any depth); a JPEG'd LR is on the 8-bit levels a JPEG holds."""
    d = Degradation(blur_prob=1.0, noise_prob=1.0, jpeg_prob=0.0)
    ds = PatchDataset(hr_dir, scale=4, patch_size=32, degradation=d, bits=16)
    again = PatchDataset(hr_dir, scale=4, patch_size=32, degradation=d, bits=16)
    lr, _ = ds[(0, 5)]
    assert torch.equal(lr, again[(0, 5)][0])  # seeded
    assert on_levels(lr, 65535.0) and not on_8bit_levels(lr)
    jpeg = PatchDataset(hr_dir, scale=4, patch_size=32, degradation=Degradation(jpeg_prob=1.0), bits=16)
    assert on_8bit_levels(jpeg[(0, 5)][0])
    for bits in (
        8,
        16,
    ):  # same crops with and without noise of sigma 8 levels (no flips: their draws come after)
        kw = {"scale": 4, "patch_size": 32, "flip": False, "rot90": False, "bits": bits}
        noisy = PatchDataset(hr_dir, **kw, degradation=Degradation(0.0, noise_prob=1.0, noise_sigma=(8.0, 8.0),
                                                                   jpeg_prob=0.0))  # fmt: skip
        clean = PatchDataset(hr_dir, **kw, degradation=Degradation(0.0, noise_prob=0.0, jpeg_prob=0.0))
        diffs = []
        for seed in range(12):
            n, c = noisy[(1, seed)][0], clean[(1, seed)][0]
            inside = (c > 30 / 255) & (c < 225 / 255)  # away from the clipping at black and white
            diffs.append(((n - c) * 255)[inside])
        spread = float(torch.cat(diffs).std())
        assert 7.2 < spread < 8.8, (bits, spread)


def test_realesrgan_and_other_depths_are_refused(hr_dir: Path) -> None:
    from esrgan.config import RealESRGANDegradationConfig

    with pytest.raises(ConfigError, match="realesrgan degradation works on 8-bit images"):
        PatchDataset(hr_dir, scale=4, patch_size=32, realesrgan=RealESRGANDegradationConfig(), bits=16)
    with pytest.raises(ConfigError, match="8 or 16 bits, not 12"):
        PatchDataset(hr_dir, scale=4, patch_size=32, bits=12)


def test_a_ct_slice_trains_on_all_its_levels_at_16_bits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real CT slice (pydicom's, 14 bits stored): at 16 bits the training data holds its values as `esrgan
    upscale` stretches them, thousands of levels; at 8 bits at most 256, and the run says how to keep them."""
    pydicom = pytest.importorskip("pydicom")
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "693_J2KI.dcm"
    if not source.is_file():
        pytest.skip(f"pydicom {pydicom.__version__} does not install 693_J2KI.dcm")
    folder = tmp_path / "ct"
    folder.mkdir()
    (folder / "slice.dcm").write_bytes(source.read_bytes())
    stretched = np.asarray(read_image(source, measurements=True).pixels)
    assert stretched.dtype == np.uint16
    deep_ds = PatchDataset(folder, scale=4, patch_size=64, bits=16, channels=1)
    assert deep_ds.cache is not None
    held = deep_ds.cache[0][0]
    assert np.array_equal(held[:, :, 0], stretched.reshape(held.shape[:2]))
    assert len(np.unique(held)) > 2000
    with caplog.at_level(logging.INFO, logger="esrgan.data"):
        flat = PatchDataset(folder, scale=4, patch_size=64, channels=1)
    assert flat.cache is not None and len(np.unique(flat.cache[0][0])) <= 256
    assert "1 of 1 training files have more than 8 bits" in caplog.text
    assert "data.bit_depth: 16 keeps every bit" in caplog.text
    lr, hr = deep_ds[(0, 3)]
    assert lr.shape == (1, 16, 16) and hr.shape == (1, 64, 64)
