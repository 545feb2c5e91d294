"""Soak: a steady mixed load for a bounded time; memory, connections, and no lost or stuck run.

    .venv/bin/python -m bench.soak [--minutes 30] [--scheduled-jobs 6] [--events-per-s 2]
                                   [--routes-per-s 2] [--reads-per-s 5] [--api-workers 1] [--json]

The platform as in production, on this box: the API (``autoplat api``) and a worker as subprocesses,
a Temporal dev server and a fresh PostgreSQL database of the soak's own, Redis. The load, all at
once and paced (a late request is sent at once, never skipped):

* ``--scheduled-jobs`` jobs on a ``* * * * *`` cron (Temporal schedules, created through the API);
* events (``POST /events``) each starting one listening job;
* module route calls (``GET /api/v1/m/soakmod/ping``, sync: the handler's result is the answer);
* API reads: execution lists, a detail, stats, ``/health/live``.

Sampled every minute: RSS of the API and of the worker (handler processes apart), their open
sockets, PostgreSQL connections of the soak's database. The first sample is taken after two minutes
of load (pools and caches warm); the soak passes when, at the end,

* RSS of the API and of the worker is at most 1.25 x their first sample + 20 MiB, and their open
  sockets and the database's connections at most their first sample + 10;
* every event has exactly one run, every route call answered 200, every scheduled job has a run
  for every minute it was scheduled (+-1 at the edges), and after a settle time no run is left
  PENDING or RUNNING and none FAILED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.jobs_throughput import code_version, machine

MODULE = "soakmod"
HANDLERS = '''"""Soak handlers: trivial, so that the platform is what is measured."""

import time


async def tick(ctx):
    return {"at": time.time()}


async def on_event(ctx):
    return {"event": (ctx.event or {}).get("id")}


async def pong(ctx):
    return {"pong": True, "at": time.time()}
'''
MANIFEST = {
    "name": MODULE,
    "version": "1.0.0",
    "displayName": "Soak",
    "description": "trivial jobs for bench.soak",
    "author": "bench",
    "jobs": [
        {"name": "tick", "description": "scheduled", "handler": "soak_pkg.handlers:tick"},
        {"name": "on-event", "description": "listens", "handler": "soak_pkg.handlers:on_event"},
        {"name": "pong", "description": "route", "handler": "soak_pkg.handlers:pong"},
    ],
    "routes": [{"method": "GET", "path": "/ping", "job": "pong"}],
}
RSS_FACTOR = 1.25
RSS_SLACK_MIB = 20
SOCKET_SLACK = 10
WARMUP_S = 120


@dataclass
class Options:
    minutes: float
    scheduled_jobs: int
    events_per_s: float
    routes_per_s: float
    reads_per_s: float
    api_workers: int
    as_json: bool


@dataclass
class Tally:
    events: list[str] = field(default_factory=list)
    events_failed: list[str] = field(default_factory=list)
    routes_ok: int = 0
    routes_failed: list[str] = field(default_factory=list)
    reads_ok: int = 0
    reads_failed: list[str] = field(default_factory=list)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            found += tree(int(c))
    return found


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return round(total / 1024, 1)


def sockets(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:"))
        except (FileNotFoundError, PermissionError):
            pass
    return n


def handler_processes(worker_pid: int) -> list[int]:
    """The worker's handler processes (``autoplat._child``): measured apart, they are recycled."""
    out = []
    for pid in tree(worker_pid)[1:]:
        try:
            if b"autoplat._child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except FileNotFoundError:
            pass
    return out


async def db_connections(sessions: Any, db_name: str) -> int:
    from sqlalchemy import text

    async with sessions() as session:
        return int(
            await session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": db_name}) or 0
        )


async def paced(rate: float, until: float, action: Any) -> None:
    if rate <= 0:
        return
    interval, due, n = 1 / rate, time.monotonic(), 0
    pending: set[asyncio.Task[Any]] = set()
    while due < until:
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(action(n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
        due += interval
    if pending:
        await asyncio.gather(*pending)


async def run(opts: Options) -> dict[str, Any]:
    from sqlalchemy import func, select

    from bench.stack import platform_stack, register_module, session_tokens
    from registry.models import Execution

    async with platform_stack("soak") as stack:
        sessions, settings, db_name = stack.sessions, stack.settings, stack.db_name
        files = {"soak_pkg/__init__.py": "", "soak_pkg/handlers.py": HANDLERS}
        await register_module(sessions, settings.state_dir, stack.workdir / "modules", manifest=MANIFEST, files=files)
        access, refresh = await session_tokens(sessions, settings, email="soak@example.com")
        base, api = await stack.start_api(opts.api_workers)
        worker = stack.start_worker()
        tally = Tally()
        samples: list[dict[str, Any]] = []
        headers = {"Authorization": f"Bearer {access}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:

            async def refresher(until: float) -> None:
                """Like any client: a new access token before the old one expires (15 min)."""
                nonlocal refresh
                while time.monotonic() < until:
                    await asyncio.sleep(min(settings.access_token_ttl_seconds / 2, max(0.0, until - time.monotonic())))
                    r = await http.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
                    r.raise_for_status()
                    refresh = r.json()["refresh_token"]
                    http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

            scheduled = []
            for n in range(opts.scheduled_jobs):
                r = await http.post(
                    "/api/v1/jobs",
                    json={"module": MODULE, "job_type": "tick", "name": f"tick-{n}", "schedule": "* * * * *"},
                )
                r.raise_for_status()
                scheduled.append(r.json()["id"])
            r = await http.post(
                "/api/v1/jobs",
                json={
                    "module": MODULE,
                    "job_type": "on-event",
                    "name": "listener",
                    "schedule": None,
                    "event_triggers": ["soak.*"],
                },
            )
            r.raise_for_status()
            listener = r.json()["id"]
            scheduled_from = time.time()

            def failed(what: str, r: httpx.Response | BaseException) -> str:
                at = round((time.monotonic() - began) / 60, 2)
                if isinstance(r, BaseException):
                    return f"min {at}: {what}: {type(r).__name__}: {r}"[:300]
                return f"min {at}: {what}: {r.status_code} {r.text[:200]}"

            async def post_event(n: int) -> None:
                try:
                    r = await http.post("/api/v1/events", json={"name": "soak.tick", "payload": {"n": n}})
                except httpx.HTTPError as exc:
                    tally.events_failed.append(failed("POST /events", exc))
                    return
                if r.status_code == 201:
                    tally.events.append(r.json()["id"])
                else:
                    tally.events_failed.append(failed("POST /events", r))

            async def call_route(n: int) -> None:
                try:
                    r = await http.get(f"/api/v1/m/{MODULE}/ping")
                except httpx.HTTPError as exc:
                    tally.routes_failed.append(failed("route", exc))
                    return
                if r.status_code == 200 and r.json().get("pong") is True:
                    tally.routes_ok += 1
                else:
                    tally.routes_failed.append(failed("route", r))

            reads = [
                "/api/v1/executions?limit=50",
                "/api/v1/executions/stats",
                f"/api/v1/executions?limit=20&job_id={listener}",
                "/health/live",
                f"/api/v1/jobs/{scheduled[0]}" if scheduled else "/api/v1/jobs",
            ]

            async def read(n: int) -> None:
                try:
                    r = await http.get(reads[n % len(reads)])
                except httpx.HTTPError as exc:
                    tally.reads_failed.append(failed(reads[n % len(reads)], exc))
                    return
                if r.status_code == 200:
                    tally.reads_ok += 1
                else:
                    tally.reads_failed.append(failed(reads[n % len(reads)], r))

            async def sample(at: float) -> None:
                api_pids = tree(api.pid)
                children = handler_processes(worker.pid)
                worker_pids = [p for p in tree(worker.pid) if p not in children]
                samples.append(
                    {
                        "minute": round(at / 60, 1),
                        "api_rss_mib": rss_mib(api_pids),
                        "worker_rss_mib": rss_mib(worker_pids),
                        "handler_processes": len(children),
                        "handler_rss_mib": rss_mib(children),
                        "api_sockets": sockets(api_pids),
                        "worker_sockets": sockets(worker_pids),
                        "db_connections": await db_connections(sessions, db_name),
                    }
                )

            async def sampler(until: float) -> None:
                t0 = time.monotonic()
                await asyncio.sleep(min(WARMUP_S, max(0.0, until - t0 - 1)))
                while time.monotonic() < until:
                    await sample(time.monotonic() - t0)
                    await asyncio.sleep(min(60, max(0.0, until - time.monotonic())))
                await sample(time.monotonic() - t0)

            began = time.monotonic()
            until = began + opts.minutes * 60
            await asyncio.gather(
                paced(opts.events_per_s, until, post_event),
                paced(opts.routes_per_s, until, call_route),
                paced(opts.reads_per_s, until, read),
                sampler(until),
                refresher(until),
            )
            for job_id in scheduled:
                await http.post(f"/api/v1/jobs/{job_id}/disable")
            scheduled_to = time.time()

        # Settle: what was started must end.
        deadline = time.monotonic() + 120
        while True:
            async with sessions() as session:
                open_runs = await session.scalar(
                    select(func.count()).where(Execution.status.in_(("PENDING", "RUNNING")))
                )
            if not open_runs or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        async with sessions() as session:
            by_status = dict(
                (await session.execute(select(Execution.status, func.count()).group_by(Execution.status))).all()
            )
            per_event = dict(
                (
                    await session.execute(
                        select(Execution.event_id, func.count())
                        .where(Execution.event_id.in_(tally.events))
                        .group_by(Execution.event_id)
                    )
                ).all()
            )
            per_job = dict(
                (
                    await session.execute(
                        select(Execution.job_id, func.count())
                        .where(Execution.job_id.in_(scheduled), Execution.trigger == "schedule")
                        .group_by(Execution.job_id)
                    )
                ).all()
            )
        minutes_scheduled = (scheduled_to - scheduled_from) / 60
        first, last = samples[0], samples[-1]
        growth = {
            "api_rss": last["api_rss_mib"] <= first["api_rss_mib"] * RSS_FACTOR + RSS_SLACK_MIB,
            "worker_rss": last["worker_rss_mib"] <= first["worker_rss_mib"] * RSS_FACTOR + RSS_SLACK_MIB,
            "api_sockets": last["api_sockets"] <= first["api_sockets"] + SOCKET_SLACK,
            "worker_sockets": last["worker_sockets"] <= first["worker_sockets"] + SOCKET_SLACK,
            "db_connections": last["db_connections"] <= first["db_connections"] + SOCKET_SLACK,
        }
        missing_events = [e for e in tally.events if per_event.get(e, 0) != 1]
        short_jobs = {j: per_job.get(j, 0) for j in scheduled if abs(per_job.get(j, 0) - int(minutes_scheduled)) > 1}
        runs_ok = (
            not missing_events
            and not tally.events_failed
            and not tally.routes_failed
            and not short_jobs
            and not by_status.get("PENDING")
            and not by_status.get("RUNNING")
            and not by_status.get("FAILED")
        )
        return {
            "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
            "machine": machine() | {"code": code_version()},
            "minutes": opts.minutes,
            "load": {
                "scheduled_jobs": opts.scheduled_jobs,
                "events_per_s": opts.events_per_s,
                "routes_per_s": opts.routes_per_s,
                "reads_per_s": opts.reads_per_s,
                "api_workers": opts.api_workers,
            },
            "done": {
                "events": len(tally.events),
                "events_refused": len(tally.events_failed),
                "events_failed": tally.events_failed[:10],
                "route_calls_ok": tally.routes_ok,
                "route_calls_refused": len(tally.routes_failed),
                "route_calls_failed": tally.routes_failed[:10],
                "reads_ok": tally.reads_ok,
                "reads_refused": len(tally.reads_failed),
                "reads_failed": tally.reads_failed[:10],
                "scheduled_runs": per_job,
                "minutes_scheduled": round(minutes_scheduled, 1),
            },
            "executions_by_status": by_status,
            "events_without_exactly_one_run": missing_events[:10],
            "scheduled_jobs_off_by_more_than_one": short_jobs,
            "samples": samples,
            "bounds": {
                "rss": f"<= {RSS_FACTOR} x first + {RSS_SLACK_MIB} MiB",
                "sockets": f"<= first + {SOCKET_SLACK}",
            },
            "growth_ok": growth,
            "runs_ok": runs_ok,
            "passed": runs_ok and all(growth.values()),
        }


def render(report: dict[str, Any]) -> str:
    done, first, last = report["done"], report["samples"][0], report["samples"][-1]
    lines = [
        f"soak — {report['minutes']} min, code {report['machine']['code']}: "
        f"{'PASSED' if report['passed'] else 'FAILED'}",
        f"load: {report['load']}",
        f"done: {done['events']} events ({done['events_refused']} refused), "
        f"{done['route_calls_ok']} route calls ok "
        f"({done['route_calls_refused']} failed), {done['reads_ok']} reads ok "
        f"({done['reads_refused']} failed), "
        f"scheduled runs per job {sorted(done['scheduled_runs'].values())} over {done['minutes_scheduled']} min",
        f"executions by status: {report['executions_by_status']}",
        f"{'minute':>7}{'API MiB':>10}{'worker MiB':>12}{'handlers':>10}{'API sockets':>13}"
        f"{'worker sockets':>16}{'DB conns':>10}",
    ]
    for s in report["samples"]:
        lines.append(
            f"{s['minute']:>7}{s['api_rss_mib']:>10}{s['worker_rss_mib']:>12}"
            f"{s['handler_processes']:>5} /{s['handler_rss_mib']:>5}{s['api_sockets']:>11}"
            f"{s['worker_sockets']:>16}{s['db_connections']:>10}"
        )
    lines.append(
        f"growth first -> last: API {first['api_rss_mib']} -> {last['api_rss_mib']} MiB, worker "
        f"{first['worker_rss_mib']} -> {last['worker_rss_mib']} MiB; bounds {report['bounds']}; "
        f"within bounds: {report['growth_ok']}"
    )
    for failure in done["events_failed"] + done["route_calls_failed"] + done["reads_failed"]:
        lines.append(f"failed: {failure}")
    if report["events_without_exactly_one_run"] or report["scheduled_jobs_off_by_more_than_one"]:
        lines.append(
            f"lost or duplicated: events {report['events_without_exactly_one_run']}, "
            f"scheduled {report['scheduled_jobs_off_by_more_than_one']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="length of the load (default 30)")
    parser.add_argument("--scheduled-jobs", type=int, default=6, help="jobs on a every-minute cron (default 6)")
    parser.add_argument("--events-per-s", type=float, default=2, help="events posted per second (default 2)")
    parser.add_argument("--routes-per-s", type=float, default=2, help="module route calls per second (default 2)")
    parser.add_argument("--reads-per-s", type=float, default=5, help="API reads per second (default 5)")
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    opts = Options(
        args.minutes,
        args.scheduled_jobs,
        args.events_per_s,
        args.routes_per_s,
        args.reads_per_s,
        args.api_workers,
        args.json,
    )
    report = asyncio.run(run(opts))
    print(json.dumps(report, indent=2) if opts.as_json else render(report))  # noqa: T201
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
