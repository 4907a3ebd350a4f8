#!/usr/bin/env bash
# Load-test modelrouter's Route (and Complete) with ghz against a no-op Go gRPC server.
#
#   bench/ghz_route.sh [--duration SECONDS] [--no-soak] [--soak SECONDS] [--profile] [--smoke]
#                      [other bench/ghz_route.py flags]
#
# Installs ghz (pinned) from the Go module proxy into bench/.bin/, generates the Go code and
# builds the baseline (bench/baseline/), then runs bench/ghz_route.py, which writes
# bench/results/ghz_route.json and .md. --smoke is a few-second run of every step for CI
# (no soak), written to bench/.cache/ghz_route_smoke.json so it never overwrites the
# recorded results. Route with --workers 2 is also measured, interleaved round by round, with
# metrics on and off, tracing on (to an OTLP sink in the benchmark process; needs the
# tracing extra) and the log line sampled. --profile samples the router_w1 run with py-spy
# (installed into the venv, pinned; it needs ptrace, which some containers forbid, so the
# smoke run leaves it out).
# Needs the modelrouter command: $MODELROUTER_BIN, $VENV/bin/modelrouter
# ($VENV defaults to .venv) or modelrouter on PATH.
set -euo pipefail

GHZ_VERSION=v0.93.0   # github.com/bojand/ghz
PY_SPY_VERSION=0.4.3

bench="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$bench/.." && pwd)"
bin="$bench/.bin"
venv="${VENV:-$repo/.venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac

args=()
smoke=0
profile=0
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke=1 ;;
        --profile) profile=1 ;;
        *) args+=("$arg") ;;
    esac
done

if [[ -x "$bin/ghz" ]] && go version -m "$bin/ghz" 2>/dev/null | grep -q "[[:space:]]$GHZ_VERSION[[:space:]]"; then
    :
else
    echo "ghz_route.sh: installing github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION into $bin" >&2
    GOBIN="$bin" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
fi

"$repo/clients/go/generate.sh"
(cd "$bench/baseline" && go build -o "$bin/baseline" .)

modelrouter="${MODELROUTER_BIN:-}"
if [[ -z "$modelrouter" && -x "$venv/bin/modelrouter" ]]; then modelrouter="$venv/bin/modelrouter"; fi
if [[ -z "$modelrouter" ]]; then modelrouter="$(command -v modelrouter || true)"; fi
if [[ -z "$modelrouter" ]]; then
    echo "ghz_route.sh: no modelrouter command: set MODELROUTER_BIN or install the package in $venv" >&2
    exit 1
fi
python="$venv/bin/python"
[[ -x "$python" ]] || python="$(command -v python3)"

if (( profile )); then
    if ! "$python" -m pip show py-spy 2>/dev/null | grep -q "^Version: $PY_SPY_VERSION$"; then
        "$python" -m pip install --quiet "py-spy==$PY_SPY_VERSION"
    fi
    args+=(--profile --py-spy "$(dirname "$python")/py-spy")
fi

out=(--output "$bench/results/ghz_route.json")
if (( smoke )); then
    # The flags given after --smoke still win: argparse keeps the last value.
    out=(--output "$bench/.cache/ghz_route_smoke.json" --duration 2 --warmup 0.5 --no-soak --queries 200
         --overhead-rounds 1)
fi

cd "$repo"
exec "$python" "$bench/ghz_route.py" \
    --ghz "$bin/ghz" --baseline "$bin/baseline" --modelrouter "$modelrouter" \
    --data "$repo/../shared/data/routing_train.jsonl" --cache "$bench/.cache" \
    --command "bench/ghz_route.sh $*" "${out[@]}" "${args[@]}"
