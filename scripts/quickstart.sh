#!/usr/bin/env bash
# Install numasweep into ./.venv and run the embedded default main job.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0  # the embedded Ray keeps itself on 127.0.0.1
exec .venv/bin/numasweep run "$@"
