#!/usr/bin/env bash
# CI step of the Helm chart (issue 12, section 7): a pinned helm from the Go module proxy
# (built once into ~/.cache/modelrouter/helm-VERSION/), `helm lint` and `helm template` of
# deploy/helm/modelrouter with the default values and with TLS + auth + Redis values, and
# each rendering checked by scripts/helm_check.py (its configuration passes `modelrouter
# config check`; probes, preStop and termination grace fit the configuration).
# Needs Go, the project's .venv with the redis extra (scripts/setup.sh redis, or test: the
# Redis values are checked with redis-py) and openssl (installed from Debian when missing);
# the first run builds helm (a few minutes), later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
HELM_VERSION=v3.22.0
CHART=deploy/helm/modelrouter

bin="${XDG_CACHE_HOME:-$HOME/.cache}/modelrouter/helm-$HELM_VERSION"
if ! { [[ -x "$bin/helm" ]] && go version -m "$bin/helm" 2>/dev/null \
        | grep -q "^[[:space:]]*mod[[:space:]]*helm.sh/helm/v3[[:space:]]*$HELM_VERSION"; }; then
    echo "ci_helm: building helm $HELM_VERSION into $bin" >&2
    GOBIN="$bin" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
helm="$bin/helm"
"$helm" version --short

if ! command -v openssl >/dev/null; then  # Debian's, for the test certificates
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A CA, and a server certificate it signed, for the TLS values (made here, never kept).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=modelrouter-ci-ca \
    -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=modelrouter -keyout "$work/tls.key" \
    -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:modelrouter,DNS:localhost\n' > "$work/san.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/tls.crt" 2>/dev/null

tls_files=(--set-file "tls.cert=$work/tls.crt" --set-file "tls.key=$work/tls.key"
           --set-file "tls.ca=$work/ca.crt")
render() {  # NAME [helm args...]
    local name="$1"
    shift
    "$helm" lint --strict --kube-version 1.30.0 "$CHART" "$@"
    "$helm" template modelrouter "$CHART" --namespace ai --kube-version 1.30.0 "$@" \
        > "$work/$name.yaml"
    "$PYTHON" scripts/helm_check.py "$work/$name.yaml"
}
render default
render tls-auth-redis -f "$CHART/ci/tls-auth-redis-values.yaml" "${tls_files[@]}"
# A replica id in the configuration every pod shares is refused (each pod gets its name).
if "$helm" template modelrouter "$CHART" --kube-version 1.30.0 --set config.server.replica_id=x \
        > /dev/null 2> "$work/replica.err"; then
    echo "ci_helm: config.server.replica_id was not refused" >&2
    exit 1
fi
grep -q "config.server.replica_id: leave it unset" "$work/replica.err"
echo "ci_helm: the chart lints and renders"
