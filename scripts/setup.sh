#!/usr/bin/env bash
# Sets up everything aiagent-tui needs on a Debian machine, from the project's own files:
# Debian packages, then a virtualenv in .venv with the project installed in it.
#   scripts/setup.sh          runtime
#   scripts/setup.sh --test   runtime + test/bench tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# Debian packages: the Asterisk prompts (real phone speech for the simulator's callers and tests)
# and their texts (for bench/stt_wer.py); a C/C++ toolchain and CMake, because llama-cpp-python
# has no wheel on PyPI and compiles llama.cpp on install (about 5 minutes on 2 cores).
# libportaudio2: the terminal app's audio monitor (sounddevice).
apt_pkgs=(asterisk-core-sounds-en-wav asterisk-core-sounds-en build-essential cmake libportaudio2)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup done: .venv ready (${extras:-runtime})"
