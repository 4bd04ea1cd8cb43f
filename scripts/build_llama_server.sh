#!/usr/bin/env bash
# Builds llama.cpp's own server (llama-server: parallel slots, continuous batching, tool calls with
# --jinja) into .venv/bin from the llama.cpp that the installed llama-cpp-python vendors, so that the
# in-process models and the model server are the same llama.cpp. Static (run-time CPU variants need
# shared libraries), so one portable x86-64 level: native tuning, AMX and AVX-512 off, AVX2/FMA/F16C
# where the host has them (every x86-64 server of the last decade), SSE4.2 otherwise. No curl, no
# OpenSSL: it never fetches a model. Skipped when .venv/bin/llama-server was built from this version.
# About 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ver=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
stamp=.venv/share/aiagent-tui/llama-server.version
if [ -x .venv/bin/llama-server ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ver" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "setup: building llama-server from llama-cpp-python $ver's llama.cpp (about 5 minutes)"
.venv/bin/python -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$ver"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  simd="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  simd="-DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
fi
# shellcheck disable=SC2086  # lists of flags
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF \
  -DGGML_CPU_ALL_VARIANTS=OFF $simd -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF \
  -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
  -DGGML_AMX_BF16=OFF ${LLAMA_EXTRA_CMAKE_ARGS:-} -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF >"$work/cmake.log" || { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" || { tail -50 "$work/build.log"; exit 1; }
install -m 755 "$work/build/bin/llama-server" .venv/bin/llama-server
.venv/bin/python scripts/check_llama_build.py || { rm -f .venv/bin/llama-server; exit 1; }
mkdir -p "$(dirname "$stamp")"
echo "$ver" >"$stamp"
