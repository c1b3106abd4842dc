"""ESRGAN training, both stages, in one loop you can read top to bottom (`train`).

Stage 1 (psnr) trains RRDBNet (or, with model.arch: compact, Real-ESRGAN's SRVGGNetCompact) with L1 only. Stage 2
(gan) starts from stage 1's generator and adds the VGG-style discriminator, the perceptual loss and the relativistic
average GAN loss; `generator_step` and `discriminator_step` are plain functions. Everything else here is the machinery around them: checkpoints that
resume bit-exactly (models, EMA, optimisers, schedulers, grad scalers, RNG states, data position), SIGINT/SIGTERM
handling, NaN/Inf skipping, mixed precision, validation with Y-PSNR/SSIM, logs, and DDP under torchrun.

Checkpoints are torch.save files holding only tensors and plain containers, read back with
torch.load(weights_only=True): no pickled objects, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from .archs import Generator, GeneratorConfig, arch_name, build_generator
from .atomic import atomic_path, atomic_write_bytes
from .checkpoints import (  # at import, not at the run's end: see train()'s export
    checkpoint_generator,
    load_weights,
    save_model,
)
from .compact import CompactConfig
from .config import (
    Config,
    LossesConfig,
    RealESRGANDegradationConfig,
    ScheduleConfig,
    TrainConfig,
    config_to_yaml,
)
from .data import (
    Degradation,
    PatchDataset,
    batch_to_device,
    bicubic_lr,
    list_images,
    patch_loader,
    quantize,
    read_pixels,
    to_pixels,
    to_tensor,
)
from .degrade import PairPool, degrade_image
from .device import ieee_fp32
from .discriminator import Discriminator, build_discriminator, discriminator_state
from .errors import CheckpointError, ConfigError, EsrganError, ImageError
from .generator import RRDBNet
from .losses import GanType, gan_d_loss, gan_g_loss, perceptual_loss, pixel_loss

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
    generator: Generator = field(repr=False)  # the trained generator (the EMA one when EMA is on)
    signum: int | None = None  # the signal that stopped it (SIGINT, SIGTERM), if one did


# --- the two steps ----------------------------------------------------------------------------------------------
def generator_losses(
    g: nn.Module,
    lr: Tensor,
    hr: Tensor,
    *,
    weights: LossesConfig,
    autocast: Autocast,
    vgg: nn.Module | None = None,
    d: nn.Module | None = None,
    layer_weights: Sequence[float] = (1.0,),
    hr_real: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """G's loss terms, their weighted total and the (float) SR batch: eta * L1 (+ percep + lambda * L_Ra in the GAN
    stage; `layer_weights`: the perceptual loss's, one per layer of `vgg`; `hr_real`: what D is shown as real when
    it is not the target `hr`, see discriminator_sees_plain_hr). `d` must be the plain module (not its DDP
    wrapper): G's update must not touch D's gradients or DDP's bookkeeping."""
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
            terms["l_percep"] = perceptual_loss(vgg, sr, hr, layer_weights).float()
        total = total + weights.perceptual_weight * terms["l_percep"]
    if d is not None:
        d.requires_grad_(False)
        try:
            with autocast():
                # D is fixed during G's update; the vanilla loss needs no real logits
                real = hr if hr_real is None else hr_real
                real_logits = d(real).detach().float() if weights.gan_type == "ragan" else None
                fake_logits = d(sr)
            terms["l_g_gan"] = gan_g_loss(
                weights.gan_type, real_logits, fake_logits.float(), reduction=weights.gan_reduction
            )
        finally:
            d.requires_grad_(True)
        total = total + weights.gan_weight * terms["l_g_gan"]
    return terms, total, sr


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
    layer_weights: Sequence[float] = (1.0,),
    hr_real: Tensor | None = None,
) -> tuple[dict[str, float], Tensor] | None:
    """One update of G (generator_losses, backward, Adam). None if the loss is not finite.

    Returns the loss terms and the (detached) SR batch for the discriminator step.
    """
    terms, total, sr = generator_losses(
        g,
        lr,
        hr,
        weights=weights,
        autocast=autocast,
        vgg=vgg,
        d=d,
        layer_weights=layer_weights,
        hr_real=hr_real,
    )
    optimizer.zero_grad(set_to_none=True)
    if not _finite_everywhere(total):
        return None
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    logs = {name: float(value.detach()) for name, value in terms.items()}
    logs["l_g_total"] = float(total.detach())
    return logs, sr.detach()


def discriminator_losses(
    d: nn.Module, hr: Tensor, sr: Tensor, *, reduction: str, autocast: Autocast, gan_type: GanType = "ragan"
) -> tuple[Tensor, dict[str, Tensor]]:
    """D's loss (relativistic average or vanilla) on real HR vs the detached SR batch, and its logs (mean logits)."""
    with autocast():
        real_logits = d(hr)
        fake_logits = d(sr)
    loss = gan_d_loss(gan_type, real_logits.float(), fake_logits.float(), reduction=reduction)  # type: ignore[arg-type]
    return loss, {
        "d_real": real_logits.detach().float().mean(),
        "d_fake": fake_logits.detach().float().mean(),
    }


def discriminator_step(
    d: nn.Module,
    hr: Tensor,
    sr: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    reduction: str,
    autocast: Autocast,
    gan_type: GanType = "ragan",
) -> dict[str, float] | None:
    """One update of D (relativistic average or vanilla loss) on real HR vs the detached SR batch."""
    loss, logits = discriminator_losses(d, hr, sr, reduction=reduction, autocast=autocast, gan_type=gan_type)
    optimizer.zero_grad(set_to_none=True)
    if not _finite_everywhere(loss):
        return None
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {"l_d": float(loss.detach()), **{k: float(v) for k, v in logits.items()}}


def _finite_everywhere(loss: Tensor) -> bool:
    """True when the loss is finite on every DDP rank: all ranks must skip together or DDP would hang."""
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for every parameter in one multi-tensor kernel (buffers copied)."""
    params = list(model.parameters())
    averages: list[Tensor] = list(ema.parameters())
    if len(params) != len(averages):
        raise ValueError("ema_update: the EMA model and the model differ")
    torch._foreach_lerp_(averages, [p.detach() for p in params], 1.0 - decay)
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
    """Read a training checkpoint as hostile, like a model file (esrgan.checkpoints.read_torch_file: size limit,
    zip-bomb check, weights_only unpickling: tensors and plain containers only, one-line errors naming the file)."""
    from .checkpoints import MAX_CHECKPOINT_BYTES, read_torch_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    state = read_torch_file(
        path,
        what="an esrgan training checkpoint",
        max_bytes=MAX_CHECKPOINT_BYTES,
        advice="esrgan train writes tensors and plain values only: this file was not written by it.",
    )
    # type first: a crafted file's tensor here would compare element-wise (an error) and print on many lines
    fmt, version = state.get("format"), state.get("version")
    if type(fmt) is not str or fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an esrgan training checkpoint")
    if type(version) is not int or version != CHECKPOINT_VERSION:
        shown = version if type(version) is int else f"a {type(version).__name__}"
        raise CheckpointError(f"{path}: checkpoint version {shown} is not {CHECKPOINT_VERSION}")
    return state


def step_checkpoints(folder: Path) -> list[Path]:
    """step_*.ckpt files of a run, oldest first (temporary .part files of an interrupted save are ignored)."""
    found = [(int(m[1]), p) for p in folder.glob("step_*.ckpt") if (m := _STEP_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path:
    found = step_checkpoints(run_dir / "checkpoints")
    if found:
        return found[-1]
    best = run_dir / "checkpoints" / "best.ckpt"
    if best.exists():  # kept by validation: a checkpoint like the others, only not the latest
        raise CheckpointError(
            f"{run_dir / 'checkpoints'}: no step checkpoint to resume from (step_*.ckpt); --resume {best} "
            "continues from the best one"
        )
    if held_run(run_dir) is None:  # nothing to keep: a fresh start is accepted there (check_fresh_run_dir)
        why = "the run stopped before its first one" if earlier_start_files(run_dir) else "none saved there"
        raise CheckpointError(
            f"{run_dir}: no checkpoint to resume from ({why}); start it without --resume: it starts over"
        )
    raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint to resume from (step_*.ckpt)")


_SAMPLE_FILE = re.compile(r"step_\d+\.png")


def held_run(run_dir: Path) -> str | None:
    """What makes run_dir hold a run that a fresh start must not replace, in a few words ("last checkpoint at step
    N", or the files: best.ckpt, model.safetensors), or None: a folder without any checkpoint or exported model
    holds at most an earlier start that stopped before its first checkpoint (earlier_start_files)."""
    ckpt_dir = run_dir / "checkpoints"
    steps = step_checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
    if steps:
        match = _STEP_FILE.fullmatch(steps[-1].name)
        assert match is not None
        return f"last checkpoint at step {int(match[1])}"
    others = [p.name for p in (ckpt_dir / "best.ckpt", run_dir / "model.safetensors") if p.exists()]
    if not others and _log_shows_a_run(
        run_dir
    ):  # its checkpoints deleted or moved, its record still worth keeping
        others = ["log.jsonl of a run that saved checkpoints"]
    return ", ".join(others) or None


def _log_shows_a_run(run_dir: Path) -> bool:
    """Whether run_dir's log.jsonl records more than a start that never reached a checkpoint: a resume, an end
    ("done", "interrupted": both save first), or a step at or past the checkpoint interval of the config.yaml that
    start wrote (a review found a finished run's log and sample grids deleted as an "earlier start" once its
    checkpoints had been moved away). Unreadable files count as a run: nothing is deleted on a guess."""
    log_file = run_dir / "log.jsonl"
    if not log_file.is_file():
        return False
    try:
        saved = (
            yaml.safe_load((run_dir / "config.yaml").read_text())
            if (run_dir / "config.yaml").is_file()
            else {}
        )
        every = saved.get("checkpoint", {}).get("every") if isinstance(saved, dict) else None
        every = every if isinstance(every, int) and every > 0 else None
        for line in log_file.read_text(errors="replace").splitlines():
            record = json.loads(line) if line.strip() else {}
            if not isinstance(record, dict):
                continue
            if record.get("event") in ("resume", "done", "interrupted"):
                return True
            step = record.get("step")
            if every is not None and isinstance(step, int) and step >= every:
                return True
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return True
    return False


def earlier_start_files(run_dir: Path) -> list[Path]:
    """The files a start of a run writes before its first checkpoint, which a new start replaces: the JSONL log,
    sample grids (samples/step_*.png), TensorBoard event files and temporary files of interrupted writes
    (config.yaml is rewritten by every start; files train does not write are not listed)."""
    found = [run_dir / "log.jsonl"] if (run_dir / "log.jsonl").is_file() else []
    for folder, patterns in (
        (run_dir / "samples", ("step_*.png", ".step_*.png.*.part")),
        (run_dir / "tensorboard", ("events.out.tfevents.*",)),
        (run_dir / "checkpoints", (".*.ckpt.*.part",)),
    ):
        if folder.is_dir():
            for pattern in patterns:
                found += sorted(
                    p
                    for p in folder.glob(pattern)
                    if p.is_file() and (pattern != "step_*.png" or _SAMPLE_FILE.fullmatch(p.name))
                )
    return found


def _described(files: Sequence[Path]) -> str:
    """earlier_start_files in a few words: "log.jsonl, 3 sample grids, 1 temporary file"."""
    samples = sum(p.parent.name == "samples" and not p.name.endswith(".part") for p in files)
    boards = sum(p.parent.name == "tensorboard" for p in files)
    temporary = sum(p.name.endswith(".part") for p in files)
    parts = ["log.jsonl"] if any(p.name == "log.jsonl" for p in files) else []
    for count, what in ((samples, "sample grid"), (boards, "TensorBoard log"), (temporary, "temporary file")):
        if count:
            parts.append(f"{count} {what}{'s' if count > 1 else ''}")
    return ", ".join(parts)


def check_fresh_run_dir(run_dir: Path) -> list[Path]:
    """Refuse to start a fresh run in a folder that already holds one (a checkpoint or an exported model): its files
    would be overwritten and checkpoint pruning would mix the two runs. A folder that holds only what an earlier
    start wrote before its first checkpoint (a crash, a kill) is no run to keep: returns those files, which the new
    start replaces (earlier_start_files)."""
    what = held_run(run_dir)
    if what is None:
        return earlier_start_files(run_dir)
    best = run_dir / "checkpoints" / "best.ckpt"
    how = (
        "use --resume to continue it, or"
        if what.startswith("last checkpoint")
        else f"use --resume {best} to continue it, or"
        if best.exists()
        else "use"  # an exported model without its checkpoints: nothing to continue from
    )
    raise ConfigError(f"{run_dir}: already holds a run ({what}); {how} another name (--set name=...)")


def in_run_folder(run_dir: Path, checkpoint: Path) -> bool:
    """Whether `checkpoint` is one of run_dir's own files (in its checkpoints/ folder)."""
    return checkpoint.resolve().parent == (run_dir / "checkpoints").resolve()


def check_resume_into(run_dir: Path, checkpoint: Path, state: dict[str, Any]) -> None:
    """`--resume PATH` into run_dir, once PATH is loaded (`state`): refused, in one ConfigError naming both, when
    run_dir holds a run (held_run) and the checkpoint belongs to another, since the continuation's checkpoints would
    be saved among that run's and pruned with them by step number, and its log and config.yaml mixed into that
    run's. A checkpoint belongs to run_dir when it is in run_dir's checkpoints/ (its run goes on from there) or
    when the config it records names run_dir (output_dir/name: a copy, a backup). Into a folder holding no run
    any checkpoint resumes (a run continued elsewhere)."""
    if in_run_folder(run_dir, checkpoint):
        return
    what = held_run(run_dir)
    if what is None:
        return
    recorded = _recorded_run_dir(state)
    if recorded is not None and recorded.resolve() == run_dir.resolve():
        return
    owner = recorded or (checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None)
    whose = (
        f"a checkpoint of another run ({owner})" if owner else "not one of its checkpoints (no run recorded)"
    )
    raise ConfigError(
        f"{run_dir}: already holds a run ({what}); --resume {checkpoint} is {whose}: continue this one with "
        "--resume alone, or continue from that checkpoint under another name (--set name=...)"
    )


def _recorded_run_dir(state: dict[str, Any]) -> Path | None:
    """The run folder a checkpoint records (`run_folder`, absolute), or for a checkpoint of an earlier release the
    output_dir/name of its config where output_dir is absolute; None otherwise: a relative one would be resolved
    against today's directory, not the one the run was started from (a review found two projects' `runs/run`
    taken for one, and a backup resumed from elsewhere refused)."""
    folder = state.get("run_folder")
    if isinstance(folder, str) and folder:
        return Path(folder)
    saved = state.get("config")
    try:
        recorded = yaml.safe_load(saved) if isinstance(saved, str) else None
    except yaml.YAMLError:
        return None
    if not isinstance(recorded, dict):
        return None
    out, name = recorded.get("output_dir"), recorded.get("name")
    if (
        not (isinstance(out, str) and isinstance(name, str) and name)
        or not Path(out).expanduser().is_absolute()
    ):
        return None
    return Path(out).expanduser() / name


_HELD_LOCKS: set[int] = set()  # descriptors of the run folders this process holds (run_folder_lock)


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the copies of the run-folder descriptors. A flock belongs to
    the open file, which fork shares: the workers kept a killed trainer's lock for the ~5 s they take to notice
    their parent is gone, and a restart in that time was refused. The parent's own descriptor still holds it."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for this process: a second `esrgan train` of the same run (another terminal, a job
    scheduler's retry while the first still runs) wrote into the first one's checkpoints and pruned them. flock on
    the folder itself: nothing is written into it, and the kernel drops the lock when the process ends, however it
    ends (kill -9 included), so no stale lock is ever left. A folder this call creates and the run leaves empty (a
    run refused before it wrote anything) is removed again. No lock where flock does not exist (Windows) or the
    file system refuses it."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    created = False
    try:
        run_dir.mkdir(parents=True)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise TrainingError(f"{run_dir}: cannot create the run folder ({exc.strerror or exc})") from None
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"{run_dir}: another esrgan train is running in this folder; wait for it to end (or stop it: it "
                "saves a checkpoint), or use another name (--set name=...)"
            ) from None
        except OSError:  # a file system without locks (some network mounts): run unguarded, as before
            pass
        _HELD_LOCKS.add(fd)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if empty


def first_rank() -> bool:
    """Rank 0 of a torchrun launch (RANK is set before any process group starts), or a process on its own: the one
    that writes the run folder and reports how the run ended."""
    return os.environ.get("RANK", "0") == "0"


_P = ParamSpec("_P")
_R = TypeVar("_R")


_HOLD: contextvars.ContextVar[contextlib.ExitStack] = contextvars.ContextVar("esrgan_train_hold")


def _holding_the_run_folder(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """train() holds run_folder_lock(config.run_dir) from its first check to its end: taken inside it by the process
    that writes the run (rank 0), once every rank has joined the process group (`_hold_run_folder`, before the run
    folder is looked at), and released here when train returns or raises. Taken before joining, a lock held by
    another run stopped rank 0 alone, and a rank on another node waited for it until torch's timeout."""

    @functools.wraps(fn)
    def holding(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with contextlib.ExitStack() as stack:
            token = _HOLD.set(stack)
            try:
                return fn(*args, **kwargs)
            finally:
                _HOLD.reset(token)

    return holding


def _hold_run_folder(run_dir: Path) -> None:
    """run_folder_lock(run_dir) until train() ends (see _holding_the_run_folder); TrainingError when it is held."""
    _HOLD.get().enter_context(run_folder_lock(run_dir))


# --- setup helpers ----------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # in a process group (under torchrun, even of one process): DDP wrappers on
    owned: bool = False  # the group was started by _init_distributed, so train() destroys it when it ends

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    """Join the process group torchrun describes through WORLD_SIZE/RANK/LOCAL_RANK (single process otherwise).
    Under torchrun a single process joins too (NCCL on a GPU, gloo on a CPU): the many-GPU code path, testable
    on one GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return _Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # ESRGAN_DIST_BACKEND=gloo works around a machine whose NCCL cannot start
        backend = os.environ.get("ESRGAN_DIST_BACKEND") or ("nccl" if device_kind == "cuda" else "gloo")
        try:
            if device_kind == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend)
            dist.all_reduce(torch.ones(1, device="cuda" if backend == "nccl" else "cpu"))  # starts it now
        except (RuntimeError, ValueError) as exc:
            if world > 1:
                raise
            # one process needs no communication: a backend that cannot start costs nothing but the DDP path
            if dist.is_initialized():
                dist.destroy_process_group()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(
                "torchrun, one process: %s could not start (%s); training without DDP", backend, reason
            )
            return _Dist()
        return _Dist(dist.get_rank(), dist.get_world_size(), local, True, owned=True)
    return _Dist(dist.get_rank(), dist.get_world_size(), local, True)


def _leave_group(ddp: _Dist) -> None:
    """Destroy the process group _init_distributed started, where every rank has reached the same point with no
    collective pending (the end of a run, a start-up refusal agreed by all): torch's shutdown advice. Left to the
    interpreter's exit, NCCL (torch >= 2.4) prints "destroy_process_group() was not called before program exit" on
    every rank, and gloo's worker threads, still holding the last collectives' tensors, free them during the
    interpreter's teardown: "terminate called without an active exception", SIGABRT (a batch size the processes
    do not divide ended that way in 2 runs of 2). Not after an error in the middle of a run: a collective may be
    pending there with a rank that is gone, and destroying would wait for it until torch's timeout.

    Before torch 2.8 the group's destructor held the GIL while it joined gloo's worker threads, and a worker freeing
    a tensor's Python object waited for the GIL: every rank hung in destroy_process_group right after the final
    barrier (torch 2.3.1, here; pytorch#154976 released the GIL). There the group stays, as it always did."""
    if not (ddp.owned and dist.is_initialized()):
        return
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 8):
        return
    dist.destroy_process_group()


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


def resolve_train_precision(precision: str, device: torch.device, bits: int = 8) -> str:
    """train.precision with auto resolved for this device (see config.TrainConfig.precision); with 16-bit
    training data (`bits` 16) auto is fp32: bf16 holds 8 significant bits and fp16 11, fewer than the data's 16
    (a bf16 step apart near white is 1/256, an 8-bit level), as `esrgan upscale` computes 16-bit images in fp32."""
    if precision != "auto":
        return precision
    if bits > 8:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from .device import cpu_has_native_bf16

    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def make_autocast(device: torch.device, precision: str, *, cache: bool = True) -> Autocast:
    """A context-manager factory for the configured precision (fp16 only on CUDA, where a grad scaler runs).
    cache=False: no cast-weight cache (what CUDA graph capture needs)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs CUDA (use bf16 on the CPU)")
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def _arch_key(config: object) -> str:
    """model.arch's value for a generator config."""
    return "compact" if isinstance(config, CompactConfig) else "rrdbnet"


def model_differences(recorded: GeneratorConfig, wanted: GeneratorConfig) -> str:
    """What a file's generator has that the config's model section does not, key by key ("model.num_feat: 64 in
    the file, 32 in the config"), where two whole config reprs were printed side by side."""
    if type(recorded) is not type(wanted):
        return f"model.arch: {_arch_key(recorded)} in the file, {_arch_key(wanted)} in the config"
    have: dict[str, object] = dict(recorded.to_dict())
    want: dict[str, object] = dict(wanted.to_dict())
    return "; ".join(
        f"model.{key}: {have.get(key, False)} in the file, {want.get(key, False)} in the config"
        for key in {**have, **want}  # the fields' order
        if have.get(key, False) != want.get(key, False)
    )


def _load_pretrained_generator(path: str, g: Generator) -> None:
    """Stage 2 starts from stage 1: an exported model (any format esrgan reads), a training checkpoint, or a named
    model of `esrgan models` (realesrgan-x4plus: fine-tuning Real-ESRGAN's released generator)."""
    from .zoo import is_model_file, resolve_model_path

    p = Path(path).expanduser()
    if p.suffix == ".ckpt":  # the architecture it records is checked as a model file's (below)
        state = load_checkpoint(p)
        config = checkpoint_generator(p, state)
        sd = state["generator_ema"] if state.get("generator_ema") is not None else state["generator"]
    else:
        if not is_model_file(path):
            try:
                p = resolve_model_path(path)
            except EsrganError as exc:
                raise ConfigError(f"train.pretrained_g: {exc}") from None
        if not p.is_file():
            raise ConfigError(f"train.pretrained_g: {p} not found (train stage 1 first, or fix the path)")
        weights = load_weights(p)
        config, sd = weights.config, weights.state_dict
    if not isinstance(config, type(g.config)):
        raise ConfigError(
            f"train.pretrained_g: {p} is a {arch_name(config)} model, but the config's model section "
            f"builds a {arch_name(g.config)}: set model.arch: {_arch_key(config)} and its sizes"
        )
    if config != g.config:
        raise ConfigError(
            f"train.pretrained_g: {p} does not fit the config's model section ({model_differences(config, g.config)})"
        )
    try:
        g.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{p}: does not fit the configured generator ({str(exc).splitlines()[0]})"
        ) from None


def _load_pretrained_discriminator(path: str, d: Discriminator, kind: str) -> None:
    """Stage 2 from a trained discriminator: a training checkpoint of ours (.ckpt), Real-ESRGAN's *_netD.pth (the
    U-Net), a BasicSR net_d_*.pth (the VGG-style one, renamed to ours) or a state dict in our names."""
    from .checkpoints import read_discriminator

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"train.pretrained_d: {p} not found")
    if p.suffix == ".ckpt":
        sd = load_checkpoint(p).get("discriminator")
        if not isinstance(sd, dict):
            raise CheckpointError(f"{p}: a psnr stage checkpoint, it holds no discriminator")
    else:
        sd = read_discriminator(p)
    try:
        d.load_state_dict(discriminator_state(d, sd), strict=True)
    except RuntimeError as exc:
        first = _first_conv(d)
        images = {1: "grey images", 3: "RGB images"}.get(
            first.in_channels, f"{first.in_channels}-channel images"
        )
        raise CheckpointError(
            f"{p}: not a discriminator of model.discriminator: {kind} with d_num_feat {first.out_channels} "
            f"of {images} ({_load_error(exc)})"
        ) from None


def _first_conv(d: Discriminator) -> nn.Conv2d:
    return next(m for m in d.modules() if isinstance(m, nn.Conv2d))


def _load_error(exc: RuntimeError) -> str:
    """The telling line of load_state_dict's many-line error (its first names only the module class)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]


def _load_validation(
    folder: str,
    scale: int,
    max_images: int,
    degradation: RealESRGANDegradationConfig | None = None,
    channels: int = 3,
    bits: int = 8,
    value_range: Sequence[float] | None = None,
) -> list[tuple[str, np.ndarray, Tensor]]:
    """(name, HR mod-cropped, LR float) for each validation image; LR by MATLAB bicubic, rounded to the levels of
    `bits`, or by `degradation` with draws fixed per image (seeded by the image's position: the same LR in every
    run). `channels`: the model's, 3 (RGB) or 1 (grey: the images' luma, as the training data); `bits`: the
    training data's depth (`data.bit_depth`), the HR's (uint8 or uint16); `value_range`: the training data's
    (`data.value_range`), for measurements."""
    items: list[tuple[str, np.ndarray, Tensor]] = []
    files = list_images(folder)
    smallest = (
        2 * scale + 11
    )  # the border crop of the literature protocol on each side, then SSIM's 11x11 window
    for path in files[: max_images or None]:
        hr = read_pixels(
            path, channels, bits, None if value_range is None else (value_range[0], value_range[1])
        )
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        if (
            min(hr.shape[:2]) < smallest
        ):  # an empty LR image or an SSIM without a window: refused before training
            raise ConfigError(
                f"{path}: {hr.shape[1]}x{hr.shape[0]} (cropped to a multiple of {scale}) is too small to validate "
                f"an x{scale} model: at least {smallest}x{smallest} (validation.dir)"
            )
        if degradation is None:
            lr = bicubic_lr(to_tensor(hr), scale, bits)
        else:
            lr = degrade_image(to_tensor(hr), degradation, scale, seed=len(items))
        items.append((path.stem, hr, lr))
    return items


@torch.no_grad()
def evaluate_generator(
    g: nn.Module, items: list[tuple[str, np.ndarray, Tensor]], *, scale: int, device: torch.device
) -> tuple[float, float, list[np.ndarray]]:
    """Mean Y-PSNR / Y-SSIM (border `scale` cropped, fp32) and the SR images, of the HR images' depth: uint8, or
    uint16 for 16-bit training data, the metrics then on the 0..255 scale with 16-bit precision."""
    from .metrics import psnr, ssim  # written alongside

    was_training = g.training
    g.eval()
    psnrs, ssims, outputs = [], [], []
    for _, hr, lr in items:
        bits = hr.dtype.itemsize * 8
        sr = to_pixels(quantize(g(lr[None].to(device)).float().clamp(0, 1), bits)[0].cpu(), bits)
        a, b = (sr, hr) if bits == 8 else (sr / 257.0, hr / 257.0)  # the metrics' data range is 255
        psnrs.append(psnr(a, b, crop_border=scale))
        ssims.append(ssim(a, b, crop_border=scale))
        outputs.append(sr)
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
    """One row per image: LR (nearest-upscaled) | SR | HR, centre crops of `crop` HR pixels, in 8 bits."""
    from PIL import Image

    rows = []
    for (_, hr, lr), sr in zip(items, outputs, strict=False):
        if hr.dtype != np.uint8:  # 16-bit training data: a preview in 8 bits
            hr, sr = (np.round(a / 257.0).astype(np.uint8) for a in (hr, sr))
        c = min(crop, hr.shape[0], hr.shape[1]) // scale * scale
        t, left = (hr.shape[0] - c) // 2 // scale * scale, (hr.shape[1] - c) // 2 // scale * scale
        lr_u8 = to_pixels(lr, 8)
        lr_crop = lr_u8[t // scale : (t + c) // scale, left // scale : (left + c) // scale]
        lr_up = lr_crop.repeat(scale, axis=0).repeat(scale, axis=1)
        rows.append(
            np.concatenate([lr_up, sr[t : t + c, left : left + c], hr[t : t + c, left : left + c]], 1)
        )
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
    with atomic_path(path, overwrite=True) as tmp:
        Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(tmp, format="PNG")


class _JsonlLog:
    """The run's log.jsonl, a line a record. A line that cannot be written whole (a full disk) is taken back (the
    file cut to its length before it: a torn last line would be read as an unreadable log by a later start) and
    `on_failure(OSError naming the file)` decides what happens (training: stop in one line); without it the error
    is raised."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.on_failure: Callable[[OSError], None] | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = (json.dumps(record) + "\n").encode()
        try:
            with open(self.path, "ab", buffering=0) as fh:
                end = fh.seek(0, os.SEEK_END)
                try:
                    done = 0
                    while done < len(line):  # unbuffered: a short write is followed by the one that fails
                        done += fh.write(line[done:]) or 0
                except OSError:
                    with contextlib.suppress(OSError):
                        fh.truncate(end)
                    raise
        except OSError as exc:
            failure = OSError(exc.errno, exc.strerror or str(exc), str(self.path))
            if self.on_failure is None:
                raise failure from None
            self.on_failure(failure)


def _tensorboard(run_dir: Path, wanted: bool) -> Any:
    if not wanted:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("logging.tensorboard is on but the tensorboard package is not installed: JSONL log only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _ignore_signal(signum: int, frame: object) -> None:
    """A Python handler that does nothing (see _StopSignal._handle)."""


class _StopSignal:
    """SIGINT/SIGTERM ask the loop to finish the current step, save and exit; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._child_handler: Any = None

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        # A signal sent to the whole process group (systemd's default stop, a scheduler's SIGTERM, kill -TERM -PGID)
        # also ends the DataLoader workers that do not ignore it (SIGTERM), and DataLoader's SIGCHLD handler would
        # then raise "worker killed by signal" in the middle of this step. We are stopping anyway: worker deaths no
        # longer matter (a lost batch ends the loop, see next(batches)).
        # Put back by release_workers once the loader is shut down, not on leaving the loop: the final save comes
        # after it, and a worker may die then.
        # A Python no-op, not SIG_DFL: the workers' deaths are often pending already (Python runs the handlers of
        # signals that arrived together in number order: SIGTERM's, this one, then SIGCHLD's), and a signal whose
        # handler became SIG_DFL meanwhile is printed as "OSError: Signal 17 ignored due to race condition"
        if hasattr(signal, "SIGCHLD") and self._child_handler is None:
            self._child_handler = signal.signal(signal.SIGCHLD, _ignore_signal)
        log.warning(
            "%s received: finishing this step, saving a checkpoint, then stopping",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def release_workers(self, batches: object) -> None:
        """After a signal: shut the DataLoader's workers down, then give DataLoader its SIGCHLD handler back (it
        watches for crashed workers of later loaders in this process)."""
        if self._child_handler is None:
            return
        shutdown = getattr(batches, "_shutdown_workers", None)  # what the iterator's __del__ calls
        if shutdown is not None:
            shutdown()
        signal.signal(signal.SIGCHLD, self._child_handler)
        self._child_handler = None

    def requested(self, also: bool = False, device: torch.device | None = None) -> bool:
        """A signal arrived (or `also`), on any rank: all ranks stop at the same step. `device`: where the process
        group reduces tensors (reduce_device)."""
        signum, (flag,) = self.agree([float(also)], device)
        return signum is not None or bool(flag)

    def agree(
        self, values: Sequence[float], device: torch.device | None = None
    ) -> tuple[int | None, list[float]]:
        """The signal that stopped any rank (the largest number where ranks got different ones) and each of
        `values` as its largest over the ranks, in one all-reduce: every rank decides the same from them (each
        rank's own clock and signal made ranks train at different learning rates, and a rank whose budget was not
        yet spent think a signal stopped the run)."""
        flag = torch.tensor([float(self.signum or 0), *values], dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # one rank's signal stops all ranks at the same step
        got = flag.tolist()
        return (int(got[0]) or None), got[1:]


def _original_error(exc: BaseException) -> str:
    """An error's own one-line message, also when a DataLoader worker raised it: the main process then gets the same
    type with "Caught X in DataLoader worker process N. Original Traceback ...", whose last line is the original
    `module.Class: message`."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        return last.removeprefix(prefix)
    return lines[0] if lines else type(exc).__name__


def _peer_lost(exc: RuntimeError) -> bool:
    """Whether a collective failed because another rank is gone (it stopped on an error of its own, was killed, its
    machine went down): gloo raises a RuntimeError naming its own source ("third_party/gloo/... Connection closed by
    peer ... GLHF!"), NCCL and the store raise torch's DistError types."""
    return isinstance(exc, dist.DistError) or "gloo" in str(exc).lower()


@contextlib.contextmanager
def _other_ranks_watched(ddp: _Dist, progress: Progress) -> Iterator[None]:
    """A collective of the loop that fails because another rank stopped is one line naming the step, on the ranks
    left (that rank's own error says why): it was gloo's traceback ending in "Connection closed by peer"."""
    try:
        yield
    except RuntimeError as exc:
        if not (ddp.distributed and ddp.world_size > 1 and _peer_lost(exc)):
            raise
        raise TrainingError(
            f"another rank stopped at step {progress.step} (its own error says why): fix that, then continue with "
            "--resume from the last checkpoint"
        ) from None


class StoppedWithRankZero(TrainingError):
    """A rank's error that rank 0 also met and reports (the CLI prints it once, not once per rank)."""


def _all_ranks_ready(ddp: _Dist, failure: EsrganError | OSError | None, device_kind: str) -> None:
    """Every rank's checks before training, agreed: all ranks go on, or all stop. Rank 0 says why in one line (its
    own error, or which ranks failed); a rank that failed says its own error unless rank 0 failed too (an error all
    ranks meet, as a batch size the processes do not divide, was printed once per rank)."""
    if not (ddp.distributed and ddp.world_size > 1):
        if failure is not None:
            raise failure
        return
    on = torch.device("cuda", ddp.local_rank) if device_kind == "cuda" else torch.device("cpu")
    failed = torch.zeros(ddp.world_size, dtype=torch.int32, device=reduce_device(on))
    failed[ddp.rank] = int(failure is not None)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    ranks = [r for r, f in enumerate(failed.tolist()) if f]
    if failure is not None:
        if ddp.main or 0 not in ranks:
            raise failure
        raise StoppedWithRankZero(str(failure)) from None
    if ranks:
        if not ddp.main:
            raise StoppedWithRankZero(f"rank {ranks[0]} could not start") from None
        which = ", ".join(map(str, ranks))
        raise TrainingError(
            f"rank{'s' * (len(ranks) > 1)} {which} could not start (its error says why): nothing was trained"
        )


def stop_with_the_others(failure: EsrganError | OSError) -> NoReturn:
    """Raise `failure`, met before train() (a config file this node lacks or cannot load), after joining the process
    group under a torchrun of several processes and agreeing it with the other ranks' checks (_all_ranks_ready):
    they stop at once, rank 0 saying which rank could not start, where before a rank on another node waited for this
    one until torch's 30-minute timeout. The backend is the one a default config picks (NCCL where CUDA is)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise failure
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    ddp = _init_distributed(kind)
    try:
        _all_ranks_ready(ddp, failure, kind)
    finally:
        _leave_group(ddp)
    raise failure  # _all_ranks_ready raised already: a failure is never agreed away


def mean_over_ranks(logs: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Each logged value averaged over the DDP ranks (each computes it on its own share of the batch), in one
    all-reduce; as it is outside a process group. Every rank calls it at the same steps, with the same keys (the
    same config; a skipped step has none on every rank: _finite_everywhere). `device`: reduce_device's."""
    if not (logs and dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return logs
    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (values / dist.get_world_size()).tolist(), strict=True))


def reduce_device(device: torch.device) -> torch.device:
    """Where a small control tensor (stop flag) must live for the default process group to all-reduce it: the CPU
    where the group's backend serves CPU tensors (gloo: "cpu:gloo,cuda:gloo"), else the training device. NCCL
    serves CUDA tensors only ("cuda:nccl"): a CPU tensor there raises "No backend type associated with device type
    cpu" at the first step, which the CPU's gloo tests could never show."""
    if not (dist.is_available() and dist.is_initialized()):
        return torch.device("cpu")
    served = {part.split(":")[0].strip() for part in str(dist.get_backend_config()).split(",")}
    return torch.device("cpu") if "cpu" in served else device


M = TypeVar("M", bound=nn.Module)


def _place(module: M, device: torch.device, channels_last: bool) -> M:
    """Move a module to the device, in channels-last (NHWC) memory if asked (oneDNN's fast layout on the CPU)."""
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


# --- building a run ---------------------------------------------------------------------------------------------
@dataclass
class Nets:
    """The modules of a run. `g_train`/`d_train` are what the steps call: DDP wrappers under torchrun (G and D
    themselves otherwise); the plain modules are what checkpoints hold."""

    g: Generator
    g_ema: Generator | None
    d: Discriminator | None
    vgg: nn.Module | None
    g_train: nn.Module
    d_train: nn.Module | None


@dataclass
class Optimizers:
    opt_g: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    scaler_g: torch.amp.GradScaler
    opt_d: torch.optim.Optimizer | None = None
    sched_d: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler_d: torch.amp.GradScaler | None = None


@dataclass
class Progress:
    """The counters a checkpoint carries besides the weights: step, best validation PSNR, training time spent."""

    step: int = 0
    best_psnr: float = -math.inf
    elapsed_s: float = (
        0.0  # wall-clock time of this run so far (all invocations), for train.time_budget_minutes
    )


def build_nets(
    cfg: Config, device: torch.device, ddp: _Dist, vgg_path: Path | None, compile_g: bool | str = False
) -> Nets:
    """G (from stage 1 or initialised), its EMA copy, and in the GAN stage D and the VGG19 feature extractor."""
    torch.manual_seed(cfg.train.seed)  # every rank builds the same weights (DDP also broadcasts rank 0's)
    g = build_generator(cfg.model.generator)
    if cfg.train.pretrained_g:
        _load_pretrained_generator(cfg.train.pretrained_g, g)
    else:  # RRDBNet: the paper's Kaiming x0.1; the compact net: He init, its last conv x0.1 (see its init_weights)
        g.init_weights(0.1)
    g = _place(g, device, cfg.train.channels_last).train()
    g_ema = None
    if cfg.train.ema_decay:
        g_ema = (
            _place(build_generator(g.config), device, cfg.train.channels_last).eval().requires_grad_(False)
        )
        g_ema.load_state_dict(g.state_dict())
    d: Discriminator | None = None
    vgg: nn.Module | None = None
    if cfg.train.stage == "gan":
        d = build_discriminator(
            cfg.model.discriminator,
            num_in_ch=cfg.model.num_out_ch,
            num_feat=cfg.model.d_num_feat,
            patch_size=cfg.data.patch_size,
        )
        if cfg.train.pretrained_d:
            _load_pretrained_discriminator(cfg.train.pretrained_d, d, cfg.model.discriminator)
        d = _place(d, device, cfg.train.channels_last).train()
        if cfg.losses.perceptual_weight:
            from .vgg import VGGFeatureExtractor

            extractor = VGGFeatureExtractor(weights=vgg_path, layers=cfg.perceptual.layers)
            vgg = _place(extractor, device, cfg.train.channels_last)
    g_train: nn.Module = g
    d_train: nn.Module | None = d
    if ddp.distributed:
        ids = [device.index] if device.type == "cuda" else None
        g_train = nn.parallel.DistributedDataParallel(g, device_ids=ids)
        if d is not None:
            # No buffer broadcast at each forward: D's step runs D twice (real, fake) before one backward, and the
            # broadcast before the second forward rewrote in place the BatchNorm running statistics that the first
            # forward's BatchNorm saved for backward, which torch 2.11 (2.3 too) refuses: "modified by an inplace
            # operation: [torch.FloatTensor [64]]" at the first step of every DDP GAN run. D never runs in eval mode,
            # so the running statistics (kept per rank; rank 0's are saved) change no output. The U-Net's spectral
            # norm vectors do change its output: they stay equal on every rank because DDP broadcasts rank 0's
            # buffers once when it wraps D and each power iteration is a deterministic function of the (synchronised)
            # weights and the previous vectors (tests/test_train_ddp.py: two ranks end identical).
            d_train = nn.parallel.DistributedDataParallel(d, device_ids=ids, broadcast_buffers=False)
    if compile_g == "blocks":
        try:
            if not isinstance(g, RRDBNet):
                raise RuntimeError("a compact model compiles whole (train.compile: true)")
            g.compile_blocks()  # in place: g_train (DDP's wrapper too) runs the compiled blocks
        except RuntimeError as exc:
            raise ConfigError(f"train.compile: blocks: {exc}") from None
    elif compile_g:
        # the compiled module shares G's parameters: checkpoints and EMA keep reading `g`
        g_train = torch.compile(g_train)  # type: ignore[assignment]
    return Nets(g, g_ema, d, vgg, g_train, d_train)


def build_optimizers(
    cfg: Config, nets: Nets, device: torch.device, *, fused: bool | None = None
) -> Optimizers:
    """Adam for G (and D), their schedules, and grad scalers (active only for fp16). Fused Adam (one kernel per step
    for all parameters) on CUDA, or where `fused` says (the CPU has it too; tests of device_step use it)."""
    o = cfg.optim
    kind = {"fused": True} if (device.type == "cuda" if fused is None else fused) else {}
    fp16 = cfg.train.precision == "fp16"
    opt_g = torch.optim.Adam(
        nets.g.parameters(),
        lr=o.lr_g,
        betas=(o.betas_g[0], o.betas_g[1]),
        weight_decay=o.weight_decay,
        **kind,
    )
    opts = Optimizers(
        opt_g,
        make_scheduler(opt_g, cfg.schedule, cfg.train.total_steps),
        torch.amp.GradScaler(device.type, enabled=fp16),
    )
    if nets.d is not None:
        opts.opt_d = torch.optim.Adam(
            nets.d.parameters(),
            lr=o.lr_d,
            betas=(o.betas_d[0], o.betas_d[1]),
            weight_decay=o.weight_decay,
            **kind,
        )
        opts.sched_d = make_scheduler(opts.opt_d, cfg.schedule, cfg.train.total_steps)
        opts.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
    return opts


def lr_on_device(cfg: Config, device: torch.device) -> bool:
    """data.lr_on_device resolved: auto = on a GPU, when the LR is made from the HR folder by the plain bicubic or
    the realesrgan degradation (on a CPU the realesrgan batches are made by the loader's workers instead), and the
    realesrgan degradation on CUDA only."""
    setting = cfg.data.lr_on_device
    possible = cfg.data.lr_dir is None and cfg.data.degradation in ("bicubic", "realesrgan")
    if setting == "auto":
        if cfg.data.degradation == "realesrgan":
            # only where it is known to run: on Apple's MPS torch.poisson has no kernel (pytorch#102852) and
            # F.interpolate's area mode fails at sizes that do not divide (pytorch#96056), both of which the
            # degradation uses; there the loader's workers make the batches on the CPU, as on a CPU run
            return possible and device.type == "cuda"
        return possible and device.type != "cpu"
    return bool(setting) and possible


def build_batches(
    cfg: Config, ddp: _Dist, device: torch.device, step: int
) -> tuple[Iterator[tuple[Tensor, ...]], bool]:
    """The endless, resumable stream of this rank's uint8 batches from `step` on, and whether LR is made on device."""
    deg = None
    dc = cfg.data
    if dc.degradation == "realworld":
        deg = Degradation(
            dc.blur_prob,
            (dc.blur_sigma[0], dc.blur_sigma[1]),
            dc.noise_prob,
            (dc.noise_sigma[0], dc.noise_sigma[1]),
            dc.jpeg_prob,
            (dc.jpeg_quality[0], dc.jpeg_quality[1]),
        )
    on_device = lr_on_device(cfg, device)
    dataset = PatchDataset(
        dc.hr_dir,
        scale=cfg.model.scale,
        patch_size=dc.patch_size,
        lr_dir=dc.lr_dir,
        flip=dc.flip,
        rot90=dc.rot90,
        degradation=deg,
        cache_max_mb=dc.cache_max_mb,
        hr_downscale=dc.hr_downscale,
        lr_on_device=on_device,
        realesrgan=dc.realesrgan if dc.degradation == "realesrgan" else None,
        channels=cfg.model.num_in_ch,
        bits=dc.bit_depth,
        value_range=None if dc.value_range is None else (dc.value_range[0], dc.value_range[1]),
    )
    per_rank = dc.batch_size // ddp.world_size
    batches = patch_loader(
        dataset,
        batch_size=per_rank,
        seed=cfg.train.seed,
        start_sample=step * per_rank,
        rank=ddp.rank,
        world_size=ddp.world_size,
        num_workers=dc.num_workers,
        device_type=device.type,
        plain_hr=discriminator_sees_plain_hr(cfg),
    )
    return batches, on_device


def discriminator_sees_plain_hr(cfg: Config) -> bool:
    """Whether the batches carry a third image, the HR before the unsharp mask, for D to see as real: in the GAN
    stage on the realesrgan degradation with `usm_weight` > 0. As Real-ESRGAN (l1_gt_usm and percep_gt_usm on,
    gan_gt_usm off): L1 and the perceptual loss pull G towards the sharpened HR, D learns what real photographs
    look like."""
    return (
        cfg.train.stage == "gan"
        and cfg.data.degradation == "realesrgan"
        and cfg.data.lr_dir is None
        and cfg.data.realesrgan.usm_weight > 0
    )


def pair_pool_size(cfg: Config) -> int:
    """data.realesrgan.pool_size resolved: how many pairs the training pair pool holds over all processes (0 = no
    pool: it exists for the realesrgan degradation, whose batches share their resize scales and modes)."""
    if cfg.data.degradation != "realesrgan" or cfg.data.lr_dir is not None:
        return 0
    return cfg.data.pool_pairs


def _gather_ranks(t: Tensor) -> Tensor:
    """Every process's `t` concatenated in rank order (on NCCL, gloo: the tensor's own device)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def build_pair_pool(cfg: Config, ddp: _Dist) -> PairPool | None:
    size = pair_pool_size(cfg)
    if not size:
        return None
    gather = _gather_ranks if ddp.distributed and ddp.world_size > 1 else None
    return PairPool(size, cfg.train.seed, rank=ddp.rank, gather=gather, channels_last=cfg.train.channels_last)


def checkpoint_state(
    cfg: Config,
    nets: Nets,
    opts: Optimizers,
    progress: Progress,
    ddp: _Dist,
    perceptual: str | None,
    pool: PairPool | None = None,
) -> dict[str, Any]:
    """Everything that influences the next step, as tensors and plain containers (weights_only-loadable)."""
    per_rank = cfg.data.batch_size // ddp.world_size
    sd = lambda m: m.state_dict() if m is not None else None  # noqa: E731
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "stage": cfg.train.stage,
        "step": progress.step,
        "data_position": {"samples_per_rank": progress.step * per_rank, "world_size": ddp.world_size},
        "best_psnr": progress.best_psnr,
        "elapsed_s": progress.elapsed_s,
        "config": config_to_yaml(cfg),
        # the run folder as an absolute path: a relative output_dir ("runs", every shipped config) names another
        # folder from another directory (check_resume_into); absent in checkpoints of earlier releases
        "run_folder": str(Path(cfg.run_dir).expanduser().resolve()),
        "model_config": nets.g.config.to_dict(),
        "model_arch": arch_name(nets.g.config),  # absent in checkpoints of earlier releases: RRDBNet
        "perceptual_weights": perceptual,
        "generator": nets.g.state_dict(),
        "generator_ema": sd(nets.g_ema),
        "discriminator": sd(nets.d),
        "optim_g": opts.opt_g.state_dict(),
        "optim_d": sd(opts.opt_d),
        "sched_g": scheduler_state(opts.sched_g),
        "sched_d": scheduler_state(opts.sched_d) if opts.sched_d is not None else None,
        "scaler_g": opts.scaler_g.state_dict(),
        "scaler_d": sd(opts.scaler_d),
        "rng": rng_state(),
        # Real-ESRGAN's training pair pool (uint8; under DDP every rank holds the same, all ranks' pairs)
        "pair_pool": pool.state_dict() if pool is not None else None,
    }


def scheduler_state(sched: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The schedule's state with MultiStepLR's milestones (a collections.Counter) as a plain dict: torch before 2.4
    refuses a Counter in weights_only loading ("Unsupported class collections.Counter"), so every checkpoint
    written with the paper's step schedule could not be resumed there."""
    state = sched.state_dict()
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = dict(state["milestones"])
    return state


def load_scheduler_state(sched: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> None:
    """Inverse of scheduler_state (a Counter from older checkpoints passes as it is)."""
    if isinstance(sched, torch.optim.lr_scheduler.MultiStepLR) and isinstance(state.get("milestones"), dict):
        state = {**state, "milestones": Counter(state["milestones"])}
    sched.load_state_dict(state)


RESUME_FREE = (
    "name",
    "output_dir",
    "train.total_steps",
    "train.time_budget_minutes",
    "train.threads",
    "train.max_nonfinite_steps",
    "data.num_workers",
    "data.cache_max_mb",
    "checkpoint.",
    "validation.",
    "logging.",
)
"""Config keys a resume may change without a word: how long and how it runs, what it logs and keeps."""


def config_changes(saved: object, cfg: Config) -> str:
    """What differs between the config a checkpoint recorded and the one it is resumed with, beyond RESUME_FREE, in
    one line ("" if nothing): a changed learning rate or schedule has no effect (the optimizers and schedulers come
    back as saved, and config.yaml then records values the run does not use), and other changes end the run's
    exact continuation. A review found them all accepted without a word."""
    if not isinstance(saved, str):
        return ""
    try:
        old = yaml.safe_load(saved)
    except yaml.YAMLError:
        return ""
    new = yaml.safe_load(config_to_yaml(cfg))

    def flat(tree: object, prefix: str = "") -> dict[str, object]:
        if not isinstance(tree, dict):
            return {prefix.rstrip("."): tree}
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out

    before, after = flat(old), flat(new)
    parts = []
    for key in sorted(set(before) & set(after)):  # a key an older release did not record is no change
        if key.startswith(RESUME_FREE) or before[key] == after[key]:
            continue
        effect = (
            " (no effect: the optimizers and schedules continue as saved)"
            if key.startswith(("optim.lr", "schedule."))
            else ""
        )
        parts.append(f"{key} {before[key]!r} -> {after[key]!r}{effect}")
    if not parts:
        return ""
    return "; ".join(parts) + ": the run no longer continues exactly as it began"


def restore_state(
    path: Path,
    nets: Nets,
    opts: Optimizers,
    pool: PairPool | None = None,
    config: Config | None = None,
    into: Path | None = None,
) -> Progress:
    """Load a checkpoint into the built run; the RNG states come back last. A checkpoint whose format and version
    are right but whose contents are not what train wrote (a missing entry, a tensor of another shape, a value of
    another type: a crafted or damaged file) is one CheckpointError naming the file, not a traceback. With
    `config` (the one resumed with), a warning names what differs from the config the checkpoint recorded. With
    `into` (the run folder of a `--resume PATH`), a checkpoint of another run is refused (check_resume_into)."""
    try:
        return _restore_state(path, nets, opts, pool, config, into)
    except EsrganError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        what = f"missing entry {first}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {first}"
        raise CheckpointError(f"{path}: not a checkpoint this run can resume from ({what})") from None


def _restore_state(
    path: Path, nets: Nets, opts: Optimizers, pool: PairPool | None, config: Config | None, into: Path | None
) -> Progress:
    state = load_checkpoint(path)
    if into is not None:
        check_resume_into(into, path, state)
    if config is not None and (changed := config_changes(state.get("config"), config)):
        log.warning("resuming with a changed config: %s", changed)
    recorded = checkpoint_generator(path, state)
    if recorded != nets.g.config:
        raise CheckpointError(
            f"{path}: its generator differs from the config's model section ({model_differences(recorded, nets.g.config)})"
        )
    nets.g.load_state_dict(state["generator"])
    opts.opt_g.load_state_dict(state["optim_g"])
    load_scheduler_state(opts.sched_g, state["sched_g"])
    opts.scaler_g.load_state_dict(state["scaler_g"])
    if nets.g_ema is not None:
        if state.get("generator_ema") is None:
            raise CheckpointError(f"{path}: has no EMA generator but train.ema_decay is set")
        nets.g_ema.load_state_dict(state["generator_ema"])
    if nets.d is not None:
        if state.get("discriminator") is None:
            raise CheckpointError(f"{path}: a {state.get('stage')} stage checkpoint; this is the gan stage")
        assert opts.opt_d is not None and opts.sched_d is not None and opts.scaler_d is not None
        try:
            nets.d.load_state_dict(state["discriminator"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: its discriminator is not the config's (model.discriminator, d_num_feat): "
                f"{_load_error(exc)}"
            ) from None
        opts.opt_d.load_state_dict(state["optim_d"])
        load_scheduler_state(opts.sched_d, state["sched_d"])
        opts.scaler_d.load_state_dict(state["scaler_d"])
    if pool is None and state.get("pair_pool") is not None:
        log.warning("%s: its training pair pool is not used (data.realesrgan.pool_size is 0 here)", path)
    if pool is not None and not pool.load_state_dict(state.get("pair_pool")):
        # written without a pool or with another pool size (auto follows data.batch_size): resumes, not exactly
        log.warning("%s: holds no training pair pool of %d pairs: the pool refills", path, pool.size)
    set_rng_state(state["rng"])
    return Progress(int(state["step"]), float(state["best_psnr"]), float(state.get("elapsed_s", 0.0)))


def budget_lr(cfg: Config, base_lr: float, fraction: float) -> float:
    """The learning rate after `fraction` of the time budget: the cosine (or constant) schedule in time, not steps."""
    if cfg.schedule.kind == "constant":
        return base_lr
    f = min(max(fraction, 0.0), 1.0)
    return cfg.schedule.eta_min + (base_lr - cfg.schedule.eta_min) * 0.5 * (1.0 + math.cos(math.pi * f))


def train_step(
    cfg: Config,
    nets: Nets,
    opts: Optimizers,
    lr_img: Tensor,
    hr_img: Tensor,
    autocast: Autocast,
    step: int,
    hr_real: Tensor | None = None,
) -> dict[str, float] | None:
    """One iteration: G's update, D's update (GAN stage), the EMA. None when a loss was NaN/Inf (step skipped).
    `hr_real`: the HR shown to D as real when it is not the target (the unsharpened HR: discriminator_sees_plain_hr)."""
    g_out = generator_step(
        nets.g_train,
        lr_img,
        hr_img,
        optimizer=opts.opt_g,
        scaler=opts.scaler_g,
        weights=cfg.losses,
        autocast=autocast,
        vgg=nets.vgg,
        d=nets.d,
        layer_weights=cfg.perceptual.layer_weights,
        hr_real=hr_real,
    )
    if g_out is None:
        return None
    d_logs: dict[str, float] | None = {}
    if nets.d_train is not None:
        assert opts.opt_d is not None and opts.scaler_d is not None
        d_logs = discriminator_step(
            nets.d_train,
            hr_img if hr_real is None else hr_real,
            g_out[1],
            optimizer=opts.opt_d,
            scaler=opts.scaler_d,
            reduction=cfg.losses.gan_reduction,
            autocast=autocast,
            gan_type=cfg.losses.gan_type,
        )
    if d_logs is None:
        return None
    if nets.g_ema is not None:
        ema_update(nets.g_ema, nets.g, ema_decay(cfg.train, step))
    return {**g_out[0], **d_logs}


def device_step(
    cfg: Config,
    nets: Nets,
    opts: Optimizers,
    lr_img: Tensor,
    hr_img: Tensor,
    autocast: Autocast,
    hr_real: Tensor | None = None,
) -> dict[str, Tensor]:
    """train_step without one host synchronisation, as CUDA graph capture needs it (GraphedStep).

    Gradients must be None on entry (the caller zeroes them). A NaN/Inf loss skips the update on the device
    through fused Adam's found_inf (as GradScaler does): parameters and Adam's state stay as the eager step's skip
    leaves them; a non-finite G loss skips D's update too. The losses stay 0-d float tensors on the device, with
    "ok" = 1.0 where the step was applied. Needs fused Adam and no grad scaler (not fp16). The EMA is the caller's.
    """
    terms, total, sr = generator_losses(
        nets.g_train,
        lr_img,
        hr_img,
        weights=cfg.losses,
        autocast=autocast,
        vgg=nets.vgg,
        d=nets.d,
        layer_weights=cfg.perceptual.layer_weights,
        hr_real=hr_real,
    )
    ok = torch.isfinite(total.detach())
    total.backward()
    _step_unless(opts.opt_g, ok)
    out = {**terms, "l_g_total": total}
    if nets.d_train is not None:
        assert opts.opt_d is not None
        loss, logits = discriminator_losses(
            nets.d_train,
            hr_img if hr_real is None else hr_real,
            sr.detach(),
            reduction=cfg.losses.gan_reduction,
            autocast=autocast,
            gan_type=cfg.losses.gan_type,
        )
        ok = ok & torch.isfinite(loss.detach())
        loss.backward()
        _step_unless(opts.opt_d, ok)
        out.update({"l_d": loss, **logits})
    result = {name: value.detach().float().reshape(()) for name, value in out.items()}
    result["ok"] = ok.float()
    return result


def _step_unless(optimizer: torch.optim.Optimizer, ok: Tensor) -> None:
    """optimizer.step(), skipped on the device where ok is False (fused Adam reads found_inf, as under GradScaler)."""
    if not optimizer.defaults.get("fused"):
        raise TrainingError("the synchronisation-free step needs fused Adam")
    optimizer.found_inf = (~ok).float()  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def use_cuda_graph(cfg: Config, device: torch.device, distributed: bool) -> bool:
    """train.cuda_graph resolved: auto = on a CUDA device, not under torchrun, in bf16 or fp32. With train.compile
    the compiled G is captured too (it compiles during the eager warm-up steps)."""
    setting = cfg.train.cuda_graph
    why_not = (
        "it needs a CUDA device"
        if device.type != "cuda"
        else "fp16's grad scaler is not captured (use bf16)"
        if cfg.train.precision == "fp16"
        else "it does not run under torchrun (DDP)"
        if distributed
        else None
    )
    if setting is True and why_not:
        raise ConfigError(f"train.cuda_graph: {why_not}")
    return setting is not False and why_not is None


class GraphedStep:
    """The training iteration as one CUDA graph, recorded once and replayed at every step.

    Eager PyTorch launches the paper's RRDBNet step (23 blocks, ~3,500 kernels forward, backward and Adam) one kernel
    at a time from Python: on an H200 that took ~100 ms a step while the GPU computed for ~15 (9-10 it/s whatever
    the precision, 2 % of it waiting for data: bench/gpu.py). Replaying a graph costs one launch. The first WARMUP
    steps run eagerly on a side stream (cuDNN's autotuning, Adam's state, the allocator: PyTorch's recipe for
    whole-network capture); the next is captured with the optimiser's learning rates as device tensors (refreshed
    from the schedule before each replay) and then replayed. Each step syncs once, to read the losses and whether
    the update was applied (device_step), and the EMA follows on the host side as in train_step. A capture that
    fails logs one line and training goes on eagerly. On a CPU (tests) every step is device_step run eagerly.
    """

    WARMUP = 3

    def __init__(
        self, cfg: Config, nets: Nets, opts: Optimizers, device: torch.device, autocast: Autocast
    ) -> None:
        self.cfg, self.nets, self.opts, self.device, self.autocast = cfg, nets, opts, device, autocast
        self.optimizers = [o for o in (opts.opt_g, opts.opt_d) if o is not None]
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self.side: Any = None  # the warm-up steps' torch.cuda.Stream
        self.failed = False
        self.eager_steps = 0
        self.replays = 0
        self.inputs: tuple[Tensor, ...] | None = None  # the graph's static input buffers (LR, HR[, plain HR])
        self.outputs: dict[str, Tensor] = {}
        self.lrs: list[
            tuple[dict[str, Any], Tensor, float]
        ] = []  # (param group, device lr, value last written)

    def _zero(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _eager(self, lr_img: Tensor, hr_img: Tensor, hr_real: Tensor | None) -> dict[str, Tensor]:
        self._zero()
        if self.device.type != "cuda":
            return device_step(self.cfg, self.nets, self.opts, lr_img, hr_img, self.autocast, hr_real)
        if self.failed:  # no capture to come: the main stream, as train_step
            return device_step(self.cfg, self.nets, self.opts, lr_img, hr_img, self.autocast, hr_real)
        main = torch.cuda.current_stream(self.device)
        if (
            self.side is None
        ):  # one for all warm-up steps: the allocator reuses a block on its own stream only
            self.side = torch.cuda.Stream(self.device)
        side = self.side
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = device_step(self.cfg, self.nets, self.opts, lr_img, hr_img, self.autocast, hr_real)
        main.wait_stream(side)
        return out

    def _capture(self, images: tuple[Tensor, ...]) -> None:
        self.inputs = tuple(t.clone() for t in images)  # clone keeps the memory format (channels-last)
        self._zero()  # backward inside the capture then allocates the gradients from the graph's pool
        groups = [grp for opt in self.optimizers for grp in opt.param_groups]
        saved = [(grp["lr"], grp.get("capturable", False)) for grp in groups]
        lrs = [torch.tensor(float(grp["lr"]), dtype=torch.float32, device=self.device) for grp in groups]
        graph = torch.cuda.CUDAGraph()
        try:
            for grp, lr in zip(groups, lrs, strict=True):
                grp["lr"], grp["capturable"] = lr, True
            # thread_local: the DataLoader's pin-memory thread goes on allocating page-locked buffers meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                lr_in, hr_in, *real_in = self.inputs
                self.outputs = device_step(
                    self.cfg, self.nets, self.opts, lr_in, hr_in, self.autocast, *real_in
                )
        finally:
            for grp, (lr_value, capturable) in zip(groups, saved, strict=True):
                grp["lr"], grp["capturable"] = lr_value, capturable
        self.lrs = [(grp, lr, float(grp["lr"])) for grp, lr in zip(groups, lrs, strict=True)]
        self.graph = graph

    def __call__(
        self, lr_img: Tensor, hr_img: Tensor, step: int, hr_real: Tensor | None = None
    ) -> dict[str, float] | None:
        """One training step (as train_step: the logs, or None when a NaN/Inf loss skipped the update)."""
        images = (lr_img, hr_img) if hr_real is None else (lr_img, hr_img, hr_real)
        out = None
        if self.device.type == "cuda" and not self.failed and self.eager_steps >= self.WARMUP:
            if self.graph is None:
                try:
                    self._capture(images)
                except RuntimeError as exc:
                    self.failed, self.graph = True, None
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    log.warning("CUDA graph capture failed (%s): training goes on without graphs", first)
            if self.graph is not None:
                assert self.inputs is not None and len(self.inputs) == len(images)
                for buffer, image in zip(self.inputs, images, strict=True):
                    buffer.copy_(image, non_blocking=True)
                for k, (grp, lr, written) in enumerate(self.lrs):
                    if float(grp["lr"]) != written:  # the schedule moved: one tiny fill, no re-capture
                        lr.fill_(float(grp["lr"]))
                        self.lrs[k] = (grp, lr, float(grp["lr"]))
                self.graph.replay()
                self.replays += 1
                out = self.outputs
        if out is None:
            self.eager_steps += 1
            out = self._eager(lr_img, hr_img, hr_real)
        names = list(out)
        values = torch.stack([out[name] for name in names]).tolist()  # the step's one host synchronisation
        logs = dict(zip(names, values, strict=True))
        if not logs.pop("ok"):
            return None
        if self.nets.g_ema is not None:
            ema_update(self.nets.g_ema, self.nets.g, ema_decay(self.cfg.train, step))
        return logs


# --- the loop ---------------------------------------------------------------------------------------------------
@_holding_the_run_folder
def train(
    config: Config,
    *,
    resume: bool | str | Path = False,
    vgg_weights: str | None = None,
    stop_at_step: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    started: float | None = None,
) -> TrainResult:
    """Train one stage as `config` says. `resume`: True = latest checkpoint of the run folder, or a path.

    `stop_at_step` ends this invocation early (with a checkpoint) at that step, as a signal would. `clock` is the
    time source of train.time_budget_minutes (seconds; tests pass a scripted one); `started` a reading of it taken
    earlier (the CLI passes its own start, so the budget covers importing torch too).
    """
    t_start = clock() if started is None else started
    cfg = copy.deepcopy(config)
    if vgg_weights:
        cfg.perceptual.weights = vgg_weights  # so the resolved config in the run folder says what was used
    device_kind = (
        "cuda"
        if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    ddp = _init_distributed(device_kind)
    # every rank joins the process group first, then checks what it was given: a rank that failed before joining
    # left the others of a many-node run waiting for it (torch's 30-minute timeout); now all ranks stop together
    failure: EsrganError | OSError | None = None
    try:
        if ddp.main:  # the process that writes the run holds its folder (a second train of it is refused)
            _hold_run_folder(cfg.run_dir)
        scale = cfg.model.scale
        if not cfg.data.hr_dir:
            raise ConfigError("data.hr_dir: the training image folder is required")
        # the image folders exist and hold images, before anything is written or decoded (a missing validation.dir
        # was found after the whole training set had been decoded, with the run folder already made)
        for key, folder in (
            ("data.hr_dir", cfg.data.hr_dir),
            ("data.lr_dir", cfg.data.lr_dir),
            ("validation.dir", cfg.validation.dir),
        ):
            if folder:  # the key named: a shipped config's validation.dir (datasets/Set14) read as the data's
                try:
                    list_images(folder)
                except ConfigError as exc:
                    relative = not Path(folder).expanduser().is_absolute()
                    where = f" (relative to {Path.cwd()}, where esrgan runs)" if relative else ""
                    raise ConfigError(f"{key}: {exc}{where}") from None
        # before anything is written: a fresh run must not overwrite another, a resume needs a checkpoint
        resume_path: Path | None = None
        # what an earlier start left before its first checkpoint: replaced by this one
        replaced: list[Path] = []
        if resume is True:
            resume_path = latest_checkpoint(cfg.run_dir)
        elif resume:
            resume_path = Path(resume)
            if not resume_path.exists():
                raise CheckpointError(f"{resume_path}: checkpoint not found")
            # one of another run's checkpoints into a folder holding a run is refused once it is loaded
            # (restore_state)
            if not in_run_folder(cfg.run_dir, resume_path) and held_run(cfg.run_dir) is None:
                replaced = earlier_start_files(cfg.run_dir)  # the run continues here, in place of that start
        else:
            replaced = check_fresh_run_dir(cfg.run_dir)

        # VGG weights first: a missing file must stop us before any data is read or any step is taken
        vgg_path: Path | None = None
        vgg_random = False
        if cfg.train.stage == "gan" and cfg.losses.perceptual_weight:
            from .zoo import RANDOM, resolve_vgg_weights

            spec = cfg.perceptual.weights
            vgg_path = resolve_vgg_weights(spec, download=cfg.perceptual.download)
            vgg_random = spec == RANDOM
        perceptual = "random" if vgg_random else (str(vgg_path) if vgg_path else None)

        device = _device(cfg.train.device, ddp)
        asked = cfg.train.precision
        cfg.train.precision = resolve_train_precision(asked, device, cfg.data.bit_depth)  # type: ignore[assignment]
        if cfg.data.bit_depth == 16 and ddp.main:
            if cfg.train.precision in ("bf16", "fp16"):
                log.warning(
                    "data.bit_depth 16 with train.precision %s: the network computes with %d significant bits, "
                    "fewer than the data's 16 (train.precision fp32, or auto, keeps them)",
                    cfg.train.precision,
                    8 if cfg.train.precision == "bf16" else 11,
                )
            elif asked == "auto":
                log.info("data.bit_depth 16: train.precision auto is fp32 (bf16 and fp16 hold fewer bits)")
        if cfg.data.bit_depth == 16 and cfg.train.precision == "fp32":
            # IEEE fp32 convolutions for the whole run on CUDA, validation included: torch's default lets cuDNN
            # compute fp32 convolutions in TF32 (10 bits of each input's mantissa); the setting is put back at the end
            _HOLD.get().enter_context(ieee_fp32(device))
        autocast = make_autocast(device, cfg.train.precision)
        graphed = use_cuda_graph(cfg, device, ddp.distributed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark  # every batch has the same shapes
        if cfg.data.batch_size % ddp.world_size:
            raise ConfigError(
                f"data.batch_size {cfg.data.batch_size} is not divisible by {ddp.world_size} processes"
            )
    except (EsrganError, OSError) as exc:
        failure = exc
    try:
        _all_ranks_ready(ddp, failure, device_kind)
    except (EsrganError, OSError):
        _leave_group(ddp)  # every rank stops here together
        raise

    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    nets = build_nets(cfg, device, ddp, vgg_path, compile_g=cfg.train.compile)
    opts = build_optimizers(cfg, nets, device)
    progress = Progress()
    pool = build_pair_pool(cfg, ddp)
    if resume_path is not None:
        # a refused checkpoint leaves the run folder as it was; rank 0 says what the config changed
        into = run_dir if resume is not True else None  # --resume PATH: the checkpoint may be another run's
        progress = restore_state(resume_path, nets, opts, pool, cfg if ddp.main else None, into)
        if ddp.main:
            log.info("resumed from %s at step %d", resume_path, progress.step)
    if ddp.main:
        try:
            if replaced:
                log.warning(
                    "%s: an earlier start of this run stopped before its first checkpoint; %s (replacing its %s)",
                    run_dir,
                    "starting over" if resume_path is None else f"continuing from {resume_path} instead",
                    _described(replaced),
                )
                for old in replaced:
                    old.unlink(missing_ok=True)
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "samples").mkdir(exist_ok=True)
            atomic_write_bytes(run_dir / "config.yaml", config_to_yaml(cfg).encode(), overwrite=True)
        except OSError as exc:  # read-only or full disk: say so before any work
            raise TrainingError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc})") from None
        # temporary files of saves that a kill -9 interrupted (esrgan.atomic names them .<name>.<random>.part)
        for stale in ckpt_dir.glob(".*.ckpt.*.part"):
            stale.unlink(missing_ok=True)
    batches, on_device = build_batches(cfg, ddp, device, progress.step)
    step_graph = (
        GraphedStep(cfg, nets, opts, device, make_autocast(device, cfg.train.precision, cache=False))
        if graphed
        else None
    )
    val_items = (
        _load_validation(
            cfg.validation.dir,
            scale,
            cfg.validation.max_images,
            cfg.data.realesrgan if cfg.validation.lr == "realesrgan" else None,
            cfg.model.num_in_ch,
            cfg.data.bit_depth,
            cfg.data.value_range,
        )
        if cfg.validation.dir and ddp.main
        else []
    )

    jsonl = _JsonlLog(run_dir / "log.jsonl" if ddp.main else None)
    board = _tensorboard(run_dir, cfg.logging.tensorboard) if ddp.main else None
    if vgg_random and ddp.main:
        log.warning("TRAINING WITH A RANDOM VGG19 (perceptual.weights: random): for smoke tests only")
    if cfg.model.num_in_ch == 1 and ddp.main:
        log.info(
            "a grey model (model.num_in_ch 1): colour training and validation images are read as their luma"
        )
    if cfg.train.stage == "gan" and not cfg.train.pretrained_g and resume_path is None and ddp.main:
        # the paper (and Real-ESRGAN) start the GAN stage from the PSNR-oriented model; from random weights the
        # discriminator wins early and the generator learns artefacts (the recipe's "training from scratch fails")
        log.warning(
            "train.stage is gan but train.pretrained_g is not set: the generator starts from random weights, "
            "where the paper starts stage 2 from stage 1's model; train stage 1 first and name its "
            "model.safetensors in train.pretrained_g"
        )
    jsonl.write(
        {
            "event": "resume" if resume else "start",
            "step": progress.step,
            "time": time.time(),
            "world_size": ddp.world_size,
            "distributed": ddp.distributed,  # in a process group (DDP), also with one process under torchrun
            "device": str(device),
            "lr_on_device": on_device,
            "cuda_graph": graphed,
            "perceptual_weights": perceptual,  # null where no VGG19 is used (the PSNR stage, a zero weight)
            "pretrained_g": cfg.train.pretrained_g if resume_path is None else None,
            "pair_pool": pool.size if pool is not None else 0,
        }
    )

    def save_step_checkpoint() -> Path:
        state = checkpoint_state(cfg, nets, opts, progress, ddp, perceptual, pool)
        path = save_checkpoint(ckpt_dir / f"step_{progress.step:08d}.ckpt", state)
        for old in step_checkpoints(ckpt_dir)[: -cfg.checkpoint.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def cannot_write(exc: OSError) -> None:
        """A log line or sample grid that cannot be written (a full disk, a folder made read-only): the run
        stops in one line naming the file, with a checkpoint of the steps made where one still fits (before: a bare
        "No space left on device", the steps since the last checkpoint lost without a word)."""
        saved = step_checkpoints(ckpt_dir)
        last = saved[-1] if saved else None
        if ddp.main and progress.step > 0 and (last is None or last.name != f"step_{progress.step:08d}.ckpt"):
            with contextlib.suppress(EsrganError, OSError):
                last = save_step_checkpoint()
        raise TrainingError(
            f"{exc.filename}: cannot write ({exc.strerror}); stopped at step {progress.step}"
            + (
                f" (checkpoint {last}): free space or fix the folder, then continue with --resume"
                if last is not None
                else ", before its first checkpoint: free space or fix the folder, then start the run again"
            )
        ) from None

    jsonl.on_failure = cannot_write

    total = cfg.train.total_steps
    end = min(total, stop_at_step) if stop_at_step is not None else total
    budget_s = cfg.train.time_budget_minutes * 60.0
    elapsed_before = (
        progress.elapsed_s
    )  # earlier invocations' time (this one's, setup included, is added below)
    reserve_s = 0.0  # what finishing needs (last validation + checkpoint): the budget stops that much earlier
    step_s = 0.0  # recent seconds per step: the run stops when half a step more would pass the budget
    last_ckpt: Path | None = None
    nonfinite = 0
    interrupted = budget_done = False
    stopped_by: int | None = None  # the signal that stopped any rank
    bar = None
    if ddp.main and cfg.logging.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=None if budget_s else total,
            initial=progress.step,
            unit="it",
            dynamic_ncols=True,
            desc=cfg.train.stage,
        )
    t_last, step_last, wait_s = time.perf_counter(), progress.step, 0.0
    first_step = progress.step + 1
    base_lrs = [
        (opt, [grp["initial_lr"] if "initial_lr" in grp else grp["lr"] for grp in opt.param_groups])
        for opt in (opts.opt_g, opts.opt_d)
        if opt is not None
    ]

    flag_device = reduce_device(device)
    with _StopSignal() as stop, _other_ranks_watched(ddp, progress):
        while progress.step < end:
            if budget_s:
                # the learning rate follows the time spent, so a slow start cannot cut the schedule short (the time
                # all ranks agreed on after the last step: their own clocks gave each rank its own rate)
                fraction = progress.elapsed_s / budget_s
                for opt, bases in base_lrs:
                    for grp, base in zip(opt.param_groups, bases, strict=True):
                        grp["lr"] = budget_lr(cfg, base, fraction)
            t_wait, t_step = time.perf_counter(), clock()
            try:
                batch = next(batches)
            except ImageError as exc:
                # a training image that cannot be read: in per-sample mode (data too large for cache_max_mb) only
                # the headers were checked up front, so a corrupt file shows only when it is drawn. Save the steps
                # made, then stop in one line naming the file (a worker's copy of the error carries its traceback).
                last_ckpt = save_step_checkpoint() if ddp.main and progress.step > 0 else last_ckpt
                raise TrainingError(
                    f"{_original_error(exc)}; stopped at step {progress.step}"
                    + (f" (checkpoint {last_ckpt})" if last_ckpt is not None else "")
                    + (
                        ": replace or remove the file, then continue with --resume"
                        if progress.step > 0
                        else ", before its first checkpoint: replace or remove the file, then start the run "
                        "again (it starts over)"
                    )
                ) from None
            except (RuntimeError, OSError, EOFError):
                # the workers ignore SIGINT (data._worker_init), but a SIGTERM to the process group, or a kill
                # aimed at them, can still lose the batch being fetched (its shared-memory handle fails to
                # arrive): after a stop request, save what we have instead of crashing
                if stop.signum is None:
                    raise
                break
            lr_img, hr_img, *plain = batch_to_device(
                batch,
                device,
                lr_on_device=on_device,
                scale=scale,
                channels_last=cfg.train.channels_last,
                plain_hr=discriminator_sees_plain_hr(cfg),
            )
            if pool is not None:
                lr_img, hr_img, *plain = pool((lr_img, hr_img, *plain), progress.step + 1)
            hr_real = plain[0] if plain else None
            wait_s += time.perf_counter() - t_wait
            if step_graph is not None:
                logs = step_graph(lr_img, hr_img, progress.step + 1, hr_real)
            else:
                logs = train_step(cfg, nets, opts, lr_img, hr_img, autocast, progress.step + 1, hr_real)
            progress.step += 1
            step = progress.step
            if not budget_s:
                opts.sched_g.step()
                if opts.sched_d is not None:
                    opts.sched_d.step()
            now_c = clock()
            # one time, stop signal and reserve for all ranks (the slowest clock's, rank 0's reserve): they decide
            # the learning rate, the end of the budget and how the run ended alike
            stopped_by, (progress.elapsed_s, took, reserve_s) = stop.agree(
                [elapsed_before + now_c - t_start, now_c - t_step, reserve_s], flag_device
            )
            step_s = took if not step_s else 0.8 * step_s + 0.2 * took
            budget_done = bool(budget_s) and progress.elapsed_s + reserve_s + 0.5 * step_s >= budget_s
            # a budgeted run validates and saves once at its first step (of each invocation) too: that measures
            # the reserve
            first_budget_step = bool(budget_s) and step == first_step and not budget_done
            if logs is None:
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
                logs = {}
            else:
                nonfinite = 0
            finishing = budget_done or step == total
            logged = step % cfg.logging.every == 0 or step == end or finishing
            if (
                logged and ddp.distributed
            ):  # the whole batch's losses, not rank 0's share (every rank takes part)
                logs = mean_over_ranks(logs, flag_device)
            if ddp.main:
                if bar is not None:
                    bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in logs.items() if k in ("l_pix", "l_g_total", "l_d")},
                        refresh=False,
                    )
                    bar.update()
                if logged:
                    now = time.perf_counter()
                    span = max(now - t_last, 1e-9)
                    record = {
                        "step": step,
                        "lr_g": opts.opt_g.param_groups[0]["lr"],
                        "it_per_s": (step - step_last) / span,
                        "data_wait": wait_s / span,  # share of the wall time spent waiting for the next batch
                        "elapsed_s": progress.elapsed_s,
                        **logs,
                    }
                    if device.type == "cuda":
                        record["gpu_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                    t_last, step_last, wait_s = now, step, 0.0
                    jsonl.write(record)
                    if board is not None:
                        for k, v in record.items():
                            if k != "step":
                                board.add_scalar(f"train/{k}", v, step)
                if val_items and (step % cfg.validation.every == 0 or finishing or first_budget_step):
                    t_val = clock()
                    model = nets.g_ema if nets.g_ema is not None else nets.g
                    vpsnr, vssim, outputs = evaluate_generator(model, val_items, scale=scale, device=device)
                    jsonl.write({"step": step, "val_psnr": vpsnr, "val_ssim": vssim})
                    if board is not None:
                        board.add_scalar("val/psnr", vpsnr, step)
                        board.add_scalar("val/ssim", vssim, step)
                    grid = run_dir / "samples" / f"step_{step:08d}.png"
                    try:
                        save_sample_grid(
                            grid,
                            val_items[: cfg.validation.samples],
                            outputs,
                            scale=scale,
                            crop=cfg.validation.sample_crop,
                        )
                    except OSError as exc:
                        cannot_write(OSError(exc.errno, exc.strerror or str(exc), str(grid)))
                    msg = f"step {step}: validation Y-PSNR {vpsnr:.3f} dB, SSIM {vssim:.4f}"
                    if bar is not None:
                        bar.write(msg)
                    else:
                        log.info(msg)
                    if vpsnr > progress.best_psnr:
                        progress.best_psnr = vpsnr
                        if cfg.checkpoint.keep_best:
                            save_checkpoint(
                                ckpt_dir / "best.ckpt",
                                checkpoint_state(cfg, nets, opts, progress, ddp, perceptual, pool),
                            )
                    reserve_s = clock() - t_val
                if (step % cfg.checkpoint.every == 0 or first_budget_step) and not finishing:
                    t_ckpt = clock()
                    last_ckpt = save_step_checkpoint()
                    reserve_s += clock() - t_ckpt
            if stopped_by is not None or budget_done:
                interrupted = stopped_by is not None or not budget_done
                break
        if progress.step < total and not budget_done:
            interrupted = True
    if bar is not None:
        bar.close()

    progress.elapsed_s = elapsed_before + clock() - t_start  # the final validation included
    if ddp.main and (last_ckpt is None or not last_ckpt.name.endswith(f"{progress.step:08d}.ckpt")):
        last_ckpt = save_step_checkpoint()
    final = nets.g_ema if nets.g_ema is not None else nets.g
    model_path = None
    if ddp.main and not interrupted:
        # save_model was imported with this module: a late import here would fail after the last step if the
        # package were upgraded (or its source edited) during the run, and lose this export (session 12 lost one)
        meta = {
            "esrgan.training": json.dumps(
                {
                    "stage": cfg.train.stage,
                    "step": progress.step,
                    "name": cfg.name,
                    "ema": bool(nets.g_ema is not None),
                    "best_val_psnr": progress.best_psnr if math.isfinite(progress.best_psnr) else None,
                    "elapsed_s": round(progress.elapsed_s, 1),
                }
            ),
        }
        if cfg.train.stage == "gan":
            # what the perceptual loss compared features with: a GAN stage without it (the CPU recipe's VGG=none)
            # said "vgg19-imagenet" although no VGG19 was read
            meta["esrgan.perceptual_weights"] = (
                "random" if vgg_random else "vgg19-imagenet" if vgg_path else "none"
            )
        model_path = save_model(run_dir / "model.safetensors", final, metadata=meta, overwrite=True)
        progress.elapsed_s = elapsed_before + clock() - t_start  # the export included
        if budget_s:
            log.info(
                "time budget of %.1f min spent: %d steps in %.1f min",
                budget_s / 60,
                progress.step,
                progress.elapsed_s / 60,
            )
    jsonl.write(
        {
            "event": "interrupted" if interrupted else "done",
            "step": progress.step,
            "time": time.time(),
            "elapsed_s": progress.elapsed_s,
            "budget_s": budget_s or None,
            # steps replayed from a CUDA graph (0 without one, or when its capture failed: see the log)
            "graph_steps": step_graph.replays if step_graph is not None else 0,
        }
    )
    if board is not None:
        board.close()
    stop.release_workers(batches)
    if ddp.distributed:
        dist.barrier()  # rank 0 has written everything before any rank returns
        _leave_group(ddp)
    return TrainResult(
        run_dir,
        progress.step,
        interrupted,
        last_ckpt,
        model_path,
        progress.best_psnr if math.isfinite(progress.best_psnr) else None,
        final,
        stopped_by if stopped_by is not None else stop.signum,
    )
