#!/usr/bin/env bash
# Run the whole platform locally: installs itself on first run, then starts the Temporal dev
# server (with its Web UI), the API, a worker, the demo source of the example module and the meter
# simulator of the consumption monitor's demo, with an embedded SQLite registry, and builds the web console when it is missing or its sources changed
# (needs Node.js >= 20). Ctrl-C stops all. Options go to `autoplat dev` (see ./run.sh --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
for arg in "$@"; do
  case "$arg" in
    -h | --help)
      # Answered before anything is installed (tests/docs checks it names every `autoplat dev` option).
      cat <<'HELP'
Usage: ./run.sh [OPTIONS]

Installs autoplat into .venv on first run (and when pyproject.toml changes), builds the web console
when Node.js >= 20 is present, then runs `autoplat dev`: the Temporal dev server, the API, a worker
and the example module's demo source, with an embedded SQLite registry under .state/; and the
consumption monitor's demo: a meter simulator and demo endpoints with live readings a minute after
start (console /m/consumption-monitor). Ctrl-C stops everything.

Options (passed to `autoplat dev`):
  --host TEXT             API bind address                     [default: 127.0.0.1]
  --port INTEGER          API port (console, API, /docs)       [default: 8000]
  --temporal-port INTEGER Temporal frontend (gRPC) port        [default: 7233]
  --ui-port INTEGER       Temporal Web UI port                 [default: 8233]
  --example/--no-example  Register, install and enable the example module  [default: example]
  --consumption-demo/--no-consumption-demo
                          Start the meter simulator and set the consumption monitor up
                          with demo endpoints reading it       [default: consumption-demo]
  -h, --help              Show this message and exit.

Environment:
  TEMPORAL_HTTP_PORT      Temporal HTTP API port     [default: temporal port + 10, 7243]
  TEMPORAL_METRICS_PORT   Temporal metrics port      [default: temporal port + 20, 7253]
  AUTOPLAT_DEV_DEMO_PORT  demo source of the example [default: 8099]
  AUTOPLAT_DEV_METER_PORT meter simulator            [default: 8098, a free port when taken]
  AUTOPLAT_STATE_DIR      state folder               [default: ./.state]
  AUTOPLAT_ADMIN_EMAIL / AUTOPLAT_ADMIN_PASSWORD  first admin (default: a random password, printed once)
  Every AUTOPLAT_* setting: docs/configuration.md
HELP
      exit 0
      ;;
  esac
done
scripts/bootstrap.sh runtime
if ! scripts/console-build.sh; then
  echo "continuing without the web console: the API and /docs work; / explains how to build it" >&2
fi
exec .venv/bin/autoplat dev "$@"
