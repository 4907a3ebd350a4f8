#!/usr/bin/env bash
# Set up modelrouter on this machine: the system header the compiled fast path needs
# (Debian's libxxhash-dev), a virtualenv in .venv, and the project installed into it in
# editable mode (which builds the Cython extension in place and generates router/_proto/).
#
# Usage: scripts/setup.sh [EXTRAS]    e.g. scripts/setup.sh test,dev,train,plot
# Idempotent. Without root (or sudo) and without xxhash.h, it installs the pure-Python
# twin of the fast path and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"

if [[ ! -f /usr/include/xxhash.h && ! -f /usr/local/include/xxhash.h ]]; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO=sudo; fi
    if [[ $(id -u) -eq 0 || -n "$SUDO" ]] && command -v apt-get >/dev/null; then
        echo "setup: installing libxxhash-dev (xxHash's C header for the compiled fast path)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libxxhash-dev >/dev/null
    else
        echo "setup: xxhash.h missing and apt-get unavailable: the pure-Python twin will be used" >&2
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
spec="."
[[ -n "$EXTRAS" ]] && spec=".[${EXTRAS}]"
.venv/bin/python -m pip install -q -e "$spec"
.venv/bin/python -c 'import router.fastpath as f; print(f"setup: modelrouter installed in .venv ({f.IMPLEMENTATION} fast path)")'
