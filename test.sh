#!/usr/bin/env bash
# The whole test suite: creates .venv if needed, makes sure PostgreSQL, Redis and Chromium are
# there, builds the web console (npm ci + tsc + vite build when its sources changed), runs the linters
# and pytest against real services (Temporal dev servers are started by the tests themselves; the
# console's tests drive Chromium and check the typed client against the API). Extra arguments go to pytest
# (run in one process then; add -n N for more).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/bootstrap.sh dev
scripts/services.sh
scripts/console-build.sh
if ! command -v chromium >/dev/null 2>&1 && [ ! -x "${AUTOPLAT_BROWSER_PATH:-/nonexistent}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium for the browser tests..."
    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))
  else
    echo "Chromium is missing: apt-get install -y chromium (or set AUTOPLAT_BROWSER_PATH)" >&2
    exit 1
  fi
fi
if [ "$#" -eq 0 ]; then
  echo "== ruff"
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  echo "== mypy"
  .venv/bin/mypy
fi
echo "== pytest"
set +e
if [ "$#" -eq 0 ]; then
  # The whole suite in parallel test processes (pytest-xdist), a test file per process at a time:
  # each process has its own database, Redis keys, Temporal dev server and ports. Tests mostly wait
  # on servers, so one process more than a 2-core box's cores keeps it busy (about 9 minutes here).
  .venv/bin/pytest -n "${AUTOPLAT_TEST_PROCESSES:-3}" --dist loadfile
else
  .venv/bin/pytest "$@"
fi
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "no tests were collected: failing" >&2
  exit 1
fi
exit "$code"
