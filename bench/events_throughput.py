"""Events benchmark: events accepted per second with three listening jobs, and event → run start latency.

    .venv/bin/python -m bench.events_throughput [--events 300] [--concurrency 20] [--low-load-events 30]
                                                [--listeners 3] [--api-workers 2] [--json]

Runs the platform as in production, three processes on this box: the API (``autoplat api``, with
its outbox dispatcher; ``--api-workers`` processes) and a worker (``autoplat worker``) as
subprocesses, against a Temporal dev server and a fresh PostgreSQL database of the benchmark's own;
this process only drives HTTP.

* **accepted/s**: ``POST /api/v1/events`` with ``--concurrency`` requests in flight, each event
  matched by ``--listeners`` enabled jobs (job-level event triggers; 0: ingest alone); an event
  counts when its 201 arrives. Accept latency p50 / p95 is the POST's round trip. The posts come from
  ``bench/loadgen.py`` (keep-alive connections, one request in flight each), whose CPU per POST is
  reported beside the API's: on this box httpx cost as much CPU as the API it loaded.
* **event → dispatched**: from just before the POST to the event's ``dispatched_at`` (all its
  workflow starts acknowledged by Temporal): whether the dispatcher keeps up.
* **delivered/s**: events whose three runs have all completed (mirror rows COMPLETED), divided by
  the time from the first POST to the last completion.
* **event → start latency**: from just before the POST to the handler's own ``time.time()`` (it
  returns it as its result), for each of the three runs of an event; p50 / p95 under load and at
  low load (one event at a time, waiting for its three runs).

Every (event, job) pair must have exactly one execution at the end: the benchmark checks it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.jobs_throughput import (
    JOB_TYPE,
    MODULE,
    code_version,
    machine,
    percentile,
    put_module,
)
from bench.loadgen import LoadError, Reply, drive

LISTENERS = 3


@dataclass
class Options:
    events: int
    concurrency: int
    low_load_events: int
    listeners: int
    api_workers: int
    as_json: bool


async def add_listening_jobs(sessions: Any, listeners: int) -> list[str]:
    from sqlalchemy import select

    from registry.db import unit_of_work
    from registry.models import Job, Module

    ids = []
    async with unit_of_work(sessions) as session:
        module = await session.scalar(select(Module).where(Module.name == MODULE))
        assert module is not None
        for n in range(listeners):
            job = Job(
                module_id=module.id,
                module_name=MODULE,
                job_type=JOB_TYPE,
                name=f"listener-{n}",
                schedule=None,
                enabled=True,
                timeout_seconds=60,
                retries=0,
                config={},
                event_triggers=["bench.*"],
            )
            session.add(job)
            await session.flush()
            ids.append(job.id)
    return ids


async def operator_token(sessions: Any, settings: Any) -> str:
    from bench.stack import session_tokens

    return (await session_tokens(sessions, settings))[0]


async def starts_of(sessions: Any, event_ids: list[str]) -> dict[str, list[float]]:
    """Handler start times (their results) of the COMPLETED runs of each event."""
    from sqlalchemy import select

    from registry.models import Execution

    found: dict[str, list[float]] = {e: [] for e in event_ids}
    async with sessions() as session:
        rows = await session.execute(
            select(Execution.event_id, Execution.result, Execution.status).where(Execution.event_id.in_(event_ids))
        )
        for event_id, result, status in rows:
            if status == "COMPLETED":
                found[event_id].append(float(result))
    return found


async def all_started(sessions: Any, event_ids: list[str], timeout: float, listeners: int) -> dict[str, list[float]]:
    deadline = time.monotonic() + timeout
    while True:
        found = await starts_of(sessions, event_ids)
        if all(len(v) >= listeners for v in found.values()):
            return found
        if time.monotonic() > deadline:
            missing = sum(listeners - len(v) for v in found.values())
            raise RuntimeError(f"{missing} runs did not complete within {timeout}s")
        await asyncio.sleep(0.02)


async def segments(sessions: Any, sent: dict[str, float]) -> dict[str, float]:
    """Medians of where an event's time goes, from the rows' own timestamps (same host clock)."""
    from sqlalchemy import select

    from registry.models import Event, Execution

    parts: dict[str, list[float]] = {
        "POST sent -> event row received": [],
        "-> dispatched (all three starts acknowledged)": [],
        "-> run's mirror row started": [],
        "-> handler started": [],
    }
    async with sessions() as session:
        events = {e.id: e for e in await session.scalars(select(Event).where(Event.id.in_(list(sent))))}
        runs = list(await session.scalars(select(Execution).where(Execution.event_id.in_(list(sent)))))
    for run in runs:
        event = events[run.event_id]
        if event.dispatched_at is None or run.started_at is None:
            continue
        received, dispatched = event.received_at.timestamp(), event.dispatched_at.timestamp()
        parts["POST sent -> event row received"].append((received - sent[event.id]) * 1000)
        parts["-> dispatched (all three starts acknowledged)"].append((dispatched - received) * 1000)
        parts["-> run's mirror row started"].append((run.started_at.timestamp() - dispatched) * 1000)
        parts["-> handler started"].append((float(run.result) - run.started_at.timestamp()) * 1000)
    return {k: round(percentile(v, 50), 1) for k, v in parts.items() if v}


async def dispatch_lags(sessions: Any, sent: dict[str, float]) -> list[float]:
    """POST sent -> all of the event's starts acknowledged by Temporal (``dispatched_at``), in ms."""
    from sqlalchemy import select

    from registry.models import Event

    async with sessions() as session:
        rows = (await session.execute(select(Event.id, Event.dispatched_at).where(Event.id.in_(list(sent))))).all()
    return [(at.timestamp() - sent[event_id]) * 1000 for event_id, at in rows if at is not None]


def api_cpu_seconds(pid: int) -> float:
    """CPU seconds of the API process and its children (``--api-workers`` > 1) so far."""
    from pathlib import Path

    from bench.observability import cpu_seconds

    children = [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children)


def stats(latencies_ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(latencies_ms, 50), 1), "p95_ms": round(percentile(latencies_ms, 95), 1)}


async def run(opts: Options) -> dict[str, Any]:
    from bench.stack import platform_stack

    async with platform_stack("bench-events") as stack:
        sessions = stack.sessions
        await put_module(sessions, stack.settings.state_dir, stack.workdir / "modules")
        job_ids = await add_listening_jobs(sessions, opts.listeners)
        token = await operator_token(sessions, stack.settings)
        base, api = await stack.start_api(opts.api_workers)
        stack.start_worker()
        headers = {"Authorization": f"Bearer {token}"}

        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:

            async def post(n: int) -> tuple[str, float]:
                sent = time.time()
                r = await http.post("/api/v1/events", json={"name": "bench.tick", "payload": {"n": n}})
                if r.status_code != 201:
                    raise RuntimeError(f"POST /events answered {r.status_code}: {r.text}")
                return r.json()["id"], sent

            # Warm-up: connections, code loading on the worker, prepared statements.
            warm = [await post(-1 - n) for n in range(5)]
            await all_started(sessions, [e for e, _ in warm], timeout=60, listeners=opts.listeners)

            # Under load: --concurrency keep-alive connections of the light load generator.
            def created(reply: Reply) -> str:
                if reply.status != 201:
                    raise LoadError(f"POST /events answered {reply.status}: {reply.body[:500]!r}")
                return str(reply.json()["id"])

            requests = [
                ("POST", "/api/v1/events", {"name": "bench.tick", "payload": {"n": n}}) for n in range(opts.events)
            ]
            t0 = time.time()
            cpu0, client_cpu0 = api_cpu_seconds(api.pid), time.process_time()
            load = await drive(base, headers, requests, connections=opts.concurrency, check=created)
            accepted_wall = time.time() - t0
            # CPU seconds are robust where events/s is not: a busy box steals time, not CPU.
            api_cpu_ms = (api_cpu_seconds(api.pid) - cpu0) * 1000 / opts.events
            client_cpu_ms = (time.process_time() - client_cpu0) * 1000 / opts.events
            posted = load.kept
            accept = stats(load.latencies_ms)
            starts = await all_started(sessions, [e for e, _ in posted], timeout=300, listeners=opts.listeners)
            delivered_wall = max((max(v) for v in starts.values() if v), default=t0) - t0
            sent_at = dict(posted)
            loaded = [(s - sent_at[e]) * 1000 for e, v in starts.items() for s in v]
            dispatched = await dispatch_lags(sessions, sent_at) if opts.listeners else []

            # Low load: one event at a time.
            low: list[float] = []
            low_sent: dict[str, float] = {}
            for n in range(opts.low_load_events):
                event_id, sent = await post(10_000 + n)
                low_sent[event_id] = sent
                found = await all_started(sessions, [event_id], timeout=60, listeners=opts.listeners)
                low.extend((s - sent) * 1000 for s in found[event_id])
            low_segments = await segments(sessions, low_sent)

        # Exactly once per (event, job), whatever happened.
        from sqlalchemy import func, select

        from registry.models import Execution

        async with sessions() as session:
            dup = await session.scalar(
                select(func.count()).select_from(
                    select(Execution.event_id, Execution.job_id)
                    .group_by(Execution.event_id, Execution.job_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
            total = await session.scalar(select(func.count()).select_from(Execution))
        expected = (len(warm) + opts.events + opts.low_load_events) * opts.listeners
        return {
            "command": "python -m bench.events_throughput " + " ".join(sys.argv[1:]),
            "machine": machine() | {"code": code_version()},
            "listeners": opts.listeners,
            "api_workers": opts.api_workers,
            "jobs": job_ids,
            "under_load": {
                "events": opts.events,
                "concurrency": opts.concurrency,
                "accepted_per_s": round(opts.events / accepted_wall, 1),
                "accept": accept,
                "api_cpu_ms_per_event": round(api_cpu_ms, 2),
                "client_cpu_ms_per_event": round(client_cpu_ms, 2),
                "delivered_events_per_s": round(opts.events / delivered_wall, 1) if loaded else None,
                "runs_per_s": round(opts.events * opts.listeners / delivered_wall, 1) if loaded else None,
                "event_to_start": stats(loaded) if loaded else None,
                "event_to_dispatched": stats(dispatched) if dispatched else None,
            },
            "low_load": {
                "events": opts.low_load_events,
                "event_to_start": stats(low) if low else None,
                "segments_ms": low_segments,
            },
            "exactly_once": {"executions": int(total or 0), "expected": expected, "duplicate_pairs": int(dup or 0)},
        }


def render(report: dict[str, Any]) -> str:
    load, low, once = report["under_load"], report["low_load"], report["exactly_once"]
    lines = [
        f"events benchmark — {report['listeners']} listening jobs per event, {report['api_workers']} API processes, "
        f"code {report['machine']['code']}",
        f"under load ({load['events']} events, {load['concurrency']} in flight):",
        f"  accepted        {load['accepted_per_s']} events/s (201 from POST /api/v1/events), "
        f"accept p50 {load['accept']['p50_ms']} ms, p95 {load['accept']['p95_ms']} ms",
        f"  API CPU         {load['api_cpu_ms_per_event']} ms per accepted event (API processes, dispatcher included); "
        f"load generator {load['client_cpu_ms_per_event']} ms",
    ]
    if load["event_to_start"]:
        lines += [
            f"  delivered       {load['delivered_events_per_s']} events/s = {load['runs_per_s']} runs/s completed",
            f"  event -> start  p50 {load['event_to_start']['p50_ms']} ms, p95 {load['event_to_start']['p95_ms']} ms",
        ]
        lag = load["event_to_dispatched"]
        if lag:
            lines.append(
                f"  event -> dispatched (its starts acknowledged by Temporal) p50 {lag['p50_ms']} ms, "
                f"p95 {lag['p95_ms']} ms"
            )
    if low["event_to_start"]:
        lines += [
            f"low load ({low['events']} events, one at a time):",
            f"  event -> start  p50 {low['event_to_start']['p50_ms']} ms, p95 {low['event_to_start']['p95_ms']} ms",
            *(f"    {k}: {v} ms (median)" for k, v in low.get("segments_ms", {}).items()),
        ]
    lines.append(
        f"exactly once: {once['executions']} executions for {once['expected']} (event, job) pairs, "
        f"{once['duplicate_pairs']} duplicated"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300, help="events posted under load (default 300)")
    parser.add_argument("--concurrency", type=int, default=20, help="POSTs in flight (default 20)")
    parser.add_argument("--low-load-events", type=int, default=30, help="sequential events (default 30)")
    parser.add_argument("--listeners", type=int, default=3, help="jobs listening to every event (default 3)")
    parser.add_argument("--api-workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    opts = Options(args.events, args.concurrency, args.low_load_events, args.listeners, args.api_workers, args.json)
    report = asyncio.run(run(opts))
    print(json.dumps(report, indent=2) if opts.as_json else render(report))  # noqa: T201
    once = report["exactly_once"]
    return 0 if once["duplicate_pairs"] == 0 and once["executions"] == once["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
