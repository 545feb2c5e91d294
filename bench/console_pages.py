"""How fast each console page becomes interactive on the embedded stack with 10,000 executions.

Starts ``autoplat dev`` (Temporal dev server, API, worker, SQLite registry: what ``./run.sh`` runs) on
free ports in a temporary state folder, fills its registry with 10,000 executions (20 jobs, seven days,
every status, five log lines each) and 2,000 events, signs in through the console in Chromium and
loads every page ``--rounds`` times with a full page load (``page.goto``: HTML, scripts, the session
refresh, ``/auth/me`` and the page's API calls), then moves between the main pages by clicking the
navigation. A page counts as interactive when its heading and its data (the rows of its main table,
or its figures) are on screen.

    python -m bench.console_pages [--executions 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from activities.services.browser import LAUNCH_ARGS

ROOT = Path(__file__).resolve().parents[1]
EMAIL = "admin@example.com"
PASSWORD = "bench-console-password-1"
STATUSES = ["COMPLETED"] * 80 + ["FAILED"] * 12 + ["TIMED_OUT"] * 3 + ["CANCELLED"] * 3 + ["SKIPPED"] * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_stack(state: Path) -> tuple[subprocess.Popen[str], str]:
    port, temporal, ui = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        AUTOPLAT_STATE_DIR=str(state),
        AUTOPLAT_ADMIN_EMAIL=EMAIL,
        AUTOPLAT_ADMIN_PASSWORD=PASSWORD,
        AUTOPLAT_REDIS_PREFIX=f"bench-console-{uuid.uuid4().hex[:6]}",
    )
    cmd = [str(ROOT / ".venv" / "bin" / "autoplat"), "dev", "--port", str(port)]
    cmd += ["--temporal-port", str(temporal), "--ui-port", str(ui)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "Press Ctrl-C" in line:
            break
        if time.monotonic() > deadline:
            raise SystemExit("autoplat dev did not start in 120 s")
    else:
        raise SystemExit(f"autoplat dev exited ({proc.wait()})")
    # Keep reading its output so the pipe never fills.
    asyncio.get_event_loop().run_in_executor(None, lambda: [None for _ in proc.stdout])  # type: ignore[union-attr]
    return proc, f"http://127.0.0.1:{port}"


async def seed(state: Path, executions: int, events: int) -> dict[str, str]:
    from sqlalchemy import select

    from registry.db import create_engine, create_session_factory, unit_of_work
    from registry.models import Event, Execution, Job, Module

    engine = create_engine(f"sqlite+aiosqlite:///{state / 'autoplat.db'}")
    sessions = create_session_factory(engine)
    rnd = random.Random(7)
    now = datetime.now(UTC)
    async with unit_of_work(sessions) as s:
        module = await s.scalar(select(Module).where(Module.name == "data-sync"))
        assert module is not None, "the example module is not registered"
        types = [j["name"] for j in module.manifest["jobs"]][:3]
        jobs = []
        for n in range(20):
            job = Job(
                module_id=module.id,
                module_name=module.name,
                job_type=types[n % len(types)],
                name=f"bench job {n:02d}",
                schedule=None,
                timezone="UTC",
                enabled=True,
            )
            s.add(job)
            jobs.append(job)
        await s.flush()
        job_ids = [(j.id, j.job_type) for j in jobs]
    logs = "\n".join(
        f'{{"ts": "{now.isoformat()}", "level": "INFO", "message": "bench line {i}", "step": "main"}}' for i in range(5)
    )
    for start in range(0, executions, 1000):
        async with unit_of_work(sessions) as s:
            for _ in range(start, min(executions, start + 1000)):
                job_id, job_type = rnd.choice(job_ids)
                created = now - timedelta(seconds=rnd.uniform(0, 7 * 86400))
                status = rnd.choice(STATUSES)
                duration = int(rnd.lognormvariate(6.5, 0.8))
                s.add(
                    Execution(
                        job_id=job_id,
                        module_name="data-sync",
                        module_version="1.1.0",
                        job_type=job_type,
                        workflow_id=f"bench-{uuid.uuid4()}",
                        status=status,
                        trigger=rnd.choice(["schedule", "manual", "event"]),
                        attempt=1,
                        steps=[{"name": "main", "status": status, "attempts": 1}],
                        config={"batch_size": 100},
                        result={"records": rnd.randint(0, 500)} if status == "COMPLETED" else None,
                        error={"type": "RuntimeError", "message": "source down"} if status == "FAILED" else None,
                        logs=logs,
                        created_at=created,
                        started_at=created,
                        finished_at=created + timedelta(milliseconds=duration),
                        duration_ms=duration,
                    )
                )
    async with unit_of_work(sessions) as s:
        for _ in range(events):
            at = now - timedelta(seconds=rnd.uniform(0, 7 * 86400))
            s.add(
                Event(
                    name=rnd.choice(["data.synced", "health.alert", "source.changed", "bench.ping"]),
                    payload={"n": rnd.randint(0, 100)},
                    source=rnd.choice(["sync", "probe", "webhook"]),
                    occurred_at=at,
                    received_at=at,
                    dispatch_status="DISPATCHED",
                    dispatched_at=at,
                )
            )
    async with sessions() as s:
        execution = await s.scalar(select(Execution.id).where(Execution.status == "COMPLETED").limit(1))
    await engine.dispose()
    return {"job": job_ids[0][0], "execution": str(execution)}


async def measure(base: str, ids: dict[str, str], rounds: int) -> list[tuple[str, list[float]]]:
    from playwright.async_api import async_playwright, expect

    rows = "main table tbody tr"
    pages: list[tuple[str, str, str, str]] = [
        ("Dashboard", "/", "Dashboard", ".stats-row .stat-value >> nth=0"),
        ("Modules", "/modules", "Modules", rows),
        ("Module detail", "/modules/data-sync", "Data sync", rows),
        ("Jobs", "/jobs", "Jobs", rows),
        ("Job detail (run history)", f"/jobs/{ids['job']}", "bench job", rows),
        ("Executions (10k, page 1)", "/executions", "Executions", rows),
        ("Executions, FAILED, page 3", "/executions?status=FAILED&page=3", "Executions", rows),
        ("Execution detail + logs", f"/executions/{ids['execution']}", "data-sync", ".logline"),
        ("Events (stats, chart, list)", "/events", "Events", rows),
        ("Admin (users, audit)", "/admin", "Admin", rows),
    ]
    results: list[tuple[str, list[float]]] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=os.environ.get("AUTOPLAT_BROWSER_PATH", "/usr/bin/chromium"), args=LAUNCH_ARGS
        )
        ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await ctx.new_page()
        await page.goto(base + "/login")
        await page.get_by_label("Email or username").fill(EMAIL)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        for name, path, heading, ready in pages:
            times = []
            for _ in range(rounds + 1):  # the first load warms the HTTP cache, as a returning user's
                started = time.perf_counter()
                await page.goto(base + path)
                await expect(page.get_by_role("heading", level=1)).to_contain_text(heading, timeout=15_000)
                await expect(page.locator(ready).first).to_be_visible(timeout=15_000)
                if ready.startswith(".stats-row"):
                    await expect(page.locator(ready)).not_to_have_text("…", timeout=15_000)
                times.append((time.perf_counter() - started) * 1000)
            results.append((f"{name} (load)", times[1:]))
        # Moving around inside the app: a click on the main navigation, as an operator does.
        nav = [("Dashboard", ".stats-row .stat-value >> nth=0"), ("Modules", rows), ("Jobs", rows)]
        nav += [("Executions", rows), ("Events", rows), ("Admin", rows)]
        await page.goto(base + "/")
        await expect(page.get_by_role("heading", level=1)).to_contain_text("Dashboard")
        clicks: dict[str, list[float]] = {name: [] for name, _ in nav}
        for _ in range(rounds):
            for name, ready in [*nav[1:], nav[0]]:
                started = time.perf_counter()
                await page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
                await expect(page.get_by_role("heading", level=1)).to_contain_text(name, timeout=15_000)
                await expect(page.locator(ready).first).to_be_visible(timeout=15_000)
                if ready.startswith(".stats-row"):
                    await expect(page.locator(ready)).not_to_have_text("…", timeout=15_000)
                clicks[name].append((time.perf_counter() - started) * 1000)
        results += [(f"{name} (in-app navigation)", times) for name, times in clicks.items()]
        await browser.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (ROOT / "api" / "console_dist" / "index.html").is_file():
        raise SystemExit("build the console first: scripts/console-build.sh")
    with tempfile.TemporaryDirectory(prefix="autoplat-bench-console-") as tmp:
        state = Path(tmp)
        proc, base = start_stack(state)
        try:
            t0 = time.perf_counter()
            ids = await seed(state, args.executions, args.events)
            print(f"seeded {args.executions} executions and {args.events} events in {time.perf_counter() - t0:.1f} s")
            results = await measure(base, ids, args.rounds)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"\n| page | median ms | max ms |  ({args.rounds} rounds each, {args.executions} executions)")
    print("| --- | ---: | ---: |")
    worst = 0.0
    for name, times in results:
        worst = max(worst, max(times))
        print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} |")
    print(f"\nslowest load: {worst:.0f} ms ({'under' if worst < 1000 else 'OVER'} the 1 s budget)")
    sys.stdout.flush()
    sys.exit(0 if worst < 1000 else 1)


if __name__ == "__main__":
    asyncio.run(main())
