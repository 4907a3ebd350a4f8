#!/usr/bin/env bash
# CI for the Go and Java clients and the ghz load-test script (issue 5).
#
# Runs on a fresh machine with Go, Java 17 and Maven preinstalled, after the Python package
# has been installed in the venv at $VENV (default .venv) so that `modelrouter` exists there.
# The Go test of limits shared across three replicas needs Debian's redis-server
# (scripts/install_redis.sh); it skips without it unless MODELROUTER_REQUIRE_REDIS is set.
# The TLS tests make their certificates at run time (Go's crypto/x509; openssl for Java).
# Generates the Go code (pinned protoc plugins from the Go module proxy), runs the Go tests
# and the Java tests (protoc, protoc-gen-grpc-java and the libraries from Maven Central)
# against a real `modelrouter serve`, then a few-second smoke run of bench/ghz_route.sh.
# Idempotent; the Go module and build caches and ~/.m2 are reused between runs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export VENV="${VENV:-.venv}"
case "$VENV" in /*) venv="$VENV" ;; *) venv="$repo/$VENV" ;; esac
export MODELROUTER_BIN="${MODELROUTER_BIN:-$venv/bin/modelrouter}"
if [[ ! -x "$MODELROUTER_BIN" ]]; then
    echo "ci_clients.sh: $MODELROUTER_BIN is missing: install the package in $venv first" >&2
    exit 1
fi

step() { echo; echo "=== ci_clients: $* ==="; }

step "protoc for the Go code generation"
if ! "$venv/bin/python" -c 'import grpc_tools.protoc' 2>/dev/null && ! command -v protoc >/dev/null; then
    # The same pin as pyproject.toml's build requirement.
    "$venv/bin/pip" install --quiet grpcio-tools==1.85.1
fi

step "Go: generate, vet, test against modelrouter serve"
clients/go/generate.sh
(
    cd clients/go
    unformatted="$(gofmt -l modelrouter cmd internal)"
    if [[ -n "$unformatted" ]]; then
        echo "gofmt would change: $unformatted" >&2
        exit 1
    fi
    go vet ./...
    go test -count=1 ./...
)
(cd bench/baseline && go vet ./...)

step "Java: generate, compile, JUnit against modelrouter serve"
(cd clients/java && mvn -B -ntp verify)

step "ghz_route.sh smoke run"
bench/ghz_route.sh --smoke

echo
echo "ci_clients: Go tests, Java tests and the ghz smoke run passed"
