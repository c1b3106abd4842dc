"""ESRGAN training, both stages, in one loop you can read top to bottom (`train`).

Stage 1 (psnr) trains RRDBNet with L1 only. Stage 2 (gan) starts from stage 1's generator and adds the VGG-style
discriminator, the perceptual loss and the relativistic average GAN loss; `generator_step` and
`discriminator_step` are plain functions. Everything else here is the machinery around them: checkpoints that
resume bit-exactly (models, EMA, optimisers, schedulers, grad scalers, RNG states, data position), SIGINT/SIGTERM
handling, NaN/Inf skipping, mixed precision, validation with Y-PSNR/SSIM, logs, and DDP under torchrun.

Checkpoints are torch.save files holding only tensors and plain containers, read back with
torch.load(weights_only=True): no pickled objects, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .atomic import atomic_path, atomic_write_bytes
from .config import Config, LossesConfig, ScheduleConfig, TrainConfig, config_to_yaml
from .data import (
    Degradation,
    PatchDataset,
    bicubic_lr,
    list_images,
    patch_loader,
    quantize,
    read_rgb,
    to_tensor,
)
from .discriminator import VGGStyleDiscriminator
from .errors import CheckpointError, ConfigError, EsrganError
from .generator import RRDBNet
from .losses import discriminator_loss, generator_adv_loss, perceptual_loss, pixel_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "esrgan-train-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"step_(\d+)\.ckpt")

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


class TrainingError(EsrganError):
    """Training cannot go on (e.g. the loss stayed NaN/Inf for too many steps)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool  # stopped by a signal or stop_at_step before total_steps; resume with --resume
    checkpoint: Path | None  # the last checkpoint written
    model_path: Path | None  # the exported generator (our safetensors), only when training completed
    best_psnr: float | None
    generator: RRDBNet = field(repr=False)  # the trained generator (the EMA one when EMA is on)


# --- the two steps ----------------------------------------------------------------------------------------------
def generator_step(
    g: nn.Module,
    lr: Tensor,
    hr: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    weights: LossesConfig,
    autocast: Autocast,
    vgg: nn.Module | None = None,
    d: nn.Module | None = None,
) -> tuple[dict[str, float], Tensor] | None:
    """One update of G: eta * L1 (+ percep + lambda * L_Ra in the GAN stage). None if the loss is not finite.

    Returns the loss terms and the (detached) SR batch for the discriminator step. `d` must be the plain module
    (not its DDP wrapper): G's update must not touch D's gradients or DDP's bookkeeping.
    """
    with autocast():
        sr = g(lr)
    sr = sr.float()
    terms: dict[str, Tensor] = {}
    total = sr.new_zeros(())
    if weights.pixel_weight:
        terms["l_pix"] = pixel_loss(sr, hr)
        total = total + weights.pixel_weight * terms["l_pix"]
    if vgg is not None and weights.perceptual_weight:
        with autocast():
            terms["l_percep"] = perceptual_loss(vgg, sr, hr).float()
        total = total + weights.perceptual_weight * terms["l_percep"]
    if d is not None:
        d.requires_grad_(False)
        try:
            with autocast():
                real_logits = d(hr).detach()  # D is fixed during G's update
                fake_logits = d(sr)
            terms["l_g_gan"] = generator_adv_loss(
                real_logits.float(), fake_logits.float(), reduction=weights.gan_reduction
            )
        finally:
            d.requires_grad_(True)
        total = total + weights.gan_weight * terms["l_g_gan"]
    optimizer.zero_grad(set_to_none=True)
    if not _finite_everywhere(total):
        return None
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    logs = {name: float(value.detach()) for name, value in terms.items()}
    logs["l_g_total"] = float(total.detach())
    return logs, sr.detach()


def discriminator_step(
    d: nn.Module,
    hr: Tensor,
    sr: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    reduction: str,
    autocast: Autocast,
) -> dict[str, float] | None:
    """One update of D with the relativistic average loss on real HR vs the detached SR batch."""
    with autocast():
        real_logits = d(hr)
        fake_logits = d(sr)
    loss = discriminator_loss(real_logits.float(), fake_logits.float(), reduction=reduction)  # type: ignore[arg-type]
    optimizer.zero_grad(set_to_none=True)
    if not _finite_everywhere(loss):
        return None
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {
        "l_d": float(loss.detach()),
        "d_real": float(real_logits.detach().mean()),
        "d_fake": float(fake_logits.detach().mean()),
    }


def _finite_everywhere(loss: Tensor) -> bool:
    """True when the loss is finite on every DDP rank: all ranks must skip together or DDP would hang."""
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, parameter by parameter (buffers copied)."""
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(b)


def ema_decay(cfg: TrainConfig, step: int) -> float:
    """The EMA decay after `step` optimiser steps: train.ema_decay, or less while warming up (train.ema_warmup)."""
    if not cfg.ema_warmup:
        return cfg.ema_decay
    return min(cfg.ema_decay, (1.0 + step) / (10.0 + step))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's step schedule (MultiStepLR), cosine annealing to eta_min, or a constant rate."""
    if cfg.kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma
        )
    if cfg.kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.eta_min)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[], gamma=1.0)


# --- checkpoints ------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain values (safe for weights_only loading)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write atomically: a crash or a full disk mid-write leaves the previous checkpoints as they were."""
    try:
        with atomic_path(path, overwrite=True) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError (iostream error)
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise TrainingError(f"{path}: cannot write checkpoint ({reason}; {free} bytes free there)") from None
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (weights_only: tensors and plain containers only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # corrupt zip, unsafe pickle, truncated file: all surface as different types
        raise CheckpointError(
            f"{path}: cannot read training checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an esrgan training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}"
        )
    return state


def step_checkpoints(folder: Path) -> list[Path]:
    """step_*.ckpt files of a run, oldest first (temporary .part files of an interrupted save are ignored)."""
    found = [(int(m[1]), p) for p in folder.glob("step_*.ckpt") if (m := _STEP_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path:
    found = step_checkpoints(run_dir / "checkpoints")
    if not found:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint to resume from (step_*.ckpt)")
    return found[-1]


# --- setup helpers ----------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    """Join the process group torchrun describes through WORLD_SIZE/RANK/LOCAL_RANK (single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _device(name: str, ddp: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    return device


def make_autocast(device: torch.device, precision: str) -> Autocast:
    """A context-manager factory for the configured precision (fp16 only on CUDA, where a grad scaler runs)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs CUDA (use bf16 on the CPU)")
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _load_pretrained_generator(path: str, g: RRDBNet) -> None:
    """Stage 2 starts from stage 1: an exported model (any format esrgan reads) or a training checkpoint."""
    p = Path(path).expanduser()
    if p.suffix == ".ckpt":
        state = load_checkpoint(p)
        sd = state["generator_ema"] if state.get("generator_ema") is not None else state["generator"]
    else:
        if not p.is_file():
            raise ConfigError(f"train.pretrained_g: {p} not found (train stage 1 first, or fix the path)")
        from .checkpoints import load_weights  # written alongside

        weights = load_weights(p)
        if weights.config != g.config:
            raise ConfigError(
                f"train.pretrained_g: {p} is {weights.config}, but the config's model section builds {g.config}"
            )
        sd = weights.state_dict
    try:
        g.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{p}: does not fit the configured generator ({str(exc).splitlines()[0]})"
        ) from None


def _load_validation(folder: str, scale: int, max_images: int) -> list[tuple[str, np.ndarray, Tensor]]:
    """(name, HR uint8 mod-cropped, LR float) for each validation image; LR by MATLAB bicubic, uint8-rounded."""
    items = []
    files = list_images(folder)
    for path in files[: max_images or None]:
        hr = read_rgb(path)
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        items.append((path.stem, hr, bicubic_lr(to_tensor(hr), scale)))
    return items


@torch.no_grad()
def evaluate_generator(
    g: nn.Module, items: list[tuple[str, np.ndarray, Tensor]], *, scale: int, device: torch.device
) -> tuple[float, float, list[np.ndarray]]:
    """Mean Y-PSNR / Y-SSIM (border `scale` cropped, fp32) and the uint8 SR images."""
    from .metrics import psnr, ssim  # written alongside

    was_training = g.training
    g.eval()
    psnrs, ssims, outputs = [], [], []
    for _, hr, lr in items:
        sr = quantize(g(lr[None].to(device)).float().clamp(0, 1))[0].cpu()
        sr_u8 = (sr * 255).round().byte().permute(1, 2, 0).numpy()
        psnrs.append(psnr(sr_u8, hr, crop_border=scale))
        ssims.append(ssim(sr_u8, hr, crop_border=scale))
        outputs.append(sr_u8)
    g.train(was_training)
    return float(np.mean(psnrs)), float(np.mean(ssims)), outputs


def save_sample_grid(
    path: Path,
    items: list[tuple[str, np.ndarray, Tensor]],
    outputs: list[np.ndarray],
    *,
    scale: int,
    crop: int,
) -> None:
    """One row per image: LR (nearest-upscaled) | SR | HR, centre crops of `crop` HR pixels."""
    from PIL import Image

    rows = []
    for (_, hr, lr), sr in zip(items, outputs, strict=False):
        c = min(crop, hr.shape[0], hr.shape[1]) // scale * scale
        t, left = (hr.shape[0] - c) // 2 // scale * scale, (hr.shape[1] - c) // 2 // scale * scale
        lr_u8 = (lr * 255).round().byte().permute(1, 2, 0).numpy()
        lr_crop = lr_u8[t // scale : (t + c) // scale, left // scale : (left + c) // scale]
        lr_up = lr_crop.repeat(scale, axis=0).repeat(scale, axis=1)
        rows.append(
            np.concatenate([lr_up, sr[t : t + c, left : left + c], hr[t : t + c, left : left + c]], 1)
        )
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
    with atomic_path(path, overwrite=True) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


class _JsonlLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def _tensorboard(run_dir: Path, wanted: bool) -> Any:
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("logging.tensorboard is on but the tensorboard package is not installed: JSONL log only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


class _StopSignal:
    """SIGINT/SIGTERM ask the loop to finish the current step, save and exit; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: finishing this step, saving a checkpoint, then stopping",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        flag = torch.tensor([1 if self.signum is not None else 0], dtype=torch.int32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # one rank's signal stops all ranks at the same step
        return bool(flag.item())


M = TypeVar("M", bound=nn.Module)


def _place(module: M, device: torch.device, channels_last: bool) -> M:
    """Move a module to the device, in channels-last (NHWC) memory if asked (oneDNN's fast layout on the CPU)."""
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


# --- the loop ---------------------------------------------------------------------------------------------------
def train(
    config: Config,
    *,
    resume: bool | str | Path = False,
    vgg_weights: str | None = None,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train one stage as `config` says. `resume`: True = latest checkpoint of the run folder, or a path.

    `stop_at_step` ends this invocation early (with a checkpoint) at that step, as a signal would.
    """
    cfg = copy.deepcopy(config)
    if vgg_weights:
        cfg.perceptual.weights = vgg_weights  # so the resolved config in the run folder says what was used
    scale = cfg.model.scale
    gan = cfg.train.stage == "gan"
    if not cfg.data.hr_dir:
        raise ConfigError("data.hr_dir: the training image folder is required")

    # VGG weights first: a missing file must stop us before any data is read or any step is taken
    vgg_path: Path | None = None
    vgg_random = False
    if gan and cfg.losses.perceptual_weight:
        from .vgg import RANDOM, resolve_vgg_weights

        spec = cfg.perceptual.weights
        vgg_path = resolve_vgg_weights(spec, download=cfg.perceptual.download)
        vgg_random = spec == RANDOM

    device_kind = (
        "cuda"
        if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    ddp = _init_distributed(device_kind)
    device = _device(cfg.train.device, ddp)
    autocast = make_autocast(device, cfg.train.precision)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.data.batch_size % ddp.world_size:
        raise ConfigError(
            f"data.batch_size {cfg.data.batch_size} is not divisible by {ddp.world_size} processes"
        )
    batch_per_rank = cfg.data.batch_size // ddp.world_size

    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    if ddp.main:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "samples").mkdir(exist_ok=True)
            atomic_write_bytes(run_dir / "config.yaml", config_to_yaml(cfg).encode(), overwrite=True)
        except OSError as exc:  # read-only or full disk: say so before any work
            raise TrainingError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc})") from None
        # temporary files of saves that a kill -9 interrupted (esrgan.atomic names them .<name>.<random>.part)
        for stale in ckpt_dir.glob(".*.ckpt.*.part"):
            stale.unlink(missing_ok=True)

    # models, all ranks from the same seed (DDP also broadcasts rank 0's weights)
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    g = RRDBNet(
        num_in_ch=m.num_in_ch,
        num_out_ch=m.num_out_ch,
        num_feat=m.num_feat,
        num_block=m.num_block,
        num_grow=m.num_grow,
        scale=scale,
    )
    if cfg.train.pretrained_g:
        _load_pretrained_generator(cfg.train.pretrained_g, g)
    else:
        g.init_weights(0.1)
    g = _place(g, device, cfg.train.channels_last).train()
    g_ema = (
        _place(RRDBNet.from_config(g.config), device, cfg.train.channels_last).eval().requires_grad_(False)
        if cfg.train.ema_decay
        else None
    )
    if g_ema is not None:
        g_ema.load_state_dict(g.state_dict())
    d: VGGStyleDiscriminator | None = None
    vgg: nn.Module | None = None
    if gan:
        d = VGGStyleDiscriminator(
            num_in_ch=m.num_out_ch, num_feat=m.d_num_feat, input_size=cfg.data.patch_size
        )
        d = _place(d, device, cfg.train.channels_last).train()
        if cfg.losses.perceptual_weight:
            from .vgg import VGGFeatureExtractor

            vgg = VGGFeatureExtractor(weights=vgg_path).to(device)

    o = cfg.optim
    opt_g = torch.optim.Adam(
        g.parameters(), lr=o.lr_g, betas=(o.betas_g[0], o.betas_g[1]), weight_decay=o.weight_decay
    )
    sched_g = make_scheduler(opt_g, cfg.schedule, cfg.train.total_steps)
    scaler_g = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    opt_d = sched_d = scaler_d = None
    if d is not None:
        opt_d = torch.optim.Adam(
            d.parameters(), lr=o.lr_d, betas=(o.betas_d[0], o.betas_d[1]), weight_decay=o.weight_decay
        )
        sched_d = make_scheduler(opt_d, cfg.schedule, cfg.train.total_steps)
        scaler_d = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")

    # resume: everything that influences the next step comes back
    step, best_psnr = 0, -math.inf
    if resume:
        path = latest_checkpoint(run_dir) if resume is True else Path(resume)
        state = load_checkpoint(path)
        if state["model_config"] != g.config.to_dict():
            raise CheckpointError(
                f"{path}: generator {state['model_config']} differs from the config's model section"
            )
        g.load_state_dict(state["generator"])
        opt_g.load_state_dict(state["optim_g"])
        sched_g.load_state_dict(state["sched_g"])
        scaler_g.load_state_dict(state["scaler_g"])
        if g_ema is not None:
            if state.get("generator_ema") is None:
                raise CheckpointError(f"{path}: has no EMA generator but train.ema_decay is set")
            g_ema.load_state_dict(state["generator_ema"])
        if d is not None:
            if state.get("discriminator") is None:
                raise CheckpointError(
                    f"{path}: a {state.get('stage')} stage checkpoint; this is the gan stage"
                )
            assert opt_d is not None and sched_d is not None and scaler_d is not None
            d.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["optim_d"])
            sched_d.load_state_dict(state["sched_d"])
            scaler_d.load_state_dict(state["scaler_d"])
        set_rng_state(state["rng"])
        step, best_psnr = int(state["step"]), float(state["best_psnr"])
        if ddp.main:
            log.info("resumed from %s at step %d", path, step)

    g_train: nn.Module = g
    d_train: nn.Module | None = d
    if ddp.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        g_train = nn.parallel.DistributedDataParallel(g, device_ids=ids)
        if d is not None:
            d_train = nn.parallel.DistributedDataParallel(d, device_ids=ids)

    deg = None
    if cfg.data.degradation == "realworld":
        dc = cfg.data
        deg = Degradation(
            dc.blur_prob,
            (dc.blur_sigma[0], dc.blur_sigma[1]),
            dc.noise_prob,
            (dc.noise_sigma[0], dc.noise_sigma[1]),
            dc.jpeg_prob,
            (dc.jpeg_quality[0], dc.jpeg_quality[1]),
        )
    dataset = PatchDataset(
        cfg.data.hr_dir,
        scale=scale,
        patch_size=cfg.data.patch_size,
        lr_dir=cfg.data.lr_dir,
        flip=cfg.data.flip,
        rot90=cfg.data.rot90,
        degradation=deg,
        cache_max_mb=cfg.data.cache_max_mb,
        hr_downscale=cfg.data.hr_downscale,
    )
    batches: Iterator[tuple[Tensor, Tensor]] = patch_loader(
        dataset,
        batch_size=batch_per_rank,
        seed=cfg.train.seed,
        start_sample=step * batch_per_rank,
        rank=ddp.rank,
        world_size=ddp.world_size,
        num_workers=cfg.data.num_workers,
    )
    val_items = (
        _load_validation(cfg.validation.dir, scale, cfg.validation.max_images)
        if cfg.validation.dir and ddp.main
        else []
    )

    jsonl = _JsonlLog(run_dir / "log.jsonl" if ddp.main else None)
    board = _tensorboard(run_dir, cfg.logging.tensorboard) if ddp.main else None
    if vgg_random and ddp.main:
        log.warning("TRAINING WITH A RANDOM VGG19 (perceptual.weights: random): for smoke tests only")
    jsonl.write(
        {
            "event": "resume" if resume else "start",
            "step": step,
            "time": time.time(),
            "world_size": ddp.world_size,
            "perceptual_weights": "random" if vgg_random else str(vgg_path),
        }
    )

    def checkpoint_state() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "stage": cfg.train.stage,
            "step": step,
            "data_position": {"samples_per_rank": step * batch_per_rank, "world_size": ddp.world_size},
            "best_psnr": best_psnr,
            "config": config_to_yaml(cfg),
            "model_config": g.config.to_dict(),
            "perceptual_weights": "random" if vgg_random else (str(vgg_path) if vgg_path else None),
            "generator": g.state_dict(),
            "generator_ema": g_ema.state_dict() if g_ema is not None else None,
            "discriminator": d.state_dict() if d is not None else None,
            "optim_g": opt_g.state_dict(),
            "optim_d": opt_d.state_dict() if opt_d is not None else None,
            "sched_g": sched_g.state_dict(),
            "sched_d": sched_d.state_dict() if sched_d is not None else None,
            "scaler_g": scaler_g.state_dict(),
            "scaler_d": scaler_d.state_dict() if scaler_d is not None else None,
            "rng": rng_state(),
        }

    def save_step_checkpoint() -> Path:
        path = save_checkpoint(ckpt_dir / f"step_{step:08d}.ckpt", checkpoint_state())
        for old in step_checkpoints(ckpt_dir)[: -cfg.checkpoint.keep_last]:
            old.unlink(missing_ok=True)
        return path

    total = cfg.train.total_steps
    end = min(total, stop_at_step) if stop_at_step is not None else total
    last_ckpt: Path | None = None
    nonfinite = 0
    interrupted = False
    progress = None
    if ddp.main and cfg.logging.progress:
        from tqdm import tqdm

        progress = tqdm(total=total, initial=step, unit="it", dynamic_ncols=True, desc=cfg.train.stage)
    t_last, step_last = time.perf_counter(), step

    with _StopSignal() as stop:
        while step < end:
            try:
                lr_img, hr_img = next(batches)
            except RuntimeError:
                # Ctrl-C reaches the DataLoader workers too (same process group); they exit, and a batch
                # that was being fetched is lost: save what we have instead of crashing
                if stop.signum is None:
                    raise
                break
            lr_img, hr_img = lr_img.to(device, non_blocking=True), hr_img.to(device, non_blocking=True)
            if cfg.train.channels_last:
                lr_img = lr_img.contiguous(memory_format=torch.channels_last)
                hr_img = hr_img.contiguous(memory_format=torch.channels_last)
            g_out = generator_step(
                g_train,
                lr_img,
                hr_img,
                optimizer=opt_g,
                scaler=scaler_g,
                weights=cfg.losses,
                autocast=autocast,
                vgg=vgg,
                d=d,
            )
            d_logs: dict[str, float] | None = {}
            if g_out is not None and d_train is not None:
                assert opt_d is not None and scaler_d is not None
                d_logs = discriminator_step(
                    d_train,
                    hr_img,
                    g_out[1],
                    optimizer=opt_d,
                    scaler=scaler_d,
                    reduction=cfg.losses.gan_reduction,
                    autocast=autocast,
                )
            step += 1
            sched_g.step()
            if sched_d is not None:
                sched_d.step()
            if g_out is None or d_logs is None:
                nonfinite += 1
                log.warning("step %d: loss is NaN/Inf, update skipped (%d in a row)", step, nonfinite)
                jsonl.write({"event": "nonfinite", "step": step})
                if nonfinite >= cfg.train.max_nonfinite_steps:
                    if ddp.main:
                        last_ckpt = save_step_checkpoint()
                    raise TrainingError(
                        f"{nonfinite} steps in a row with a NaN/Inf loss at step {step}: stopping "
                        f"(last checkpoint {last_ckpt}); lower optim.lr_g or use train.precision: fp32"
                    )
                logs: dict[str, float] = {}
            else:
                nonfinite = 0
                if g_ema is not None:
                    ema_update(g_ema, g, ema_decay(cfg.train, step))
                logs = {**g_out[0], **d_logs}

            if ddp.main:
                if progress is not None:
                    progress.set_postfix(
                        {k: f"{v:.4g}" for k, v in logs.items() if k in ("l_pix", "l_g_total", "l_d")},
                        refresh=False,
                    )
                    progress.update()
                if step % cfg.logging.every == 0 or step == end:
                    now = time.perf_counter()
                    rate = (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    record = {"step": step, "lr_g": sched_g.get_last_lr()[0], "it_per_s": rate, **logs}
                    jsonl.write(record)
                    if board is not None:
                        for k, v in record.items():
                            if k != "step":
                                board.add_scalar(f"train/{k}", v, step)
                if val_items and (step % cfg.validation.every == 0 or step == total):
                    model = g_ema if g_ema is not None else g
                    vpsnr, vssim, outputs = evaluate_generator(model, val_items, scale=scale, device=device)
                    jsonl.write({"step": step, "val_psnr": vpsnr, "val_ssim": vssim})
                    if board is not None:
                        board.add_scalar("val/psnr", vpsnr, step)
                        board.add_scalar("val/ssim", vssim, step)
                    save_sample_grid(
                        run_dir / "samples" / f"step_{step:08d}.png",
                        val_items[: cfg.validation.samples],
                        outputs,
                        scale=scale,
                        crop=cfg.validation.sample_crop,
                    )
                    msg = f"step {step}: validation Y-PSNR {vpsnr:.3f} dB, SSIM {vssim:.4f}"
                    if progress is not None:
                        progress.write(msg)
                    else:
                        log.info(msg)
                    if vpsnr > best_psnr:
                        best_psnr = vpsnr
                        if cfg.checkpoint.keep_best:
                            save_checkpoint(ckpt_dir / "best.ckpt", checkpoint_state())
                if step % cfg.checkpoint.every == 0:
                    last_ckpt = save_step_checkpoint()
            if stop.requested():
                interrupted = True
                break
        if step < total:
            interrupted = True
    if progress is not None:
        progress.close()

    if ddp.main and (last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}.ckpt")):
        last_ckpt = save_step_checkpoint()
    final = g_ema if g_ema is not None else g
    model_path = None
    if ddp.main and not interrupted:
        from .checkpoints import save_model  # written alongside

        meta = {
            "esrgan.training": json.dumps(
                {
                    "stage": cfg.train.stage,
                    "step": step,
                    "name": cfg.name,
                    "ema": bool(g_ema is not None),
                    "best_val_psnr": best_psnr if math.isfinite(best_psnr) else None,
                }
            ),
        }
        if gan:
            meta["esrgan.perceptual_weights"] = "random" if vgg_random else "vgg19-imagenet"
        model_path = save_model(run_dir / "model.safetensors", final, metadata=meta, overwrite=True)
    jsonl.write({"event": "interrupted" if interrupted else "done", "step": step, "time": time.time()})
    if board is not None:
        board.close()
    if ddp.world_size > 1:
        dist.barrier()  # rank 0 has written everything before any rank returns
    return TrainResult(
        run_dir,
        step,
        interrupted,
        last_ckpt,
        model_path,
        best_psnr if math.isfinite(best_psnr) else None,
        final,
    )
