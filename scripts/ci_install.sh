#!/usr/bin/env bash
# CI of the install paths (issue 10), each from a fresh clone of HEAD into a new, empty
# virtual environment, the way a user would take them:
#   1. `pip install .` with the base dependencies only: `serve` answers every RPC, `route`,
#      `config check` and `config default` work; `train` (and `eval --plot`) exit 2 with one
#      line naming the extra to install.
#   2. `pip wheel .`: the wheel holds the generated gRPC code, the compiled extension, the
#      model and the rules, no build leftovers; installed into a fresh venv it serves Route,
#      Complete and RouteBatch (on the embedded default demo backend), and GetStats counts
#      them in the default store.
#   3. the sdist builds that same wheel (same files, the same bytes but for the extension).
#   4. `scripts/serve.sh`, the README's first command, on a fresh clone: health SERVING and a
#      Route over gRPC, then SIGTERM.
# Servers listen on free loopback ports (serve.sh on its default [::]:50051 when that is
# free, as the README runs it). Temporary directories and processes are removed on exit.
# pip's cache is reused, so only the project itself is built (four times).
#
# Usage: scripts/ci_install.sh    (needs python3 with venv, a C compiler, git)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON3="${PYTHON3:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/modelrouter-install.XXXXXX")"
servers=()
started=$SECONDS
# The embedded default configuration keeps a SQLite store in the per-user state directory:
# the servers started here keep theirs in $tmp, removed on exit, not in the user's home.
export XDG_STATE_HOME="$tmp/state"

cleanup() {
    local pid
    for pid in ${servers[@]+"${servers[@]}"}; do
        # Each server runs in its own session: stop the whole group (serve.sh, the
        # supervisor, its workers).
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in ${servers[@]+"${servers[@]}"}; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
    echo "ci_install: cleaned up after $((SECONDS - started)) s"
}
trap cleanup EXIT

step() { printf '\n=== ci_install: %s (%ds) ===\n' "$*" "$((SECONDS - started))"; }
fail() { echo "ci_install: $*" >&2; exit 1; }

# clone NAME: a fresh clone of HEAD (committed work only), even a detached one, in $tmp/NAME.
clone() {
    git clone --quiet --no-checkout "$repo" "$tmp/$1"
    git -C "$tmp/$1" fetch --quiet "$repo" HEAD
    git -C "$tmp/$1" checkout --quiet FETCH_HEAD
}

new_venv() {
    "$PYTHON3" -m venv "$tmp/$1"
    echo "$tmp/$1/bin"
}

free_port() {
    "$PYTHON3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server LOG COMMAND...: run COMMAND in its own session, record its pid in $server_pid.
start_server() {
    local log="$1"
    shift
    setsid "$@" >"$log" 2>&1 </dev/null &
    server_pid=$!
    servers+=("$server_pid")
}

# probe BIN ADDRESS PID LOG [ARGS...]: the gRPC probe with BIN's interpreter, outside the tree.
probe() {
    local bin="$1" address="$2" pid="$3" log="$4"
    shift 4
    if ! (cd "$tmp" && "$bin/python" "$repo/tests/install_probe.py" "$address" --pid "$pid" "$@"); then
        echo "--- server log ($log) ---" >&2
        tail -n 40 "$log" >&2
        fail "the gRPC probe of $address failed"
    fi
}

# stop_server PID: SIGTERM and wait for a clean exit (0).
stop_server() {
    local pid="$1" code=0
    kill -TERM "$pid"
    wait "$pid" || code=$?
    local left=() other
    for other in "${servers[@]}"; do [[ $other == "$pid" ]] || left+=("$other"); done
    servers=(${left[@]+"${left[@]}"})
    [[ $code -eq 0 ]] || fail "the server (pid $pid) exited $code after SIGTERM"
}

step "1. pip install . (base dependencies only)"
clone base
base="$(new_venv venv-base)"
"$base/pip" install --quiet "$tmp/base"
for module in scipy sklearn matplotlib; do
    if "$base/python" -c "import $module" 2>/dev/null; then
        fail "the base install has $module"
    fi
done
(
    cd "$tmp"
    "$base/python" -c 'import router.fastpath as f; assert f.IMPLEMENTATION == "compiled", f.IMPLEMENTATION'
    "$base/modelrouter" config default >config.yaml
    "$base/modelrouter" config check config.yaml
    "$base/modelrouter" route "Review this contract clause for compliance issues"
    "$base/modelrouter" --help | grep -q calibrate || fail "--help does not list calibrate"
    for command in train eval calibrate; do
        "$base/modelrouter" "$command" --help >/dev/null
    done
    code=0
    "$base/modelrouter" train --data "$repo/tests/fixtures/routing_sample.jsonl" \
        --out model.npz 2>train.err || code=$?
    [[ $code -eq 2 && $(wc -l <train.err) -eq 1 ]] || fail "train without its extra: exit $code: $(cat train.err)"
    grep -qF "pip install 'modelrouter[train]'" train.err || fail "train: $(cat train.err)"
    cat train.err
)
port="$(free_port)"
start_server "$tmp/serve-base.log" "$base/modelrouter" serve --host 127.0.0.1 --port "$port" --workers 2
probe "$base" "127.0.0.1:$port" "$server_pid" "$tmp/serve-base.log"
stop_server "$server_pid"

step "2. pip wheel . -> a fresh venv -> serve"
clone wheel
"$base/pip" wheel --quiet --no-deps --wheel-dir "$tmp/dist-tree" "$tmp/wheel"
wheel="$(echo "$tmp"/dist-tree/modelrouter-*.whl)"
"$base/python" - "$wheel" <<'PY'
import fnmatch
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
required = [
    "router/_proto/modelrouter/v1/router_pb2.py",
    "router/_proto/modelrouter/v1/router_pb2_grpc.py",
    "router/_fastpath.cpython-*.so",
    "router/_fastpath_py.py",
    "router/models/default.npz",
    "router/models/rules.yaml",
    "modelrouter-*.dist-info/licenses/third_party/xxhash/LICENSE",
]
missing = [p for p in required if not fnmatch.filter(names, p)]
leftovers = [n for n in names if n.endswith((".c", ".html", ".o", ".pyc")) or n.startswith("build/")]
if missing or leftovers:
    sys.exit(f"ci_install: {sys.argv[1]}: missing {missing}, build leftovers {leftovers}")
print(f"wheel: {len(names)} files, the generated gRPC code, the extension, the model and the rules")
PY
wheel_venv="$(new_venv venv-wheel)"
"$wheel_venv/pip" install --quiet "$wheel"
port="$(free_port)"
start_server "$tmp/serve-wheel.log" "$wheel_venv/modelrouter" serve --host 127.0.0.1 --port "$port"
probe "$wheel_venv" "127.0.0.1:$port" "$server_pid" "$tmp/serve-wheel.log" \
    --rpcs route,complete,batch,stats
stop_server "$server_pid"

step "3. the sdist builds the same wheel"
clone sdist
"$base/pip" install --quiet build
"$base/python" -m build --sdist --outdir "$tmp/dist-sdist" "$tmp/sdist" >"$tmp/sdist.log" 2>&1 \
    || { tail -n 40 "$tmp/sdist.log" >&2; fail "building the sdist failed"; }
sdist="$(echo "$tmp"/dist-sdist/modelrouter-*.tar.gz)"
"$base/pip" wheel --quiet --no-deps --wheel-dir "$tmp/dist-sdist" "$sdist"
"$base/python" - "$wheel" "$tmp"/dist-sdist/modelrouter-*.whl "$sdist" <<'PY'
import sys
import tarfile
import zipfile

tree, from_sdist = (zipfile.ZipFile(p) for p in sys.argv[1:3])
names = sorted(tree.namelist())
if names != sorted(from_sdist.namelist()):
    sys.exit(f"ci_install: the sdist's wheel differs: {set(names) ^ set(from_sdist.namelist())}")
# The extension's bytes hold its build paths; RECORD holds every file's hash.
differ = [
    n for n in names
    if not n.endswith((".so", "/RECORD")) and tree.read(n) != from_sdist.read(n)
]
if differ:
    sys.exit(f"ci_install: the sdist's wheel has other contents in {differ}")
members = tarfile.open(sys.argv[3]).getnames()
generated = [m for m in members if "/router/_proto/modelrouter/" in m or m.endswith((".c", ".so"))]
if generated:
    sys.exit(f"ci_install: the sdist holds generated files: {generated}")
print(f"sdist: {len(members)} entries, no generated file; its wheel has the same {len(names)} files")
PY

step "4. scripts/serve.sh on a fresh clone, as the README says"
clone serve
serve_args=()
address="localhost:50051"
if ! "$PYTHON3" -c 'import socket; socket.create_server(("", 50051), family=socket.AF_INET6, dualstack_ipv6=True).close()' 2>/dev/null; then
    # A busy shared machine: the same command on another port.
    port="$(free_port)"
    serve_args=(--port "$port")
    address="localhost:$port"
    echo "port 50051 is taken: scripts/serve.sh --port $port"
fi
start_server "$tmp/serve-sh.log" bash -c 'cd "$1" && shift && exec scripts/serve.sh "$@"' \
    serve-sh "$tmp/serve" "${serve_args[@]}"
# serve.sh first sets up .venv in the clone (an editable install of the base dependencies).
probe "$base" "$address" "$server_pid" "$tmp/serve-sh.log" --wait 900 --rpcs route
stop_server "$server_pid"
grep -q "compiled fast path" "$tmp/serve-sh.log" || fail "serve.sh: no compiled fast path"

step "all install paths passed"
