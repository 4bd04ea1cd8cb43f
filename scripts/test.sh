#!/usr/bin/env bash
# Sets up with the test tools, then checks what CI checks: lint (ruff), types (mypy), the tests.
#   scripts/test.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
