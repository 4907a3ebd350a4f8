#!/usr/bin/env bash
# Set up modelrouter (scripts/setup.sh; a no-op when already done) and serve it: with no arguments, the shipped model on
# the embedded default configuration (three tiers on the local demo backend) at [::]:50051,
# one worker per core. Arguments go to `modelrouter serve` (--config, --host, --port,
# --workers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/modelrouter serve "$@"
