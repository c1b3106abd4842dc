"""Real-ESRGAN's compact generator against RRDBNet on this CPU, one table from one run (docs/benchmarks.md,
"Compact models").

    .venv/bin/python bench/compact.py [--size 128] [--repeats 5] [--threads N]

One LR crop of a real photo (scikit-image's astronaut), every row timed interleaved (A B C ... A B C ...) so load
from other processes hits all of them alike: seconds per image (median and min of --repeats after one warm-up
call), output megapixels per second, speed relative to the realesrgan-x4plus default row of the same run, and PSNR
(RGB, [0, 1]) against the same model's fp32 eager output.

Rows: realesr-animevideov3 (SRVGGNetCompact, 16 inner convs; from the installed ncnn package) and a compact net of
realesr-general-x4v3's shape (32 inner convs: the release file where it is in the model cache, else random weights,
which time the same) through each engine ModelRunner has for them on this CPU (the module in fp32, ncnn in fp32, the
module in bf16 where the CPU computes bf16 natively) and through Upscaler.upscale as `esrgan upscale` runs it (uint8
in and out, precision auto, the engine it picks); realesrgan-x4plus (RRDBNet, 23 blocks) through its default path.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from hostinfo import cpu_name  # bench/, the script's own folder
from skimage import data

from esrgan.compact import CompactConfig, SRVGGNetCompact
from esrgan.device import ModelRunner, cpu_has_native_bf16, precision_name
from esrgan.upscale import Upscaler
from esrgan.zoo import is_available, load_model

Row = tuple[str, Callable[[], np.ndarray], np.ndarray, int]  # label, call, reference (float CHW), LR pixels


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def compact_rows(label: str, model: torch.nn.Module, crop: np.ndarray) -> list[Row]:
    cpu = torch.device("cpu")
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        reference = model(x)[0].numpy()
    pixels = crop.shape[0] * crop.shape[1]
    runners = {"fp32 module": ModelRunner(model, cpu, torch.float32, engine="module")}
    try:
        runners["fp32 ncnn"] = ModelRunner(model, cpu, torch.float32, engine="ncnn")
    except Exception as exc:  # the ncnn runtime is optional
        print(f"({label}: no ncnn row: {str(exc).splitlines()[0]})")
    if cpu_has_native_bf16():
        runners["bf16 module"] = ModelRunner(model, cpu, torch.bfloat16, engine="module")
    rows: list[Row] = [
        (f"{label}, {name}", (lambda r=runner: r(x)[0].numpy()), reference, pixels)
        for name, runner in runners.items()
    ]
    upscaler = Upscaler(model, device="cpu")
    default = f"{label}, default ({precision_name(upscaler.dtype)}, {upscaler.runner.engine} engine)"
    rows.append((default, lambda: upscaler.upscale(crop).transpose(2, 0, 1) / 255.0, reference, pixels))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="LR side of the photo crop")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photo = data.astronaut()
    top = max(0, min(40, photo.shape[0] - args.size))
    crop = np.ascontiguousarray(photo[top : top + args.size, 150 : 150 + args.size])

    video = load_model("realesr-animevideov3")
    if is_available("realesr-general-x4v3"):
        general, general_label = load_model("realesr-general-x4v3"), "realesr-general-x4v3"
    else:
        torch.manual_seed(0)
        general = SRVGGNetCompact(CompactConfig(num_conv=32)).eval().requires_grad_(False)
        general_label = "compact 32 convs (general-x4v3 shape, random)"
    x4plus = load_model("realesrgan-x4plus")
    with torch.inference_mode():
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
        reference = x4plus(x)[0].numpy()
    baseline = Upscaler(x4plus, device="cpu")
    base_label = (
        f"realesrgan-x4plus (RRDBNet 23 blocks), default ({precision_name(baseline.dtype)}, "
        f"{baseline.runner.engine} engine)"
    )
    rows: list[Row] = [
        (base_label, lambda: baseline.upscale(crop).transpose(2, 0, 1) / 255.0, reference, args.size**2),
        *compact_rows("realesr-animevideov3 (16 convs)", video, crop),
        *compact_rows(general_label, general, crop),
    ]
    times: dict[str, list[float]] = {label: [] for label, *_ in rows}
    quality = {}
    for label, call, ref, _ in rows:  # warm-up: weights packed, ncnn loaded, oneDNN primitives built
        quality[label] = psnr(call(), ref)
    for _ in range(args.repeats):
        for label, call, _, _ in rows:
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
    base = statistics.median(times[base_label])
    print(
        f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; astronaut crop {args.size}x{args.size} -> x4"
    )
    width = max(len(label) for label in times)
    print(
        f"{'path':<{width}}  {'median s':>8}  {'min s':>7}  {'out MP/s':>8}  {'x faster':>8}  {'PSNR dB':>7}"
    )
    for label, _, _, pixels in rows:
        med, low = statistics.median(times[label]), min(times[label])
        print(
            f"{label:<{width}}  {med:8.3f}  {low:7.3f}  {16 * pixels / med / 1e6:8.2f}  {base / med:8.1f}  "
            f"{quality[label]:7.1f}"
        )


if __name__ == "__main__":
    main()
