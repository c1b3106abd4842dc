"""Training patches: LR equals the whole-image MATLAB bicubic, aligned augmentations, resumable seeded streams."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from esrgan.data import (
    Degradation,
    InfiniteSampler,
    PatchDataset,
    batch_to_device,
    bicubic_lr,
    patch_loader,
    to_tensor,
    worker_start_method,
)
from esrgan.errors import ConfigError
from esrgan.resize import imresize_np

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture()
def hr_dir(tmp_path: Path, photo: np.ndarray) -> Path:
    """Two real photos of odd sizes (not multiples of 4: the dataset mod-crops them)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(photo[:203, :150]).save(folder / "a.png")
    Image.fromarray(photo[250:, 301:]).save(folder / "b.png")
    return folder


def draws(seed: int, lr_h: int, lr_w: int, p: int) -> tuple[int, int, bool, int]:
    """The dataset's random choices for a sample seed, in its order: top, left, flip, rotation."""
    rng = np.random.default_rng(seed)
    top, left = int(rng.integers(0, lr_h - p + 1)), int(rng.integers(0, lr_w - p + 1))
    flip = bool(rng.random() < 0.5)
    return top, left, flip, int(rng.integers(0, 4))


def test_patches_are_crops_of_the_whole_image_bicubic_with_aligned_augmentation(hr_dir: Path) -> None:
    ds = PatchDataset(hr_dir, scale=4, patch_size=32)
    for index, name in enumerate(["a.png", "b.png"]):
        hr_full = np.asarray(Image.open(hr_dir / name))
        hr_full = hr_full[: hr_full.shape[0] // 4 * 4, : hr_full.shape[1] // 4 * 4]
        lr_full = bicubic_lr(to_tensor(hr_full), 4)  # the LR image a dataset would store
        for seed in range(40):
            lr, hr = ds[(index, seed)]
            top, left, flip, k = draws(seed, lr_full.shape[1], lr_full.shape[2], 8)
            exp_lr = lr_full[:, top : top + 8, left : left + 8]
            exp_hr = to_tensor(hr_full)[:, top * 4 : top * 4 + 32, left * 4 : left * 4 + 32]
            if flip:
                exp_lr, exp_hr = exp_lr.flip(-1), exp_hr.flip(-1)
            exp_lr, exp_hr = torch.rot90(exp_lr, k, (-2, -1)), torch.rot90(exp_hr, k, (-2, -1))
            assert torch.equal(hr, exp_hr)
            assert torch.equal(lr, exp_lr), (name, seed)  # bit-identical, borders included
            assert torch.equal(lr * 255, (lr * 255).round())  # uint8 levels, as a saved LR image


def test_lr_levels_round_halves_up_as_matlab(shared_dir: Path, tmp_path: Path) -> None:
    """MATLAB's imresize of a uint8 image rounds its double sums to uint8 halves away from zero; at x2 some sums of a
    real photo land exactly on .5 (48 in Set5's baby). The training LR rounded them to even (torch.round, in
    float32 where a tie is float noise either way): now floor(x + 0.5) in float64, for the validation LR
    (bicubic_lr) and for every training patch, which equals the same region of the whole image's LR."""
    hr = np.asarray(Image.open(shared_dir / "data" / "benchmarks" / "Set5" / "baby.png"))
    exact = imresize_np(hr, scale=0.5)  # float64 on 0..255
    assert int((exact - np.floor(exact) == 0.5).sum()) > 10  # not vacuous: exact ties exist
    matlab = np.clip(np.floor(exact + 0.5), 0, 255)
    assert not np.array_equal(matlab, np.clip(np.round(exact), 0, 255))  # half-to-even would differ
    lr = bicubic_lr(to_tensor(hr), 2)
    assert lr.dtype == torch.float32
    np.testing.assert_array_equal((lr * 255).round().permute(1, 2, 0).numpy(), matlab)
    (tmp_path / "hr").mkdir()
    Image.fromarray(hr).save(tmp_path / "hr" / "baby.png")
    ds = PatchDataset(tmp_path / "hr", scale=2, patch_size=64, flip=False, rot90=False)
    lr_full = torch.from_numpy(matlab / 255.0).float().permute(2, 0, 1)
    ties = exact - np.floor(exact) == 0.5
    covered = 0
    for seed in range(30):
        patch, _ = ds[(0, seed)]
        top, left, _, _ = draws(seed, 256, 256, 32)
        assert torch.equal(patch, lr_full[:, top : top + 32, left : left + 32]), seed
        covered += int(ties[top : top + 32, left : left + 32].sum())
    assert covered > 0  # the patches hold some of the ties


def test_reading_per_sample_equals_the_ram_cache(hr_dir: Path) -> None:
    cached = PatchDataset(hr_dir, scale=4, patch_size=32)
    uncached = PatchDataset(hr_dir, scale=4, patch_size=32, cache_max_mb=0)
    assert cached.cache is not None and uncached.cache is None
    for key in [(0, 1), (1, 2), (1, 99)]:
        for x, y in zip(cached[key], uncached[key], strict=True):
            assert torch.equal(x, y)


def test_paired_folders(hr_dir: Path, tmp_path: Path) -> None:
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for name in ("a", "b"):
        hr = np.asarray(Image.open(hr_dir / f"{name}.png"))
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        lr = np.clip(np.round(imresize_np(hr, scale=0.25)), 0, 255).astype(np.uint8)
        Image.fromarray(lr).save(lr_dir / f"{name}.png")
    paired = PatchDataset(hr_dir, scale=4, patch_size=32, lr_dir=lr_dir)
    onthefly = PatchDataset(hr_dir, scale=4, patch_size=32)
    for key in [(0, 3), (1, 4)]:
        for x, y in zip(paired[key], onthefly[key], strict=True):
            assert torch.equal(x, y)
    (lr_dir / "b.png").unlink()
    with pytest.raises(ConfigError, match=r"no LR image for b\.png"):
        PatchDataset(hr_dir, scale=4, patch_size=32, lr_dir=lr_dir)


def test_a_paired_lr_of_another_scale_is_refused_before_training(hr_dir: Path, tmp_path: Path) -> None:
    """An LR folder made at x8 given to a x4 run: the HR was only required to be at least LR x 4, so each pair
    trained on the HR's top-left quarter against the whole LR (a silent misalignment; BasicSR refuses any pair
    whose sizes are not exactly LR x scale). Now the HR may exceed LR x scale by less than the scale, on both
    sides, checked from the headers before anything is drawn."""
    from esrgan.resize import imresize_np

    lr_dir = tmp_path / "lr8"
    lr_dir.mkdir()
    for name in ("a", "b"):
        hr = np.asarray(Image.open(hr_dir / f"{name}.png"))
        lr = np.clip(
            np.round(imresize_np(hr[: hr.shape[0] // 8 * 8, : hr.shape[1] // 8 * 8], scale=0.125)), 0, 255
        )
        Image.fromarray(lr.astype(np.uint8)).save(lr_dir / f"{name}.png")
    with pytest.raises(ConfigError, match=r"lr8/a\.png: LR 18x25 does not match HR a\.png 150x203 at scale 4 \(the LR "
                       r"of 150x203 is 37x50\)$"):  # fmt: skip
        PatchDataset(hr_dir, scale=4, patch_size=32, lr_dir=lr_dir)
    assert PatchDataset(hr_dir, scale=8, patch_size=32, lr_dir=lr_dir).lr_files is not None  # its own scale


def test_small_images_and_empty_folders_are_errors(hr_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"a\.png: 150x203 is smaller than the 192x192 training patch"):
        PatchDataset(hr_dir, scale=4, patch_size=192)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        PatchDataset(tmp_path / "empty", scale=4, patch_size=32)


def test_realworld_degradation_is_seeded_and_differs_from_bicubic(hr_dir: Path) -> None:
    always = Degradation(blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)
    # no flips/rotations: the degradation draws from the same per-sample stream before them
    ds = PatchDataset(hr_dir, scale=4, patch_size=64, degradation=always, flip=False, rot90=False)
    plain = PatchDataset(hr_dir, scale=4, patch_size=64, flip=False, rot90=False)
    lr1, hr1 = ds[(0, 5)]
    lr2, _ = ds[(0, 5)]
    lr_plain, hr_plain = plain[(0, 5)]
    assert torch.equal(lr1, lr2) and torch.equal(hr1, hr_plain)
    assert (lr1 - lr_plain).abs().mean() > 0.005


def test_sampler_resumes_mid_stream_and_splits_ranks() -> None:
    full = list(itertools.islice(InfiniteSampler(7, seed=3), 40))
    assert list(itertools.islice(InfiniteSampler(7, seed=3, start=13), 27)) == full[13:]
    assert sorted(i for i, _ in full[:7]) == list(range(7))  # each pass is a permutation
    rank0 = list(itertools.islice(InfiniteSampler(7, seed=3, rank=0, world_size=2), 20))
    rank1 = list(itertools.islice(InfiniteSampler(7, seed=3, rank=1, world_size=2), 20))
    assert rank0 == full[0::2] and rank1 == full[1::2]  # together, the single-process stream


def test_loader_batches_do_not_depend_on_workers(hr_dir: Path) -> None:
    ds = PatchDataset(hr_dir, scale=4, patch_size=32)
    a = list(itertools.islice(patch_loader(ds, batch_size=3, seed=1, num_workers=0), 4))
    b = list(itertools.islice(patch_loader(ds, batch_size=3, seed=1, num_workers=2), 4))
    c = list(itertools.islice(patch_loader(ds, batch_size=3, seed=1, start_sample=6), 2))
    for (la, ha), (lb, hb) in zip(a, b, strict=True):
        assert torch.equal(la, lb) and torch.equal(ha, hb)
    assert torch.equal(a[2][1], c[0][1]) and torch.equal(a[3][0], c[1][0])


def test_loader_workers_outlive_a_terminal_ctrl_c(hr_dir: Path) -> None:
    """Ctrl-C in a terminal reaches the workers too; the training loop decides what happens (finish the step,
    save, stop), so the workers must not die of it and lose queued batches. SIGTERM must still end them (what
    Process.terminate sends: DataLoader's and multiprocessing's last resort at exit)."""
    ds = PatchDataset(hr_dir, scale=4, patch_size=32)
    expected = list(itertools.islice(patch_loader(ds, batch_size=3, seed=1, num_workers=0), 6))
    loader = patch_loader(ds, batch_size=3, seed=1, num_workers=2)
    got = list(itertools.islice(loader, 2))
    workers = loader._workers  # type: ignore[attr-defined]  # the DataLoader iterator's worker processes
    for worker in workers:
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(1.0)  # time for a worker to die of it (it would take its queued batches with it)
    got += list(itertools.islice(loader, 4))
    assert all(worker.is_alive() for worker in workers)
    for (la, ha), (lb, hb) in zip(expected, got, strict=True):
        assert torch.equal(la, lb) and torch.equal(ha, hb)
    for worker in workers:  # SIGTERM not ignored (Linux: the mask of ignored signals, bit N-1 for signal N)
        status = Path(f"/proc/{worker.pid}/status").read_text()
        ignored = int(next(x for x in status.splitlines() if x.startswith("SigIgn:")).split()[1], 16)
        assert ignored >> (signal.SIGINT - 1) & 1 and not ignored >> (signal.SIGTERM - 1) & 1


def test_hr_downscale_shrinks_the_hr_images_first(hr_dir: Path, tmp_path: Path) -> None:
    ds = PatchDataset(hr_dir, scale=4, patch_size=32, hr_downscale=2.0, flip=False, rot90=False)
    hr_full = np.asarray(Image.open(hr_dir / "b.png"))
    small = np.clip(np.round(imresize_np(hr_full, scale=0.5)), 0, 255).astype(np.uint8)
    small = small[: small.shape[0] // 4 * 4, : small.shape[1] // 4 * 4]
    assert ds.cache is not None
    cached = ds.cache[1][0]
    assert cached.shape == small.shape
    assert np.abs(cached.astype(int) - small.astype(int)).max() <= 1  # float32 vs float64 rounding at .5
    _, hr = ds[(1, 7)]
    top, left, _, _ = draws(7, cached.shape[0] // 4, cached.shape[1] // 4, 8)
    assert torch.equal(hr, to_tensor(cached[top * 4 : top * 4 + 32, left * 4 : left * 4 + 32]))
    with pytest.raises(ConfigError, match="smaller than the 128x128"):
        PatchDataset(hr_dir, scale=4, patch_size=128, hr_downscale=2.0)  # a.png becomes 75x102
    with pytest.raises(ConfigError, match="paired"):
        PatchDataset(hr_dir, scale=4, patch_size=32, hr_downscale=2.0, lr_dir=tmp_path)


def test_hr_downscale_list_makes_one_item_per_image_and_factor(hr_dir: Path) -> None:
    """A multi-scale set: item 2i + k is image i shrunk by factor k, the same pixels as a one-factor dataset."""
    multi = PatchDataset(hr_dir, scale=4, patch_size=32, hr_downscale=[2.0, 1.5])
    assert len(multi) == 4 and multi.cache is not None
    for k, factor in enumerate((2.0, 1.5)):
        single = PatchDataset(hr_dir, scale=4, patch_size=32, hr_downscale=factor)
        assert single.cache is not None
        for i in range(2):
            assert np.array_equal(multi.cache[2 * i + k][0], single.cache[i][0])
            assert all(torch.equal(a, b) for a, b in zip(multi[(2 * i + k, 5)], single[(i, 5)], strict=True))
    assert multi.cache[0][0].shape != multi.cache[1][0].shape  # a.png at 2x and at 1.5x: two sizes
    sampler = iter(InfiniteSampler(len(multi), seed=0))
    assert {next(sampler)[0] for _ in range(4)} == {0, 1, 2, 3}  # one pass visits every (image, factor)
    with pytest.raises(ConfigError, match=r"a\.png: 38x51 \(shrunk 4x by data\.hr_downscale\) is smaller"):
        PatchDataset(hr_dir, scale=4, patch_size=48, hr_downscale=[1.0, 4.0])
    with pytest.raises(ConfigError, match="distinct"):
        PatchDataset(hr_dir, scale=4, patch_size=32, hr_downscale=[2.0, 2.0])


def test_lr_made_per_batch_on_the_device_equals_the_per_sample_patches(hr_dir: Path) -> None:
    """lr_on_device: regions with margin (mirror-padded at borders) -> one batched imresize -> the same LR patches."""
    per_sample = PatchDataset(hr_dir, scale=4, patch_size=32)
    batched = PatchDataset(hr_dir, scale=4, patch_size=32, lr_on_device=True)
    keys = [(i, seed) for i in (0, 1) for seed in range(60)]  # 120 crops: many touch an image border
    regions = torch.stack([batched.loader_sample(k)[0] for k in keys])
    assert regions.dtype == torch.uint8 and regions.shape[-1] == (8 + 2 * 4) * 4
    lr, hr = batch_to_device((regions, torch.empty(0)), torch.device("cpu"), lr_on_device=True, scale=4)
    exp = [per_sample[k] for k in keys]
    exp_lr, exp_hr = torch.stack([e[0] for e in exp]), torch.stack([e[1] for e in exp])
    assert torch.equal(hr, exp_hr)  # the same crops, flips and rotations
    diff = (lr - exp_lr).abs() * 255
    assert diff.max() <= 1.0 + 1e-4  # a resampling sum on a rounding boundary may round the other way
    assert (diff > 0.5).float().mean() < 0.002


def test_loader_batches_are_uint8_and_equal_the_float_samples(hr_dir: Path) -> None:
    ds = PatchDataset(hr_dir, scale=4, patch_size=32)
    lr_u8, hr_u8 = next(patch_loader(ds, batch_size=4, seed=2))
    assert lr_u8.dtype == torch.uint8 and hr_u8.dtype == torch.uint8
    lr, hr = batch_to_device((lr_u8, hr_u8), torch.device("cpu"), lr_on_device=False, scale=4)
    sampler = iter(InfiniteSampler(len(ds), seed=2))
    for j in range(4):
        exp_lr, exp_hr = ds[next(sampler)]
        assert torch.equal(lr[j], exp_lr) and torch.equal(hr[j], exp_hr)  # bit-exact through uint8


class _SeesParentState(Dataset[tuple[Tensor, Tensor]]):
    """Returns whether the worker sees a mark the parent set after import: a forked worker inherits the
    parent's memory (an initialised CUDA context included, the cause of 'CUDA error: initialization error');
    a worker started by forkserver or spawn does not."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        import esrgan.data

        seen = getattr(esrgan.data, "_parent_mark", None) == "set-in-parent"
        return torch.tensor([int(seen)]), torch.tensor([os.getpid()])


def test_workers_of_a_gpu_run_do_not_inherit_the_parents_state(monkeypatch: pytest.MonkeyPatch) -> None:
    import esrgan.data

    monkeypatch.setattr(esrgan.data, "_parent_mark", "set-in-parent", raising=False)
    seen = {}
    for device_type in ("cpu", "cuda"):
        method = worker_start_method(device_type)
        context = multiprocessing.get_context(method) if method else None
        loader = DataLoader(_SeesParentState(), batch_size=2, num_workers=1, multiprocessing_context=context)
        flags, pids = next(iter(loader))
        assert int(pids[0]) != os.getpid()
        seen[device_type] = bool(flags.all())
    assert seen["cpu"]  # forked: the mark (and so a CUDA context) is inherited; the check can see it
    assert not seen["cuda"]  # a fresh interpreter: nothing of the parent, no CUDA state to trip over
    assert worker_start_method("cuda") in ("forkserver", "spawn")


def test_loader_for_a_gpu_device_gives_the_same_batches_with_shared_memory(hr_dir: Path) -> None:
    """forkserver workers receive the decoded images through shared memory and make the same batches."""
    plain = PatchDataset(hr_dir, scale=4, patch_size=32)
    a = list(itertools.islice(patch_loader(plain, batch_size=3, seed=5, num_workers=0), 3))
    ds = PatchDataset(hr_dir, scale=4, patch_size=32)
    loader = patch_loader(ds, batch_size=3, seed=5, num_workers=2, device_type="cuda-like")
    b = list(itertools.islice(loader, 3))
    assert ds._shared is not None and all(t.is_shared() for t, _ in ds._shared)
    for (la, ha), (lb, hb) in zip(a, b, strict=True):
        assert torch.equal(la, lb) and torch.equal(ha, hb)


def test_a_png_header_bomb_among_the_training_images_is_a_one_line_error(hr_dir: Path) -> None:
    """A PNG whose header claims 30000x30000 pixels (900 Mpx, a 1.5 kB file): Pillow's Image.open raises
    DecompressionBombError, which is no OSError: it escaped the dataset as a traceback."""
    import struct
    import zlib

    from esrgan.errors import ImageError

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (30000 * 3 + 1) * 16, 9)
    bomb = hr_dir / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match=r"bomb\.png: cannot read image .*900000000 pixels") as info:
        PatchDataset(hr_dir, scale=4, patch_size=32)
    assert "\n" not in str(info.value)
