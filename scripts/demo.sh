#!/usr/bin/env bash
# Sets up, then runs the engine (local provider: Whisper, SmolLM2, Piper) against the built-in PBX
# simulator and places simulated calls of real speech: each caller hears the greeting, says a
# prompt and hears the answer. Prints the report and stops everything it started.
#   scripts/demo.sh [--count N] [--hold S] [--wav FILE]      (AIAGENT_PROVIDER=echo|tone for others)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

count=2; hold=1; wav=/usr/share/asterisk/sounds/en_US_f_Allison/agent-pass.wav
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2;;
    --hold) hold=$2; shift 2;;
    --wav) wav=$2; shift 2;;
    *) echo "usage: $0 [--count N] [--hold S] [--wav FILE]" >&2; exit 2;;
  esac
done

work=$(mktemp -d)
export ASTERISK_ARI_PORT=${ASTERISK_ARI_PORT:-8088} AIAGENT_MEDIA_DIR=$work/media AIAGENT_PROVIDER=${AIAGENT_PROVIDER:-local}
mkdir -p "$AIAGENT_MEDIA_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

.venv/bin/aiagent-sim serve --port "$ASTERISK_ARI_PORT" >"$work/sim.log" 2>&1 & pids+=($!)
.venv/bin/aiagent-tui --no-ui >"$work/engine.log" 2>&1 & pids+=($!)
# Wait until the engine is connected to the simulator's ARI.
.venv/bin/python - <<'PY'
import json, os, time, urllib.request
url = "http://127.0.0.1:%s/health" % os.environ.get("HEALTH_PORT", "15000")
for _ in range(100):
    try:
        if json.load(urllib.request.urlopen(url, timeout=1))["ari_connected"]:
            break
    except OSError:
        pass
    time.sleep(0.1)
else:
    raise SystemExit("the engine did not connect to the simulator; see the logs")
PY
echo "engine log: $work/engine.log   simulator log: $work/sim.log"
.venv/bin/aiagent-sim call --ari "http://127.0.0.1:$ASTERISK_ARI_PORT" --count "$count" --hold "$hold" --wav "$wav" --converse --report "$work/report.json"
.venv/bin/python -m json.tool "$work/report.json"
echo "--- the conversation, from the engine's log:"
grep -E "\] (caller|agent): |call from|call ended|barge-in" "$work/engine.log" | sed 's/^.*engine.sessions: //' || true
