"""Training speed: iterations per second of stage 1 (L1) and stage 2 (GAN) steps, fp32 vs bf16 autocast.

Times the real step functions of esrgan.train (generator_step / discriminator_step, Adam, the VGG19 perceptual
loss) on batches already in memory, so the numbers are compute only (the DataLoader runs in parallel workers in real
training). Sizes, read from the configs: the paper's (configs/esrgan_x4_*.yaml: RRDBNet 23 blocks, 64 features,
growth 32, batch 16, HR patch 128) and the CPU recipe's (configs/cpu_x4_*.yaml: 6 / 48 / 24, batch 16, HR patch 96;
stage 2 batch 8). Prints a Markdown table for
docs/benchmarks.md. Run it on a quiet machine:

    .venv/bin/python bench/train.py                     # everything, 10 timed steps after 2 warm-up steps
    .venv/bin/python bench/train.py --sizes recipe --steps 3 --warmup 1
    .venv/bin/python bench/train.py --stages 2,2r       # ESRGAN's GAN step against Real-ESRGAN's
    .venv/bin/python bench/train.py --sizes recipe,compact --stages 1   # the CPU recipe's RRDBNet against a compact

Stage "2r" is Real-ESRGAN's GAN step (configs/realesrgan_x4_gan.yaml's losses): the U-Net discriminator with spectral
norm, the vanilla GAN loss, the perceptual loss at five VGG19 depths, at the same sizes as stage 2.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hostinfo import cpu_name  # bench/, the script's own folder

from esrgan.archs import GeneratorConfig, build_generator
from esrgan.compact import CompactConfig
from esrgan.config import LossesConfig, load_config
from esrgan.discriminator import UNetDiscriminatorSN, VGGStyleDiscriminator
from esrgan.train import discriminator_step, generator_step, make_autocast
from esrgan.vgg import VGGFeatureExtractor


@dataclass(frozen=True)
class Size:
    name: str
    generator: GeneratorConfig
    batch: int
    patch: int
    batch_gan: int


def size_from_configs(name: str, psnr_config: str, gan_config: str) -> Size:
    """Read the sizes from the configs themselves: scripts/train_cpu_recipe.sh sizes its run from this bench."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    psnr, gan = load_config(configs / psnr_config), load_config(configs / gan_config)
    return Size(name, psnr.model.generator, psnr.data.batch_size, psnr.data.patch_size, gan.data.batch_size)


SIZES = {
    "paper": size_from_configs("paper", "esrgan_x4_psnr.yaml", "esrgan_x4_gan.yaml"),
    "recipe": size_from_configs("recipe", "cpu_x4_psnr.yaml", "cpu_x4_gan.yaml"),
    # Real-ESRGAN's compact generator with the CPU recipe's data (configs/cpu_x4_compact_psnr.yaml)
    "compact": size_from_configs("compact", "cpu_x4_compact_psnr.yaml", "cpu_x4_gan.yaml"),
}


def shape(config: GeneratorConfig) -> str:
    """The generator's size as the table shows it."""
    if isinstance(config, CompactConfig):
        return f"compact, {config.num_conv} convs x {config.num_feat}"
    return f"RRDBNet {config.num_block} blocks / {config.num_feat} features / growth {config.num_grow}"


REAL_ESRGAN_LAYERS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def bench(size: Size, stage: str, precision: str, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    device = torch.device("cpu")
    autocast = make_autocast(device, precision)
    g = build_generator(size.generator)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = size.batch if stage == "1" else size.batch_gan
    hr = torch.rand(batch, 3, size.patch, size.patch)
    lr = torch.rand(batch, 3, size.patch // 4, size.patch // 4)
    layer_weights: tuple[float, ...] = (1.0,)
    d: torch.nn.Module | None
    if stage == "1":
        weights = LossesConfig()
        d = vgg = opt_d = None
    elif stage == "2":
        weights = LossesConfig(pixel_weight=1e-2, perceptual_weight=1.0, gan_weight=5e-3)
        d = VGGStyleDiscriminator(input_size=size.patch)
        opt_d = torch.optim.Adam(d.parameters(), lr=1e-4)
        vgg = VGGFeatureExtractor(weights=None)  # same cost as the pretrained network
    elif stage == "2r":
        weights = LossesConfig(pixel_weight=1.0, perceptual_weight=1.0, gan_weight=0.1, gan_type="vanilla")
        d = UNetDiscriminatorSN()
        opt_d = torch.optim.Adam(d.parameters(), lr=1e-4)
        vgg = VGGFeatureExtractor(weights=None, layers=list(REAL_ESRGAN_LAYERS))
        layer_weights = tuple(REAL_ESRGAN_LAYERS.values())
    else:
        raise SystemExit(f"unknown stage {stage!r} (1, 2 or 2r)")

    def step() -> None:
        out = generator_step(g, lr, hr, optimizer=opt_g, scaler=scaler, weights=weights, autocast=autocast,
                             vgg=vgg, d=d, layer_weights=layer_weights)  # fmt: skip
        if d is not None and opt_d is not None and out is not None:
            discriminator_step(d, hr, out[1], optimizer=opt_d, scaler=scaler, reduction="sum", autocast=autocast,
                               gan_type=weights.gan_type)  # fmt: skip

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="paper,recipe", help="comma-separated: paper, recipe, compact")
    parser.add_argument(
        "--stages", default="1,2", help="comma-separated: 1 (L1), 2 (ESRGAN's GAN), 2r (Real-ESRGAN's GAN)"
    )
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.steps} timed steps after {args.warmup} warm-up steps; batches in memory (compute only)\n")
    print("| sizes | stage | generator | batch | HR patch | precision | it/s | s/it |")
    print("|---|---|---|---|---|---|---|---|")
    for size_name in args.sizes.split(","):
        size = SIZES[size_name]
        for stage in args.stages.split(","):
            for precision in args.precisions.split(","):
                rate = bench(size, stage, precision, args.steps, args.warmup)
                batch = size.batch if stage == "1" else size.batch_gan
                print(f"| {size.name} | {stage} | {shape(size.generator)} | {batch} | {size.patch} | {precision} | "
                      f"{rate:.3f} | {1 / rate:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
