#!/usr/bin/env bash
# Install Debian's PostgreSQL server when it is missing, for the store tests. The tests
# start their own throwaway cluster (initdb in a temp dir, a free loopback port) and stop
# it; the package's default cluster is not needed, so it is not started here.
#
# Usage: scripts/install_postgres.sh    (as root or with sudo; idempotent)
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    echo "install_postgres: PostgreSQL is installed"
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO=sudo; fi
if [[ $(id -u) -ne 0 && -z "$SUDO" ]] || ! command -v apt-get >/dev/null; then
    echo "install_postgres: PostgreSQL missing and cannot apt-get install it (need root)" >&2
    exit 1
fi
echo "install_postgres: installing postgresql"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
echo "install_postgres: installed $(ls /usr/lib/postgresql)"
