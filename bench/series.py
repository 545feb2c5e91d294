"""Time series benchmark: bulk ingest from one job step into PostgreSQL, then range queries over
one year of 15-minute readings for 100 label sets, answered from the hourly rollups vs the points.

    .venv/bin/python -m bench.series [--label-sets 100] [--days 365] [--batch 10000] [--repeat 30] [--json]

Everything is real: its own PostgreSQL database (dropped at the end), its own Temporal dev server,
and the platform's worker (``autoplat.testing.TemporalHarness``) running handlers in confined
processes. One job of one step writes every point through ``ctx.series.write_many`` (batches of
``--batch``); its handler times its own writes, so **ingest** is points per second as the handler
sees them (the wire to the worker, checks, partitions made on demand, the insert and the marks of
the hours to roll up). The hours are then rolled up (timed), and two queries run ``--repeat`` times
each through the query API's service function (``registry.services.series.run_query``, what
``GET /api/v1/series/query`` calls), alternating the rollups and the same query over the points:

* **hourly month**: one label set's hourly values (energy increase and power avg) over 30 days;
* **monthly year**: the monthly energy increase of every label set over 12 months (UTC).

Reported: p50 / p95 of each, and the ratio points / rollups. Timing targets live here, never in
tests. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.jobs_throughput import box_busy, create_database, drop_database, percentile

HANDLER = """
import time
from datetime import datetime, timedelta


def ingest(ctx):
    start = datetime.fromisoformat(ctx.config["start"])
    label_sets, days, batch = ctx.config["label_sets"], ctx.config["days"], ctx.config["batch"]
    per_set = days * 96
    written, spent, pending = 0, 0.0, []
    for i in range(per_set):  # time-major: each batch spans every label set, as a collector would
        ts = start + timedelta(minutes=15 * i)
        for m in range(label_sets):
            energy = 1000.0 * m + 0.25 * i + (i % 4) * 0.01
            values = {"energy_kwh": energy, "power_w": 1000.0 + (i * 7 + m) % 500}
            pending.append({"ts": ts, "labels": {"meter": f"m{m:03d}"}, "values": values})
            if len(pending) == batch:
                t0 = time.perf_counter()
                written += ctx.series.write_many_sync("meter", pending)
                spent += time.perf_counter() - t0
                pending = []
    if pending:
        t0 = time.perf_counter()
        written += ctx.series.write_many_sync("meter", pending)
        spent += time.perf_counter() - t0
    return {"points": written, "seconds": spent}
"""


def write_module(root: Path) -> Path:
    folder = root / "bench-series"
    (folder / "bench_series").mkdir(parents=True)
    (folder / "bench_series" / "__init__.py").write_text("")
    (folder / "bench_series" / "handlers.py").write_text(HANDLER)
    manifest = {
        "name": "bench-series",
        "version": "1.0.0",
        "displayName": "Series benchmark",
        "description": "Writes a year of meter readings.",
        "author": "bench",
        "jobs": [
            {
                "name": "ingest",
                "description": "bulk ingest",
                "handler": "bench_series.handlers:ingest",
                "config": {"type": "object"},
                "limits": {"cpuSeconds": 3600},
            }
        ],
        "series": [
            {
                "name": "meter",
                "fields": {"energy_kwh": {"type": "counter"}, "power_w": {"type": "gauge"}},
                "labels": ["meter"],
            }
        ],
        "permissions": {"services": ["series"]},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


async def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = await fn()
    return (time.perf_counter() - t0) * 1000, value


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from autoplat.testing import TemporalHarness
    from registry.db import unit_of_work
    from registry.services import series as store

    name, url = create_database()
    busy_before, wall_before = box_busy(), time.monotonic()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "label_sets": args.label_sets,
        "days": args.days,
        "batch": args.batch,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="bench-series-") as tmp:
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            start = (now - timedelta(days=args.days)).replace(hour=0)
            async with TemporalHarness(Path(tmp) / "state", database_url=url) as harness:
                t0 = time.perf_counter()
                row = await harness.run(
                    write_module(Path(tmp)),
                    "ingest",
                    config={
                        "start": start.isoformat(),
                        "label_sets": args.label_sets,
                        "days": args.days,
                        "batch": args.batch,
                    },
                    timeout_seconds=3600,
                    wait_seconds=3600,
                )
                wall = time.perf_counter() - t0
                if row["status"] != "COMPLETED":
                    raise SystemExit(f"ingest failed: {row['error']}")
                points, seconds = row["result"]["points"], row["result"]["seconds"]
                report["ingest"] = {
                    "points": points,
                    "handler_seconds": round(seconds, 2),
                    "points_per_second": round(points / seconds),
                    "execution_seconds": round(wall, 2),
                }
                print(
                    f"ingest: {points} points in {seconds:.1f} s of writes = {points / seconds:,.0f} points/s",
                    file=sys.stderr,
                )

                sessions = harness._deps.sessions
                t0 = time.perf_counter()
                hours = 0
                while True:
                    async with unit_of_work(sessions) as session:
                        done = await store.roll_up(session=session, limit=50_000)
                    hours += done
                    if done == 0:
                        break
                report["rollup"] = {"hours": hours, "seconds": round(time.perf_counter() - t0, 2)}
                print(f"rollup: {hours} hours in {report['rollup']['seconds']} s", file=sys.stderr)
                async with sessions() as session:
                    await session.execute(text("ANALYZE series_points"))
                    await session.execute(text("ANALYZE series_rollups"))
                    await session.commit()

                month_end = now.replace(day=1, hour=0)
                month_start = month_end - timedelta(days=30)
                year_end = month_end
                year_start = datetime(year_end.year - 1, year_end.month, 1, tzinfo=UTC)
                queries = {
                    "hourly_month": {
                        "start": month_start,
                        "end": month_end,
                        "step": "1h",
                        "labels": ["meter:m042"],
                        "agg": None,
                    },
                    "monthly_year": {
                        "start": year_start,
                        "end": year_end,
                        "step": "1mo",
                        "labels": [],
                        "agg": ["energy_kwh:increase"],
                    },
                }
                for key, q in queries.items():
                    samples: dict[bool, list[float]] = {True: [], False: []}
                    answers: dict[bool, Any] = {}
                    for i in range(args.repeat * 2 + 2):
                        rollups = i % 2 == 0
                        async with sessions() as session:
                            ms, result = await timed(
                                lambda session=session, rollups=rollups, q=q: store.run_query(
                                    session=session,
                                    module="bench-series",
                                    series="meter",
                                    start=q["start"],
                                    end=q["end"],
                                    step=q["step"],
                                    tz="UTC",
                                    labels=q["labels"],
                                    fields=None,
                                    agg=q["agg"],
                                    latest=False,
                                    max_points=100_000,
                                    use_rollups=rollups,
                                )
                            )
                        if i >= 2:  # the first of each is a warm-up
                            samples[rollups].append(ms)
                        answers[rollups] = result
                    same = _same(answers[True].buckets, answers[False].buckets)
                    p95 = {k: percentile(v, 95) for k, v in samples.items()}
                    report[key] = {
                        "buckets": len(answers[True].buckets),
                        "same_answers": same,
                        "rollup_p50_ms": round(percentile(samples[True], 50), 1),
                        "rollup_p95_ms": round(p95[True], 1),
                        "raw_p50_ms": round(percentile(samples[False], 50), 1),
                        "raw_p95_ms": round(p95[False], 1),
                        "raw_over_rollup_p95": round(p95[False] / p95[True], 1),
                    }
                    print(f"{key}: {report[key]}", file=sys.stderr)
    finally:
        drop_database(name)
    elapsed = time.monotonic() - wall_before
    report["box_busy_cores"] = round((box_busy() - busy_before) / elapsed, 2) if elapsed else None
    return report


def _same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x.ts, x.labels) != (y.ts, y.labels):
            return False
        for field, aggs in x.values.items():
            for agg, value in aggs.items():
                other = y.values[field][agg]
                if (value is None) != (other is None) or (
                    value is not None and abs(value - other) > 1e-6 * max(1, abs(value))
                ):
                    return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label-sets", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2, default=str))  # noqa: T201 - the bench's output
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
