"""Every GPU measurement of the training and upscaling issues, in one command and one table.

Run from source on a machine with a CUDA GPU (no install needed; about 5-6 minutes on one H200):

    PYTHONPATH=src python3 bench/gpu.py                       # everything
    PYTHONPATH=src python3 bench/gpu.py --only train          # train | infer | batch | video
    PYTHONPATH=src python3 bench/gpu.py --model realesrgan-x4plus.fp16.safetensors

Training rows run the real `esrgan.train.train` loop (DataLoader workers, LR made on the device, EMA, logging) on
the paper's stage-1 / stage-2 configs (configs/esrgan_x4_*.yaml: RRDBNet 23 x 64, batch 16 of 128x128 patches) with
real photographs (scikit-image's samples) as data, and read it/s, the share of the wall time the loop waited for
data, and the peak GPU memory from the run's own log; TFLOP/s from torch's FLOP counter on one step. Stage 2 uses
an untrained VGG19 for the perceptual loss (ImageNet weights are not needed for speed). A DDP row runs the same
stage 1 under torchrun with one process (the many-GPU code path, NCCL), and a resume row checks that a run stopped
and resumed on the GPU continues as the straight run does.

Upscaling rows: the model alone (fp16 NCHW as Real-ESRGAN's inference does it, fp16 channels-last with
cudnn.benchmark, torch.compile), `Upscaler` on 512 and 1024 photos (numpy uint8 in and out), the batch command on
24 PNGs (PNG and JPEG output) against the rate the model alone allows, and bench/video.py's rows (frames/s). The
model is realesrgan-x4plus when its file is given or in the cache, else an RRDBNet of the same size with random
weights (same speed; the fp16-vs-fp32 PSNR column is then of the random model).

`--smoke` runs every row at toy sizes on whatever device there is (the CPU in CI): it checks the script, not speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))  # hostinfo, also when this file is loaded by path (tests)

from hostinfo import cpu_name  # noqa: E402

from esrgan.archs import Generator, build_generator  # noqa: E402
from esrgan.generator import RRDBNet  # noqa: E402

Row = dict[str, Any]


class Stopped(BaseException):  # not Exception: `guarded` must not turn it into a row's note
    """SIGTERM (bench/gpu_lease.sh's `timeout` for this part): no new row starts; what was measured is kept."""


STOP = {"requested": False}  # set by SIGTERM, also when it arrived inside train() (whose own handler took it)


def on_sigterm(signum: int, frame: object) -> None:
    STOP["requested"] = True
    raise Stopped


def run_train(cfg: Any, **options: Any) -> Any:
    """esrgan.train.train; a run that SIGTERM cut short (train's own handler took the signal, finished the step
    and saved) stops the bench after this row."""
    from esrgan.train import train

    result = train(cfg, **options)
    if result.interrupted and result.step < options.get("stop_at_step", math.inf):  # not the asked-for stop
        STOP["requested"] = True
    return result


def check_stop() -> None:
    """Between rows: a SIGTERM that train() handled (it finished the step and saved) stops the run here."""
    if STOP["requested"]:
        raise Stopped


def machine() -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{cpu_name()} ({os.cpu_count()} threads), torch {torch.__version__}, no GPU"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def photos(folder: Path, count: int, side: int | None = None) -> list[Path]:
    """Real photographs from scikit-image, cut or tiled to `side` if given, written as PNG."""
    import skimage.data as skdata
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = [
        skdata.astronaut(),
        skdata.coffee(),
        skdata.chelsea(),
        skdata.rocket(),
        skdata.immunohistochemistry(),
    ]
    out = []
    for i in range(count):
        img = sources[i % len(sources)]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, 2)
        if side is not None:
            reps = (math.ceil(side / img.shape[0]), math.ceil(side / img.shape[1]), 1)
            img = np.tile(img, reps)[:side, :side]  # a collage when the photo is smaller than side
            img = np.roll(img, i * 37, axis=(0, 1))  # no two inputs alike
        path = folder / f"photo_{i:02d}.png"
        Image.fromarray(np.ascontiguousarray(img[:, :, :3])).save(path)
        out.append(path)
    return out


def load_model(spec: str | None, smoke: bool) -> tuple[Generator, str]:
    """The model of the upscaling rows: `spec` (a name or a file of either architecture, e.g. Real-ESRGAN's compact
    realesr-animevideov3), else realesrgan-x4plus; with --smoke a tiny random RRDBNet unless a file is given."""
    if smoke and not (spec and Path(spec).is_file()):
        torch.manual_seed(0)
        return RRDBNet(num_feat=16, num_block=1, num_grow=8, scale=4).eval(), "tiny random RRDBNet (smoke)"
    from esrgan.zoo import load_model as load_any  # a name or a file

    try:
        return load_any(spec or "realesrgan-x4plus").eval(), str(spec or "realesrgan-x4plus")
    except Exception as exc:  # no file here (the GPU machine has no network): same size, random weights
        print(
            f"(model {spec or 'realesrgan-x4plus'} not available: {exc}; using random weights)",
            file=sys.stderr,
        )
        torch.manual_seed(0)
        return RRDBNet(scale=4).eval(), "RRDBNet 23x64 x4, random weights"


def macs_per_lr_pixel(cfg: Any) -> float:
    sys.path.insert(0, str(REPO / "bench"))
    from speed import macs_per_lr_pixel as macs  # bench/speed.py: one formula

    return float(macs(cfg))


# --- training --------------------------------------------------------------------------------------------------
SMOKE_SIZES = {"model.num_block": 1, "model.num_feat": 16, "model.num_grow": 8, "model.d_num_feat": 8,
               "data.batch_size": 2, "data.patch_size": 32, "data.num_workers": 1}  # fmt: skip


def run_settings(name: str, data: Path, out: Path, steps: int, smoke: bool, **sets: Any) -> dict[str, Any]:
    """`--set` overrides of one measured run: the data, no validation or periodic checkpoints, a few log lines;
    toy sizes with --smoke (in fp32: the CPU has no fp16 and may have no native bf16)."""
    settings = {"name": name, "output_dir": str(out), "data.hr_dir": str(data), "train.total_steps": steps,
                "validation.dir": None, "checkpoint.every": 10**9, "logging.every": max(steps // 4, 1),
                "logging.progress": False, **sets}  # fmt: skip
    if smoke:
        settings.update({**SMOKE_SIZES, "train.precision": "fp32", "train.channels_last": False})
    return settings


def build_config(config: str, settings: dict[str, Any]) -> Any:
    import yaml

    from esrgan.config import apply_overrides, config_from_dict

    raw = yaml.safe_load((REPO / "configs" / config).read_text())
    raw = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    return config_from_dict(raw, source=config)


def log_rates(run_dir: Path) -> tuple[float, float, float]:
    """Mean it/s, data-wait share and the peak GPU memory of a run's log records (the first, warm-up, left out)."""
    records = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = [r for r in records if "it_per_s" in r][1:]  # the first holds warm-up, capture and compile
    if not rates:  # a run cut short before its second log line: no steady rate to report
        return math.nan, math.nan, 0.0
    peak = max((r.get("gpu_peak_gb", 0.0) for r in rates), default=0.0)
    return (
        float(np.mean([r["it_per_s"] for r in rates])),
        float(np.mean([r["data_wait"] for r in rates])),
        peak,
    )


def train_row(
    label: str, config: str, sets: dict[str, Any], data: Path, out: Path, steps: int, smoke: bool
) -> Row:
    name = label.replace(" ", "_").replace(",", "")
    cfg = build_config(config, run_settings(name, data, out, steps, smoke, **sets))
    t0 = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run_train(cfg, vgg_weights="random" if cfg.train.stage == "gan" else None)
    wall = time.perf_counter() - t0
    it_s, wait, peak = log_rates(result.run_dir)
    records = [json.loads(x) for x in (result.run_dir / "log.jsonl").read_text().splitlines()]
    graphed = sum(r.get("graph_steps", 0) for r in records if r.get("event") in ("done", "interrupted"))
    note = f"{graphed} of {result.step} steps replayed from the CUDA graph" if graphed else ""
    if "CUDA graph" in label and not graphed:
        note = "NO CUDA GRAPH (capture failed or not used: see the log)"
    if result.interrupted:  # SIGTERM: train() finished the step and saved; no further row starts (run_train)
        note = f"CUT SHORT by SIGTERM at step {result.step} of {steps}" + (f"; {note}" if note else "")
    return {"row": label, "it/s": it_s, "data wait": wait, "peak GPU GB": peak, "wall s": wall,
            "TFLOP/s": step_flops(cfg) * it_s / 1e12, "note": note}  # fmt: skip


def step_flops(cfg: Any) -> float:
    """FLOPs of one training step (G forward + backward, and D / VGG in stage 2), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from esrgan.discriminator import build_discriminator

    g = RRDBNet.from_config(cfg.model.generator)
    b, p, s = cfg.data.batch_size, cfg.data.patch_size, cfg.model.scale
    lr = torch.rand(b, 3, p // s, p // s, device="meta")
    g = g.to("meta")
    with FlopCounterMode(display=False) as counter:
        sr = g(lr)
        loss = sr.mean()
        if cfg.train.stage == "gan":
            d = build_discriminator(
                cfg.model.discriminator, num_in_ch=3, num_feat=cfg.model.d_num_feat, patch_size=p
            ).to("meta")
            loss = loss + d(sr).mean() * 3  # D on real and fake for G's loss, and again in D's step (approx.)
        loss.backward()
    return float(counter.get_total_flops())


def child_error(stderr: str) -> str:
    """The failing child's own error out of torchrun's report (whose last line is a row of '='), printed whole."""
    print("---- child stderr (last 40 lines) ----\n" + "\n".join(stderr.splitlines()[-40:]), flush=True)
    lines = [x.strip() for x in stderr.splitlines() if x.strip() and not set(x.strip()) <= set("=-")]
    errors = [x for x in lines if "Error" in x or "error" in x]
    return (errors or lines or ["(no output)"])[-1][:300]


DDP_LABEL = "stage 1 bf16, torchrun 1 process (NCCL), eager"
RESUME_LABEL = "resume on the GPU: 10 + 10 steps vs 20"


# NCCL's transports between processes; one process uses none of them, but a container without a usable /dev/shm or
# InfiniBand can still fail NCCL's start on them
NCCL_NO_TRANSPORTS = {"NCCL_SHM_DISABLE": "1", "NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}


def ddp_row(data: Path, out: Path, steps: int, smoke: bool) -> Row:
    """`torchrun --nproc-per-node 1 ... esrgan train`: DDP in a process group (NCCL on a GPU, gloo on a CPU). Where
    the group did not start, once more with NCCL's transports off, and the row says both results."""
    row = ddp_run("ddp", data, out, steps, smoke, {})
    if smoke or not (
        "NO PROCESS GROUP" in row["note"] or "NCCL" in row["note"]
    ):  # not NCCL's start: no retry
        return row
    retry = ddp_run("ddp_no_transports", data, out, steps, smoke, NCCL_NO_TRANSPORTS)
    retry["note"] = f"with {', '.join(NCCL_NO_TRANSPORTS)}=1: {retry['note']} (first try: {row['note']})"
    return retry


def ddp_run(name: str, data: Path, out: Path, steps: int, smoke: bool, extra_env: dict[str, str]) -> Row:
    settings = run_settings(
        name, data, out, steps, smoke, **{"train.precision": "bf16", "train.channels_last": True}
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "esrgan.cli", "train", str(REPO / "configs" / "esrgan_x4_psnr.yaml")]  # fmt: skip
    for k, v in settings.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NCCL_DEBUG": "WARN", **extra_env}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return {"row": DDP_LABEL, "note": child_error(proc.stderr)}
    it_s, wait, _ = log_rates(out / name)
    records = [json.loads(x) for x in (out / name / "log.jsonl").read_text().splitlines()]
    start = next((r for r in records if r.get("event") == "start"), {})
    fallback = [x.strip() for x in proc.stderr.splitlines() if "could not start" in x]  # train's one warning
    note = (
        "DDP in a process group"
        if start.get("distributed")
        else f"NO PROCESS GROUP: {fallback[-1][:300] if fallback else child_error(proc.stderr)}"
    )
    return {
        "row": DDP_LABEL,
        "it/s": it_s,
        "data wait": wait,
        "wall s": time.perf_counter() - t0,
        "note": note,
    }


def resume_row(data: Path, out: Path, smoke: bool) -> Row:
    """A GPU run stopped at step 10 and resumed to 20 against a straight 20-step run: the same checkpoint entries, and
    the largest difference over G, its EMA, D and the optimizers' states (compare_checkpoints)."""
    from esrgan.train import load_checkpoint

    def cfg(name: str) -> Any:
        sets = {"checkpoint.every": 10, "data.num_workers": 1 if smoke else 2, "train.precision": "bf16"}
        return build_config("esrgan_x4_psnr.yaml", run_settings(name, data, out, 20, smoke, **sets))

    straight = run_train(cfg("straight"))
    check_stop()
    run_train(cfg("split"), stop_at_step=10)
    check_stop()
    resumed = run_train(cfg("split"), resume=True)
    check_stop()
    one = load_checkpoint(straight.run_dir / "checkpoints" / "step_00000020.ckpt")
    two = load_checkpoint(resumed.run_dir / "checkpoints" / "step_00000020.ckpt")
    return {"row": RESUME_LABEL, "note": compare_checkpoints(one, two)}


def _tensors(value: Any, name: str = "") -> dict[str, Any]:
    """Every tensor of a checkpoint entry (nested dicts and lists: an optimizer's state), by its path."""
    import torch

    if isinstance(value, torch.Tensor):
        return {name: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found: dict[str, Any] = {}
    for key, item in items:
        found.update(_tensors(item, f"{name}.{key}" if name else str(key)))
    return found


def compare_checkpoints(one: dict[str, Any], two: dict[str, Any]) -> str:
    """A straight run's checkpoint against a resumed one's: the same entries (the format), and every tensor of G,
    its EMA, D and both optimizers ("bit-exact", or the largest difference and where)."""
    if one.keys() != two.keys():
        return f"CHECKPOINT ENTRIES DIFFER: {sorted(one.keys() ^ two.keys())}"
    if one["step"] != two["step"]:
        return f"STEPS DIFFER: {one['step']} vs {two['step']}"
    worst, where, ref = 0.0, "", 0.0
    for entry in ("generator", "generator_ema", "discriminator", "optim_g", "optim_d"):
        a, b = _tensors(one.get(entry)), _tensors(two.get(entry))
        if a.keys() != b.keys():
            return f"{entry}: TENSORS DIFFER: {sorted(a.keys() ^ b.keys())[:3]}"
        for key in a:
            diff = float((a[key].double() - b[key].double()).abs().max()) if a[key].numel() else 0.0
            if diff > worst:
                worst, where, ref = diff, f"{entry}.{key}", float(a[key].double().abs().max())
    if worst == 0:
        return "bit-exact"
    return f"max |d| {worst:.2e} at {where} (|x| up to {ref:.2f}; GPU kernels are not bit-deterministic)"


def order_rows(
    jobs: list[tuple[str, Callable[[], Row]]], skip: list[str], first: list[str]
) -> list[tuple[str, Callable[[], Row]]]:
    """The rows to run: those whose label has any `skip` text left out, then those whose label has first[0] first,
    first[1] next, ..., the rest in their own order (a short lease measures what it lacks before what it knows)."""
    kept = [job for job in jobs if not any(text in job[0] for text in skip)]

    def rank(job: tuple[str, Callable[[], Row]]) -> int:
        return next((k for k, text in enumerate(first) if text in job[0]), len(first))

    return sorted(kept, key=rank)  # stable: the same rank keeps the given order


def guarded(label: str, fn: Callable[..., Row], *fn_args: Any) -> Row:
    """One row; a failure becomes the row's note (one measured run on a lent GPU must not lose the other rows)."""
    t0 = time.perf_counter()
    try:
        row = fn(*fn_args)
    except Exception as exc:  # reported in the table, the run goes on
        import traceback

        traceback.print_exc()
        row = {"row": label, "note": f"failed after {time.perf_counter() - t0:.0f} s: {type(exc).__name__}: "
                                     f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"}  # fmt: skip
    print_row(row)
    return row


def train_section(args: argparse.Namespace, work: Path) -> list[Row]:
    data = work / "train_photos"
    photos(data, 5)
    graph_steps = 8 if args.smoke else 300  # a CUDA-graph step is a few ms: more steps for a steady rate
    eager_steps = 8 if args.smoke else 60
    gan_steps = 6 if args.smoke else 200
    bf16 = {"train.precision": "bf16", "train.channels_last": True}
    variants = [("stage 1 fp32, CUDA graph", {"train.precision": "fp32"}, graph_steps),
                # data.bit_depth 16 holds IEEE fp32 convolutions (no TF32) for the run: what that costs
                ("stage 1 fp32, 16-bit data (IEEE convolutions), CUDA graph",
                 {"train.precision": "fp32", "data.bit_depth": 16}, graph_steps // 2),
                ("stage 1 bf16, channels-last, CUDA graph", bf16, graph_steps),
                ("stage 1 bf16, NCHW, CUDA graph", {"train.precision": "bf16"}, graph_steps),
                ("stage 1 bf16, channels-last, eager", {**bf16, "train.cuda_graph": False}, eager_steps),
                ("stage 1 bf16, CUDA graph, LR made on the CPU", {**bf16, "data.lr_on_device": False},
                 graph_steps // 2),
                ("stage 1 bf16, CUDA graph, realesrgan degradation on the GPU",
                 {**bf16, "data.degradation": "realesrgan"}, graph_steps // 2)]  # fmt: skip
    # the CPU has no fp16 (run_settings makes the rest fp32, and there is no graph there)
    if args.fp16 and not args.smoke:
        fp16 = {"train.precision": "fp16", "train.channels_last": True}
        variants.insert(3, ("stage 1 fp16, channels-last, eager (grad scaler)", fp16, eager_steps))
    runs = work / "runs"
    jobs: list[tuple[str, Callable[[], Row]]] = []
    for label, sets, steps in variants:
        sets = {**sets, "data.num_workers": args.workers}
        jobs.append(
            (label, partial(train_row, label, "esrgan_x4_psnr.yaml", sets, data, runs, steps, args.smoke))
        )
    sets2 = {**bf16, "data.num_workers": args.workers, "train.pretrained_g": None}
    label2 = "stage 2 bf16 (VGG19 + D), CUDA graph"
    jobs.append(
        (label2, partial(train_row, label2, "esrgan_x4_gan.yaml", sets2, data, runs, gan_steps, args.smoke))
    )
    # Real-ESRGAN's GAN stage as configured (U-Net D with spectral norm, five VGG19 layers, vanilla GAN, batch 12 of
    # 256x256 HR on degraded LR): what fine-tuning its x4plus costs per step
    label_r = "stage 2 Real-ESRGAN bf16 (U-Net D, 5 VGG19 layers, 12 x 256, pair pool), CUDA graph"
    sets_r = {**sets2, "train.pretrained_d": None}
    jobs.append(
        (label_r, partial(train_row, label_r, "realesrgan_x4_gan.yaml", sets_r, data, runs, gan_steps // 2,
                          args.smoke))
    )  # fmt: skip
    jobs.append((DDP_LABEL, partial(ddp_row, data, runs, eager_steps, args.smoke)))
    jobs.append((RESUME_LABEL, partial(resume_row, data, runs, args.smoke)))
    # compiling the whole G took > 100 s on the H200 (16 cores); per block ~6x less on a CPU (bench/compile_time.py):
    # only when asked (compile time in wall s)
    if (not args.smoke and args.train_compile) or args.smoke_compile:
        for how, what in (("blocks", "compiled G blocks"), (True, "compiled G whole")):
            label3 = f"stage 1 bf16, {what}, CUDA graph"
            sets3 = {**bf16, "train.compile": how, "data.num_workers": args.workers}
            row3 = partial(
                train_row, label3, "esrgan_x4_psnr.yaml", sets3, data, runs, graph_steps, args.smoke
            )
            jobs.append((label3, row3))
    rows = []
    for label, job in order_rows(jobs, args.skip_row, args.first):
        rows.append(guarded(label, job))
        args.save(rows)
        check_stop()
    return rows


# --- upscaling -------------------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def infer_inputs(args: argparse.Namespace, device: torch.device) -> tuple[np.ndarray, torch.Tensor, int]:
    """The photo collage (2 side x 2 side, uint8) and its side x side corner as a float tensor on the device."""
    from PIL import Image

    side = 32 if args.smoke else 512
    img = np.asarray(Image.open(photos(Path(args.work) / "inf", 1, 2 * side)[0]))
    x = torch.from_numpy(img[:side, :side].copy()).permute(2, 0, 1)[None].float().div(255).to(device)
    return img, x, side


def half_model(model: Generator, device: torch.device) -> tuple[Generator, torch.dtype]:
    """A copy of the model in half precision (fp16 on CUDA, bf16 on a CPU), NCHW, for inference."""
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    mh = build_generator(model.config).to(device)
    mh.load_state_dict(model.state_dict())
    return mh.to(half).eval(), half


def infer_section(args: argparse.Namespace, model: Generator, device: torch.device) -> list[Row]:
    """The eager rows: the model alone (NCHW as Real-ESRGAN runs it, channels-last with cudnn.benchmark: the rate
    the batch rows are measured against) and Upscaler on side^2 and (2 side)^2 photos. The compiled rows come
    after the batch rows (compile_section): their minutes of compiling must not cost the batch rows."""
    from esrgan.upscale import Upscaler

    img, x, side = infer_inputs(args, device)
    macs = macs_per_lr_pixel(model.config) * side * side
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        print_row(row)
        args.save(rows)

    m32 = model.to(device)
    with torch.no_grad():
        ref = m32(x).clamp(0, 1)
    mh, half = half_model(model, device)
    with torch.no_grad():
        t = timed(lambda: mh(x.to(half)), device, args.repeats)
        out = mh(x.to(half)).float().clamp(0, 1)
    add({"row": f"model alone, {half} NCHW, {side}^2", "ms": t * 1e3, "TFLOP/s": 2 * macs / t / 1e12,
         "note": f"vs fp32 {psnr(out, ref):.1f} dB"})  # fmt: skip
    torch.backends.cudnn.benchmark = True
    mcl = mh.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    xcl = x.to(half).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t_cl = timed(lambda: mcl(xcl), device, args.repeats)
    args.model_rate = 1.0 / t_cl  # the pipeline runs this eager forward: the batch rows' yardstick
    args.t_cl = t_cl
    add({"row": f"model alone, {half} channels-last, cudnn.benchmark", "ms": t_cl * 1e3,
         "TFLOP/s": 2 * macs / t_cl / 1e12})  # fmt: skip
    up = Upscaler(model, device=str(device))
    small = img[:side, :side].copy()
    t_up = timed(lambda: up.upscale(small), device, args.repeats)
    args.t_up = t_up
    add({"row": f"Upscaler auto, uint8 {side}^2", "ms": t_up * 1e3,
         "note": f"{t_up / t_cl:.2f}x the bare channels-last forward; precision {getattr(up, 'last_precision', '?')}"})  # fmt: skip
    check_stop()
    big = img[: 2 * side, : 2 * side].copy()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t_big = timed(lambda: up.upscale(big), device, max(args.repeats // 2, 1), warmup=1)
    mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    add({"row": f"Upscaler auto, uint8 {2 * side}^2", "ms": t_big * 1e3,
         "note": f"{t_big / t_up:.2f}x the {side}^2 time; peak GPU {mem:.1f} GB"})  # fmt: skip
    add(fp32_row(model, device, img))
    return rows


def fp32_row(model: Generator, device: torch.device, img: np.ndarray) -> Row:
    """A 16-bit image is computed in fp32 to keep its 16 bits: the model's fp32 output on this device against a
    float64 forward on the CPU, with cuDNN's convolutions in IEEE fp32 (what esrgan.device.autotuned sets for an
    fp32 pass) and in TF32 (torch's default for fp32 convolutions), in 16-bit levels; the Upscaler's 16-bit output
    against the float64 one rounded; and what IEEE costs: the Upscaler on a 16-bit copy of the whole photo, as it
    runs (IEEE) and with esrgan.device.ieee_fp32 bypassed (TF32)."""
    import contextlib

    import esrgan.device
    from esrgan.device import _conv_fp32_precision, _set_conv_fp32_precision, autotuned
    from esrgan.upscale import Upscaler

    crop = img[:64, :64].astype(np.uint16) * np.uint16(257)
    x = torch.from_numpy(crop.astype(np.float64) / 65535).permute(2, 0, 1)[None]
    m64 = build_generator(model.config).double()
    m64.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = m64(x).clamp(0, 1)
        m32 = model.float().to(device)
        with autotuned(device, torch.float32):
            ieee = m32(x.float().to(device)).double().cpu().clamp(0, 1)
        before = _conv_fp32_precision()
        _set_conv_fp32_precision("tf32")
        try:
            tf32 = m32(x.float().to(device)).double().cpu().clamp(0, 1)
        finally:
            _set_conv_fp32_precision(before)
    upscaler = Upscaler(model, device=str(device), precision="fp32")
    up = upscaler.upscale(crop)
    want = (ref[0].permute(1, 2, 0).numpy() * 65535).round()
    side = min(img.shape[0], img.shape[1]) // 2
    whole = img[:side, :side].astype(np.uint16) * np.uint16(257)
    t_ieee = timed(lambda: upscaler.upscale(whole), device, 3, warmup=1)
    real = esrgan.device.ieee_fp32
    esrgan.device.ieee_fp32 = lambda device: contextlib.nullcontext()  # type: ignore[assignment,misc]
    try:
        t_tf32 = timed(lambda: upscaler.upscale(whole), device, 3, warmup=1)
    finally:
        esrgan.device.ieee_fp32 = real

    def levels(y: torch.Tensor) -> str:
        d = (y - ref).abs() * 65535
        return f"max {float(d.max()):.1f}, mean {float(d.mean()):.3f}"

    return {"row": "16-bit 64^2 in fp32 vs float64 (16-bit levels)",
            "note": f"IEEE {levels(ieee)}; TF32 {levels(tf32)}; Upscaler uint16 out max "
                    f"{float(np.abs(up.astype(np.float64) - want).max()):.0f}; Upscaler 16-bit {side}^2: IEEE "
                    f"{t_ieee * 1e3:.0f} ms, TF32 {t_tf32 * 1e3:.0f} ms"}  # fmt: skip


def compile_section(args: argparse.Namespace, model: Generator, device: torch.device) -> list[Row]:
    """The torch.compile rows (compile time in the note), each on its own so one failing compile loses no other:
    the whole model (unless --no-bare-compile), one compile per RRDB (RRDBNet.compile_blocks), and
    Upscaler(compile=True) (`--compile`). Per block as fast as whole would make --compile compile per block."""
    from esrgan.upscale import Upscaler

    img, x, side = infer_inputs(args, device)
    macs = macs_per_lr_pixel(model.config) * side * side
    torch.backends.cudnn.benchmark = True
    mh, half = half_model(model, device)
    mcl = mh.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    xcl = x.to(half).contiguous(memory_format=torch.channels_last)
    rows: list[Row] = []
    bare: dict[str, float] = {}

    def compiled(what: str, prepare: Callable[[], Callable[[torch.Tensor], Any]]) -> Row:
        t0 = time.perf_counter()
        fn = prepare()
        with torch.no_grad():
            fn(xcl)
            sync(device)
            compile_s = time.perf_counter() - t0
            t = timed(lambda: fn(xcl), device, args.repeats)
        bare[what] = t
        speedup = f"; {args.t_cl / t:.2f}x eager channels-last" if getattr(args, "t_cl", None) else ""
        return {"row": f"model alone, {what}", "ms": t * 1e3, "TFLOP/s": 2 * macs / t / 1e12,
                "note": f"compile {compile_s:.0f} s{speedup}"}  # fmt: skip

    def per_block() -> Callable[[torch.Tensor], Any]:
        mb = copy.deepcopy(mcl)
        mb.compile_blocks(dynamic=False)
        return mb

    jobs: list[tuple[str, Callable[[], Row]]] = []
    if isinstance(model, RRDBNet):  # RRDBNet's blocks; a compact model compiles whole only
        jobs.append(("model alone, compiled per block (compile_blocks)",
                     partial(compiled, "compiled per block (compile_blocks)", per_block)))  # fmt: skip
    if args.bare_compile:
        jobs.append(("model alone, compiled", partial(compiled, "compiled", lambda: torch.compile(mcl))))

    def upscaler_compiled() -> Row:
        small = img[:side, :side].copy()
        t0 = time.perf_counter()
        upc = Upscaler(model, device=str(device), compile=True)
        upc.upscale(small)
        compile_s = time.perf_counter() - t0
        t_upc = timed(lambda: upc.upscale(small), device, args.repeats)
        vs = [f"{t_upc / bare['compiled']:.2f}x the bare compiled forward"] if "compiled" in bare else []
        vs += [f"{getattr(args, 't_up', math.nan) / t_upc:.2f}x the speed of Upscaler eager"]
        return {"row": f"Upscaler compile=True (--compile), uint8 {side}^2", "ms": t_upc * 1e3,
                "note": f"{'; '.join(vs)}; compile {compile_s:.0f} s"}  # fmt: skip

    jobs.append(("Upscaler compile=True", upscaler_compiled))
    for label, job in jobs:
        rows.append(guarded(label, job))
        args.save(rows)
        check_stop()
    return rows


def batch_section(args: argparse.Namespace, model_file: Path) -> list[Row]:
    """The batch pipeline on 24 photos against the rate of the model alone (the same eager fp16 channels-last
    forward the pipeline runs, from infer_section): in this process with the upscaler warmed up on one image (a
    long batch's steady state), overlapped and not, PNG and JPEG; then `esrgan upscale DIR -o OUT` as a user runs
    it (wall time including the process start, CUDA start and model load)."""
    from esrgan.pipeline import collect_inputs, plan_jobs, upscale_files
    from esrgan.upscale import Upscaler

    side = 32 if args.smoke else 512
    n = 4 if args.smoke else 24
    src = photos(Path(args.work) / "batch_in", n, side)[0].parent
    model_rate = getattr(args, "model_rate", None)
    rows: list[Row] = []
    up = Upscaler.from_pretrained(str(model_file))  # the CLI's defaults
    from PIL import Image

    up.upscale(np.asarray(Image.open(sorted(src.iterdir())[0])))  # warm-up: weights cast, cudnn.benchmark
    sources, _ = collect_inputs([str(src)])
    for fmt, overlap, level in (
        ("png", True, None),
        ("jpg", True, None),
        ("png", False, None),
        ("png", True, 0),
    ):
        out = Path(args.work) / f"batch_api_{fmt}_{overlap}_{level}"
        jobs = plan_jobs(sources, out, format=fmt, scale=up.scale)
        result = upscale_files(up, jobs, format=fmt, overwrite=True, progress="quiet", overlap=overlap,
                               png_compression=level)  # fmt: skip
        rate = len(result.written) / result.seconds
        note = f"{rate / model_rate:.0%} of the model-alone rate" if model_rate else ""
        label = f"pipeline {n} x {side}^2 -> {fmt}" + ("" if overlap else ", sequential (--no-overlap)")
        label += "" if level is None else f", --png-compression {level}"
        rows.append({"row": label, "images/s": rate, "wall s": result.seconds, "note": note})
        print_row(rows[-1])
        args.save(rows)
        check_stop()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    for fmt, launcher in (("png", [sys.executable]), ("jpg", [sys.executable]), ("jpg", torchrun)):
        out = Path(args.work) / f"batch_out_{fmt}_{len(launcher)}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [*launcher, "-m", "esrgan.cli", "upscale", str(src), "-o", str(out), "--format", fmt,
               "--model", str(model_file)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        label = f"esrgan upscale {n} x {side}^2 -> {fmt} (CLI, cold)"
        if launcher is torchrun:
            label = (
                f"torchrun --nproc-per-node 1 -m esrgan.cli upscale {n} x {side}^2 -> {fmt} (sharded path)"
            )
            written = len(list(out.glob("*.jpg"))) if out.is_dir() else 0
            if not proc.returncode and written != n:
                proc.returncode, proc.stderr = 1, f"{written} of {n} outputs written"
        if proc.returncode:
            rows.append({"row": label, "note": child_error(proc.stderr)})
        else:
            rows.append({"row": label, "images/s": n / wall, "wall s": wall,
                         "note": "wall incl. process start, CUDA start and model load"})  # fmt: skip
        print_row(rows[-1])
        args.save(rows)
        check_stop()
    rows.append(oom_retry_row(args, model_file))
    print_row(rows[-1])
    args.save(rows)
    return rows


def oom_retry_row(args: argparse.Namespace, model_file: Path) -> Row:
    """A pass that runs out of GPU memory: `esrgan upscale --tile 0` of a 2048x2048 photo with torch allowed 4 GiB
    of the card (set_per_process_memory_fraction; CUDA's free memory, which the automatic batch reads, still says
    the whole card): the CLI halves the tiles a pass, then the tile, until a pass fits (Upscaler.shrink_tile), and
    the file is written. On the CPU (--smoke) nothing runs out: the row says the file was written."""
    side = 64 if args.smoke else 2048
    src = photos(Path(args.work) / "oom_in", 1, side)[0]
    out = Path(args.work) / "oom_out"
    shutil.rmtree(out, ignore_errors=True)
    code = (
        "import sys, torch\n"
        "if torch.cuda.is_available():\n"
        "    total = torch.cuda.get_device_properties(0).total_memory\n"
        "    torch.cuda.set_per_process_memory_fraction(min(1.0, 4 * 2**30 / total))\n"
        "from esrgan.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, "upscale", str(src), "-o", str(out), "--tile", "0", "--model",
           str(model_file), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    label = f"out-of-memory retry: --tile 0, {side}^2 in 4 GiB of the GPU (CLI)"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    retries = [line for line in proc.stderr.splitlines() if "out of memory with" in line]
    written = list(out.glob("*.png")) if out.is_dir() else []
    if proc.returncode or len(written) != 1:
        return {"row": label, "note": child_error(proc.stderr) or f"{len(written)} outputs"}
    last = retries[-1].split("; trying ")[-1].split(" (")[0] if retries else "none needed"
    return {"row": label, "wall s": wall, "note": f"written; {len(retries)} retries, last: {last}"}


def video_rows(stdout: str) -> list[Row]:
    """bench/video.py's Markdown table as rows of this one (a frames/s column, the ratio in the note)."""
    rows: list[Row] = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 6:
            continue
        name, count, run, precision, fps, ratio = cells
        try:
            value, share = float(fps), float(ratio)
        except ValueError:  # the header
            continue
        model = "tiny model" if name == "tiny" else "the model"
        rows.append({"row": f"video, {model}: {run}, {count} frames", "frames/s": value,
                     "note": f"{share:.2f}x the model alone; {precision.removeprefix('torch.')}"})  # fmt: skip
    return rows


def video_section(args: argparse.Namespace, model_file: Path) -> list[Row]:
    script = REPO / "bench" / "video.py"
    if not script.exists():
        return [{"row": "video", "note": "bench/video.py not present"}]
    cmd = [sys.executable, str(script), "--model", str(model_file)] + (["--smoke"] if args.smoke else [])
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    for line in proc.stdout.strip().splitlines():
        print(f"video: {line}")
    if proc.returncode:
        return [{"row": "video (bench/video.py)", "note": f"failed: {proc.stderr.strip()[-300:]}"}]
    return video_rows(proc.stdout) or [{"row": "video (bench/video.py)", "note": "no rows in its output"}]


# --- output ----------------------------------------------------------------------------------------------------
COLUMNS = ["it/s", "data wait", "TFLOP/s", "peak GPU GB", "ms", "images/s", "frames/s", "wall s"]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    return str(v)


def print_row(row: Row) -> None:
    print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in row.items()), flush=True)


def table(rows: list[Row]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    lines = ["| row | " + " | ".join(cols) + " | note |", "|---" * (len(cols) + 2) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.0%}" if c == "data wait" and v != "" else fmt(v))
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {r.get('note', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["train", "infer", "batch", "video"], action="append")
    parser.add_argument("--model", default=None, help="model file or name (default realesrgan-x4plus)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the training rows")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="no torch.compile rows")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="no fp16 training row")
    parser.add_argument(
        "--skip-row", action="append", default=[], help="skip the training rows whose label has this"
    )
    parser.add_argument(
        "--first",
        action="append",
        default=[],
        help="run the training rows whose label has this first (repeat it: in that order)",
    )
    parser.add_argument(
        "--no-bare-compile", dest="bare_compile", action="store_false", help="no compiled bare-model row"
    )
    parser.add_argument(
        "--train-compile", action="store_true", help="also a row with train.compile (minutes)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="toy sizes on any device: checks the script only"
    )
    parser.add_argument(
        "--smoke-compile",
        action="store_true",
        help="with --smoke, the torch.compile rows too (--train-compile's and the compiled inference rows; "
        "minutes of compiling on a CPU)",
    )
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("bench/gpu.py: no CUDA GPU here; use --smoke to check the script on the CPU", file=sys.stderr)
        sys.exit(2)
    sections = args.only or ["train", "infer", "batch", "video"]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = args.work or tmp
        work = Path(args.work)
        print(f"machine: {machine()}", flush=True)
        model, model_name = load_model(args.model, args.smoke)
        from esrgan.checkpoints import save_model

        model_file = save_model(work / "model.safetensors", model, overwrite=True)
        print(f"model: {model_name}", flush=True)
        done: list[Row] = []

        def save(section_rows: list[Row]) -> None:  # after every row: a run cut short keeps what it measured
            args.section_rows = section_rows
            if args.json:
                Path(args.json).write_text(
                    json.dumps({"machine": machine(), "rows": done + section_rows}, indent=1)
                )

        args.save = save
        steps: list[tuple[str, Callable[[], list[Row]]]] = [
            ("train", lambda: train_section(args, work)),
            ("infer", lambda: infer_section(args, model, device)),
            ("batch", lambda: batch_section(args, model_file)),
            ("compile", lambda: compile_section(args, model, device)),
            ("video", lambda: video_section(args, model_file)),
        ]
        # the compiled rows belong to "infer" but run after "batch": their minutes must not cost the batch rows
        wanted = {*sections, *(["infer"] if "batch" in sections else [])}
        if args.compile and (not args.smoke or args.smoke_compile) and "infer" in wanted:
            wanted.add("compile")
        signal.signal(signal.SIGTERM, on_sigterm)
        for name, run in steps:
            if name not in wanted:
                continue
            t0 = time.perf_counter()
            args.section_rows = []
            try:
                check_stop()
                done += run()
            except Stopped:
                done += args.section_rows
                print(f"({name}: stopped by SIGTERM after {time.perf_counter() - t0:.0f} s; no further rows)")
                save([])
                break
            except Exception as exc:  # one section's failure is a row; the others still run
                import traceback

                traceback.print_exc()
                done.append({"row": f"{name} section", "note": f"failed: {type(exc).__name__}: {exc}"[:300]})
            print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
            save([])
        rows = done
    print()
    print(f"{machine()}; model {model_name}; total {time.perf_counter() - t_all:.0f} s")
    print(table(rows))
    if STOP["requested"]:
        sys.exit(128 + signal.SIGTERM)  # cut short, as a process ended by SIGTERM says


if __name__ == "__main__":
    main()
