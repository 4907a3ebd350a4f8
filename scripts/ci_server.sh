#!/usr/bin/env bash
# CI step of the gRPC service (issue 3): a few seconds of its benchmark, so the script cannot
# rot. The service's tests (tests/integration/server, tests/unit/server, tests/unit/
# test_service.py, tests/integration/store) are collected by the plain `pytest` run.
# Expects the project installed in .venv (or PYTHON pointing at an interpreter that has
# it); needs no system package beyond what the project build needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

"$PYTHON" bench/route_grpc.py --duration 1 --warmup 0.5 --workers 1 --queries 200 \
    --out "${TMPDIR:-/tmp}/route_grpc_smoke.json"
"$PYTHON" bench/store_write.py --smoke --out "${TMPDIR:-/tmp}/store_write_smoke.json"
"$PYTHON" bench/metrics_cost.py --calls 2000 --out "${TMPDIR:-/tmp}/metrics_cost_smoke.json"
