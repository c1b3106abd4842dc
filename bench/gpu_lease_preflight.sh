#!/usr/bin/env bash
# Before spending device minutes: `bash bench/gpu_lease.sh --smoke` on this CPU as the device machine would run it,
# with its PyTorch release and without the packages it lacks. The device's python3 has torch 2.11 + CUDA, numpy,
# Pillow, safetensors, PyYAML, tqdm, tifffile, OpenCV and scikit-image, and nothing else can be installed there:
# a row that imports PyAV, starlette, ncnn, onnx, pytest, hypothesis or the packaged ncnn models would fail only on
# the lease. This runs the lease script in a throw-away venv whose site-packages links to a torch venv's (by default
# the one scripts/test_torch_version.sh makes for 2.11.0) minus those packages, with an empty model cache.
#   bash bench/gpu_lease_preflight.sh                 # ~40 s on 2 vCPUs; prints the lease script's tables
#   VENV=.venv-torch-2.11.0 bash bench/gpu_lease_preflight.sh batch
#   bash bench/gpu_lease_preflight.sh --smoke-compile   # the torch.compile rows too (~90 s more)
# Exit status: the lease script's; plus 1 when a row's note says it failed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-torch-2.11.0}
[ -x "$venv/bin/python" ] || bash scripts/test_torch_version.sh 2.11.0 --co -q >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# a venv of the same interpreter whose site-packages holds links to the torch venv's packages, minus the absent ones
# (a real venv, not PYTHONPATH: the bench's child processes, sys.executable with PYTHONPATH=src, see it too)
"$(realpath "$venv/bin/python")" -m venv --without-pip "$work/venv"
target=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$work/home"
for entry in "$site"/*; do
  case "$(basename "$entry")" in
    av | av-* | av.libs | starlette* | uvicorn* | multipart | python_multipart* | ncnn | ncnn-* | ncnn.libs | \
      onnx | onnx-* | onnxruntime* | pytest* | _pytest | xdist | execnet* | hypothesis* | _hypothesis* | \
      sr_vulkan* | anyio* | ruff* | mypy* | __editable__* | esrgan* | *.pth) continue ;;
  esac
  ln -s "$entry" "$target/"
done
"$work/venv/bin/python" -c "
import importlib.util, torch
absent = [m for m in ('av', 'starlette', 'ncnn', 'onnx', 'pytest', 'hypothesis', 'esrgan') if importlib.util.find_spec(m)]
assert not absent, f'still importable: {absent}'
print('preflight: torch', torch.__version__, 'without', 'av, starlette, ncnn, onnx, pytest, hypothesis, esrgan')"
status=0
OUT="$work/out" PYTHON="$work/venv/bin/python" ESRGAN_HOME="$work/home" bash bench/gpu_lease.sh "$@" --smoke \
  | tee "$work/lease.txt" || status=$?
if grep -E "note failed after" "$work/lease.txt"; then
  echo "preflight: a row failed (above)" >&2
  status=1
fi
exit $status
