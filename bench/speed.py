"""Speed of every RRDBNet inference path on this machine, in one table from one run (docs/benchmarks.md, "Speed").

    .venv/bin/python bench/speed.py [--model realesrgan-x4plus] [--size 128] [--repeats 5] [--threads N]
        [--sweep 128,192,256,352,512] [--scaling 128,256,512,1024,2048] [--tile N] [--rss 1024] [--no-compile]
        [--no-onnx] [--no-ncnn] [--no-paths] [--emulated-bf16]

1. One LR crop of a real photo (scikit-image's astronaut), every path timed interleaved (A B C ... A B C ...) so
   load from other processes hits all of them alike: seconds (median and min of --repeats after one warm-up call,
   whose time is shown as "first s": compilation for the compiled paths), effective GFLOP/s
   (2 x MACs per LR pixel x LR pixels / s), the ratio to a conv ceiling measured in the same loop (one 3x3 conv
   64->64 on a 256x256 channels-last map, weights pre-packed, in fp32 and in bf16) and PSNR (RGB, [0, 1]) against
   the fp32 eager NCHW output. ncnn runs Real-ESRGAN's own packaged .param/.bin on the same pixels; "fp32 ncnn
   engine" is ours (the graph esrgan.ncnn writes for this model, run by ncnn). The "default" row is Upscaler.upscale
   as `esrgan upscale` runs it (precision auto, the engine it picks, uint8 in and out), and the line under the table
   gives its share of the convolution ceiling of its precision. On CPUs that cannot pack bf16 weights (AVX2 only)
   the bf16 ceiling is a plain bf16 conv (emulated there).
2. One forward pass per square tile size (--sweep) of the engine the Upscaler picks (precision auto): time per LR
   pixel against the tile side.
3. Time per LR pixel from 128x128 to 2048x2048 through Upscaler.upscale, i.e. what `esrgan upscale` runs by
   default (precision auto and the engine the Upscaler picks for it on this CPU, both named in the table's title:
   e.g. packed oneDNN for an RRDBNet in bf16, ncnn's runtime in fp32 where it is installed; the automatic
   balanced tile, --tile N fixes it), uint8 in and out, the
   default overlap (Upscaler.tiling: tiling.default_overlap of the tile, or the exact overlap for a model with a
   small receptive field); the photo is mirrored out to the larger sizes.
4. Peak RSS of a fresh process that upscales an --rss x --rss LR image to uint8 the same way (the script runs
   itself with the internal option --rss-child N for it).
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hostinfo import cpu_name  # bench/, the script's own folder
from skimage import data

from esrgan.compact import CompactConfig
from esrgan.device import DTYPES, ModelRunner, cpu_has_native_bf16, cpu_packs_bf16, precision_name
from esrgan.generator import RRDBConfig, RRDBNet
from esrgan.ncnn import ncnn_runtime_available, ncnn_supports
from esrgan.tiling import tile_grid
from esrgan.upscale import CPU_MAX_TILE, Upscaler
from esrgan.zoo import load_model

Fn = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_ROW = "default: Upscaler.upscale, uint8 in and out ({}, {} engine)"


def macs_per_lr_pixel(cfg: RRDBConfig | CompactConfig) -> float:
    """Multiply-accumulates of one forward pass per input pixel (17.93 M for x4, nb=23; 0.62 M for Real-ESRGAN's
    compact realesr-animevideov3)."""
    if isinstance(cfg, CompactConfig):  # every conv at input resolution, the last one to out x scale^2 planes
        nf = cfg.num_feat
        return 9.0 * (cfg.num_in_ch * nf + cfg.num_conv * nf * nf + nf * cfg.num_out_ch * cfg.scale**2)
    nf, gc, k = cfg.num_feat, cfg.num_grow, 9
    rdb = sum((nf + j * gc) * gc for j in range(4)) + (nf + 4 * gc) * nf
    u = cfg.unshuffle**2  # trunk pixels per input pixel is 1 / u
    trunk = (cfg.num_in_ch * u * nf + cfg.num_block * 3 * rdb + nf * nf) / u
    tail, pixels = 0.0, 1.0 / u
    for _ in range(cfg.num_upsample):
        pixels *= 4
        tail += pixels * nf * nf
    tail += pixels * (nf * nf + nf * cfg.num_out_ch)
    return k * (trunk + tail)


def photo_u8(size: int) -> np.ndarray:
    """size x size x 3 uint8 crop of a real photo, mirrored beyond its 512x512 pixels."""
    img = data.astronaut()
    if size <= 400:
        return np.ascontiguousarray(img[100 : 100 + size, 120 : 120 + size])
    reps = math.ceil(size / 512)
    pad = 512 * (reps - 1)
    return np.ascontiguousarray(np.pad(img, ((0, pad), (0, pad), (0, 0)), mode="symmetric")[:size, :size])


def photo(size: int) -> torch.Tensor:
    """(1, 3, size, size) float32 in [0, 1]: photo_u8 as a batch."""
    return torch.from_numpy(photo_u8(size)).permute(2, 0, 1)[None].float() / 255.0


def psnr01(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1).double() - b.clamp(0, 1).double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ceiling_fns(dtype: torch.dtype) -> Fn:
    """One pre-packed 3x3 conv 64->64 on a 256x256 channels-last map: the best case for oneDNN on this CPU.

    Where oneDNN cannot pack bf16 weights (AVX2-only CPUs such as Zen 1-3: no AVX512BW/VL/DQ, no AVX-NE-CONVERT),
    the bf16 ceiling is the plain channels-last bf16 conv, which is what bf16 costs there (emulated)."""
    conv = torch.nn.Conv2d(64, 64, 3, 1, 1)
    x = torch.rand(1, 64, 256, 256).to(dtype).contiguous(memory_format=torch.channels_last)
    if dtype == torch.bfloat16 and not cpu_packs_bf16():
        plain = conv.to(dtype=dtype, memory_format=torch.channels_last)  # type: ignore[call-overload]

        def run_plain(_: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return plain(x)

        return run_plain
    w = torch._C._nn.mkldnn_reorder_conv2d_weight(
        conv.weight.detach().to(dtype).to_mkldnn(), [1, 1], [1, 1], [1, 1], 1, list(x.shape)
    )
    b = conv.bias.detach().to(dtype)

    def run(_: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.ops.mkldnn._convolution_pointwise(x, w, b, [1, 1], [1, 1], [1, 1], 1, "none", [], "")

    return run


def eager(model: RRDBNet, channels_last: bool) -> Fn:
    m = copy.deepcopy(model)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return m(x).contiguous()

    return run


def ncnn_fn(threads: int, bf16: bool) -> Fn | None:
    try:
        import ncnn

        from esrgan.ncnn import find_packaged_ncnn_models
    except ImportError:
        return None
    files = find_packaged_ncnn_models().get("realesrgan-x4plus")
    if files is None:
        return None
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = bf16
    net.load_param(str(files[0]))
    net.load_model(str(files[1]))

    def run(x: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(x[0].numpy())  # must outlive the extraction: ncnn.Mat does not copy it
        ex = net.create_extractor()
        ex.input("data", ncnn.Mat(pixels))  # blob names of Real-ESRGAN's .param
        _, out = ex.extract("output")
        return torch.from_numpy(np.array(out))[None]

    return run


def build_paths(model: RRDBNet, args: argparse.Namespace, tmp: Path) -> dict[str, tuple[Fn, str]]:
    """name -> (forward, ceiling dtype)."""
    bf16 = "bf16" if cpu_has_native_bf16() else "fp32"
    cpu = torch.device("cpu")
    paths: dict[str, tuple[Fn, str]] = {
        "fp32 eager NCHW (reference)": (eager(model, False), "fp32"),
        "fp32 eager channels-last": (eager(model, True), "fp32"),
        "fp32 fast (esrgan.fast, packed oneDNN)": (
            ModelRunner(model, cpu, torch.float32, engine="packed"),
            "fp32",
        ),
    }
    # bf16 where the CPU lacks it runs emulated, ~7x slower than fp32 (Zen 1: 90 s for the 128x128 crop), a path
    # nobody takes: measured only with --emulated-bf16
    with_bf16 = cpu_has_native_bf16() or args.emulated_bf16
    if with_bf16:
        paths["bf16 autocast channels-last (device.ModelRunner)"] = (
            ModelRunner(copy.deepcopy(model), torch.device("cpu"), torch.bfloat16, engine="module"),
            "bf16",
        )
    if ncnn_runtime_available() and ncnn_supports(model.config):
        paths["fp32 ncnn engine (esrgan.ncnn: our graph, ncnn's runtime)"] = (
            ModelRunner(model, cpu, torch.float32, engine="ncnn"),
            "fp32",
        )
    if cpu_packs_bf16():  # elsewhere bf16 cannot be packed and the row would repeat fp32's
        paths["bf16 fast (esrgan.fast, packed oneDNN)"] = (
            ModelRunner(model, cpu, DTYPES[bf16], engine="packed"),
            bf16,
        )
    up = _upscaler(model, args)
    u8 = photo_u8(args.size)

    def default(_: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(up.upscale(u8)).permute(2, 0, 1)[None].float() / 255

    paths[DEFAULT_ROW.format(precision_name(up.dtype), up.runner.engine)] = (
        default,
        precision_name(up.dtype),
    )
    if args.compile:
        for p in ("fp32", "bf16") if with_bf16 else ("fp32",):
            compiled = copy.deepcopy(model)
            fn = ModelRunner(compiled, cpu, DTYPES[p], engine="compiled", cache_dir=tmp / "inductor")
            paths[f"{p} torch.compile channels-last"] = (fn, p)
    if args.onnx:
        try:
            from esrgan.onnx_export import export_onnx, onnx_forward

            onnx_path = export_onnx(model, tmp / "model.onnx")
            paths["fp32 onnxruntime (CPU EP)"] = (onnx_forward(onnx_path, threads=args.threads), "fp32")
        except Exception as exc:
            print(f"onnxruntime skipped: {exc}")
    if args.ncnn and model.config == RRDBConfig():
        for label, flag in (("fp32", False), ("bf16 storage", True)):
            fn = ncnn_fn(args.threads, flag)
            if fn is not None:
                # bf16 storage on a CPU without bf16 arithmetic is fp32 maths on bf16-stored activations
                kind = "bf16" if flag and cpu_has_native_bf16() else "fp32"
                paths[f"ncnn {label} (Real-ESRGAN .param/.bin)"] = (fn, kind)
    return paths


def main_table(model: RRDBNet, args: argparse.Namespace, tmp: Path) -> str:
    x = photo(args.size)
    flop = 2 * macs_per_lr_pixel(model.config) * args.size**2
    paths = build_paths(model, args, tmp)
    ceilings = {"fp32": ceiling_fns(torch.float32), "bf16": ceiling_fns(torch.bfloat16)}
    ceil_flop = 2 * 64 * 64 * 9 * 256 * 256
    first: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name, (fn, _) in paths.items():
        t0 = time.perf_counter()
        outputs[name] = fn(x)
        first[name] = time.perf_counter() - t0
    for fn in ceilings.values():
        fn(x)
    times: dict[str, list[float]] = {name: [] for name in [*paths, *ceilings]}
    for _ in range(args.repeats):
        for name, fn in [*((n, f) for n, (f, _) in paths.items()), *ceilings.items()]:
            t0 = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t0)
    ceil_gflops = {k: ceil_flop / statistics.median(times[k]) / 1e9 for k in ceilings}
    ref = outputs["fp32 eager NCHW (reference)"]
    lines = [
        f"{args.size}x{args.size} LR -> {args.size * model.scale}x{args.size * model.scale}, {args.threads} threads, "
        f"{args.repeats} interleaved repeats; {macs_per_lr_pixel(model.config) / 1e6:.2f} M MACs per LR pixel",
        "",
        "| path | median s | min s | GFLOP/s | % of conv ceiling | PSNR vs fp32 eager (dB) | first call s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_, kind) in paths.items():
        med = statistics.median(times[name])
        gflops = flop / med / 1e9
        q = psnr01(outputs[name], ref)
        lines.append(
            f"| {name} | {med:.3f} | {min(times[name]):.3f} | {gflops:.0f} | {100 * gflops / ceil_gflops[kind]:.0f} % ({kind}) "
            f"| {'exact' if math.isinf(q) else f'{q:.1f}'} | {first[name]:.2f} |"
        )
    default = next(name for name in paths if name.startswith(DEFAULT_ROW[:20]))
    share = 100 * flop / statistics.median(times[default]) / 1e9 / ceil_gflops[paths[default][1]]
    packing = {"fp32": "packed", "bf16": "packed" if cpu_packs_bf16() else "plain: no bf16 packing here"}
    for kind in ceilings:
        lines.append(
            f"| conv ceiling {kind} (3x3 64->64, 256x256, channels-last, {packing[kind]}) | {statistics.median(times[kind]):.4f} "
            f"| {min(times[kind]):.4f} | {ceil_gflops[kind]:.0f} | 100 % | | |"
        )
    lines += ["", f"default path: {share:.0f} % of the {paths[default][1]} conv ceiling (the aim: >= 75 %)"]
    return "\n".join(lines)


def _upscaler(model: RRDBNet, args: argparse.Namespace) -> Upscaler:
    """What `esrgan upscale` runs: the default precision and engine, the automatic (balanced) tile unless --tile."""
    return Upscaler(copy.deepcopy(model), device="cpu", precision="auto", tile=args.tile or None)


def scaling_table(model: RRDBNet, args: argparse.Namespace) -> str:
    up = _upscaler(model, args)
    up.upscale(photo_u8(args.scaling[0]))  # warm-up: oneDNN's first calls
    tile_note = f"tile {args.tile}" if args.tile else f"automatic tile (<= {CPU_MAX_TILE}, balanced)"
    lines = [
        f"Upscaler.upscale (what `esrgan upscale` runs): {precision_name(up.dtype)}, {up.runner.engine} engine, "
        f"{tile_note}, the default overlap (Upscaler.tiling: tiling.default_overlap of the tile, or the exact "
        "one for a small receptive field), uint8 in and out",
        "",
        "| LR size | tile | overlap | tiles | computed / image pixels | seconds | us per LR pixel | vs smallest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = None
    for size in args.scaling:
        img = photo_u8(size)
        side = up.tile_size(size, size) or size
        t0 = time.perf_counter()
        up.upscale(img)
        sec = time.perf_counter() - t0
        per = sec / size**2 * 1e6
        base = base or per
        overlap = up.tiling(size, size, side).overlap
        th, tw, ys, xs = tile_grid(size, size, side, overlap)
        count, computed = len(ys) * len(xs), len(ys) * len(xs) * th * tw / size**2
        lines.append(
            f"| {size}x{size} | {side} | {overlap} | {count} | {computed:.3f} | {sec:.2f} | {per:.2f} | "
            f"{per / base:.2f}x |"
        )
    return "\n".join(lines)


def tile_sweep_table(model: RRDBNet, args: argparse.Namespace) -> str:
    """One forward pass of the default CPU engine per square tile size: does time per pixel grow with the tile
    (feature maps falling out of the caches)? This picks upscale.CPU_MAX_TILE."""
    up = _upscaler(model, args)
    lines = [
        f"One forward pass of the {up.runner.engine} engine ({precision_name(up.dtype)}) per tile size, best of 2",
        "",
        "| tile (LR) | seconds | us per LR pixel | vs smallest |",
        "|---:|---:|---:|---:|",
    ]
    base = None
    for side in args.sweep:
        x = photo(side)
        up.runner(x)
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            up.runner(x)
            best = min(best, time.perf_counter() - t0)
        per = best / side**2 * 1e6
        base = base or per
        lines.append(f"| {side} | {best:.2f} | {per:.2f} | {per / base:.2f}x |")
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """This process's own peak RSS. On Linux, VmHWM of /proc/self/status: getrusage's ru_maxrss is NOT reset by
    fork + exec (the kernel carries the parent's high-water mark over), so a child started by a parent that had
    grown to 4 GB reports 4 GB whatever it uses itself. That is what made earlier runs print ~4 GB here."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def rss_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: upscale an --rss-child square LR image as `esrgan upscale` would, print seconds and
    peak RSS (of the whole process: torch, the model, input, output)."""
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    up = _upscaler(model, args)
    img = photo_u8(args.rss_child)
    t0 = time.perf_counter()
    out = up.upscale(img)
    sec = time.perf_counter() - t0
    peak_mb = peak_rss_mb()
    tile = up.tile_size(*img.shape[:2])
    print(
        f"{precision_name(up.dtype)} {img.shape[0]}x{img.shape[1]} -> {out.shape[0]}x{out.shape[1]} (tile {tile}): "
        f"{sec:.1f} s, peak RSS {peak_mb:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--scaling", type=lambda s: [int(v) for v in s.split(",") if v], default=[128, 256, 512, 1024, 2048]
    )
    parser.add_argument(
        "--sweep", type=lambda s: [int(v) for v in s.split(",") if v], default=[128, 192, 256, 352, 512]
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=0,
        help="tile side in LR pixels for the scaling and RSS runs (0 = automatic)",
    )
    parser.add_argument("--rss", type=int, default=1024, help="LR side for the peak-RSS run (0 = skip)")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--emulated-bf16", action="store_true", help="time the bf16 paths on a CPU without native bf16 too"
    )
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    parser.add_argument("--no-ncnn", dest="ncnn", action="store_false")
    parser.add_argument(
        "--no-paths", dest="paths", action="store_false", help="skip table 1 (rerun tables 2-4 only)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    model = load_model(args.model).eval()
    print(
        f"{cpu_name()}, torch {torch.__version__}, native bf16: {cpu_has_native_bf16()}, "
        f"load average {Path('/proc/loadavg').read_text().split()[:3]}"
    )
    if args.paths:
        with tempfile.TemporaryDirectory() as tmp:
            print(main_table(model, args, Path(tmp)), flush=True)
    if args.sweep:
        print()
        print(tile_sweep_table(model, args), flush=True)
    if args.scaling:
        print()
        print(scaling_table(model, args), flush=True)
    if args.rss:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--threads",
            str(args.threads),
            "--tile",
            str(args.tile),
            "--rss-child",
            str(args.rss),
        ]
        print()
        print("peak RSS:", subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
    print(f"load average at the end {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
