#!/usr/bin/env bash
# Install Debian's Prometheus server when it is missing, for the metrics test. The test
# starts its own Prometheus (a free loopback port, a generated scrape configuration, a temp
# storage directory) and stops it; the package's own service is not needed.
#
# Usage: scripts/install_prometheus.sh    (as root or with sudo; idempotent)
set -euo pipefail
if command -v prometheus >/dev/null; then
    echo "install_prometheus: $(prometheus --version 2>&1 | sed -n 1p)"
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO=sudo; fi
if [[ $(id -u) -ne 0 && -z "$SUDO" ]] || ! command -v apt-get >/dev/null; then
    echo "install_prometheus: prometheus missing and cannot apt-get install it (need root)" >&2
    exit 1
fi
echo "install_prometheus: installing prometheus"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
echo "install_prometheus: $(prometheus --version 2>&1 | sed -n 1p)"
