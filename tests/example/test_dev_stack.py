"""``autoplat dev`` (what ``./run.sh`` runs), end to end on free ports: the API's index and health
page, the example module's jobs made from its manifest, every job type completing against the
demo source, and no listening socket beyond the ones the README names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.services.routes import sign
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "dev-stack-test-" + uuid.uuid4().hex


@dataclass
class Stack:
    api: str
    demo: str
    ports: dict[str, int]
    proc: subprocess.Popen[bytes]


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"autoplat dev exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polled with a deadline: the stack has no readiness signal but its API
    raise AssertionError(f"autoplat dev not up after {deadline_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("devstack")
    names = ("api", "temporal", "temporal_http", "temporal_metrics", "ui", "demo", "worker_metrics")
    ports = {name: free_port() for name in names}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AUTOPLAT_", "TEMPORAL_"))
    } | {
        "AUTOPLAT_STATE_DIR": str(tmp / "state"),
        "AUTOPLAT_REDIS_PREFIX": f"devstack-{uuid.uuid4().hex[:8]}",
        "AUTOPLAT_ADMIN_EMAIL": "admin@autoplat.local",
        "AUTOPLAT_ADMIN_PASSWORD": PASSWORD,
        "AUTOPLAT_DEV_DEMO_PORT": str(ports["demo"]),
        "TEMPORAL_HTTP_PORT": str(ports["temporal_http"]),
        "TEMPORAL_METRICS_PORT": str(ports["temporal_metrics"]),
        "AUTOPLAT_WORKER_METRICS_PORT": str(ports["worker_metrics"]),
    }  # fmt: skip
    log = tmp / "dev.log"
    cmd = [
        str(Path(sys.executable).parent / "autoplat"), "dev", "--port", str(ports["api"]),
        "--temporal-port", str(ports["temporal"]), "--ui-port", str(ports["ui"]),
        "--no-consumption-demo",  # tests/example/test_consumption_demo.py runs the stack with it
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        api = f"http://127.0.0.1:{ports['api']}"
        _wait(f"{api}/health/live", proc, log)
        yield Stack(api=api, demo=f"http://127.0.0.1:{ports['demo']}", ports=ports, proc=proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tree(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the processes hold (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                address, port = cols[1].split(":")
                found.add((address, int(port, 16)))
    return found


def test_dev_stack_runs_every_example_job_type(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api, timeout=60) as http:
        index = http.get("/api/v1").json()
        assert index["links"]["docs"] == "/docs" and index["links"]["health"] == "/health", index
        assert http.get("/api/v1/").json() == index
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["dev_mode"] is True and health["uptime_seconds"] >= 0, health
        assert {n: d["status"] for n, d in health["dependencies"].items()} == dict.fromkeys(
            ("database", "redis", "temporal"), "ok"
        )
        token = http.post("/api/v1/auth/login", json={"login": "admin@autoplat.local", "password": PASSWORD}).json()[
            "access_token"
        ]
        auth = {"Authorization": f"Bearer {token}"}

        jobs = {
            j["job_type"]: j
            for j in http.get("/api/v1/jobs", params={"module": "data-sync"}, headers=auth).json()["items"]
        }
        assert sorted(jobs) == ["daily-report", "health-check", "hourly-sync", "notify", "sync-failed"]
        assert all(jobs[t]["next_runs"] for t in ("daily-report", "health-check", "hourly-sync"))

        # The defaults point at 127.0.0.1:8099; this stack's demo source is on a free port.
        demo = {
            "hourly-sync": {"source_url": f"{stack.demo}/records"},
            "health-check": {"status_url": f"{stack.demo}/status"},
            "daily-report": {"webhook_url": f"{stack.demo}/inbox"},
        }
        for job_type, config in demo.items():
            r = http.patch(f"/api/v1/jobs/{jobs[job_type]['id']}", json={"config": config}, headers=auth)
            assert r.status_code == 200, r.text
        results: dict[str, Any] = {}
        for job_type, job in jobs.items():
            r = http.post(f"/api/v1/jobs/{job['id']}/execute", params={"wait": "true"}, headers=auth)
            assert r.status_code == 200 and r.json()["status"] == "COMPLETED", (job_type, r.text)
            results[job_type] = r.json()
        assert results["hourly-sync"]["result"]["records"] == 120
        assert results["health-check"]["result"]["healthy"] is True
        assert results["daily-report"]["result"]["sent"] is True
        assert any("no SMTP server" in e["message"] for e in results["notify"]["logs"])

        # The routes' job types, the HMAC-signed webhook included (once its secret is configured).
        assert http.get("/api/v1/m/data-sync/hello", params={"name": "dev"}, headers=auth).json()["message"] == (
            "Hello, dev!"
        )
        assert http.post("/api/v1/m/data-sync/echo", json={"a": 1}, headers=auth).json()["echo"] == {"a": 1}
        assert http.get("/api/v1/m/data-sync/status", headers=auth).json()["version"] == "1.2.0"
        secret = uuid.uuid4().hex
        r = http.put(
            "/api/v1/modules/data-sync/config", json={"config": {"source_webhook_secret": secret}}, headers=auth
        )
        assert r.status_code == 200, r.text
        body = json.dumps({"source": "demo", "changed": 2}).encode()
        ts, sig = sign(secret, body)
        r = http.post(
            "/api/v1/m/data-sync/webhooks/source",
            content=body,
            headers={"Content-Type": "application/json", "X-Timestamp": ts, "X-Signature": sig},
        )
        assert r.status_code == 202, r.text
        hooked = http.get(r.headers["Location"], headers=auth)
        deadline = time.monotonic() + 30
        while hooked.json()["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline:
            time.sleep(0.1)  # polled with a deadline: an async route answers before its run ends
            hooked = http.get(r.headers["Location"], headers=auth)
        assert hooked.json()["status"] == "COMPLETED", hooked.text

        # The events the example's users rely on.
        names = {e["name"] for e in http.get("/api/v1/events", params={"limit": 200}, headers=auth).json()["items"]}
        assert {"data.synced", "report.generated", "health.checked", "source.changed"} <= names

    # Every listening socket is on loopback; the README's ports are among them, and the only others
    # (ephemeral ports) are the Temporal dev server's three internal services and the worker's
    # Temporal SDK metrics exporter.
    sockets = _listening(_tree(stack.proc.pid))
    assert {addr for addr, _ in sockets} <= {"0100007F"}, sockets
    named = set(stack.ports.values())
    assert named <= {port for _, port in sockets}
    extra = sorted(sockets - {("0100007F", p) for p in named})
    assert len(extra) <= 4, (extra, stack.ports)
