#!/usr/bin/env bash
# Lint, type-check and run the test suite inside the project venv (run bootstrap.sh test first).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MASKSERVE_VENV:-.venv}"
export PATH="$PWD/$venv/bin:$PATH"

echo "== ruff" && ruff check . && ruff format --check .
echo "== mypy" && python scripts/typecheck.py
echo "== pytest" && python -m pytest "$@"
