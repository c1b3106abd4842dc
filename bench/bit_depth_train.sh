#!/usr/bin/env bash
# Does data.bit_depth 16 make a better model of photographs? The CPU recipe's stage 1 (configs/cpu_x4_psnr.yaml) for
# STEPS steps at data.bit_depth 8 and 16, both fp32, one seed, the same photos shrunk 4x (whose shrunk pixels hold
# detail between the 8-bit levels); both scored by `esrgan evaluate --bit-depth 16` (and by the 8-bit protocol) on
# Set14 shrunk 2x in float64 and kept at 16 bits. About 2 x (STEPS / 0.7 s) on a 2-core Zen 4:
#   SEED=0 STEPS=300 PHOTOS=../data/photos/hr bash bench/bit_depth_train.sh    # OUT=/tmp/bit_depth_ab by default
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${SEED:-0} steps=${STEPS:-300} photos=${PHOTOS:-../data/photos/hr} out=${OUT:-/tmp/bit_depth_ab}
esrgan=${ESRGAN:-.venv/bin/esrgan} python=${PYTHON:-.venv/bin/python}
mkdir -p "$out/set14x2"
"$python" - "$out/set14x2" <<'PY'
import sys
from pathlib import Path

import numpy as np

from esrgan.imagedata import ImageData
from esrgan.imageio import read_image, write_image
from esrgan.resize import imresize_np

for p in sorted(Path("../shared/data/benchmarks/Set14").glob("*.png")):
    deep = np.clip(np.floor(imresize_np(read_image(p).pixels, scale=0.5) * 257.0 + 0.5), 0, 65535).astype(np.uint16)
    write_image(Path(sys.argv[1]) / p.name, ImageData(pixels=deep, bit_depth=16), overwrite=True)
PY
for bits in 8 16; do
  rm -rf "$out/runs/s${seed}b$bits"
  "$esrgan" train configs/cpu_x4_psnr.yaml --set "data.hr_dir=$photos" --set "train.total_steps=$steps" \
    --set train.precision=fp32 --set "data.bit_depth=$bits" --set "train.seed=$seed" --set logging.every=50 \
    --set "validation.every=$steps" --set "checkpoint.every=$steps" --set "output_dir=$out/runs" \
    --set "name=s${seed}b$bits" > "$out/train_s${seed}b$bits.log" 2>&1
done
for depth in 16 8; do
  "$esrgan" evaluate --hr "$out/set14x2" --model "$out/runs/s${seed}b8/model.safetensors" \
    --model "$out/runs/s${seed}b16/model.safetensors" --bit-depth "$depth" --no-niqe --overwrite \
    --json "$out/s${seed}_eval$depth.json" | grep -E "^(image|mean)"
done
