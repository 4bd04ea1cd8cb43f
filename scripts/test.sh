#!/usr/bin/env bash
# Sets up with the test tools, then checks what CI checks: lint (ruff), types (mypy), the layers
# (import-linter's contracts in pyproject.toml), the tests.
#   scripts/test.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
