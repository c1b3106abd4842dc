#!/usr/bin/env bash
# The CPU recipe (issue 5's proof of learning), start to finish on a 2-core machine:
#   1. real photographs: the 39 photographs of four Debian wallpaper packages (scripts/fetch_photos.sh), if not
#      fetched yet;
#   2. stage 1 (configs/cpu_x4_psnr.yaml): RRDBNet 6 blocks x 48 features (growth 24) plus the bicubic upscale of its input
#      (model.image_residual), L1, cosine lr 5e-4 -> 1e-6, EMA 0.999,
#      bf16 autocast where the CPU has it natively (fp32 elsewhere), batch 16 of 96x96 HR patches; validated on Set5 every 500 steps;
#   3. Set5 / Set14: Y-PSNR/SSIM of bicubic vs the stage-1 model (esrgan evaluate, the literature protocol);
#   4. a short stage 2 (configs/cpu_x4_gan.yaml) from the stage-1 generator, and the same evaluation with crops.
# ARCH=compact runs the same recipe with Real-ESRGAN's compact generator (configs/cpu_x4_compact_psnr.yaml and
# cpu_x4_compact_gan.yaml: 16 convs x 64 features, ~5x faster to train and to upscale; docs/training.md).
#
#   scripts/train_cpu_recipe.sh                       the full recipe (60 minutes of stage 1, then stage 2)
#   STEPS1=40 STEPS2=4 VGG=random scripts/train_cpu_recipe.sh    a quick check that every stage runs
#   SKIP1=1 VGG=none scripts/train_cpu_recipe.sh       stage 2 only, from the stage-1 model already in RUNS
# A rerun with the same RUNS continues: a finished stage (its model.safetensors in RUNS) is kept and not trained
# again (delete its folder, or give another RUNS, to train it anew), an interrupted one (Ctrl-C, a kill: a
# step checkpoint, no model yet) resumes from its last checkpoint (`esrgan train --resume`: exact, and a budget run
# keeps the time already spent), and an evaluation newer than its model is not redone.
# Environment: DATA (your photograph folder: the images in DATA/hr, or else in DATA itself; unset = the recipe's
# 39 photographs in ../data/photos, fetched there once: a DATA you give is never downloaded into), RUNS (default
# runs/ in the repository), BENCH (benchmark sets, default ../shared/data/benchmarks); relative DATA, RUNS, BENCH
# and VGG paths are taken from the folder you run the script in. STEPS1 / STEPS2 (override total_steps), MINUTES
# (stage-1 budget, default 60), SET1 / SET2 (extra stage-1 / stage-2 config overrides, space-separated KEY=VALUE,
# e.g. SET1="data.hr_downscale=[2.0,4.0]"; SET2 comes last, over STEPS2's and VGG=none's), ESRGAN (the esrgan
# command, default .venv/bin/esrgan),
# VGG (VGG19 weight file for stage 2; "none" = no perceptual loss: stage 2 becomes L1 (weight 1) + RaGAN (5e-3,
# terms averaged as BasicSR does), the demonstration this repository's docs show, made on a machine without ImageNet
# VGG19 weights; "random" = an untrained VGG19, for a smoke run only: with the paper's weights its perceptual loss is
# ~1e-6, nothing anchors the content and the GAN stage diverges within ~60 steps).
#
# Without STEPS1, stage 1 runs on a wall-clock budget (train.time_budget_minutes = MINUTES): the cosine schedule
# follows elapsed time and the run ends when the budget is spent (within a few seconds; it keeps the time its last
# validation took in reserve), however fast or slow the machine is at any moment: a busy first minute (a browser,
# another job) no longer shrinks the whole run. The log and the model's metadata say how many steps it made. With
# STEPS1 the run is a fixed number of steps instead, and deterministic for that number.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
case "${ARCH:-rrdbnet}" in
    rrdbnet) psnr=cpu_x4_psnr gan=cpu_x4_gan ;;
    compact) psnr=cpu_x4_compact_psnr gan=cpu_x4_compact_gan ;;
    *) echo "ARCH must be rrdbnet or compact, not ${ARCH}" >&2; exit 2 ;;
esac
# paths given relative to the caller's folder, made absolute before the cd to the repository
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
[ -z "${DATA:-}" ] || DATA="$(absolute "$DATA")"
[ -z "${RUNS:-}" ] || RUNS="$(absolute "$RUNS")"
[ -z "${BENCH:-}" ] || BENCH="$(absolute "$BENCH")"
case "${VGG:-}" in "" | none | random) ;; *) VGG="$(absolute "$VGG")" ;; esac
cd "$here"
esrgan="${ESRGAN:-$here/.venv/bin/esrgan}"
data="${DATA:-$here/../data/photos}"
runs="${RUNS:-runs}"
bench="${BENCH:-$here/../shared/data/benchmarks}"

if [ -z "${DATA:-}" ]; then
    # the default folder is refreshed when an older fetch_photos.sh filled it (25 photographs until session 13)
    [ "$(cat "$data/.version" 2>/dev/null)" = "$(scripts/fetch_photos.sh --version)" ] || scripts/fetch_photos.sh "$data"
    hr="$data/hr"
elif [ -d "$data/hr" ]; then
    hr="$data/hr"
else
    # your own photographs, directly in DATA; never a download into your folder
    hr="$data"
    found=$(find "$hr" -maxdepth 1 -type f ! -name '.*' \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \
        -o -iname '*.jpe' -o -iname '*.webp' -o -iname '*.tif' -o -iname '*.tiff' -o -iname '*.bmp' -o -iname '*.gif' \
        -o -iname '*.ppm' -o -iname '*.pgm' -o -iname '*.pnm' -o -iname '*.tga' \) -print -quit 2>/dev/null || true)
    if [ ! -d "$data" ]; then
        echo "DATA=$data: no such folder; point DATA at your photographs (or unset it for the recipe's own)" >&2
        exit 2
    elif [ -z "$found" ]; then
        echo "DATA=$data: no images there nor in $data/hr; point DATA at your photographs (or unset it for the recipe's own)" >&2
        exit 2
    fi
fi

set1=(--set "data.hr_dir=$hr" --set "output_dir=$runs" --set "validation.dir=$bench/Set5")
set2=(--set "data.hr_dir=$hr" --set "output_dir=$runs" --set "validation.dir=$bench/Set5"
      --set "train.pretrained_g=$runs/$psnr/model.safetensors")
read -r -a extra <<< "${SET1:-}"  # split on spaces, no glob expansion (a list value is "[2.0,4.0]")
for kv in ${extra[@]+"${extra[@]}"}; do set1+=(--set "$kv"); done
set2_extra=()  # SET2 goes last: it overrides STEPS2's and VGG=none's settings too
read -r -a extra <<< "${SET2:-}"
for kv in ${extra[@]+"${extra[@]}"}; do set2_extra+=(--set "$kv"); done
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

# train STAGE RUN_FOLDER CONFIG ARGS...: a fresh run, the interrupted one resumed, or nothing when it has finished
train() {
    local stage=$1 dir=$2
    shift 2
    if [ -f "$dir/model.safetensors" ]; then
        echo "stage $stage: already trained in $dir (delete that folder, or give another RUNS, to train it anew)"
        return 0
    fi
    local resume=()
    if compgen -G "$dir/checkpoints/step_*.ckpt" >/dev/null; then
        echo "stage $stage: continuing the interrupted run in $dir"
        resume=(--resume)
    fi
    local start
    start=$(date +%s)
    "$esrgan" train "$@" ${resume[@]+"${resume[@]}"}
    echo "stage $stage wall time: $(( $(date +%s) - start )) s, $(tail -n 1 "$dir/log.jsonl" | sed -E 's/.*"step": ([0-9]+).*/\1/') steps"
    if [ ! -f "$dir/model.safetensors" ]; then
        echo "stage $stage did not finish; run this script again (same RUNS) to continue it" >&2
        exit 1
    fi
}

# evaluate RUN_FOLDER SET ARGS...: skipped when its result is newer than the run's model; an older one (of an
# earlier model) is replaced (--overwrite: evaluate refuses to replace its outputs otherwise)
evaluate() {
    local dir=$1 set=$2
    shift 2
    [ "$dir/eval_$set.json" -nt "$dir/model.safetensors" ] && return 0
    "$esrgan" evaluate "$@" --hr "$bench/$set" --json "$dir/eval_$set.json" --report "$dir/report_$set" --overwrite \
        || echo "evaluate reported a problem with $set (see above); continuing" >&2
}

s1="$runs/$psnr"
if [ -n "${SKIP1:-}" ] && [ -f "$s1/model.safetensors" ]; then
    echo "SKIP1: using the stage-1 generator already in $s1"
else
    if [ -z "${STEPS1:-}" ]; then
        set1+=(--set "train.time_budget_minutes=${MINUTES:-60}" --set "train.total_steps=10000000")
        echo "stage 1: a budget of ${MINUTES:-60} minutes"
    fi
    train 1 "$s1" "configs/$psnr.yaml" "${set1[@]}"
    for set in Set5 Set14; do
        evaluate "$s1" "$set" --model "$s1/model.safetensors" --no-niqe
    done
fi

s2="$runs/$gan"
train 2 "$s2" "configs/$gan.yaml" "${set2[@]}" ${vgg[@]+"${vgg[@]}"} ${set2_extra[@]+"${set2_extra[@]}"}
for set in Set5 Set14; do  # with NIQE (no-reference): the GAN stage trades PSNR for it
    evaluate "$s2" "$set" --model "$s1/model.safetensors" --model "$s2/model.safetensors"
done
