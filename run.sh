#!/usr/bin/env bash
# Run the whole platform locally: installs itself on first run, then starts the Temporal dev
# server (with its Web UI), the API and a worker, with an embedded SQLite registry. Ctrl-C stops all.
# Options go to `autoplat dev` (see ./run.sh --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/bootstrap.sh runtime
exec .venv/bin/autoplat dev "$@"
