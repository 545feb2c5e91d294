"""What observability costs: jobs throughput over HTTP with metrics off, on (scraped), and tracing on.

    .venv/bin/python -m bench.observability [--runs 300] [--concurrency 20] [--rounds 2] [--json]

The production shape of ``bench.jobs_throughput --http`` (an ``autoplat api`` and an ``autoplat
worker`` process, runs through ``POST /jobs/{id}/execute?wait=true``), measured in three settings,
interleaved over ``--rounds`` rounds so that a drift of the box's load hits each alike:

* **off**: ``AUTOPLAT_METRICS=off``, no worker metrics port (so no Temporal SDK metrics), tracing off;
* **metrics**: ``AUTOPLAT_METRICS=open``, the worker's port with the Temporal SDK's metrics, and a
  scraper reading both endpoints every ``--scrape-interval`` seconds (1 s: far more often than a
  Prometheus would);
* **tracing**: metrics as above plus ``AUTOPLAT_TRACING=on``, spans exported over OTLP/HTTP to a local
  sink that accepts and drops them.

Run metrics are recorded in every setting (the counters are always there; the settings decide what
is exposed): their cost per run is measured on its own (``record_cost_us``). Target: metrics cost
less than 5 % of the throughput (``metrics_ratio`` >= 0.95). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TARGET_METRICS_RATIO = 0.95


def otlp_sink() -> tuple[ThreadingHTTPServer, int]:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing; counts the exports."""

    class Handler(BaseHTTPRequestHandler):
        exports = 0

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length") or 0))
            Handler.exports += 1
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sampler(
    worker_port: int | None, interval: float, seen: dict[str, Any], server_pid: int
) -> Callable[[str, list[int]], Awaitable[None]]:
    """Beside the loaded phase: the CPU time the API, the worker and the Temporal server spend in it
    (robust where throughput is not: a busy box steals time, not CPU seconds), and, with
    ``worker_port``, a scraper reading the API's /metrics and the worker's port every ``interval``."""
    import httpx

    async def beside(base: str, pids: list[int]) -> None:
        watched = {"api": pids[0], "worker": pids[1], "temporal": server_pid}
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        try:
            if worker_port is None:
                await asyncio.Event().wait()
            async with httpx.AsyncClient(timeout=10) as http:
                while True:
                    for url in (f"{base}/metrics", f"http://127.0.0.1:{worker_port}/metrics"):
                        r = await http.get(url)
                        if r.status_code != 200 or "autoplat_runs_started_total" not in r.text:
                            raise RuntimeError(f"scrape of {url} answered {r.status_code}: {r.text[:200]}")
                        seen["scrapes"] = seen.get("scrapes", 0) + 1
                    await asyncio.sleep(interval)
        finally:
            seen["cpu"] = {name: cpu_seconds(pid) - before[name] for name, pid in watched.items()}

    return beside


def record_cost_us(iterations: int = 20000) -> float:
    """Microseconds of the metric calls one run makes (start, end, one step, one API request)."""
    from registry import metrics

    now = datetime.now(UTC)
    started = time.perf_counter()
    for _ in range(iterations):
        metrics.run_started(
            module="bench", job_type="noop", trigger="manual", created_at=now, started_at=now, workflow_id="exec-x"
        )
        metrics.step_ended(module="bench", job_type="noop", outcome="COMPLETED", attempt=1)
        metrics.run_finished(module="bench", job_type="noop", trigger="manual", status="COMPLETED", duration_ms=5)
        metrics.API_REQUESTS.labels("/api/v1/jobs/{job_id}/execute", "POST", "200").inc()
        metrics.API_REQUEST_DURATION.labels("/api/v1/jobs/{job_id}/execute", "POST").observe(0.01)
    return (time.perf_counter() - started) / iterations * 1e6


async def bench_observability(server: Any, workdir: Path, opts: Any, *, rounds: int = 2, interval: float = 1.0) -> dict:
    """The three settings, interleaved over ``rounds``; each a full ``bench_http`` (fresh processes)."""
    from bench.jobs_throughput import bench_http, free_ports

    sink, sink_port = otlp_sink()
    results: dict[str, list[float]] = {"off": [], "metrics": [], "tracing": []}
    p95: dict[str, list[float]] = {"off": [], "metrics": [], "tracing": []}
    cpu: dict[str, list[dict[str, float]]] = {"off": [], "metrics": [], "tracing": []}
    scrapes = 0
    server_pid = server.proc.pid if server.proc else 0
    try:
        for round_ in range(rounds):
            for setting in ("off", "metrics", "tracing"):
                phase_dir = workdir / f"{setting}-{round_}"  # bench_http's folders are per call
                phase_dir.mkdir()
                (worker_port,) = free_ports(1)
                env = {"AUTOPLAT_METRICS": "off", "AUTOPLAT_WORKER_METRICS_PORT": "0", "AUTOPLAT_TRACING": "off"}
                seen: dict[str, Any] = {}
                beside = sampler(None, interval, seen, server_pid)
                if setting != "off":
                    env.update(AUTOPLAT_METRICS="open", AUTOPLAT_WORKER_METRICS_PORT=str(worker_port))
                    beside = sampler(worker_port, interval, seen, server_pid)
                if setting == "tracing":
                    env.update(
                        AUTOPLAT_TRACING="on",
                        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}",
                        OTEL_SERVICE_NAME="autoplat-bench",
                    )
                try:
                    loaded, _low, _shape = await bench_http(server, phase_dir, opts, extra_env=env, during=beside)
                except RuntimeError as exc:
                    raise RuntimeError(f"{setting}, round {round_ + 1}: {exc}") from exc
                print(f"{setting}, round {round_ + 1}: {loaded.throughput:.1f} runs/s", file=sys.stderr, flush=True)
                results[setting].append(loaded.throughput)
                p95[setting].append(loaded.done_p95_ms)
                cpu[setting].append({k: v * 1000 / opts.runs for k, v in seen["cpu"].items()})
                scrapes += int(seen.get("scrapes", 0))
    finally:
        sink.shutdown()
    exports = getattr(sink.RequestHandlerClass, "exports", 0)
    off = statistics.mean(results["off"])
    ratio = {k: round(statistics.mean(v) / off, 3) if off else 0.0 for k, v in results.items()}
    cpu_ms = {
        k: {part: round(statistics.mean(c[part] for c in v), 2) for part in ("api", "worker", "temporal")}
        for k, v in cpu.items()
    }
    total_off = sum(cpu_ms["off"].values())
    # The share of the platform's CPU per run that the setting adds: what it would cost in throughput
    # on a box where CPU is the bound (this one's 2 cores are), whatever else runs on it.
    cpu_cost = {k: round((sum(cpu_ms[k].values()) - total_off) / total_off, 3) if total_off else 0.0 for k in cpu_ms}
    return {
        "cpu_ms_per_run": cpu_ms,
        "cpu_cost": {"metrics": cpu_cost["metrics"], "tracing": cpu_cost["tracing"]},
        "throughput_runs_per_s": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "completion_p95_ms": {k: [round(x, 1) for x in v] for k, v in p95.items()},
        "metrics_ratio": ratio["metrics"],
        "tracing_ratio": ratio["tracing"],
        "metrics_ratio_target": TARGET_METRICS_RATIO,
        "metrics_ratio_ok": ratio["metrics"] >= TARGET_METRICS_RATIO,
        "metrics_cpu_ok": cpu_cost["metrics"] <= 1 - TARGET_METRICS_RATIO,
        "scrapes": scrapes,
        "otlp_exports": exports,
        "record_cost_us_per_run": round(record_cost_us(), 2),
    }


def render(report: dict[str, Any]) -> str:
    t = report["throughput_runs_per_s"]
    lines = [
        f"observability cost over HTTP: {report['runs']} runs at concurrency {report['concurrency']}, "
        f"{len(t['off'])} round(s); load average at start {report['load_average_at_start']}",
    ]
    for setting in ("off", "metrics", "tracing"):
        c = report["cpu_ms_per_run"][setting]
        lines.append(
            f"  {setting:8} throughput {statistics.mean(t[setting]):6.1f} runs/s  {t[setting]}  "
            f"completion p95 {report['completion_p95_ms'][setting]} ms  CPU per run: api {c['api']} ms, "
            f"worker {c['worker']} ms, Temporal server {c['temporal']} ms"
        )
    lines.append(
        f"  throughput metrics/off {report['metrics_ratio']:.3f} (target >= {report['metrics_ratio_target']}: "
        f"{'ok' if report['metrics_ratio_ok'] else 'MISSED'}); tracing/off {report['tracing_ratio']:.3f}"
    )
    lines.append(
        f"  CPU per run added: metrics {report['cpu_cost']['metrics']:+.1%} "
        f"({'ok' if report['metrics_cpu_ok'] else 'MISSED'}: target <= 5 %), "
        f"tracing {report['cpu_cost']['tracing']:+.1%}"
    )
    lines.append(
        f"  scrapes {report['scrapes']}, OTLP exports {report['otlp_exports']}, metric calls per run "
        f"{report['record_cost_us_per_run']} us; load average at end {report['load_average_at_end']}"
    )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from bench.jobs_throughput import DevServer, Options
    from workflows.client import ensure_search_attributes

    opts = Options(
        runs=args.runs,
        concurrency=args.concurrency,
        low_load_runs=1,
        warmup=10,
        as_json=args.as_json,
        strict=False,
        http=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="autoplat-bench-obs-"))
    server = DevServer(workdir)
    began = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    try:
        server.start()
        client = await server.connect()
        await ensure_search_attributes(client, "default")
        report = await bench_observability(server, workdir, opts, rounds=args.rounds, interval=args.scrape_interval)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "runs": args.runs,
        "concurrency": args.concurrency,
        "load_average_at_start": load_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "total_seconds": round(time.perf_counter() - began, 1),
        **report,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per measured phase (default 300)")
    parser.add_argument("--concurrency", type=int, default=20, help="runs in flight (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of off / metrics / tracing (default 2)")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (default 1)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print(json.dumps(report, indent=2) if args.as_json else render(report))
    return 0


if __name__ == "__main__":
    code = main()
    # temporalio sdk-python #300: the interpreter can crash at exit after using the SDK.
    sys.stdout.flush()
    os._exit(code)
