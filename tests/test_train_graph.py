"""The CUDA-graph training step (train.GraphedStep) on the CPU: its synchronisation-free body (train.device_step) must
train exactly as the eager step does, on real photo patches, and skip a NaN/Inf step on the device as the eager
step skips it on the host. Only the capture itself needs a GPU (bench/gpu.py runs it); everything it replays is
this body."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import real_esrgan_sections

from esrgan.config import Config, config_from_dict
from esrgan.data import batch_to_device
from esrgan.errors import ConfigError
from esrgan.train import (
    GraphedStep,
    _init_distributed,
    build_batches,
    build_nets,
    build_optimizers,
    discriminator_sees_plain_hr,
    make_autocast,
    train_step,
    use_cuda_graph,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

CPU = torch.device("cpu")


def config(photos: tuple[Path, Path], out: Path, stage: str, num_block: int = 1, **train: Any) -> Config:
    raw: dict[str, Any] = {
        "name": stage,
        "output_dir": str(out),
        "model": {"num_feat": 16, "num_block": num_block, "num_grow": 8, "d_num_feat": 8},
        "data": {"hr_dir": str(photos[0]), "patch_size": 32, "batch_size": 4, "num_workers": 0},
        "train": {"stage": stage, "total_steps": 10, "ema_decay": 0.9, **train},
        "schedule": {"kind": "constant"},
    }
    if stage == "gan":
        raw["losses"] = {"pixel_weight": 1e-2, "perceptual_weight": 1.0, "gan_weight": 5e-3}
        raw["perceptual"] = {"weights": "random"}
    if stage == "gan-unet":
        # Real-ESRGAN's GAN stage: U-Net D with spectral norm, vanilla GAN, five VGG19 layers, its degradation, D
        # shown the HR before the unsharp mask (a third image)
        raw["train"]["stage"] = "gan"
        raw["model"]["discriminator"] = "unet"
        raw["data"]["degradation"] = "realesrgan"
        sections = real_esrgan_sections(None)  # test_train's: the losses of configs/realesrgan_x4_gan.yaml
        raw["losses"], raw["perceptual"] = sections["losses"], sections["perceptual"]
    return config_from_dict(raw)


def setup(cfg: Config, compile_g: bool | str = False) -> tuple[Any, Any, list[tuple[torch.Tensor, ...]]]:
    """Nets, fused Adam (what the GPU uses) and 4 real batches, all seeded: two calls give the same start."""
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    except RuntimeError:  # CPU fused Adam came with torch 2.4; CUDA, where this step runs, has it since 2.0
        pytest.skip(f"torch {torch.__version__} has no fused Adam on the CPU")
    torch.manual_seed(0)
    ddp = _init_distributed("cpu")
    vgg = None
    if cfg.train.stage == "gan":
        from esrgan.zoo import resolve_vgg_weights

        vgg = resolve_vgg_weights("random", download=False)
    nets = build_nets(cfg, CPU, ddp, vgg, compile_g=compile_g)
    opts = build_optimizers(cfg, nets, CPU, fused=True)
    batches, on_device = build_batches(cfg, ddp, CPU, 0)
    plain = discriminator_sees_plain_hr(cfg)
    data = [
        batch_to_device(next(batches), CPU, lr_on_device=on_device, scale=4, plain_hr=plain) for _ in range(4)
    ]
    return nets, opts, data


def state(nets: Any, opts: Any) -> dict[str, torch.Tensor]:
    out = {f"g.{k}": v.clone() for k, v in nets.g.state_dict().items()}
    if nets.g_ema is not None:
        out.update({f"ema.{k}": v.clone() for k, v in nets.g_ema.state_dict().items()})
    if nets.d is not None:
        out.update({f"d.{k}": v.clone() for k, v in nets.d.state_dict().items()})
    for name, opt in (("opt_g", opts.opt_g), ("opt_d", opts.opt_d)):
        if opt is None:
            continue
        for i, s in enumerate(opt.state.values()):
            out.update({f"{name}.{i}.{k}": v.clone() for k, v in s.items()})
    return out


@pytest.mark.parametrize("stage", ["psnr", "gan", "gan-unet"])
def test_sync_free_step_trains_exactly_as_the_eager_step(
    stage: str, photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """4 steps of the graph body vs 4 eager train_steps from the same start: every weight, EMA weight, D weight and
    Adam moment equal, and the same logged losses."""
    cfg = config(photos, tmp_path, stage)
    autocast = make_autocast(CPU, "fp32")
    nets_a, opts_a, data = setup(cfg)
    eager_logs = [train_step(cfg, nets_a, opts_a, lr, hr, autocast, i + 1, *real)
                  for i, (lr, hr, *real) in enumerate(data)]  # fmt: skip
    nets_b, opts_b, data_b = setup(cfg)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(data, data_b, strict=True))
    step = GraphedStep(cfg, nets_b, opts_b, CPU, make_autocast(CPU, "fp32", cache=False))
    graph_logs = [step(lr, hr, i + 1, *real) for i, (lr, hr, *real) in enumerate(data)]
    assert all(len(batch) == (3 if stage == "gan-unet" else 2) for batch in data)
    a, b = state(nets_a, opts_a), state(nets_b, opts_b)
    assert a.keys() == b.keys() and len(a) > 10
    changed = state(*setup(cfg)[:2])
    assert any(not torch.equal(a[k], changed[k]) for k in changed if k.startswith("g."))  # it did train
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for la, lb in zip(eager_logs, graph_logs, strict=True):
        assert la is not None and lb is not None
        assert la.keys() == lb.keys()
        for key in la:
            assert la[key] == pytest.approx(lb[key], rel=1e-6, abs=1e-7), key


@pytest.mark.parametrize("stage", ["psnr", "gan"])
def test_a_nan_step_is_skipped_on_the_device_as_the_eager_step_skips_it(
    stage: str, photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """A batch with a NaN pixel: the eager step returns None before touching anything; the graph body computes
    NaN gradients but fused Adam's found_inf leaves weights, moments and step counts as they were, and the
    EMA is not moved. The next finite step then continues identically in both."""
    cfg = config(photos, tmp_path, stage)
    nets_a, opts_a, data = setup(cfg)
    nets_b, opts_b, _ = setup(cfg)
    autocast = make_autocast(CPU, "fp32")
    step = GraphedStep(cfg, nets_b, opts_b, CPU, make_autocast(CPU, "fp32", cache=False))
    lr, hr = data[0]
    assert train_step(cfg, nets_a, opts_a, lr, hr, autocast, 1) is not None
    assert step(lr, hr, 1) is not None
    before = state(nets_b, opts_b)
    bad_lr = lr.clone()
    bad_lr[0, 0, 3, 3] = float("nan")
    assert train_step(cfg, nets_a, opts_a, bad_lr, hr, autocast, 2) is None
    assert step(bad_lr, hr, 2) is None
    after = state(nets_b, opts_b)
    for key in before:
        if (key.startswith("d.") and "running" in key) or key.endswith("num_batches_tracked"):
            continue  # BatchNorm statistics move in any forward pass, the eager one's too
        assert torch.equal(before[key], after[key]), key
    lr3, hr3 = data[1]
    assert train_step(cfg, nets_a, opts_a, lr3, hr3, autocast, 3) is not None
    assert step(lr3, hr3, 3) is not None
    a, b = state(nets_a, opts_a), state(nets_b, opts_b)
    for key in a:
        if key.startswith("d.") and ("running" in key or key.endswith("num_batches_tracked")):
            continue
        assert torch.equal(a[key], b[key]), key


def test_cuda_graph_setting_is_resolved_with_reasons(photos: tuple[Path, Path], tmp_path: Path) -> None:
    """auto: off on a CPU, under torchrun (DDP) and in fp16 (no error); asked for where it cannot run: a ConfigError
    that names the setting and the reason."""
    auto = config(photos, tmp_path, "psnr")
    assert auto.train.cuda_graph == "auto"
    assert use_cuda_graph(auto, CPU, False) is False
    gpu = torch.device("cuda")
    assert use_cuda_graph(auto, gpu, False) is True  # resolution only: nothing runs on the device
    assert use_cuda_graph(auto, gpu, True) is False
    fp16 = copy.deepcopy(auto)
    fp16.train.precision = "fp16"
    assert use_cuda_graph(fp16, gpu, False) is False
    forced = config(photos, tmp_path, "psnr", cuda_graph=True)
    with pytest.raises(ConfigError, match=r"train\.cuda_graph: it needs a CUDA device"):
        use_cuda_graph(forced, CPU, False)
    forced.train.precision = "fp16"
    with pytest.raises(ConfigError, match=r"train\.cuda_graph: fp16"):
        use_cuda_graph(forced, gpu, False)
    off = config(photos, tmp_path, "psnr", cuda_graph=False)
    assert use_cuda_graph(off, gpu, False) is False


@pytest.mark.slow
@pytest.mark.parametrize("how", [True, "blocks"])
def test_the_compiled_generator_trains_as_the_eager_one_inside_the_graph_body(
    how: bool | str, photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """train.compile (bench/gpu.py's compiled-G rows, captured in the CUDA graph on a GPU): the compiled G, whole or
    per block, inside the graph body trains as eager G does (Inductor fuses, so to float rounding, not bit for bit),
    updates the very parameters the checkpoints and the EMA read, and leaves their names plain (no `_orig_mod.`).
    Per block, the two blocks are one compiled graph (what makes it compile several times faster)."""
    import torch._dynamo

    if how == "blocks" and tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5):
        pytest.skip(
            f"compiling per block needs torch >= 2.5 (this is {torch.__version__}; see the next test)"
        )
    # two blocks where the per-block compile must reuse one graph for both; one for the whole G, which proves the
    # same with one and compiles a smaller graph (~10 % less time here: Inductor's C++ kernels, most of the time,
    # are shared by identical blocks anyway)
    cfg = config(photos, tmp_path, "psnr", num_block=2 if how == "blocks" else 1)
    autocast = make_autocast(CPU, "fp32")
    nets_a, opts_a, data = setup(cfg)
    eager_logs = [train_step(cfg, nets_a, opts_a, lr, hr, autocast, i + 1) for i, (lr, hr) in enumerate(data)]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    nets_b, opts_b, _ = setup(cfg, compile_g=how)
    if how is True:
        assert nets_b.g_train is not nets_b.g  # what the step calls is the compiled module
    step = GraphedStep(cfg, nets_b, opts_b, CPU, make_autocast(CPU, "fp32", cache=False))
    compiled_logs = [step(lr, hr, i + 1) for i, (lr, hr) in enumerate(data)]
    if how == "blocks":
        assert (
            torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
        )  # body.0 compiled, body.1 reused it
    a, b = state(nets_a, opts_a), state(nets_b, opts_b)
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    start = state(*setup(cfg)[:2])
    for key in a:
        moved = float((a[key] - start[key]).abs().max()) if key in start else float(a[key].abs().max())
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-4 * max(moved, 1e-3)), key
    assert any(not torch.equal(b[k], start[k]) for k in b if k.startswith("ema."))  # the EMA followed G
    for la, lb in zip(eager_logs, compiled_logs, strict=True):
        assert la is not None and lb is not None
        assert la["l_pix"] == pytest.approx(lb["l_pix"], rel=1e-4)


def test_compiling_per_block_on_an_old_torch_is_a_config_error(
    photos: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before 2.5, Dynamo recompiled each block (module parameters were not graph inputs) until its cache limit sent
    the rest back to eager: a slow, silent half-compile. Such a torch is told so instead, naming the setting."""
    monkeypatch.setattr(torch, "__version__", "2.4.1+cpu")
    cfg = config(photos, tmp_path, "psnr", compile="blocks")
    with pytest.raises(
        ConfigError, match=r"train\.compile: blocks: .*torch >= 2\.5 \(this is 2\.4\.1\+cpu\)"
    ):
        build_nets(cfg, CPU, _init_distributed("cpu"), None, compile_g=cfg.train.compile)


def test_the_discriminator_is_shown_the_unsharpened_hr_as_real(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real-ESRGAN's GAN stage on its degradation: L1 and the perceptual loss against the sharpened HR, D's real
    images the HR before the unsharp mask (its gan_gt_usm: False). Checked on the VGG-style D (no spectral norm,
    batch-norm statistics from the batch): the logged mean real logit of D's step is D's score of the plain HR."""
    cfg = config(photos, tmp_path, "gan")
    cfg.data.degradation = "realesrgan"
    assert discriminator_sees_plain_hr(cfg)
    nets, opts, data = setup(cfg)
    lr, hr, real = data[0]
    assert not torch.equal(hr, real) and (hr - real).abs().max() > 0.05  # the unsharp mask moved the edges
    d_before = copy.deepcopy(nets.d)
    logs = train_step(cfg, nets, opts, lr, hr, make_autocast(CPU, "fp32"), 1, real)
    assert logs is not None
    with torch.no_grad():
        on_plain, on_sharp = d_before(real).mean().item(), d_before(hr).mean().item()
    assert logs["d_real"] == pytest.approx(on_plain, rel=1e-5, abs=1e-6)
    assert abs(on_plain - on_sharp) > 1e-4  # and the check can tell the two apart
    cfg.data.realesrgan.usm_weight = 0.0  # nothing sharpened: no third image
    assert not discriminator_sees_plain_hr(cfg)
