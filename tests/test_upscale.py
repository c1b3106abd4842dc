"""Upscaler API: precision fallbacks on a real model, every image kind in -> same kind out, outscale, alpha."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bound_upscaler, photo_preserving_rrdb, tiny_rrdb
from PIL import Image
from scipy import ndimage

from esrgan.device import (
    ModelRunner,
    PrecisionWarning,
    available_memory,
    cpu_has_native_bf16,
    resolve_precision,
)
from esrgan.errors import EsrganError
from esrgan.generator import RRDBNet
from esrgan.imagedata import ImageData, ImageWarning
from esrgan.tiling import TileError, tile_grid
from esrgan.upscale import OutOfMemoryWarning, Upscaler, bleed_colour


@pytest.fixture(scope="module")
def up() -> Upscaler:
    return Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=32)


# --- engine and tile choice -------------------------------------------------------------------------------------------
def test_cpu_runner_uses_the_packed_engine_with_the_same_output(photo_small: np.ndarray) -> None:
    """The default CPU engine (esrgan.fast) is the model's own maths: fp32 to rounding, bf16 within its bound."""
    model = photo_preserving_rrdb(spread=0.5)
    x = torch.from_numpy(photo_small).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ref = model(x)
    for dtype, min_db in ((torch.float32, 100.0), (torch.bfloat16, 45.0)):
        if dtype == torch.bfloat16 and not cpu_has_native_bf16():
            continue
        packed = ModelRunner(
            model, torch.device("cpu"), dtype, engine="packed"
        )  # fp32 default: ncnn, if installed
        module = ModelRunner(model, torch.device("cpu"), dtype, engine="module")
        assert (packed.engine, module.engine) == ("packed", "module")
        for runner in (packed, module):
            y = runner(x)
            mse = float(((y.double() - ref.double()) ** 2).mean())
            db = 10 * np.log10(1 / max(mse, 1e-30))
            assert y.shape == ref.shape and db > min_db, f"{runner.engine} {dtype}: {db:.1f} dB"
    with pytest.raises(EsrganError, match="packed engine"):
        ModelRunner(model, torch.device("cpu"), torch.float16, engine="packed")


def test_automatic_tile_is_balanced_and_bounded_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The automatic tile: whole images up to the CPU maximum, balanced tiles above it (never the wasteful
    maximum-plus-a-sliver), and smaller tiles when memory is short."""
    from esrgan import upscale as upscale_module

    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32")
    cap = upscale_module.CPU_MAX_TILE
    assert up.tile_size(cap, cap) == 0  # one tile: processed whole
    side = up.tile_size(2 * cap, 2 * cap)  # balanced, or the largest tile where tile_grid balances it
    th, tw, ys, xs = tile_grid(2 * cap, 2 * cap, side, up.tiling(2 * cap, 2 * cap, side).overlap)
    assert 0 < th == tw < cap and th % 8 == 0 and len(ys) == len(xs) == 3
    per_pixel, fixed = up.runner.activation_bytes()
    # packed: the tail's stripes are a fixed cost; ncnn: its net, not built before the first pass
    assert per_pixel > 0 and (fixed > 0) == (up.runner.engine in ("packed", "ncnn"))
    # this machine has plenty of memory; a small one is simulated by what /proc/meminfo would report
    monkeypatch.setattr(upscale_module, "available_memory", lambda device: fixed + 64_000_000)
    small = up.tile_size(4 * cap, 4 * cap)
    assert 32 <= small < th and small**2 * per_pixel <= 0.5 * 64_000_000


# --- out of memory ----------------------------------------------------------------------------------------------------
def test_a_tile_given_is_made_smaller_only_when_its_pass_would_not_fit(
    photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--tile 0` (or a large --tile) on a CPU: the tile is made smaller for the image when the engine's estimate of
    its pass (ModelRunner.pass_bytes, the tile itself: the overlap is inside it) is over 3/4 of the memory free,
    to the largest tile whose pass takes at most half, with one warning per tile given and used. Not checked for a
    pass no larger than one already run (the engines keep that memory for reuse: a review saw the tile shrink image
    after image, one warning each, in a container where all three fitted whole), and not kept for later images
    (a server's later jobs are not held to one moment's memory). The free memory is set here as /proc/meminfo, a
    cgroup or ulimit -v would report it (the containers themselves: test_faults.py)."""
    import esrgan.device as device_module
    from esrgan.errors import format_bytes

    image = np.ascontiguousarray(photo[:160, :200])
    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0)
    runner = up.runner_for(np.dtype(np.uint8))
    whole = runner.pass_bytes(160, 200)
    free = {"bytes": 100 * whole}
    monkeypatch.setattr(device_module, "host_memory_available", lambda: free["bytes"])

    def tile_and_notes() -> tuple[int, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tile = up.tile_size(160, 200, commit=True)
        return tile, [str(w.message) for w in caught if issubclass(w.category, OutOfMemoryWarning)]

    assert tile_and_notes() == (0, [])  # plenty: whole
    free["bytes"] = int(whole / 0.74)  # the pass just under 3/4 of it: whole still
    assert tile_and_notes() == (0, [])
    free["bytes"] = int(whole / 0.8)
    tile, notes = tile_and_notes()
    assert 32 <= tile < 200 and tile % 8 == 0
    assert runner.pass_bytes(min(tile, 160), tile) + 4 * 3 * 4 * 200 * min(tile, 160) <= 0.5 * free["bytes"]
    assert notes == [
        f"out of memory with the whole image on cpu, foreseen: a pass needs about {format_bytes(whole)} and "
        f"{format_bytes(free['bytes'])} is free; tiles of at most {tile}x{tile} instead"
    ]
    assert tile_and_notes() == (tile, [])  # the same image again: the same tile, said once
    assert up.tile_cap is None  # nothing kept for later images
    free["bytes"] = 100 * whole
    assert tile_and_notes() == (0, [])  # memory back: whole again
    up.upscale(image)  # a whole pass has run: its memory is the engine's to reuse
    free["bytes"] = int(whole / 0.8)
    assert tile_and_notes() == (0, [])
    assert up.batch_fits(160, 200, 1) and not up.batch_fits(160, 200, 4)  # a video's frames a pass


def test_a_tile_given_is_fitted_with_its_band_before_the_batch_decides_and_after_a_pass(
    photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiling's float32 band (a tile row of output) grows with the image's width: after a pass of `--tile 64`
    has run on a small image, a 160x20000 panorama's band at that tile (~246 MB at x4) is still counted, and the
    tile is made smaller for it (before, a pass no larger than one run was never checked). host_bytes, which the
    batch asks before the model runs (stream or not, or refuse), sees that smaller tile's band and says nothing;
    the warning comes once, when the pass is about to run."""
    import esrgan.device as device_module

    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=64)
    up.upscale(np.ascontiguousarray(photo[:160, :200]))  # a pass of 64x64 has run
    row = up.model.scale**2 * 20000 * 3 * 4  # band bytes per input row of a 20000-wide image
    free = {"bytes": 10 * 64 * row}
    monkeypatch.setattr(device_module, "host_memory_available", lambda: free["bytes"])
    wide = ImageData(np.zeros((160, 20000, 3), np.uint8), bit_depth=8)
    assert up.host_bytes(wide)[2] >= 64 * row  # plenty free: the tile given
    free["bytes"] = 100 * 2**20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        band = up.host_bytes(wide)[2]
        assert caught == []
        tile = up.tile_size(160, 20000, commit=True)
    notes = [str(w.message) for w in caught if issubclass(w.category, OutOfMemoryWarning)]
    assert tile == 32 and 32 * row <= band < 64 * row  # the smallest: even its band is over half of it
    assert len(notes) == 1 and notes[0].startswith(
        "out of memory with tiles of 64x64 pixels on cpu, foreseen"
    )


def test_the_memory_plan_keeps_the_output_whole_with_smaller_tiles_only_where_they_cost_little(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 12 MP photo (4000x3000) at x4 with realesrgan-x4plus's architecture on the page's costs (a machine with
    that much free; no pass runs): held whole at its automatic tile with 5.3 GiB free; with 5.2 GiB whole with
    tiles small enough to leave the output's memory out (they compute at most SMALLER_TILE_COST x the pixels);
    with 4.9 GiB those would be too small, so it is streamed at its tile; with 0.75 GiB only streamed with smaller
    tiles fits, and that is the plan; with 0.1 GiB nothing fits. Each plan's reserve, held, gives a tile whose
    cost fits in what is free."""
    import esrgan.device as device_module
    from esrgan import serve
    from esrgan.generator import RRDBConfig
    from esrgan.tiling import computed_pixels
    from esrgan.upscale import SMALLER_TILE_COST, MemoryPlan

    engine = serve.UpscalerEngine(
        Upscaler(RRDBNet(RRDBConfig()), device="cpu", precision="bf16", copy_model=False)
    )
    up = engine.upscaler
    photo = ImageData(np.zeros((3000, 4000, 3), np.uint8), bit_depth=8)
    gib = 2**30

    def tile_and_cost(reserve: int) -> tuple[int, int]:
        with up.reserving(reserve):
            tile = up.tile_size(3000, 4000, np.uint8, foresee=True)
            return tile, computed_pixels(*up.tiling(3000, 4000, tile)[:4])

    plans = {}
    for free in (5.3, 5.2, 4.9, 0.75, 0.1):
        monkeypatch.setattr(device_module, "host_memory_available", lambda f=free: int(f * gib))
        plans[free] = engine.plan(photo, int(free * gib))
        if plans[free] is not None:
            tile = tile_and_cost(plans[free].reserve)[0]
            with up.reserving(plans[free].reserve):
                need = up.host_bytes(photo)
                cost = (
                    need.streamed + serve.JOB_OVERHEAD
                    if plans[free].streamed
                    else engine.memory_needed(photo)[0]
                )
            assert cost <= free * gib, (free, tile, cost)
    assert plans[5.3] == MemoryPlan(False, 0) and plans[4.9] == MemoryPlan(True, 0) and plans[0.1] is None
    assert plans[5.2] is not None and not plans[5.2].streamed and plans[5.2].reserve > 4 * gib
    monkeypatch.setattr(device_module, "host_memory_available", lambda: int(5.2 * gib))
    (tile, cost), (smaller, smaller_cost) = tile_and_cost(0), tile_and_cost(plans[5.2].reserve)
    assert 32 < smaller < tile and smaller_cost <= SMALLER_TILE_COST * cost
    assert plans[0.75] is not None and plans[0.75].streamed and plans[0.75].reserve > 0


def test_reserves_of_threads_sharing_an_upscaler_add_up_whatever_order_they_end_in() -> None:
    """Two threads' images on one Upscaler (the README allows it): A sets aside 5 GB, B 3 GB, A ends first. B's
    reserve must still hold while B's pass runs, and none be left afterwards; restoring the value each saw on entry
    dropped B's (0 while B ran) and left A's raised for good (helper-82's review, session 32)."""
    import threading

    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def a() -> None:
        with up.reserving(5 * 2**30):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with up.reserving(3 * 2**30):
            b_in.set()
            a_out.wait(10)
            seen["while B runs, A done"] = up.host_reserve

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"while B runs, A done": 3 * 2**30} and up.host_reserve == 0


def test_a_pass_out_of_memory_is_retried_with_half_the_tile_and_the_tile_kept(photo: np.ndarray) -> None:
    """Room for 10,000 pixels a pass: the whole 200x256 image (tile 0) and then tiles of 128 fail, tiles of 64 fit.
    The image is done, one OutOfMemoryWarning per retry, with the pixels of a run at --tile 64; the next image
    starts at 64 (no failed pass, no warning)."""
    image = np.ascontiguousarray(photo[100:300, 128:384])
    up, model = bound_upscaler(10_000, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = up.upscale(image)
    notes = [str(w.message) for w in caught if issubclass(w.category, OutOfMemoryWarning)]
    assert notes == [
        "out of memory with the whole image on cpu; trying tiles of 128x128 (also for the images after it)",
        "out of memory with tiles of 128x128 pixels on cpu; trying tiles of 64x64 (also for the images after it)",
    ]
    assert up.tile_cap == 64
    reference, _ = bound_upscaler(1 << 30, 64)
    np.testing.assert_array_equal(out, reference.upscale(image))
    model.passes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfMemoryWarning)
        second = up.upscale(image[:, ::-1].copy())
    assert second.shape == (800, 1024, 3)
    assert model.passes and all(n * h * w <= 64 * 64 for n, h, w in model.passes)


def test_a_pass_of_several_tiles_out_of_memory_is_retried_with_half_as_many(photo: np.ndarray) -> None:
    """4 tiles of 64 a pass (as CUDA's automatic batch fills half the free memory) and room for 2: the batch is
    halved, not the tile (a smaller tile with as many pixels a pass would fail again)."""
    image = np.ascontiguousarray(photo[100:300, 128:384])
    up, model = bound_upscaler(2 * 64 * 64, 64)
    up.batch = 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = up.upscale(image)
    notes = [str(w.message) for w in caught if issubclass(w.category, OutOfMemoryWarning)]
    assert notes == [
        "out of memory with 4 tiles of 64x64 pixels a pass on cpu; trying 2 a pass (also for the images after it)"
    ]
    assert (up.batch_cap, up.tile_cap) == (2, None) and model.passes[0][0] == 4
    assert all(n <= 2 for n, _, _ in model.passes[1:])
    reference, _ = bound_upscaler(1 << 30, 64)
    reference.batch = 2
    np.testing.assert_array_equal(out, reference.upscale(image))


def test_out_of_memory_at_the_smallest_tile_is_one_error_naming_it(photo: np.ndarray) -> None:
    up, _ = bound_upscaler(100, None)  # not even a 32x32 tile fits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TileError, match=r"^tile at x=0, y=0 \(\d+x\d+ pixels\): out of memory even with "
                           r"tiles of 32x32 pixels, the smallest tried \(.*can't allocate memory"):  # fmt: skip
            up.upscale(np.ascontiguousarray(photo[:120, :120]))
    notes = [str(w.message) for w in caught if issubclass(w.category, OutOfMemoryWarning)]
    assert notes[-1].endswith("trying tiles of 32x32 (also for the images after it)"), notes
    assert up.tile_cap is None  # no tile worked: the next image starts where this one did, not at 32


def test_a_failed_pass_that_is_not_out_of_memory_is_not_retried(photo_small: np.ndarray) -> None:
    up, model = bound_upscaler(1 << 30, 0)

    def broken(x: torch.Tensor) -> torch.Tensor:
        model.passes.append((x.shape[0], x.shape[2], x.shape[3]))
        raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    up.runner._module = broken
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfMemoryWarning)
        with pytest.raises(TileError, match="forward pass failed: cuDNN error"):
            up.upscale(photo_small)
    assert len(model.passes) == 1 and up.tile_cap is None


# --- precision --------------------------------------------------------------------------------------------------------
def test_mps_memory_on_a_torch_without_its_working_set_query(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.3 and 2.4 (the package accepts 2.3) have no torch.mps.recommended_max_memory: the automatic tile
    on a Mac raised AttributeError; it now sizes from the host's memory, as on a CPU. (No MPS here: the attribute
    is removed to stand for the older torch, and the MPS call is never reached.)"""
    monkeypatch.delattr(torch.mps, "recommended_max_memory", raising=False)
    mps, host = available_memory(torch.device("mps")), available_memory(torch.device("cpu"))
    assert mps > 0 and abs(mps - host) < 2**28  # the host's free memory, read twice


def test_cudnn_autotuning_is_on_only_during_a_cuda_pass() -> None:
    """An Upscaler on CUDA turned torch.backends.cudnn.benchmark on for the whole process, for good (a program
    that trains beside it got other kernels, and other results); now only around its passes (the flag is plain
    Python state, so this runs without a GPU), put back after an error too, and never touched elsewhere."""
    from esrgan.device import autotuned

    assert torch.backends.cudnn.benchmark is False  # the process's own setting
    with autotuned(torch.device("cuda")):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False
    with pytest.raises(RuntimeError), autotuned(torch.device("cuda")):
        raise RuntimeError("out of memory")
    assert torch.backends.cudnn.benchmark is False
    with autotuned(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("torch_api", ["fp32_precision", "allow_tf32"])
def test_fp32_passes_on_cuda_are_ieee_not_tf32(monkeypatch: pytest.MonkeyPatch, torch_api: str) -> None:
    """torch lets cuDNN compute fp32 convolutions in TF32 by default (10 bits of each input's mantissa), so the
    fp32 that 16-bit images are computed in (to keep their 16 bits) was TF32 on a GPU. An fp32 pass now turns TF32
    off for its duration (torch >= 2.9's fp32_precision and allow_tf32 before it: both run here, the flags are plain
    state), keeps allow_tf32 readable (torch >= 2.9 refuses to read it once its newer settings say "ieee"), and puts
    the process's setting back, after an error too, and only when the last of overlapping passes (threads sharing an
    Upscaler) ends; a bf16 or fp16 pass leaves it; and the runner says which precision its pass is in."""
    import threading

    from esrgan import device as device_module
    from esrgan.device import ModelRunner, autotuned, ieee_fp32

    cudnn = torch.backends.cudnn
    if torch_api == "allow_tf32":  # an older torch: no cudnn.conv.fp32_precision
        monkeypatch.setattr(device_module, "_conv_settings", lambda: None)

        def mode() -> str:
            return "tf32" if cudnn.allow_tf32 else "ieee"
    else:
        if not hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
            pytest.skip(f"torch {torch.__version__} has no cudnn.conv.fp32_precision")

        def mode() -> str:  # "none" everywhere (what allow_tf32 = False records) computes in IEEE fp32
            conv = str(cudnn.conv.fp32_precision)
            return "tf32" if conv == "tf32" else "ieee"

    assert mode() == "tf32" and cudnn.allow_tf32  # torch's default
    cuda = torch.device("cuda")
    with autotuned(cuda, torch.float32):
        assert mode() == "ieee"
        assert cudnn.allow_tf32 is False  # readable, and says so
    assert mode() == "tf32" and cudnn.allow_tf32
    with pytest.raises(RuntimeError), autotuned(cuda, torch.float32):
        raise RuntimeError("out of memory")
    assert mode() == "tf32"
    for reduced in (torch.float16, torch.bfloat16, None):
        with autotuned(cuda, reduced):
            assert mode() == "tf32"
    with autotuned(torch.device("cpu"), torch.float32), ieee_fp32(torch.device("cpu")):
        assert mode() == "tf32"

    # two threads' passes overlap: A starts, B starts, A ends (B still runs in IEEE), B ends (TF32 back)
    a_in, b_in, a_out, b_check = (threading.Event() for _ in range(4))
    seen_by_b: list[str] = []

    def pass_a() -> None:
        with autotuned(cuda, torch.float32):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def pass_b() -> None:
        a_in.wait(5)
        with autotuned(cuda, torch.float32):
            b_in.set()
            a_out.wait(5)
            seen_by_b.append(mode())
            seen_by_b.append(str(cudnn.benchmark))
        b_check.set()

    threads = [threading.Thread(target=pass_a), threading.Thread(target=pass_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert b_check.is_set() and seen_by_b == ["ieee", "True"]
    assert mode() == "tf32" and cudnn.benchmark is False

    seen: list[tuple[str, torch.dtype | None]] = []
    real = device_module.autotuned

    def spy(device: torch.device, dtype: torch.dtype | None = None):  # type: ignore[no-untyped-def]
        seen.append((device.type, dtype))
        return real(device, dtype)

    monkeypatch.setattr(device_module, "autotuned", spy)
    runner = ModelRunner(tiny_rrdb(), torch.device("cpu"), torch.float32, engine="module")
    runner(torch.rand(1, 3, 8, 8))
    assert seen == [("cpu", torch.float32)]


def test_fp16_is_never_used_on_the_cpu() -> None:
    with pytest.warns(PrecisionWarning, match="fp16"):
        dtype = resolve_precision("fp16", torch.device("cpu"))
    assert dtype in (torch.bfloat16, torch.float32)
    assert dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    with pytest.warns(PrecisionWarning):
        upscaler = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp16", tile=0)
    assert upscaler.dtype != torch.float16 and upscaler.runner.dtype != torch.float16


def test_overflowing_bf16_forward_is_recomputed_in_fp32(
    photo_small: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real model whose bf16 forward overflows: redone in fp32, with a warning, and the runner stays in fp32.

    bf16 has fp32's exponent range but 8 mantissa bits, so its largest finite value is 3.39e38 where fp32's is
    3.40e38: a conv_last bias of 3.4e38 is finite in fp32 and rounds to Inf under bf16 autocast.
    bf16 is forced (ESRGAN_CPU_BF16=1) so that the Upscaler runs it on CPUs that only emulate it, too.
    """
    monkeypatch.setenv("ESRGAN_CPU_BF16", "1")
    model = photo_preserving_rrdb()
    with torch.no_grad():
        model.conv_last.bias.fill_(3.4e38)
    x = torch.from_numpy(photo_small).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not bool(torch.isfinite(model(x)).all())  # the premise: bf16 really overflows
        raw_fp32 = model(x)
    assert bool(torch.isfinite(raw_fp32).all())
    runner = ModelRunner(model, torch.device("cpu"), torch.bfloat16)
    with pytest.warns(PrecisionWarning, match="NaN/Inf.*fp32"):
        y = runner(x)
    assert bool(torch.isfinite(y).all()) and runner.dtype == torch.float32
    torch.testing.assert_close(y, raw_fp32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stays in fp32: no second warning
        runner(x)
    # end to end: the Upscaler returns a finite picture (white: the bias saturates every pixel), not an error
    with pytest.warns(PrecisionWarning, match="NaN/Inf"):
        out = Upscaler(model, device="cpu", precision="bf16", tile=32).upscale(photo_small)
    assert out.shape == (192, 160, 3) and (out == 255).all()


def test_compile_runs_16_bit_images_compiled_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upscaler(compile=True) computes 16-bit and float images in fp32 when its precision is reduced, on a runner
    of their own, which was built with engine="auto": they ran uncompiled without a word. That runner is compiled
    too now, as compile=True says. (torch.compile is lazy: nothing compiles here.)"""
    monkeypatch.setenv("ESRGAN_CPU_BF16", "1")  # auto = bf16, so that 16-bit images get an fp32 runner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, on importing its compiler
        up = Upscaler(photo_preserving_rrdb(), device="cpu", compile=True)
    assert up.runner.engine == "compiled" and up.runner.dtype == torch.bfloat16
    fp32 = up.runner_for(np.dtype(np.uint16))
    assert fp32.dtype == torch.float32 and fp32.engine == "compiled"
    assert up.runner_for(np.dtype(np.float32)) is fp32
    plain = Upscaler(photo_preserving_rrdb(), device="cpu")
    assert plain.runner_for(np.dtype(np.uint16)).engine != "compiled"


def grey16_photo(size: int = 64) -> np.ndarray:
    """A real 16-bit grey photograph: scikit-image's camera, MATLAB-bicubic downscaled in float (thousands of
    distinct 16-bit levels, not 8-bit ones times 257)."""
    from esrgan.resize import imresize

    data = pytest.importorskip("skimage.data")
    cam = torch.from_numpy(data.camera()).float() / 255
    small = imresize(cam, size=(size, size)).clamp(0, 1)
    return (small * 65535).round().to(torch.int32).numpy().astype(np.uint16)


def test_16bit_input_keeps_16bit_precision_under_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-bit in, 16-bit out: on a bf16 CPU (forced here: this CPU emulates bf16, so auto picks fp32) a 16-bit photo
    is computed in fp32, giving fp32's levels exactly; 8-bit images keep bf16. Explicit bf16 does the same, saying so.
    """
    from esrgan.tiling import upscale_tiled

    monkeypatch.setenv("ESRGAN_CPU_BF16", "1")
    model = photo_preserving_rrdb(spread=0.5)
    photo16 = grey16_photo()
    ref = Upscaler(model, device="cpu", precision="fp32", tile=0).upscale(photo16)
    levels = len(np.unique(ref))
    assert levels > 3000  # measured 3,717 (the tiny model is near nearest-neighbour: about the input's 3,767)
    # the premise: the same image computed in bf16 loses levels (measured 3,085) and is off by up to 490 steps
    raw = upscale_tiled(
        ModelRunner(model, torch.device("cpu"), torch.bfloat16),
        torch.from_numpy(photo16)[None].expand(3, -1, -1),
        scale=4,
        tile=0,
        out_dtype=np.uint16,
        grey=True,
    )[:, :, 0]
    assert len(np.unique(raw)) < 0.9 * levels and np.abs(raw.astype(int) - ref).max() > 32  # > 11 bits off

    auto = Upscaler(model, device="cpu", precision="auto", tile=0)
    assert auto.dtype == torch.bfloat16  # what 8-bit images get on this (forced) bf16 CPU
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto changes precision silently
        out = auto.upscale(photo16)
    assert auto.last_precision == "fp32"
    np.testing.assert_array_equal(out, ref)  # fp32's levels and values exactly
    auto.upscale((photo16 >> 8).astype(np.uint8))
    assert auto.last_precision == "bf16"
    explicit = Upscaler(model, device="cpu", precision="bf16", tile=0)
    with pytest.warns(PrecisionWarning, match="16-bit and float images are computed in fp32"):
        out = explicit.upscale(photo16.astype(np.float32) / 65535)
    assert explicit.last_precision == "fp32"
    np.testing.assert_allclose(out, ref / 65535, atol=0.51 / 65535)


# --- image kinds ------------------------------------------------------------------------------------------------------
def test_numpy_rgb_uint8(up: Upscaler, photo_small: np.ndarray) -> None:
    out = up.upscale(photo_small)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (192, 160, 3)


def test_numpy_grey_uint16_float(up: Upscaler, photo_small: np.ndarray) -> None:
    grey = photo_small.mean(axis=2).astype(np.uint8)
    g = up.upscale(grey)
    assert g.shape == (192, 160) and g.dtype == np.uint8
    deep = photo_small.astype(np.uint16) * 257
    d = up.upscale(deep)
    assert d.dtype == np.uint16 and d.shape == (192, 160, 3)
    # 16-bit carries the same picture as 8-bit, with finer levels
    assert np.abs(d.astype(np.float64) / 257 - up.upscale(photo_small)).mean() < 1.0
    f = up.upscale(photo_small.astype(np.float32) / 255)
    assert f.dtype == np.float32 and f.shape == (192, 160, 3) and f.min() >= 0 and f.max() <= 1
    f64 = up.upscale(photo_small.astype(np.float64) / 255)
    assert f64.dtype == np.float64


def test_numpy_big_endian_arrays(up: Upscaler, photo_small: np.ndarray) -> None:
    """Arrays in the other byte order (as read from a big-endian file or FITS) are the same values: the same output,
    in native order; a big-endian uint16 array was refused ("must be uint8, uint16 or float, not >u2")."""
    rgba = np.dstack([photo_small, np.full(photo_small.shape[:2], 200, np.uint8)])
    for native in (
        rgba.astype(np.uint16) * 257,
        rgba.astype(np.float32) / 255,
        photo_small.astype(np.float64) / 255,
    ):
        swapped = native.astype(native.dtype.newbyteorder("S"))  # the same values, bytes swapped
        assert not swapped.dtype.isnative and np.array_equal(swapped, native)
        out = up.upscale(swapped)
        assert out.dtype == native.dtype and out.dtype.isnative
        assert np.array_equal(out, up.upscale(native))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16"])
def test_pil_mode_is_kept(up: Upscaler, photo_small: np.ndarray, mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(photo_small[:, :, 1].astype(np.uint16) * 257)
    else:
        img = Image.fromarray(photo_small).convert(mode)
    assert img.mode == mode
    out = up.upscale(img)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == (160, 192)
    if mode == "I;16":
        assert np.asarray(out).max() > 255  # really 16-bit values, not 8-bit ones in a 16-bit container


def test_pil_float_image_keeps_its_range(up: Upscaler, photo_small: np.ndarray) -> None:
    """Mode F has no [0, 1] convention (Pillow's convert("F") gives 0..255): its own range goes through the model and
    comes back, the same picture as the 8-bit one's; the mapping follows the values (an affine change of them
    changes the output alike), and NaN and inf are taken as the minimum and maximum."""
    grey = Image.fromarray(photo_small).convert("L")
    expected = np.asarray(up.upscale(grey)).astype(np.float64)
    as_float = grey.convert("F")
    lo, hi = np.asarray(as_float).min(), np.asarray(as_float).max()
    out = up.upscale(as_float)
    assert out.mode == "F" and out.size == (160, 192)
    values = np.asarray(out)  # all ~1.0 when the values were clamped to [0, 1]
    assert lo <= values.min() and values.max() <= hi and values.max() - values.min() > 0.75 * (hi - lo)
    assert np.abs(values - expected).mean() < 6 and np.corrcoef(values.ravel(), expected.ravel())[0, 1] > 0.99
    # a height map, metres below and above sea level, with two pixels without a value
    heights = np.asarray(as_float) * 4.0 - 300.0
    heights[5, 7], heights[20, 30] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing outside [0, 1] reaches the model: no clipping warning
        out_h = np.asarray(up.upscale(Image.fromarray(heights, mode="F")))
    assert np.isfinite(out_h).all() and lo * 4 - 300 <= out_h.min() and out_h.max() <= hi * 4 - 300
    unknown = np.zeros(heights.shape, bool)
    unknown[5, 7] = unknown[20, 30] = True
    far = ~ndimage.binary_dilation(unknown, iterations=8).repeat(4, 0).repeat(4, 1)
    # the same picture away from them (the model's wide field sees them faintly: 1/10,000 of the range)
    assert np.abs(out_h - (values * 4.0 - 300.0))[far].max() < 1e-4 * (hi - lo) * 4


def test_numpy_float_outside_unit_range_warns_once(up: Upscaler, photo_small: np.ndarray) -> None:
    """A float array in 0..255 is not silently turned white: one warning a call says how many values were clipped."""
    as_float = photo_small.astype(np.float32)
    with pytest.warns(ImageWarning, match=r"\d+ float values outside \[0, 1\] clipped") as caught:
        out = up.upscale(as_float)
    assert len([w for w in caught if issubclass(w.category, ImageWarning)]) == 1
    assert out.dtype == np.float32 and out.max() <= 1.0
    expected = int(np.count_nonzero(as_float > 1))
    assert f"{expected} float values" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        up.upscale(as_float / 255)  # in range: nothing to say


def test_pil_keeps_icc_and_exif(up: Upscaler, photo_small: np.ndarray) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(photo_small)
    exif = Image.Exif()
    exif[0x010F] = "esrgan-test-camera"
    img.info["icc_profile"] = icc
    img.info["exif"] = exif.tobytes()
    out = up.upscale(img)
    assert out.info["icc_profile"] == icc and out.info["exif"] == exif.tobytes()


def test_pil_keeps_xmp_resolution_and_comment_as_files_do(
    up: Upscaler, photo_small: np.ndarray, tmp_path: Path
) -> None:
    """A PIL image kept only its ICC profile and EXIF, where the file path keeps XMP, the resolution and a JPEG
    comment too (session 30): they are in the result's info now, where Pillow's readers put them (a notebook's
    `out.save(path, dpi=out.info["dpi"], xmp=out.info["xmp"])`). Read from a real JPEG."""
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
    Image.fromarray(photo_small).save(tmp_path / "scan.jpg", dpi=(300, 300), comment=b"slide 12", xmp=xmp)
    with Image.open(tmp_path / "scan.jpg") as img:
        img.load()
        out = up.upscale(img)
    assert out.info["xmp"] == xmp and out.info["comment"] == b"slide 12"
    assert out.info["dpi"] == pytest.approx((300, 300))  # kept as it is: the print grows with the pixels
    out.save(
        tmp_path / "out.jpg"
    )  # Pillow's JPEG writer takes the comment from info; dpi= and xmp= are asked
    with Image.open(tmp_path / "out.jpg") as saved:
        assert saved.info["comment"] == b"slide 12"
        assert saved.size == (4 * photo_small.shape[1], 4 * photo_small.shape[0])


def test_pil_profile_is_kept_only_where_it_fits_the_output(up: Upscaler, photo_small: np.ndarray) -> None:
    """Modes converted to RGB on the way keep the ICC profile only where its colour space is the output's: the Lab
    profile Pillow gives a LAB image, left on the RGB output, makes colour-managed conversion of it fail."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = Image.fromarray(photo_small)
    rgb.info["icc_profile"] = srgb
    expected = up.upscale(photo_small).astype(np.float64)
    lab = rgb.convert("LAB")
    assert lab.info["icc_profile"][16:20] == b"Lab "
    out = up.upscale(lab)
    assert out.mode == "RGB" and "icc_profile" not in out.info
    assert np.abs(np.asarray(out) - expected).mean() < 3  # the same picture, through LAB and back
    for mode in ("YCbCr", "HSV"):  # converted by Pillow's own maths: the sRGB profile describes the RGB again
        out = up.upscale(rgb.convert(mode))
        assert out.mode == "RGB" and out.info["icc_profile"] == srgb
    # a CMYK image's profile must be a CMYK one: an RGB profile on it cannot convert it (naive conversion, none)
    with pytest.warns(ImageWarning, match="PIL image: CMYK profile unusable"):
        out = up.upscale(rgb.convert("CMYK"))
    assert out.mode == "RGB" and "icc_profile" not in out.info
    assert np.abs(np.asarray(out) - expected).mean() < 3
    grey = up.upscale(rgb.convert("L"))  # an RGB profile does not describe grey pixels
    assert grey.mode == "L" and "icc_profile" not in grey.info


def test_upscale_image_keeps_everything_but_the_pixels(up: Upscaler, photo_small: np.ndarray) -> None:
    """The decoded-image entry point (CLI, serve, video): 16-bit RGBA with ICC and EXIF stays so, same pixels."""
    from esrgan.imageio import ImageData

    rgb16 = photo_small.astype(np.uint16) * 257
    alpha = (
        np.linspace(0, 65535, photo_small.shape[1]).astype(np.uint16)[None, :].repeat(photo_small.shape[0], 0)
    )
    image = ImageData(
        pixels=rgb16, alpha=alpha, bit_depth=16, icc_profile=b"icc", exif=b"Exif\0\0", format="TIFF"
    )
    calls: list[tuple[int, int]] = []
    out = up.upscale_image(image, on_tile=lambda done, total: calls.append((done, total)))
    assert (out.bit_depth, out.icc_profile, out.exif, out.format) == (16, b"icc", b"Exif\0\0", "TIFF")
    assert out.alpha is not None and (out.height, out.width) == (image.height * 4, image.width * 4)
    expected = up.upscale(np.concatenate([rgb16, alpha[:, :, None]], axis=2))
    np.testing.assert_array_equal(np.concatenate([out.pixels, out.alpha[:, :, None]], axis=2), expected)
    assert calls[-1][0] == calls[-1][1] > 1  # tiles of colour, then of alpha


@pytest.mark.parametrize("outscale", [2.5, 0.5, 3.0, 1.0])
def test_outscale_sizes(photo_small: np.ndarray, outscale: float) -> None:
    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, outscale=outscale)
    out = up.upscale(photo_small)
    assert out.shape == (round(48 * outscale), round(40 * outscale), 3) and out.dtype == np.uint8
    grey = up.upscale(Image.fromarray(photo_small).convert("L"))
    assert grey.size == (round(40 * outscale), round(48 * outscale)) and grey.mode == "L"


def test_outscale_is_the_model_output_resized(photo_small: np.ndarray) -> None:
    """outscale = model x4 then MATLAB bicubic: at x2 it matches resizing the x4 output by hand."""
    from esrgan.resize import imresize_np

    native = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0).upscale(photo_small)
    half = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, outscale=2).upscale(
        photo_small
    )
    by_hand = np.clip(np.rint(imresize_np(native.astype(np.float64), size=(96, 80))), 0, 255)
    assert np.abs(half.astype(np.float64) - by_hand).max() <= 2


def test_a_target_size_keeps_the_aspect_ratio_within_it(photo_small: np.ndarray) -> None:
    """fit = (width, height): the largest size of the image's aspect ratio within them, the limiting side exact;
    the pixels are what --outscale of the same size gives (the model, then the resize to that size); a scale
    outside --outscale's range or a bad target is one EsrganError."""
    from esrgan.upscale import fit_size

    assert fit_size(48, 40, (100, None)) == (120, 100)  # 48x40 (h x w) at width 100: x2.5
    assert fit_size(48, 40, (None, 96)) == (96, 80)
    assert fit_size(48, 40, (100, 96)) == (96, 80)  # the height limits: 96/48 < 100/40
    assert fit_size(1080, 1920, (3840, 3840)) == (2160, 3840)
    assert fit_size(4, 300, (1000, None)) == (13, 1000)  # the other side rounded
    assert fit_size(4, 300, (1000, None), even=True) == (14, 1000)  # to even, for video
    assert fit_size(64, 96, (None, 129), even=True) == (129, 194)  # the target itself is kept
    with pytest.raises(
        EsrganError, match=r"a 40x48 image within 1000xany would be scaled by 25: outside 0\.25-16"
    ):
        fit_size(48, 40, (1000, None))
    with pytest.raises(EsrganError, match=r"would be scaled by 16\.0002: outside 0\.25-16"):  # was "by 16"
        fit_size(1, 65535, (1048576, None))
    for bad in [(None, None), (0, None), (None, -3)]:
        with pytest.raises(EsrganError, match=r"target size|must be 1-"):
            Upscaler(photo_preserving_rrdb(), fit=bad)
    with pytest.raises(EsrganError, match="exclude each other"):
        Upscaler(photo_preserving_rrdb(), fit=(100, None), outscale=2)
    fitted = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, fit=(100, None))
    scaled = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, outscale=2.5)
    out = fitted.upscale(photo_small)
    assert out.shape == (120, 100, 3) and np.array_equal(out, scaled.upscale(photo_small))
    assert Upscaler(photo_preserving_rrdb(), fit=(1920, 1080)).output_size(333, 500) == (1080, 1622)
    with pytest.raises(EsrganError, match=r"scaled by 0\.2: outside"):
        fitted.output_size(333, 500)  # 500 wide to 100: below x0.25


# --- alpha ------------------------------------------------------------------------------------------------------------
def circle_rgba(photo: np.ndarray, under: int | None) -> np.ndarray:
    """The photo with a circular alpha mask (hard edge); `under` replaces the colour of transparent pixels."""
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) * 0.35) ** 2
    rgba = np.dstack([photo, np.where(inside, 255, 0).astype(np.uint8)])
    if under is not None:
        rgba[~inside, :3] = under
    return rgba


@pytest.fixture(scope="module")
def alpha_photo(photo: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(photo[40:104, 170:234])  # 64x64 real photo: face and background


def test_alpha_shape_and_transparent_areas(alpha_photo: np.ndarray) -> None:
    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0)
    rgba = circle_rgba(alpha_photo, under=0)
    out = up.upscale(rgba)
    assert out.shape == (256, 256, 4) and out.dtype == np.uint8
    alpha_in = np.kron(rgba[:, :, 3], np.ones((4, 4), np.uint8))
    far_out = np.ones_like(alpha_in, bool)
    far_out[16:-16, 16:-16] = False  # the outer corners are 20+ input pixels from the circle
    corners = far_out & (alpha_in == 0)
    assert out[:, :, 3][corners].max() == 0  # fully transparent stays transparent
    # alpha goes through the model as a grey image (the default alpha mode), kept within its neighbourhoods
    grey = up.upscale(np.ascontiguousarray(rgba[:, :, 3]))
    assert np.array_equal(out[:, :, 3], within_neighbourhoods(grey, rgba[:, :, 3]))
    assert out[:, :, 3][alpha_in == 255].mean() > 150 + out[:, :, 3][corners].mean()
    pil = up.upscale(Image.fromarray(rgba))
    assert pil.mode == "RGBA" and pil.size == (256, 256)


def test_no_dark_halo_from_black_under_transparent(alpha_photo: np.ndarray) -> None:
    """Black (or any colour) under transparent pixels must not leak into the visible edge of the upscale."""
    up = Upscaler(photo_preserving_rrdb(seed=1, spread=0.3), device="cpu", precision="fp32", tile=0)
    black = up.upscale(circle_rgba(alpha_photo, under=0))
    white = up.upscale(circle_rgba(alpha_photo, under=255))
    reference = up.upscale(np.dstack([alpha_photo, np.full(alpha_photo.shape[:2], 255, np.uint8)]))
    visible = black[:, :, 3] > 128
    # with colour bleeding, what hides under the transparent area does not matter for the visible pixels
    assert np.abs(black[:, :, :3].astype(int) - white[:, :, :3].astype(int))[visible].max() <= 1
    # and the visible edge is no darker than the same photo upscaled without any transparency
    edge = visible & ~ndimage.binary_erosion(visible, iterations=8)  # the outer 8 output pixels of the disc
    assert edge.sum() > 500
    dark = reference[:, :, :3].astype(float)[edge].mean() - black[:, :, :3].astype(float)[edge].mean()
    assert dark < 2.0
    # without the bleed (what a naive upscale of the raw RGB does), black does bleed in: the check can fail
    naive = up.upscale(np.ascontiguousarray(circle_rgba(alpha_photo, under=0)[:, :, :3]))
    assert reference[:, :, :3].astype(float)[edge].mean() - naive.astype(float)[edge].mean() > dark + 5.0


def test_bleed_colour_keeps_visible_pixels(alpha_photo: np.ndarray) -> None:
    rgba = circle_rgba(alpha_photo, under=0)
    rgba[30:34, 30:34, 3] = 1  # barely visible pixels keep their colour too
    filled = bleed_colour(rgba[:, :, :3], rgba[:, :, 3])
    visible = rgba[:, :, 3] > 0
    assert np.array_equal(filled[visible], rgba[:, :, :3][visible])
    assert filled[~visible].mean() > 40  # the black was replaced by photo colours


def neighbourhood_bounds(alpha: np.ndarray, scale: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The min and max of the input alpha over each input pixel's 3x3 neighbourhood, at the output's size (each
    output pixel (y, x) comes from input pixel (y // scale, x // scale))."""
    lo = ndimage.minimum_filter(alpha, 3, mode="nearest")
    hi = ndimage.maximum_filter(alpha, 3, mode="nearest")
    return tuple(b.repeat(scale, 0).repeat(scale, 1) for b in (lo, hi))  # type: ignore[return-value]


def within_neighbourhoods(out: np.ndarray, alpha: np.ndarray, scale: int = 4) -> np.ndarray:
    lo, hi = neighbourhood_bounds(alpha, scale)
    return np.clip(out, lo, hi)


def soft_disk(h: int, w: int) -> np.ndarray:
    """An antialiased disk (a 2-4 pixel ramp from 0 to 255 at its edge) on a clear background, uint8 HxW."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    return np.clip((min(h, w) * 0.33 - r) * 80 + 128, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("tile", [0, 32])
def test_model_alpha_stays_flat_where_it_was_and_within_its_neighbourhood(
    alpha_photo: np.ndarray, tile: int, bits: int
) -> None:
    """helper-72's audit of image I/O fidelity (session 30): alpha through the model kept the model's ringing: a disk
    on a clear background through realesrgan-x4plus had alpha > 0 on 8229 of 15992 pixels far outside it (sprite
    auto-trim found the whole image), realesr-animevideov3 took a fully opaque photo's alpha to 254. Each output
    alpha is now clamped to the min..max of the input alpha over the 3x3 neighbourhood of the input pixel it comes
    from: on a real photo with a soft-edged disk of alpha and with an opaque one, 8- and 16-bit, tiled and whole,
    clear stays exactly 0, opaque exactly the maximum, and every pixel lies within its neighbourhood's bounds."""
    up = Upscaler(photo_preserving_rrdb(seed=1, spread=0.3), device="cpu", precision="fp32", tile=tile)
    h, w = alpha_photo.shape[:2]
    full = 255 if bits == 8 else 65535
    for alpha in (soft_disk(h, w), np.full((h, w), 255, np.uint8)):
        rgba = np.dstack([alpha_photo, alpha])
        if bits == 16:
            rgba = rgba.astype(np.uint16) * 257
        out = up.upscale(rgba)[:, :, 3]
        lo, hi = neighbourhood_bounds(rgba[:, :, 3])
        assert out.dtype == rgba.dtype and out.shape == (4 * h, 4 * w)
        assert (out[hi == 0] == 0).all() and (out[lo == full] == full).all()
        assert ((lo <= out) & (out <= hi)).all()
        if not (alpha == 255).all():  # the edge is the model's, not a resize: soft, with values in between
            assert (hi == 0).sum() > 20_000 and len(np.unique(out[lo < hi])) > 50


def test_an_alpha_of_one_value_skips_the_model(alpha_photo: np.ndarray) -> None:
    """An opaque (or any one-valued) alpha plane comes back as that value everywhere without its pass of the model:
    what the neighbourhood clamp makes of any output, for half the work; also at another outscale."""
    calls: list[tuple[int, int]] = []

    def tell(done: int, total: int) -> None:
        calls.append((done, total))

    for outscale in (None, 2.5):
        up = Upscaler(photo_preserving_rrdb(seed=1, spread=0.3), device="cpu", tile=32, outscale=outscale)
        up.upscale(alpha_photo, on_tile=tell)
        per_pass = calls[-1][1]  # the colour's pass alone
        for value in (255, 0, 77):
            calls.clear()
            rgba = np.dstack([alpha_photo, np.full(alpha_photo.shape[:2], value, np.uint8)])
            out = up.upscale(rgba, on_tile=tell)
            assert (out[:, :, 3] == value).all() and out.shape[:2] == up.output_size(*alpha_photo.shape[:2])
            assert calls[-1] == (per_pass, per_pass)  # one pass: the colour's


def test_model_alpha_at_another_outscale_is_clamped_before_the_resize(alpha_photo: np.ndarray) -> None:
    """At --outscale 3 the model's x4 alpha is clamped at x4, then resized: far from the edge it stays exact."""
    up = Upscaler(photo_preserving_rrdb(seed=1, spread=0.3), device="cpu", precision="fp32", outscale=3)
    h, w = alpha_photo.shape[:2]
    alpha = soft_disk(h, w)
    out = up.upscale(np.dstack([alpha_photo, alpha]))[:, :, 3]
    lo = ndimage.minimum_filter(alpha, 7, mode="nearest").repeat(3, 0).repeat(3, 1)
    hi = ndimage.maximum_filter(alpha, 7, mode="nearest").repeat(3, 0).repeat(3, 1)
    assert out.shape == (3 * h, 3 * w) and (out[hi == 0] == 0).all() and (out[lo == 255] == 255).all()
    # a float image at a scale that is not an integer: the float resize of a flat 1.0 gave 0.9999998 (helper-76)
    up = Upscaler(photo_preserving_rrdb(seed=1, spread=0.3), device="cpu", precision="fp32", outscale=3.3)
    rgba = np.dstack([alpha_photo, alpha]).astype(np.float32) / 255
    out = up.upscale(rgba)[:, :, 3]
    oh, ow = out.shape
    far_in = ndimage.minimum_filter(alpha, 7, mode="nearest")[(np.arange(oh) * h) // oh][
        :, (np.arange(ow) * w) // ow
    ]
    assert (out[far_in == 255] == 1.0).all() and out.max() == 1.0 and out.min() == 0.0


def test_alpha_mode_bicubic(alpha_photo: np.ndarray) -> None:
    from esrgan.resize import imresize_np

    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, alpha_mode="bicubic")
    rgba = circle_rgba(alpha_photo, under=0)
    out = up.upscale(rgba)
    expected = np.clip(np.rint(imresize_np(rgba[:, :, 3].astype(np.float64), scale=4)), 0, 255)
    assert out.shape == (256, 256, 4)
    assert np.abs(out[:, :, 3].astype(float) - expected).max() <= 1


def test_bad_inputs_are_errors(up: Upscaler) -> None:
    from esrgan.errors import EsrganError

    with pytest.raises(EsrganError, match="shape"):
        up.upscale(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(EsrganError, match="uint8, uint16 or float"):
        up.upscale(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(EsrganError, match="alpha mode"):
        Upscaler(photo_preserving_rrdb(), alpha_mode="premultiplied")


def test_what_is_not_an_esrgan_model_or_an_alpha_alone_is_a_clear_error() -> None:
    """Users coming from spandrel or BasicSR pass a state dict or another module: a TypeError that says how to load
    it, not "AttributeError: ... no attribute 'config'"; an interpolation weight without a second model is an
    error, not ignored."""
    model = photo_preserving_rrdb()
    for wrong, what in (
        (model.state_dict(), "a state dict"),
        (torch.nn.Conv2d(3, 3, 3), "a torch.nn.modules.conv.Conv2d"),
    ):
        with pytest.raises(TypeError, match=rf"not {what}.*esrgan\.load_model"):
            Upscaler(wrong)  # type: ignore[arg-type]
    with pytest.raises(EsrganError, match=r"interpolate_alpha .* needs a second model"):
        Upscaler(model, interpolate_alpha=0.5)


@pytest.mark.parametrize("make", ["rrdb", "compact"])
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_the_model_given_is_left_as_it_was_and_its_later_changes_do_not_reach_the_upscaler(
    photo_small: np.ndarray, make: str, precision: str
) -> None:
    """A notebook shows a preview with an Upscaler and trains on: before, Upscaler(model) put the caller's module
    in eval mode, froze it (requires_grad False: its training went on without a word and learnt nothing) and, for
    a compact model in reduced precision, made it channels_last; and a change of its weights reached the upscaler on
    some engines (the module's) and not on others (packed, ncnn: copied at their first pass), so the same code gave
    other pixels on another CPU. Now the upscaler works on a copy: the module is untouched and its later changes
    never reach it, on every engine; copy_model=False shares it, as from_pretrained does with its own model."""
    from esrgan.compact import CompactConfig, SRVGGNetCompact

    torch.manual_seed(0)
    model = (
        photo_preserving_rrdb() if make == "rrdb" else SRVGGNetCompact(CompactConfig(num_feat=8, num_conv=2))
    )
    model.train().requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    up = Upscaler(model, device="cpu", precision=precision, tile=0)
    first = up.upscale(photo_small)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # not made channels_last
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    last = model.conv_last if isinstance(model, RRDBNet) else model.body[-1]
    with torch.no_grad():
        last.bias += 0.25  # training goes on
    np.testing.assert_array_equal(up.upscale(photo_small), first)
    assert not np.array_equal(
        Upscaler(model, device="cpu", precision=precision, tile=0).upscale(photo_small), first
    )
    shared = Upscaler(model, device="cpu", precision=precision, copy_model=False)
    assert shared.model is model and not model.training


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_one_upscaler_serves_several_threads_at_once(photo: np.ndarray, precision: str) -> None:
    """A web backend shares one Upscaler between its request threads: four threads at once, crops of other sizes,
    grey and colour, tiled and whole, give exactly what one thread gives (the packed engine's per-shape caches, the
    ncnn engine's helper threads, the tile and memory bookkeeping)."""
    from concurrent.futures import ThreadPoolExecutor

    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision=precision, tile=48)
    crops = [
        np.ascontiguousarray(c)
        for c in (photo[:90, :70], photo[100:140, 200:300, :1], photo[:40, :30], photo[300:420, 10:110])
    ]
    alone = [up.upscale(c) for c in crops]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(up.upscale, crops * 3))
    for k, out in enumerate(together):
        np.testing.assert_array_equal(out, alone[k % 4])


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_every_tiny_image_is_upscaled_with_the_automatic_tile(photo: np.ndarray, scale: int) -> None:
    """Images of 1..5 pixels a side with the automatic tile: an x2 model (pixel-unshuffle) refused 3-pixel sides
    ("a tile overlap of 2 needs tiles larger than 2"): the image is one tile, but the layouts were still weighed
    for it. Every size gives the whole-image pass's pixels."""
    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=1, num_grow=4, scale=scale).eval()
    auto = Upscaler(model, device="cpu", precision="fp32")
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
    for h in range(1, 6):
        for w in range(1, 6):
            crop = np.ascontiguousarray(photo[200 : 200 + h, 300 : 300 + w])
            out = auto.upscale(crop)
            assert out.shape == (h * scale, w * scale, 3)
            np.testing.assert_array_equal(out, whole.upscale(crop))


def test_a_model_with_hooks_or_compiled_is_copied_by_its_weights(photo_small: np.ndarray) -> None:
    """The copy took copy.deepcopy of the module, which raised for a model a training script had hooked (a forward
    hook that is a method of an object holding a lock: "cannot pickle '_thread.lock' object") and for a
    weight_norm layer after a forward pass (a non-leaf tensor): Upscaler(model) worked before the copy existed.
    Only the weights are copied now; a module whose weights are not its architecture's is deep-copied, or refused
    in one line that says copy_model=False. A torch.compile'd model is its model, run with compile=True."""
    import threading

    model = photo_preserving_rrdb()

    class Logger:
        def __init__(self) -> None:
            self.lock, self.calls = threading.Lock(), 0

        def hook(self, module: torch.nn.Module, inputs: object, output: object) -> None:
            with self.lock:
                self.calls += 1

    logger = Logger()
    model.register_forward_hook(logger.hook)
    up = Upscaler(model, device="cpu", precision="fp32", tile=0)
    x = torch.from_numpy(photo_small).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = (model(x).clamp(0, 1) * 255).round().squeeze(0).permute(1, 2, 0).byte().numpy()
    np.testing.assert_array_equal(up.upscale(photo_small), expected)
    assert logger.calls == 1  # the model's own forward above; the upscaler's copy has no hook

    normed = photo_preserving_rrdb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm, as older training code has it
        torch.nn.utils.weight_norm(normed.conv_last)
    normed(x)  # weight is now a non-leaf tensor computed from weight_g and weight_v
    with pytest.raises(EsrganError, match=r"cannot copy this RRDBNet .*copy_model=False"):
        Upscaler(normed, device="cpu")
    assert Upscaler(normed, device="cpu", copy_model=False).model is normed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, on importing its compiler
        compiled = Upscaler(torch.compile(photo_preserving_rrdb()), device="cpu")  # type: ignore[arg-type]
    assert isinstance(compiled.model, RRDBNet) and compiled.runner.engine == "compiled"


@pytest.mark.parametrize("shape", [(3, 200, 4), (200, 2), (1, 1, 3)])
def test_thin_images_with_tiling(photo: np.ndarray, shape: tuple[int, ...]) -> None:
    """Regression: with tiling on, images thinner than the tile overlap (16) were refused."""
    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=64)
    image = photo[100 : 100 + shape[0], 100 : 100 + shape[1]]
    if len(shape) == 2:
        image = image[:, :, 0]
    elif shape[2] == 4:
        image = np.dstack([image, np.full(shape[:2], 255, np.uint8)])
    out = up.upscale(np.ascontiguousarray(image))
    assert out.shape == (shape[0] * 4, shape[1] * 4, *shape[2:])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_grey_model_upscales_every_plane_alone_and_keeps_colour(photo: np.ndarray, precision: str) -> None:
    """A grey model (1 channel in and out: some released models, other tools' grey training) was refused at load.
    Now a grey image goes through it as it is, and a colour image one channel at a time (R, G, B each as a grey
    image, so the colour is kept), as alpha goes through any model: each output channel is the upscale of that
    channel alone, and untiled it is the network's own output. Progress counts the three passes (and alpha's)."""
    model = photo_preserving_rrdb(channels=1)
    crop = np.ascontiguousarray(photo[96:176, 160:256])  # 80x96 of the real photo
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0)
    out = whole.upscale(crop)
    assert out.shape == (320, 384, 3) and out.dtype == np.uint8
    with torch.no_grad():
        net = [
            model(torch.from_numpy(crop[:, :, c].copy()).float()[None, None] / 255)[0, 0] for c in range(3)
        ]
    expected = np.stack([(t.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for t in net], axis=2)
    assert np.abs(out.astype(int) - expected).max() <= 1  # fp32 rounding between engines
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 1000 and not np.array_equal(out[..., 0], out[..., 1])
    tiled = Upscaler(model, device="cpu", precision=precision, tile=48)
    seen: list[tuple[int, int]] = []
    rgba = np.dstack([crop, np.where(crop[:, :, 1] > 100, 255, 40).astype(np.uint8)])
    got = tiled.upscale(rgba, on_tile=lambda done, total: seen.append((done, total)))
    for c in range(4):  # each plane alone, the same tiles (alpha kept within its neighbourhoods)
        alone = tiled.upscale(np.ascontiguousarray(rgba[:, :, c]))
        if c == 3:
            alone = within_neighbourhoods(alone, rgba[:, :, 3])
        np.testing.assert_array_equal(got[:, :, c], alone, f"{c}")
    assert tiled.last_precision == precision
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] and len({t for _, t in seen}) == 1
    assert seen[-1][1] == 4 * len(tile_grid(80, 96, 48, tiled.overlap_for(48))[2]) * len(
        tile_grid(80, 96, 48, tiled.overlap_for(48))[3]
    )
    grey16 = (crop[:, :, 1].astype(np.uint16) * 257)[
        :, :, None
    ]  # 16-bit grey: computed in fp32, stays 16-bit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16's "16-bit images are computed in fp32"
        out16 = tiled.upscale(grey16)
    assert out16.dtype == np.uint16 and out16.shape == (320, 384, 1)
    image = ImageData(crop, bit_depth=8)
    assert tiled.stream_reason(image) == "a grey model upscales a colour image one channel at a time"
    assert tiled.stream_reason(ImageData(crop[:, :, 1:2], bit_depth=8)) is None


def grey_photo(photo: np.ndarray) -> np.ndarray:
    """A real grey photograph: the astronaut's face, made grey by Pillow (ITU-R 601 luma), 48x40 uint8."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(photo[60:108, 180:220])).convert("L"))


def channels_equal(rgb: np.ndarray) -> bool:
    return np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


@pytest.mark.parametrize("tile", [0, 32])
def test_a_grey_image_stored_as_rgb_comes_back_grey_as_the_grey_path_makes_it(
    photo: np.ndarray, tmp_path: Path, tile: int
) -> None:
    """helper-72's audit of image I/O fidelity (session 30): black-and-white JPEGs decode to R == G == B and grey
    GIFs are palettes made RGB; they went through the colour model as colour and came back tinted (realesrgan-x4plus:
    channels up to 6 levels apart; realesr-animevideov3: 8, 3181 of 36864 pixels more than 2). A 3-channel image
    with R == G == B everywhere now takes the grey path and comes back RGB with its channels equal, the grey (mode
    L) image's output in each: a real grey photo as an RGB PNG, an RGB JPEG and a grey GIF, by file and by the
    numpy and PIL API, 8- and 16-bit, tiled and whole."""
    up = Upscaler(photo_preserving_rrdb(seed=1, spread=0.3), device="cpu", precision="fp32", tile=tile)
    grey = grey_photo(photo)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    expected = up.upscale(grey)
    out = up.upscale(rgb)
    assert out.shape == (*expected.shape, 3) and channels_equal(out)
    assert np.array_equal(out[:, :, 0], expected)
    pil = up.upscale(Image.fromarray(rgb))
    assert pil.mode == "RGB" and np.array_equal(np.asarray(pil), out)
    deep = grey.astype(np.uint16) * 257 + 40  # 16-bit
    out16 = up.upscale(np.repeat(deep[:, :, None], 3, axis=2))
    assert (
        out16.dtype == np.uint16
        and channels_equal(out16)
        and np.array_equal(out16[:, :, 0], up.upscale(deep))
    )
    Image.fromarray(rgb).save(tmp_path / "bw.png")
    Image.fromarray(rgb).save(tmp_path / "bw.jpg", quality=90)  # as cameras and phones store black and white
    Image.fromarray(grey).convert("P").save(tmp_path / "bw.gif")
    for name in ("bw.png", "bw.jpg", "bw.gif"):
        with Image.open(tmp_path / name) as im:
            decoded = np.asarray(im.convert("RGB"))
        assert channels_equal(decoded), name  # the input really is grey stored as colour
        up.upscale_file(tmp_path / name, tmp_path / f"{name}.out.png", overwrite=True)
        with Image.open(tmp_path / f"{name}.out.png") as im:
            written = np.asarray(im)
        assert im.mode == "RGB" and channels_equal(written), name
        assert np.array_equal(written[:, :, 0], up.upscale(np.ascontiguousarray(decoded[:, :, 0]))), name


def test_one_colour_pixel_makes_a_colour_image(photo: np.ndarray) -> None:
    """A grey image with a single pixel whose channels differ goes the colour way: the model's own colour output
    (its channels differ all over), not the grey path's."""
    up = Upscaler(photo_preserving_rrdb(seed=1, spread=0.3), device="cpu", precision="fp32", tile=0)
    rgb = np.repeat(grey_photo(photo)[:, :, None], 3, axis=2)
    out_grey = up.upscale(rgb)
    rgb[47, 39, 2] ^= 1  # the last pixel, its blue one level off
    out = up.upscale(rgb)
    assert not np.array_equal(out[:, :, 0], out[:, :, 1])
    assert (np.abs(out[:100, :100].astype(int) - out_grey[:100, :100]).max(axis=2) > 0).sum() > 1000


def test_a_grey_model_takes_a_grey_image_stored_as_rgb_in_one_pass(photo: np.ndarray) -> None:
    """A grey model upscales a colour image one channel at a time (three passes); a grey one stored as RGB is one
    pass, the grey image's, and may stream."""
    up = Upscaler(photo_preserving_rrdb(channels=1), device="cpu", precision="fp32", tile=32)
    grey = grey_photo(photo)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    calls: list[tuple[int, int]] = []
    out = up.upscale(rgb, on_tile=lambda d, t: calls.append((d, t)))
    per_pass = len(tile_grid(48, 40, 32, up.overlap_for(32))[2]) * len(
        tile_grid(48, 40, 32, up.overlap_for(32))[3]
    )
    assert calls[-1] == (per_pass, per_pass) and channels_equal(out)
    assert np.array_equal(out[:, :, 0], up.upscale(grey))
    assert up.stream_reason(ImageData(rgb, bit_depth=8)) is None


def test_progress_ends_at_its_total_with_one_total_for_every_plane(photo: np.ndarray) -> None:
    """on_tile's last call is (total, total), and an image's passes share one total: (1) a 60x70 image at tile 64 is
    one row of two tiles, whose rows come whole at the last tile, and the output was returned before that tile's
    progress (the bar ended at 1/2); (2) a measurement image (colour and an extra band) through a grey model counted
    one colour pass, so its totals changed mid-image and the bar went back (0..48 of 96, then 16..32 of 32)."""
    calls: list[tuple[int, int]] = []
    rgb = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=64)
    rgb.upscale(np.ascontiguousarray(photo[:60, :70]), on_tile=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 2), calls
    grey = Upscaler(photo_preserving_rrdb(channels=1), device="cpu", precision="fp32", tile=32)
    crop = np.ascontiguousarray(photo[:72, :80])
    image = ImageData(crop, bit_depth=8, extra=np.ascontiguousarray(crop[:, :, :1]), format="TIFF")
    calls.clear()
    out = grey.upscale_image(image, on_tile=lambda d, t: calls.append((d, t)))
    per_pass = len(tile_grid(72, 80, 32, grey.overlap_for(32))[2]) * len(
        tile_grid(72, 80, 32, grey.overlap_for(32))[3]
    )
    assert {t for _, t in calls} == {4 * per_pass} and calls[-1] == (4 * per_pass, 4 * per_pass), calls
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert out.extra is not None and np.array_equal(out.extra[:, :, 0], out.pixels[:, :, 0])  # R, as the band


def test_a_measurement_images_later_passes_do_not_repeat_their_start(photo: np.ndarray) -> None:
    """on_tile is called once with (0, total), then once after every tile: each extra band's pass reported its start
    again (the count where the pass before it ended), so a bar got two calls for one tile."""
    up = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=32)
    crop = np.ascontiguousarray(photo[:40, :40])
    image = ImageData(crop, bit_depth=8, extra=np.ascontiguousarray(crop[:, :, :2]), format="TIFF")
    calls: list[tuple[int, int]] = []
    up.upscale_image(image, on_tile=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert [d for d, _ in calls] == list(range(total + 1)), calls
