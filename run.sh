#!/usr/bin/env bash
# Run the whole platform locally: installs itself on first run, then starts the Temporal dev
# server (with its Web UI), the API and a worker, with an embedded SQLite registry, and builds the web
# console when it is missing or its sources changed (needs Node.js >= 20). Ctrl-C stops all.
# Options go to `autoplat dev` (see ./run.sh --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/bootstrap.sh runtime
if ! scripts/console-build.sh; then
  echo "continuing without the web console: the API and /docs work; / explains how to build it" >&2
fi
exec .venv/bin/autoplat dev "$@"
