#!/usr/bin/env bash
# The GPU rows still missing from issues 15 and 16, as one prepared script for a session lent a device machine
# (15 device-minutes in all, one command at most 10 minutes, the machine's own python3 with torch + CUDA).
# Here, before the lease (33 MB travels with the call; .gpu/ is git-ignored):
#   .venv/bin/esrgan convert realesrgan-x4plus .gpu/realesrgan-x4plus.fp16.safetensors --half
#   bash bench/gpu_lease_preflight.sh   # this script's smoke with the device's torch and package set (~40 s)
# Then one `run` call with carry [".gpu"] and timeout_s 590 (the parts: 300 + 220 s, each with 20 s to end after SIGTERM):
#   bash bench/gpu_lease.sh            # train (<= 300 s) then batch (<= 220 s)
#   bash bench/gpu_lease.sh batch      # one part: train | batch
# Not in this script (it fills the 590 s): Real-ESRGAN's compact model's upscaling rows, a minute, if device time
# remains on the warm machine: prepare `.venv/bin/esrgan convert realesr-animevideov3
# .gpu/realesr-animevideov3.fp16.safetensors --half` (1.2 MB) beside the other file, then
#   PYTHONPATH=src python3 bench/gpu.py --only infer --model .gpu/realesr-animevideov3.fp16.safetensors
# Each part runs under its own timeout, so a slow one cannot eat the other's time; rows are written to
# $OUT/<part>.json as they are measured (bench/gpu.py --json), so a part cut short keeps what it measured, and the
# printed tables and logs land in $OUT/<part>.log. Extra arguments go to bench/gpu.py (`--smoke` tries it on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-lease}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=src
python=${PYTHON:-python3}
# here, before a lease, the system python3 has no torch: the project's venv stands in (the device's python3 has it)
if [ -z "${PYTHON:-}" ] && ! "$python" -c "import torch" 2>/dev/null && [ -x .venv/bin/python ]; then
  python=.venv/bin/python
fi
part=all
case "${1:-}" in train | batch | all) part=$1; shift ;; esac
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$out/machine.txt"
status=0
if [ "$part" != batch ]; then  # issue 15: stage 1 bf16 >= 40 it/s, compiled G inside the graph, NCCL 1 process
  # what is still unmeasured runs first, after this card's own bf16 baseline (session 6's lease ran out of time
  # before its last rows); the rows of the fp32 / NCHW comparison, measured then, come last
  # fp16 (eager, grad scaler) after them: issue 15 asks for fp32/bf16/fp16 side by side
  timeout -k 20 "${TRAIN_TIMEOUT:-300}" "$python" bench/gpu.py --only train --skip-row "LR made" \
    --skip-row "bf16, channels-last, eager" --train-compile --first "bf16, channels-last, CUDA graph" --first NCCL \
    --first resume --first "compiled G blocks" --first "compiled G whole" --first "stage 2 bf16" --first fp16 \
    --json "$out/train.json" "$@" 2>&1 | tee "$out/train.log" || status=1
fi
if [ "$part" != train ]; then  # issue 16: the batch command >= 80 % of the model-alone rate, PNG and JPEG
  model=.gpu/realesrgan-x4plus.fp16.safetensors
  [ -f "$model" ] || { echo "gpu_lease: $model missing (see the top of this script); a random model stands in"; model=""; }
  timeout -k 20 "${BATCH_TIMEOUT:-220}" "$python" bench/gpu.py --only batch --no-bare-compile ${model:+--model "$model"} \
    --json "$out/batch.json" "$@" 2>&1 | tee "$out/batch.log" || status=1
fi
exit $status
