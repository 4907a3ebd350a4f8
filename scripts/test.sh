#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine and run all of it:
#   the project with its test/dev extras (scripts/setup.sh), the local LLM for the `llm`
#   tests (scripts/install_llm.sh), PostgreSQL for the store tests
#   (scripts/install_postgres.sh), Prometheus for the metrics test
#   (scripts/install_prometheus.sh), Redis for the limits shared across replicas
#   (scripts/install_redis.sh), lint and types (ruff; mypy --strict on router, bench and
#   tests; cython-lint), the Python tests (compiled fast path, local LLM, PostgreSQL,
#   Prometheus and Go required, not skipped), the Helm chart (scripts/ci_helm.sh: a pinned
#   helm from the Go module proxy, lint, template, rendered configurations checked), the
#   smoke runs of the benchmarks, the install paths (scripts/ci_install.sh: base install,
#   wheel, sdist and scripts/serve.sh, each from a fresh clone of HEAD into a new venv), and
#   the Go and Java client tests with the ghz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON=.venv/bin/python

step() { printf '\n==> %s\n' "$*"; }

step "set up the project (.venv)"
scripts/setup.sh test,dev,train,plot
step "install the local LLM (llama-cpp-python[server], Gemma 3 270M)"
scripts/install_llm.sh "$PYTHON"
step "install PostgreSQL for the store tests (Debian's postgresql, when missing)"
scripts/install_postgres.sh
step "install Prometheus for the metrics test (Debian's prometheus, when missing)"
scripts/install_prometheus.sh
step "install Redis for the shared tenant limits (Debian's redis-server, when missing)"
scripts/install_redis.sh

step "lint and types"
.venv/bin/ruff check router tests bench
.venv/bin/ruff format --check router tests bench
.venv/bin/mypy router bench tests
PATH="$PWD/.venv/bin:$PATH" .venv/bin/cython-lint router/_fastpath.pyx

step "Python tests"
MODELROUTER_REQUIRE_EXTENSIONS=1 MODELROUTER_REQUIRE_LLM=1 MODELROUTER_REQUIRE_POSTGRES=1 \
    MODELROUTER_REQUIRE_PROMETHEUS=1 MODELROUTER_REQUIRE_REDIS=1 MODELROUTER_REQUIRE_GO=1 "$PYTHON" -m pytest -q

step "Helm chart: helm lint and helm template, rendered configurations checked"
scripts/ci_helm.sh

step "benchmark smoke runs"
scripts/ci_server.sh
"$PYTHON" bench/bench_fastpath.py --smoke
"$PYTHON" bench/quality_baseline.py --smoke
"$PYTHON" bench/controller.py --smoke --out "$(mktemp -d)"
"$PYTHON" bench/learning_curve.py --smoke --out "$(mktemp -d)"
"$PYTHON" bench/bench_limits.py --smoke
"$PYTHON" bench/store_write.py --smoke --out "$(mktemp -d)/store_write.json"
"$PYTHON" bench/drain.py --rounds 1 --out "$(mktemp -d)/drain.json"

step "install paths: pip install ., the wheel, the sdist, scripts/serve.sh on a fresh clone"
scripts/ci_install.sh

if [[ -x scripts/ci_clients.sh ]]; then
    step "Go and Java clients, ghz smoke"
    VENV=.venv MODELROUTER_REQUIRE_REDIS=1 scripts/ci_clients.sh
fi
step "all tests passed"
