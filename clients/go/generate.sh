#!/usr/bin/env bash
# Generate the Go code for protos/ into clients/go/gen/ (gitignored).
#
# The protoc plugins are installed at pinned versions from the Go module proxy into
# clients/go/.bin/ (gitignored). protoc itself is the project's: grpcio-tools in the
# venv ($VENV, default <repo>/.venv; installed into it at pyproject.toml's pin when the venv
# lacks it), else, without a venv, protoc on PATH (Debian's protobuf-compiler). Idempotent: plugins already at the pinned version are kept.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12      # google.golang.org/protobuf, same as go.mod
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2   # google.golang.org/grpc/cmd/protoc-gen-go-grpc

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="$here/.bin"
venv="${VENV:-$repo/.venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac

# Install a Go tool at a pinned version unless the binary already has that version.
install_tool() {
    local pkg="$1" version="$2" name
    name="$(basename "$pkg")"
    if [[ -x "$bin/$name" ]] && go version -m "$bin/$name" 2>/dev/null | grep -q "[[:space:]]$version[[:space:]]"; then
        return
    fi
    echo "generate.sh: installing $pkg@$version into $bin" >&2
    GOBIN="$bin" go install "$pkg@$version"
}

install_tool google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install_tool google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

# A venv made by scripts/serve.sh has no grpcio-tools (it is a development extra): add the
# version pyproject.toml pins to the venv rather than fail.
if [[ -x "$venv/bin/python" ]] && ! "$venv/bin/python" -c 'import grpc_tools.protoc' 2>/dev/null; then
    pin="$(grep -o -m1 'grpcio-tools==[0-9.]*' "$repo/pyproject.toml")"
    echo "generate.sh: installing $pin into $venv" >&2
    "$venv/bin/pip" install --quiet "$pin"
fi
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import grpc_tools.protoc' 2>/dev/null; then
    protoc=("$venv/bin/python" -m grpc_tools.protoc)
elif command -v protoc >/dev/null; then
    protoc=(protoc)
else
    echo "generate.sh: no protoc: install grpcio-tools in $venv or Debian's protobuf-compiler" >&2
    exit 1
fi

mapfile -t protos < <(cd "$repo/protos" && find . -name '*.proto' | sed 's|^\./||' | sort)
rm -rf "$here/gen"
mkdir -p "$here/gen"
"${protoc[@]}" -I "$repo/protos" \
    --plugin=protoc-gen-go="$bin/protoc-gen-go" \
    --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
    --go_out="$here" --go_opt=module=github.com/modelrouter/modelrouter/clients/go \
    --go-grpc_out="$here" --go-grpc_opt=module=github.com/modelrouter/modelrouter/clients/go \
    "${protos[@]/#/$repo/protos/}"
echo "generate.sh: generated $(find "$here/gen" -name '*.go' | wc -l) files in clients/go/gen/ with ${protoc[*]}" >&2
