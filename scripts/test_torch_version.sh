#!/usr/bin/env bash
# The whole test suite against another PyTorch release, in its own venv (.venv-torch-VERSION, left for reruns).
#   bash scripts/test_torch_version.sh 2.3.1            # the oldest release the package accepts (torch>=2.3)
#   bash scripts/test_torch_version.sh 2.11.0 -x -k ddp # the device machines' release; extra args go to pytest
# CI pins 2.13.0 (scripts/setup.sh), so this is how an older torch is checked: each release has broken something
# the pinned one hides (README, "Your own PyTorch"). PyPI's Linux x86_64 wheels of other
# releases are CUDA builds, 3-5 GB with their NVIDIA libraries; they run the suite on the CPU all the same.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: bash scripts/test_torch_version.sh VERSION [pytest args]}
shift
venv=".venv-torch-$version"
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"$venv/bin/python" -c "import torch" >/dev/null 2>&1 || "${pip[@]}" "torch==$version"
"${pip[@]}" -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import torch, numpy; print(f'torch {torch.__version__}, numpy {numpy.__version__}')"
"$venv/bin/python" -m pytest -q "$@"
