#!/usr/bin/env bash
# Install numasweep with its test extra into ./.venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# Browser for the HTML report test (Debian's chromium); optional outside CI.
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium install failed" >&2
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0  # the embedded Ray keeps itself on 127.0.0.1
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: that is a failure here.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
