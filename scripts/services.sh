#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1; start them if installed but stopped.
# Fails naming what is missing. Idempotent.
set -euo pipefail
pg_host="${AUTOPLAT_TEST_PG_HOST:-127.0.0.1}"
redis_port="${AUTOPLAT_TEST_REDIS_PORT:-6379}"

pg_up() { pg_isready -q -h "$pg_host" -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; }
wait_for() { # name, probe
  for _ in $(seq 1 100); do "$2" && return 0; sleep 0.1; done
  echo "$1 did not come up" >&2; return 1
}

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL..."
    ver="$(ls /etc/postgresql | sort -V | tail -n 1)"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_for PostgreSQL pg_up
  else
    echo "PostgreSQL is not running on $pg_host:5432 and is not installed (apt-get install -y postgresql)" >&2
    exit 1
  fi
fi
if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis..."
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no >/dev/null
    wait_for Redis redis_up
  else
    echo "Redis is not running on 127.0.0.1:$redis_port and is not installed (apt-get install -y redis-server)" >&2
    exit 1
  fi
fi
