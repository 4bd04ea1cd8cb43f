#!/usr/bin/env bash
# Builds llama.cpp's own server (llama-server: parallel slots, continuous batching, tool calls with
# --jinja) into .venv/bin from the llama.cpp that the installed llama-cpp-python vendors, so that the
# in-process models and the model server are the same llama.cpp. Same portable flags as the setup's
# llama-cpp-python build (CMAKE_ARGS from scripts/setup.sh); static, no curl, no OpenSSL: it never
# fetches a model. Skipped when .venv/bin/llama-server was built from this version already.
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
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF >"$work/cmake.log" || { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" || { tail -50 "$work/build.log"; exit 1; }
install -m 755 "$work/build/bin/llama-server" .venv/bin/llama-server
.venv/bin/python scripts/check_llama_build.py || { rm -f .venv/bin/llama-server; exit 1; }
mkdir -p "$(dirname "$stamp")"
echo "$ver" >"$stamp"
