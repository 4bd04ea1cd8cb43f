#!/usr/bin/env bash
# Sets up (Debian packages + .venv, models included), then runs the terminal app against the
# built-in PBX simulator with the local provider: a simulated caller rings every few seconds,
# speaks a real prompt and hears the agent's answer. Keys: ? help, q quit.
#   scripts/start.sh [aiagent-tui options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export AIAGENT_PROVIDER=${AIAGENT_PROVIDER:-local}
export AIAGENT_MEDIA_DIR=${AIAGENT_MEDIA_DIR:-$(mktemp -d)}
exec .venv/bin/aiagent-tui --sim "$@"
