#!/usr/bin/env bash
# Install Debian's Redis server when it is missing, for the tests of limits shared across
# replicas. The tests start their own redis-server (a free loopback port, a temp directory,
# append-only persistence) and stop it; the package's own service is not needed.
#
# Usage: scripts/install_redis.sh    (as root or with sudo; idempotent)
set -euo pipefail
if command -v redis-server >/dev/null; then
    echo "install_redis: $(redis-server --version)"
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO=sudo; fi
if [[ $(id -u) -ne 0 && -z "$SUDO" ]] || ! command -v apt-get >/dev/null; then
    echo "install_redis: redis-server missing and cannot apt-get install it (need root)" >&2
    exit 1
fi
echo "install_redis: installing redis-server"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    redis-server >/dev/null
echo "install_redis: $(redis-server --version)"
