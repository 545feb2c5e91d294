"""Module route benchmark: the sync ``GET /hello`` route vs the same job through ``execute?wait=true``.

    .venv/bin/python -m bench.routes_throughput [--requests 400] [--concurrency 20] [--rounds 2] [--json]

Everything is real and separate: its own Temporal dev server (free ports, SQLite file with the speed
pragmas of RECIPES.md), its own PostgreSQL database, the API served by uvicorn (``autoplat api``)
and a worker (``autoplat worker``) as two subprocesses, and Redis at ``AUTOPLAT_BENCH_REDIS_URL``
(default db 14, keys under a unique prefix). The example module ``data-sync`` is registered,
installed and enabled; a job row of its ``hello`` job type is created for the comparison.

Two workloads, each a closed loop of ``--concurrency`` HTTP clients (httpx, keep-alive), in
alternating rounds after a warm-up:

* **route**: ``GET /api/v1/m/data-sync/hello?name=bench`` (sync mode: one execution per call, the
  handler's return value is the response);
* **execute**: ``POST /api/v1/jobs/{hello job}/execute?wait=true`` (the same handler, the finished
  execution as the response).

Reported per workload: requests per second (requests / wall time) and p50 / p95 / max latency,
plus a low-load p50 (sequential calls). Every response must be 200, and at the end the mirror must
hold exactly one COMPLETED execution per call (trigger ``http`` for the route). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.jobs_throughput import (
    PG_ADMIN_DSN,
    DevServer,
    box_busy,
    create_database,
    drop_database,
    free_ports,
    percentile,
    proc_cpu,
    self_cpu,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_modules" / "data_sync"
REDIS_URL = os.environ.get("AUTOPLAT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
ADMIN_EMAIL = "bench-admin@example.com"


@dataclass
class Result:
    workload: str
    requests: int
    concurrency: int
    wall_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    max_ms: float


def _result(workload: str, latencies: list[float], concurrency: int, wall: float) -> Result:
    ms = [x * 1000 for x in latencies]
    return Result(
        workload=workload,
        requests=len(ms),
        concurrency=concurrency,
        wall_s=round(wall, 3),
        rps=round(len(ms) / wall, 2),
        p50_ms=round(percentile(ms, 50), 1),
        p95_ms=round(percentile(ms, 95), 1),
        max_ms=round(max(ms), 1),
    )


async def closed_loop(
    client: httpx.AsyncClient, request: dict[str, Any], total: int, concurrency: int
) -> tuple[list[float], float]:
    """``total`` requests with ``concurrency`` in flight; every answer must be 200."""
    latencies: list[float] = []
    remaining = total

    async def slot() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            r = await client.request(**request)
            latencies.append(time.perf_counter() - began)
            if r.status_code != 200:
                raise RuntimeError(f"{request['method']} {request['url']} answered {r.status_code}: {r.text[:300]}")

    began = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(min(concurrency, total))))
    return latencies, time.perf_counter() - began


class Platform:
    """The API (uvicorn) and a worker as subprocesses, on a fresh database and Temporal server."""

    def __init__(self, workdir: Path, server: DevServer, db_url: str) -> None:
        self.workdir = workdir
        self.server = server
        (self.api_port,) = free_ports(1)
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.password = secrets.token_urlsafe(18)
        self.redis_prefix = f"bench-routes-{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AUTOPLAT_DATABASE_URL": db_url,
            "AUTOPLAT_TEMPORAL_ADDRESS": server.address,
            "AUTOPLAT_TASK_QUEUE": f"bench-routes-{uuid.uuid4().hex[:8]}",
            "AUTOPLAT_STATE_DIR": str(workdir / "state"),
            "AUTOPLAT_REDIS_URL": REDIS_URL,
            "AUTOPLAT_REDIS_PREFIX": self.redis_prefix,
            "AUTOPLAT_JWT_SECRET": secrets.token_urlsafe(48),
            "AUTOPLAT_SECRET_KEY": secrets.token_urlsafe(48),
            "AUTOPLAT_ADMIN_EMAIL": ADMIN_EMAIL,
            "AUTOPLAT_ADMIN_PASSWORD": self.password,
            "AUTOPLAT_MAINTENANCE_SCHEDULE": "false",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, *args: str) -> None:
        out = (self.workdir / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "autoplat.cli", *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def start(self) -> None:
        self._spawn("api", "api", "--port", str(self.api_port), "--migrate")
        self._spawn("worker", "worker")

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a platform process exited ({proc.returncode}); see {self.workdir}/*.log")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health/live", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not come up; see {self.workdir}/api.log")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def log_tail(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    async def clear_redis(self) -> None:
        from redis.asyncio import Redis

        redis = Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in redis.scan_iter(match=f"{self.redis_prefix}:*")]
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()


async def setup(client: httpx.AsyncClient, password: str) -> tuple[dict[str, str], str]:
    """Log in, deploy the example module through the API and create a ``hello`` job; (headers, job id)."""
    r = await client.post("/api/v1/auth/login", json={"login": ADMIN_EMAIL, "password": password})
    r.raise_for_status()
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await client.post("/api/v1/modules", json={"path": str(EXAMPLE)}, headers=headers)
    r.raise_for_status()
    for action in ("install", "enable"):
        r = await client.post(f"/api/v1/modules/data-sync/{action}", headers=headers)
        r.raise_for_status()
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "data-sync", "job_type": "hello", "name": "bench-hello", "schedule": None},
        headers=headers,
    )
    r.raise_for_status()
    return headers, str(r.json()["id"])


def own_cpu(platform_: Platform, server: DevServer, db_name: str) -> dict[str, float]:
    """CPU seconds so far of everything this benchmark runs: API, worker, Temporal, PostgreSQL backends, itself."""
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        pids = [
            int(row[0])
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db_name,)
            ).fetchall()
        ]
    return {
        "api": proc_cpu(platform_.procs[0].pid),
        "worker": proc_cpu(platform_.procs[1].pid),
        "temporal": proc_cpu(server.proc.pid) if server.proc else 0.0,
        "postgres": sum(proc_cpu(pid) for pid in pids),
        "load_driver": self_cpu(),
    }


async def count_completed(db_url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from registry.db import create_engine, create_session_factory
    from registry.models import Execution

    engine = create_engine(db_url)
    try:
        async with create_session_factory(engine)() as session:
            rows = await session.execute(
                select(Execution.trigger, Execution.status, func.count()).group_by(Execution.trigger, Execution.status)
            )
            return {f"{trigger}:{status}": int(n) for trigger, status, n in rows}
    finally:
        await engine.dispose()


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="autoplat-bench-routes-"))
    server = DevServer(workdir)
    db_name, db_url = create_database()
    platform_: Platform | None = None
    try:
        server.start()
        await (await server.connect()).service_client.check_health()
        platform_ = Platform(workdir, server, db_url)
        platform_.start()
        await platform_.wait_ready()
        limits = httpx.Limits(max_connections=opts.concurrency * 2, max_keepalive_connections=opts.concurrency * 2)
        async with httpx.AsyncClient(base_url=platform_.base_url, timeout=120, limits=limits) as client:
            headers, job_id = await setup(client, platform_.password)
            workloads = {
                "route": {
                    "method": "GET",
                    "url": "/api/v1/m/data-sync/hello",
                    "params": {"name": "bench"},
                    "headers": headers,
                },
                "execute": {
                    "method": "POST",
                    "url": f"/api/v1/jobs/{job_id}/execute",
                    "params": {"wait": "true"},
                    "headers": headers,
                },
            }
            for request in workloads.values():  # warm-up: code loaded, pools and caches filled
                await closed_loop(client, request, opts.warmup, min(opts.concurrency, opts.warmup))
            latencies: dict[str, list[float]] = {name: [] for name in workloads}
            walls: dict[str, float] = dict.fromkeys(workloads, 0.0)
            per_round: list[dict[str, Any]] = []
            busy_before, wall_before, own_before = box_busy(), time.monotonic(), own_cpu(platform_, server, db_name)
            for index in range(opts.rounds):
                order = list(workloads) if index % 2 == 0 else list(reversed(workloads))
                for name in order:
                    lat, wall = await closed_loop(client, workloads[name], opts.requests, opts.concurrency)
                    latencies[name] += lat
                    walls[name] += wall
                    per_round.append({"round": index + 1, **asdict(_result(name, lat, opts.concurrency, wall))})
            capacity = (time.monotonic() - wall_before) * (os.cpu_count() or 1)
            own_after = own_cpu(platform_, server, db_name)
            own = {k: round((own_after[k] - own_before[k]) / capacity, 3) for k in own_after}
            busy = (box_busy() - busy_before) / capacity
            others = max(0.0, busy - sum(own.values()))
            loaded = {name: _result(name, latencies[name], opts.concurrency, walls[name]) for name in workloads}
            low = {}
            for name, request in workloads.items():
                lat, wall = await closed_loop(client, request, opts.low_load, 1)
                low[name] = _result(name, lat, 1, wall)
        counts = await count_completed(db_url)
        calls = opts.warmup + opts.requests * opts.rounds + opts.low_load
        expected = {"http:COMPLETED": calls, "manual:COMPLETED": calls}
        return {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            # Shares of the machine's CPU during the loaded rounds; "others" are processes not ours.
            "cpu_share": {"box_busy": round(busy, 3), **own, "others": round(others, 3)},
            "disturbed": others > 0.1,
            "options": vars(opts),
            "loaded": {k: asdict(v) for k, v in loaded.items()},
            "low_load": {k: asdict(v) for k, v in low.items()},
            "rounds": per_round,
            "ratio_route_vs_execute_rps": round(loaded["route"].rps / loaded["execute"].rps, 2),
            "executions": counts,
            "executions_ok": counts == expected,
        }
    finally:
        if platform_ is not None:
            platform_.stop()
            await platform_.clear_redis()
        server.stop()
        drop_database(db_name)
        shutil.rmtree(workdir, ignore_errors=True)


def _print(report: dict[str, Any]) -> None:
    out = sys.stdout.write
    opts = report["options"]
    rounds, requests, concurrency = opts["rounds"], opts["requests"], opts["concurrency"]
    out(f"routes benchmark: {rounds} round(s) x {requests} requests, concurrency {concurrency}\n")
    out(f"{'workload':<10}{'rps':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'low-load p50':>14}\n")
    for name in ("route", "execute"):
        r, low = report["loaded"][name], report["low_load"][name]
        out(f"{name:<10}{r['rps']:>9}{r['p50_ms']:>9}{r['p95_ms']:>9}{r['max_ms']:>9}{low['p50_ms']:>14}\n")
    out(f"route / execute throughput: {report['ratio_route_vs_execute_rps']}x\n")
    for row in report["rounds"]:
        latency = f"p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms"
        out(f"  round {row['round']} {row['workload']:<8} {row['rps']} rps, {latency}\n")
    out(f"executions: {report['executions']} ({'ok' if report['executions_ok'] else 'MISMATCH'})\n")
    out(f"machine: {report['machine']}, CPU shares while loaded: {report['cpu_share']}\n")
    if report["disturbed"]:
        out("WARNING: other processes used over 10% of the CPU during the run: the numbers are disturbed\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per workload per round")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (route, execute, execute, route...)")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--low-load", type=int, default=30, help="sequential requests per workload")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    report = asyncio.run(run(opts))
    if opts.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        _print(report)
    sys.stdout.flush()
    # temporalio sdk-python #300: a short-lived process can crash at interpreter exit.
    os._exit(0 if report["executions_ok"] else 1)


if __name__ == "__main__":
    main()
