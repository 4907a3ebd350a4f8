#!/usr/bin/env bash
# Set up modelrouter on this machine: the Debian packages the build needs (python3-dev,
# build-essential, python3-venv; only those missing), a virtualenv in .venv, and the project
# installed into it in editable mode (which builds the Cython extension in place against the
# vendored third_party/xxhash/xxhash.h and generates router/_proto/).
#
# Usage: scripts/setup.sh [EXTRAS]    e.g. scripts/setup.sh test,dev,train,plot
# Idempotent. Without a C compiler (and no root or sudo to install one), it installs the
# pure-Python twin of the fast path and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"

# Debian packages the build needs, when missing: Python's headers and a C compiler (the
# Cython extension), venv (the virtualenv).
PY_INCLUDE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
missing=()
[[ -f "$PY_INCLUDE/Python.h" ]] || missing+=(python3-dev)
command -v gcc >/dev/null || missing+=(build-essential)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if (( ${#missing[@]} )); then
    SUDO=""
    if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO=sudo; fi
    if [[ $(id -u) -eq 0 || -n "$SUDO" ]] && command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: ${missing[*]} missing and apt-get unavailable: the pure-Python twin" \
            "may be used, or the install may fail" >&2
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
spec="."
[[ -n "$EXTRAS" ]] && spec=".[${EXTRAS}]"
# Skip pip when the build inputs are unchanged since the last successful install with these
# extras (or any extras, when none are asked for): the editable install already sees Python
# edits, and pip takes a while even with nothing to do.
inputs=$(cat pyproject.toml setup.py router/_fastpath.pyx third_party/xxhash/xxhash.h \
    $(find protos -name '*.proto' | sort) \
    | sha256sum | cut -d' ' -f1)
done_inputs="" done_spec=""
[[ -f .venv/.modelrouter-setup ]] && read -r done_inputs done_spec < .venv/.modelrouter-setup
if [[ "$done_inputs" != "$inputs" || ( "$spec" != "." && "$done_spec" != "$spec" ) ]] \
    || ! .venv/bin/python -c 'import router._proto' 2>/dev/null; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e "$spec"
    echo "$inputs $spec" > .venv/.modelrouter-setup
fi
.venv/bin/python -c 'import router.fastpath as f; print(f"setup: modelrouter installed in .venv ({f.IMPLEMENTATION} fast path)")'
