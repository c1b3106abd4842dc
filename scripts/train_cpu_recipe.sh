#!/usr/bin/env bash
# The CPU recipe (issue 5's proof of learning), start to finish on a 2-core machine:
#   1. real photographs: plasma-workspace-wallpapers (scripts/fetch_wallpapers.sh), if not fetched yet;
#   2. stage 1 (configs/cpu_x4_psnr.yaml): RRDBNet 6 blocks x 48 features (growth 24), L1, cosine lr 5e-4 -> 1e-6, EMA 0.999,
#      bf16 autocast, batch 16 of 96x96 HR patches; validated on Set5 every 500 steps;
#   3. Set5 / Set14: Y-PSNR/SSIM of bicubic vs the stage-1 model (esrgan evaluate, the literature protocol);
#   4. a short stage 2 (configs/cpu_x4_gan.yaml) from the stage-1 generator, and the same evaluation with crops.
#
#   scripts/train_cpu_recipe.sh                       the full recipe (60 minutes of stage 1, then stage 2)
#   STEPS1=40 STEPS2=4 VGG=random scripts/train_cpu_recipe.sh    a quick check that every stage runs
#   SKIP1=1 VGG=none scripts/train_cpu_recipe.sh       stage 2 only, from the stage-1 model already in RUNS
# Environment: DATA (wallpaper folder, default ../data/wallpapers), RUNS (default runs), BENCH (benchmark sets,
# default ../shared/data/benchmarks), STEPS1 / STEPS2 (override total_steps), MINUTES (stage-1 budget, default 60),
# VGG (VGG19 weight file for stage 2; "none" = no perceptual loss: stage 2 becomes L1 (weight 1) + RaGAN (5e-3,
# terms averaged as BasicSR does), the demonstration this repository's docs show, made on a machine without ImageNet
# VGG19 weights; "random" = an untrained VGG19, for a smoke run only: with the paper's weights its perceptual loss is
# ~1e-6, nothing anchors the content and the GAN stage diverges within ~60 steps).
#
# Without STEPS1, the number of stage-1 steps is sized to the budget: bench/train.py measures this machine's
# iterations per second at the recipe's size for 20 steps, and 52 of the MINUTES are spent on steps (the rest:
# loading the photos, validation, checkpoints). The cosine schedule needs its length up front, so the budget is
# turned into steps before training rather than by stopping a run part-way.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
esrgan="$here/.venv/bin/esrgan"
data="${DATA:-$here/../data/wallpapers}"
runs="${RUNS:-runs}"
bench="${BENCH:-$here/../shared/data/benchmarks}"

[ -d "$data/hr" ] || scripts/fetch_wallpapers.sh "$data"

set1=(--set "data.hr_dir=$data/hr" --set "output_dir=$runs" --set "validation.dir=$bench/Set5")
set2=(--set "data.hr_dir=$data/hr" --set "output_dir=$runs" --set "validation.dir=$bench/Set5"
      --set "train.pretrained_g=$runs/cpu_x4_psnr/model.safetensors")
if [ -n "${STEPS1:-}" ]; then
    set1+=(--set "train.total_steps=$STEPS1" --set "validation.every=$STEPS1" --set "checkpoint.every=$STEPS1")
fi
if [ -n "${STEPS2:-}" ]; then
    set2+=(--set "train.total_steps=$STEPS2" --set "validation.every=$STEPS2" --set "checkpoint.every=$STEPS2"
           --set "schedule.milestones=[]")
fi
vgg=()
if [ "${VGG:-}" = none ]; then
    echo "stage 2 WITHOUT a perceptual loss (VGG=none): L1 weight 1 + RaGAN 5e-3 (averaged), not the paper's loss" >&2
    # Averaged RaGAN terms (BasicSR's reduction, half the paper's sum): without the perceptual loss the summed terms
    # let D win by step ~200 and G answer with colour fringing (Set5 -3.2 dB; docs/training.md, stage 2 table).
    vgg=(--set losses.perceptual_weight=0 --set losses.pixel_weight=1.0 --set losses.gan_reduction=mean)
elif [ -n "${VGG:-}" ]; then
    vgg=(--vgg-weights "$VGG")
fi

stage1() {
if [ -z "${STEPS1:-}" ]; then
    rate="$("$here/.venv/bin/python" -c "import sys; sys.path.insert(0, 'bench'); from train import SIZES, bench
print(bench(SIZES['recipe'], 1, 'bf16', 20, 3))")"
    steps="$("$here/.venv/bin/python" -c "print(int($rate * 60 * ${MINUTES:-60} * 52 / 60))")"
    echo "measured $rate it/s: stage 1 gets $steps steps"
    set1+=(--set "train.total_steps=$steps")
fi

start=$(date +%s)
"$esrgan" train configs/cpu_x4_psnr.yaml "${set1[@]}"
echo "stage 1 wall time: $(( $(date +%s) - start )) s"
if [ ! -f "$runs/cpu_x4_psnr/model.safetensors" ]; then
    echo "stage 1 did not finish; continue it with: $esrgan train configs/cpu_x4_psnr.yaml ${set1[*]} --resume" >&2
    exit 1
fi

for set in Set5 Set14; do
    "$esrgan" evaluate --model "$runs/cpu_x4_psnr/model.safetensors" --hr "$bench/$set" --no-niqe \
        --json "$runs/cpu_x4_psnr/eval_$set.json" --report "$runs/cpu_x4_psnr/report_$set" \
        || echo "evaluate reported a problem with $set (see above); continuing" >&2
done
}
if [ -n "${SKIP1:-}" ] && [ -f "$runs/cpu_x4_psnr/model.safetensors" ]; then
    echo "SKIP1: using the stage-1 generator already in $runs/cpu_x4_psnr"
else
    stage1
fi

start=$(date +%s)
"$esrgan" train configs/cpu_x4_gan.yaml "${set2[@]}" "${vgg[@]}"
echo "stage 2 wall time: $(( $(date +%s) - start )) s"
[ -f "$runs/cpu_x4_gan/model.safetensors" ] || { echo "stage 2 did not finish (use --resume)" >&2; exit 1; }
for set in Set5 Set14; do  # with NIQE (no-reference): the GAN stage trades PSNR for it
    "$esrgan" evaluate --model "$runs/cpu_x4_psnr/model.safetensors" --model "$runs/cpu_x4_gan/model.safetensors" \
        --hr "$bench/$set" --json "$runs/cpu_x4_gan/eval_$set.json" --report "$runs/cpu_x4_gan/report_$set" \
        || echo "evaluate reported a problem with $set (see above); continuing" >&2
done
