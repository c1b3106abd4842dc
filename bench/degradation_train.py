"""Does training on Real-ESRGAN's degradation make a model that copes with real-world LR images? A/B on this CPU.

From one stage-1 generator (`--pretrained`, e.g. scripts/train_cpu_recipe.sh's), fine-tune two copies for the same
number of steps with the same seed, data and schedule (configs/cpu_x4_psnr.yaml), one with `data.degradation:
bicubic` and one with `realesrgan`; then score the starting model and both on Set5 and Set14 (`esrgan evaluate`,
Y-PSNR / SSIM / NIQE) twice: with the literature's clean bicubic LR, and with LR images degraded in a way neither
arm trained on exactly (Gaussian blur sigma 1.0 at HR size, MATLAB bicubic x4, Gaussian noise sigma 8 levels, Pillow
JPEG quality 50; fixed seed; written as PNG under OUT/lr_real). Prints one Markdown table. Takes about 2 x
(steps x 1.7 s) on a 2-core CPU plus a few minutes of evaluation:

    .venv/bin/python bench/degradation_train.py --pretrained runs/cpu_x4_psnr/model.safetensors --steps 500 \\
        --hr-dir ../data/photos/hr --out /tmp/degradation_ab
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hostinfo import cpu_name  # bench/, the script's own folder
from PIL import Image

from esrgan.data import gaussian_blur, read_pixels, to_tensor
from esrgan.resize import imresize

REPO = Path(__file__).resolve().parent.parent
SETS = ("Set5", "Set14")
ARMS = {  # name: the --set overrides of the arm
    "bicubic": ["data.degradation=bicubic"],
    "realesrgan": ["data.degradation=realesrgan"],
    "realesrgan-no-usm": ["data.degradation=realesrgan", "data.realesrgan.usm_weight=0"],
}


def degraded_lr(hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur sigma 1.0 -> MATLAB bicubic x1/4 -> noise sigma 8/255 -> JPEG q50, as uint8 HxWx3."""
    h, w = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
    x = gaussian_blur(to_tensor(hr[:h, :w]), 1.0)
    lr = imresize(x, scale=0.25)
    lr = lr + torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32)) * (8 / 255)
    pixels = lr.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=50)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def make_lr_sets(benchmarks: Path, out: Path) -> dict[str, Path]:
    folders = {}
    for name in SETS:
        folder = out / "lr_real" / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for path in sorted((benchmarks / name).glob("*.png")):
            Image.fromarray(degraded_lr(read_pixels(path), rng)).save(folder / path.name)
        folders[name] = folder
    return folders


def esrgan(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "esrgan.cli", *args], check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pretrained", required=True, help="stage-1 generator (.safetensors) of cpu_x4_psnr.yaml"
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--hr-dir", default=str(REPO.parent / "data" / "photos" / "hr"))
    parser.add_argument("--benchmarks", default=str(REPO.parent / "shared" / "data" / "benchmarks"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--lr-g", default="2e-4")
    parser.add_argument("--arms", default="bicubic,realesrgan",
                        help=f"comma-separated, from: {', '.join(ARMS)}")  # fmt: skip
    args = parser.parse_args()
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__} (training and scoring both run here)",
        flush=True,
    )
    out = Path(args.out).resolve()
    benchmarks = Path(args.benchmarks).resolve()
    lr_sets = make_lr_sets(benchmarks, out)
    models = {"start (bicubic stage 1)": Path(args.pretrained).resolve()}
    for arm in args.arms.split(","):
        run = out / "runs" / arm
        sets = [a for s in ARMS[arm] for a in ("--set", s)]
        if not (run / "model.safetensors").exists():
            esrgan("train", "configs/cpu_x4_psnr.yaml", "--set", f"name={arm}", "--set", f"output_dir={out / 'runs'}",
                   "--set", f"data.hr_dir={Path(args.hr_dir).resolve()}", "--set", f"train.pretrained_g={models['start (bicubic stage 1)']}",
                   "--set", f"train.total_steps={args.steps}", *sets,
                   "--set", f"optim.lr_g={args.lr_g}", "--set", "validation.dir=null", "--set", "logging.progress=false",
                   "--set", f"checkpoint.every={args.steps}")  # fmt: skip
        models[f"fine-tuned {args.steps} steps, {arm}"] = run / "model.safetensors"
    results: dict[tuple[str, str], list[dict[str, float | None]]] = {}
    for name in SETS:
        for lr_kind in ("bicubic", "real"):
            report = out / f"eval_{name}_{lr_kind}.json"
            extra = ["--lr", str(lr_sets[name])] if lr_kind == "real" else []
            model_args = [a for path in models.values() for a in ("--model", str(path))]
            # --overwrite: a rerun into the same folder scores again (evaluate refuses an existing file otherwise)
            outputs = ["--json", str(report), "--overwrite"]
            esrgan("evaluate", *model_args, "--hr", str(benchmarks / name), *extra, *outputs)
            summary = json.loads(report.read_text())
            # the columns in order: bicubic upscaling, then the models as given
            results[(name, lr_kind)] = [summary["mean"][m] for m in summary["methods"]]
    print(f"\n| model | {' | '.join(f'{n}, {k} LR' for n in SETS for k in ('bicubic', 'real'))} |")
    print("|---|" + "---:|" * 4)
    for column, label in enumerate(["bicubic upscaling", *models]):
        cells = []
        for name in SETS:
            for lr_kind in ("bicubic", "real"):
                s = results[(name, lr_kind)][column]
                niqe = s.get("niqe")
                cells.append(f"{s['psnr']:.2f} / {s['ssim']:.4f} / {'-' if niqe is None else f'{niqe:.2f}'}")
        print(f"| {label} | {' | '.join(cells)} |")
    print("\n(Y-PSNR dB / SSIM / NIQE, literature protocol; real LR: blur 1.0, bicubic x4, noise 8, JPEG 50)")


if __name__ == "__main__":
    main()
