"""Read-path benchmark: the API's list, detail and stats endpoints over a large execution history.

    .venv/bin/python -m bench.api_reads [--rows 100000] [--clients 20] [--rate 4] [--seconds 20]
                                        [--api-workers 2] [--json]

Runs the platform as in production: the API (``autoplat api --workers N``) and a worker as
subprocesses against a Temporal dev server and a fresh PostgreSQL database of the benchmark's own,
which it fills with ``--rows`` executions (realistic rows: ten log lines, steps, config, result;
85 % COMPLETED, spread over 30 days and ten jobs). This process only drives HTTP.

* **alone**: each request kind, one client, one request at a time: the baseline of this run.
* **under load**: ``--clients`` clients, each sending ``--rate`` requests per second (paced, the way
  consoles and scripts poll; a late request is sent at once, never skipped) for ``--seconds``,
  cycling through the request kinds. Latency is counted from the moment a request was due, so a
  saturated API shows as latency, not as a lower offered rate (no coordinated omission).
* **saturation**: the same clients in a closed loop (next request as soon as the answer arrives):
  requests per second the API sustains.

Reported per kind: p50 / p95 / p99 in ms alone and under load, and under load / alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx

from bench.events_throughput import operator_token
from bench.jobs_throughput import (
    code_version,
    machine,
    percentile,
    put_module,
)

JOBS = 10


@dataclass
class Options:
    rows: int
    clients: int
    rate: float
    seconds: float
    api_workers: int
    as_json: bool


FILL_SQL = """
INSERT INTO executions (id, job_id, module_name, module_version, job_type, workflow_id, run_id, status,
    status_reason, trigger, attempt, steps, config, result, error, logs, created_at, started_at, finished_at,
    duration_ms)
SELECT
    md5('bench-' || i)::uuid::text,
    (CAST(:job_ids AS text[]))[1 + i % CAST(:jobs AS int)],
    'bench-module', '1.0.0', 'noop',
    'bench-' || i, md5('run-' || i),
    CASE WHEN i % 100 < 85 THEN 'COMPLETED' WHEN i % 100 < 95 THEN 'FAILED'
         WHEN i % 100 < 98 THEN 'TIMED_OUT' WHEN i % 100 < 99 THEN 'CANCELLED' ELSE 'RUNNING' END,
    CASE WHEN i % 100 BETWEEN 85 AND 94 THEN 'ValueError: source answered 502' END,
    (ARRAY['schedule', 'schedule', 'schedule', 'event', 'manual', 'http'])[1 + i % 6],
    1 + (i % 7 = 0)::int,
    jsonb_build_array(jsonb_build_object('name', 'fetch', 'status', 'COMPLETED', 'attempt', 1),
                      jsonb_build_object('name', 'store', 'status', 'COMPLETED', 'attempt', 1)),
    jsonb_build_object('source', 'https://source.example/api/v2/items', 'batch', 500, 'token', '***'),
    jsonb_build_object('rows', i % 5000, 'ok', true, 'cursor', md5(i::text)),
    CASE WHEN i % 100 BETWEEN 85 AND 94 THEN
        jsonb_build_object('type', 'ValueError', 'message', 'source answered 502', 'non_retryable', false) END,
    repeat('{"ts": "2026-11-30T10:00:00.000Z", "level": "INFO", "logger": "data-sync", '
           || '"message": "fetched a page of 500 items from the source"}' || chr(10), 10),
    t, t + interval '20 ms',
    CASE WHEN i % 100 < 99 THEN t + interval '20 ms' + make_interval(secs => (i % 900) / 1000.0) END,
    CASE WHEN i % 100 < 99 THEN i % 900 END
FROM generate_series(CAST(:start AS int), CAST(:stop AS int)) AS i,
    LATERAL (SELECT now() - make_interval(secs => (CAST(:rows AS int) - i) * (2592000.0 / CAST(:rows AS int)))
             AS t) AS c
"""


async def fill(sessions: Any, job_ids: list[str], rows: int) -> float:
    """Insert ``rows`` executions in batches; answers the seconds it took."""
    from sqlalchemy import text

    t0 = time.monotonic()
    batch = 50_000
    for start in range(1, rows + 1, batch):
        async with sessions() as session:
            await session.execute(
                text(FILL_SQL),
                {
                    "job_ids": job_ids,
                    "jobs": len(job_ids),
                    "rows": rows,
                    "start": start,
                    "stop": min(rows, start + batch - 1),
                },
            )
            await session.commit()
    # The steady state autovacuum keeps: statistics and a visibility map (index-only counts).
    async with sessions.kw["bind"].connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql("VACUUM ANALYZE executions")
    return time.monotonic() - t0


async def add_jobs(sessions: Any) -> list[str]:
    from sqlalchemy import select

    from registry.db import unit_of_work
    from registry.models import Job, Module

    ids = []
    async with unit_of_work(sessions) as session:
        module = await session.scalar(select(Module))
        assert module is not None
        for n in range(JOBS):
            job = Job(
                module_id=module.id,
                module_name=module.name,
                job_type="noop",
                name=f"reader-{n}",
                schedule=None,
                enabled=False,
                timeout_seconds=60,
                retries=0,
                config={},
            )
            session.add(job)
            await session.flush()
            ids.append(job.id)
    return ids


def kinds(job_ids: list[str], execution_ids: list[str]) -> dict[str, Any]:
    """The request kinds, each a function answering a fresh path."""
    return {
        "list": lambda: "/api/v1/executions?limit=50",
        "list status=FAILED": lambda: "/api/v1/executions?limit=50&status=FAILED",
        "list job_id": lambda: f"/api/v1/executions?limit=50&job_id={random.choice(job_ids)}",
        "list page 20": lambda: "/api/v1/executions?limit=50&page=20",
        "detail": lambda: f"/api/v1/executions/{random.choice(execution_ids)}",
        "stats": lambda: "/api/v1/executions/stats",
        "stats job_id": lambda: f"/api/v1/executions/stats?job_id={random.choice(job_ids)}",
        "health/live": lambda: "/health/live",
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "p99_ms": round(percentile(values, 99), 1),
    }


async def alone(http: httpx.AsyncClient, paths: dict[str, Any], repeat: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, path in paths.items():
        values = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = await http.get(path())
            values.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"GET {path()} answered {r.status_code}: {r.text[:300]}")
        out[name] = summary(values)
    return out


async def paced(
    http: httpx.AsyncClient, paths: dict[str, Any], clients: int, rate: float, seconds: float
) -> tuple[dict[str, list[float]], int, float]:
    names = list(paths)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors = 0
    interval = 1 / rate

    async def client(n: int) -> None:
        nonlocal errors
        due = start + n * interval / clients  # clients spread over one interval
        k = n
        while due < start + seconds:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            name = names[k % len(names)]
            k += 1
            r = await http.get(paths[name]())
            latencies[name].append((time.perf_counter() - due) * 1000)
            if r.status_code != 200:
                errors += 1
            due += interval

    start = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies, errors, time.perf_counter() - start


async def closed(http: httpx.AsyncClient, paths: dict[str, Any], clients: int, seconds: float) -> float:
    names = list(paths)
    done = 0

    async def client(n: int) -> None:
        nonlocal done
        k = n
        while time.perf_counter() < end:
            await http.get(paths[names[k % len(names)]]())
            k += 1
            done += 1

    t0 = time.perf_counter()
    end = t0 + seconds
    await asyncio.gather(*(client(n) for n in range(clients)))
    return done / (time.perf_counter() - t0)


async def run(opts: Options) -> dict[str, Any]:
    from sqlalchemy import select

    from bench.stack import platform_stack
    from registry.models import Execution

    async with platform_stack("bench-reads") as stack:
        sessions = stack.sessions
        await put_module(sessions, stack.settings.state_dir, stack.workdir / "modules")
        job_ids = await add_jobs(sessions)
        fill_s = await fill(sessions, job_ids, opts.rows)
        async with sessions() as session:
            sample = list(await session.scalars(select(Execution.id).order_by(Execution.id).limit(2000)))
        token = await operator_token(sessions, stack.settings)
        base, _api = await stack.start_api(opts.api_workers)
        stack.start_worker()
        paths = kinds(job_ids, sample)
        limits = httpx.Limits(max_connections=opts.clients, max_keepalive_connections=opts.clients)
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60, limits=limits
        ) as http:
            await alone(http, paths, 5)  # warm-up: every API process, connections, plans
            baseline = await alone(http, paths, 30)
            latencies, errors, wall = await paced(http, paths, opts.clients, opts.rate, opts.seconds)
            saturation = await closed(http, paths, opts.clients, min(opts.seconds, 10))
        loaded = {name: summary(values) for name, values in latencies.items()}
        return {
            "command": "python -m bench.api_reads " + " ".join(sys.argv[1:]),
            "machine": machine() | {"code": code_version()},
            "rows": opts.rows,
            "fill_s": round(fill_s, 1),
            "api_workers": opts.api_workers,
            "clients": opts.clients,
            "offered_per_s": round(opts.clients * opts.rate, 1),
            "served_per_s": round(sum(len(v) for v in latencies.values()) / wall, 1),
            "errors": errors,
            "alone": baseline,
            "under_load": loaded,
            "ratio_p99": {
                k: round(loaded[k]["p99_ms"] / max(baseline[k]["p99_ms"], 0.1), 2) for k in loaded if k in baseline
            },
            "saturation_per_s": round(saturation, 1),
        }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"API reads benchmark — {report['rows']:,} executions (filled in {report['fill_s']} s), "
        f"{report['api_workers']} API processes, code {report['machine']['code']}",
        f"under load: {report['clients']} clients, {report['offered_per_s']} requests/s offered, "
        f"{report['served_per_s']} served, {report['errors']} errors; closed-loop saturation "
        f"{report['saturation_per_s']} requests/s",
        f"{'request':<22}{'alone p50/p99 ms':>20}{'loaded p50/p95/p99 ms':>26}{'p99 ratio':>11}",
    ]
    for name, loaded in report["under_load"].items():
        a = report["alone"][name]
        lines.append(
            f"{name:<22}{a['p50_ms']:>10} /{a['p99_ms']:>7}"
            f"{loaded['p50_ms']:>12} /{loaded['p95_ms']:>6} /{loaded['p99_ms']:>6}"
            f"{report['ratio_p99'][name]:>10}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_reads", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="executions in the table (default 100,000)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--rate", type=float, default=4, help="requests per second per client (default 4)")
    parser.add_argument("--seconds", type=float, default=20, help="length of the loaded phase (default 20)")
    parser.add_argument("--api-workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    opts = Options(args.rows, args.clients, args.rate, args.seconds, args.api_workers, args.json)
    report = asyncio.run(run(opts))
    print(json.dumps(report, indent=2) if opts.as_json else render(report))  # noqa: T201
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
