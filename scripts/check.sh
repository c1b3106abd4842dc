#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (after `bash scripts/setup.sh --dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; .venv/bin/ruff check src tests bench tools scripts
.venv/bin/ruff format --check src tests bench tools scripts
echo "== mypy"; .venv/bin/mypy
# pytest-xdist: one worker per core (at most 4), each with one torch/OpenMP thread (its CLI children inherit it),
# so the workers do not oversubscribe the cores: on 2 cores the suite took 415 s instead of ~740 s serially.
# Extra arguments go to pytest (`bash scripts/check.sh -n 0 -x` runs serially and stops at the first failure).
# The 15 slowest tests are listed at the end: CI must stay well under its 15 minutes (770 s at the end of session 30).
# The CLI tests' `esrgan` runs (tests/conftest.py run_cli) are forked from a server that has imported torch
# (tests/cli_forkserver.py: ~0.5 s instead of ~2.1 s a run); ESRGAN_TEST_FORK=0 runs each as a plain subprocess.
echo "== pytest"; OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -q -n auto --maxprocesses 4 \
  --durations=15 "$@"
