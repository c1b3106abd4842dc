#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (after `bash scripts/setup.sh --dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; .venv/bin/ruff check src tests bench tools scripts
.venv/bin/ruff format --check src tests bench tools scripts
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -q "$@"
