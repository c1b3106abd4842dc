#!/usr/bin/env bash
# The whole test suite under another CPython, in its own venv (.venv-pyVERSION, left for reruns).
#   bash scripts/test_python_version.sh 3.13             # the newest CPython on the machine
#   bash scripts/test_python_version.sh 3.10 -x -k grey  # the oldest the package accepts; extra args go to pytest
# The interpreter: PYTHON, else pythonVERSION on the PATH, else pyenv's. The venv gets the pinned torch (TORCH_SPEC,
# as scripts/setup.sh) and the newest releases of everything else that install there, so a new Python is checked
# together with the numpy and Pillow its users get (BasicSR 1.4.2 broke on Python 3.12, on distutils).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: bash scripts/test_python_version.sh VERSION [pytest args]}
shift
python=${PYTHON:-$(command -v "python$version" || true)}
# pyenv's shim for a version that is not the active one is on the PATH and fails when run: then its own binary
if [ -z "${PYTHON:-}" ] && ! { [ -n "$python" ] && "$python" -c "" 2>/dev/null; }; then
  python=$(ls -d "$HOME"/.pyenv/versions/"$version"*/bin/python 2>/dev/null | tail -1)
fi
[ -n "$python" ] && [ -x "$python" ] || { echo "no python$version found (give PYTHON=/path/to/python)" >&2; exit 2; }
venv=".venv-py$version"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"$venv/bin/python" -c "import torch" >/dev/null 2>&1 || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
"${pip[@]}" -e ".[models,demo,serve,video,ncnn,dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import sys, torch, numpy, PIL; print(f'Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, Pillow {PIL.__version__}')"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$venv/bin/python" -m pytest -q -n auto --maxprocesses 4 "$@"
