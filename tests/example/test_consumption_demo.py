"""``autoplat dev`` with its consumption demo (on by default: what ``./run.sh`` shows): the meter
simulator, the consumption monitor set up through its own routes, live readings of every demo
endpoint after the first collection (the broken meter in ``error``), everything on loopback; then a
restart on the same state folder, with the simulator on another port: no endpoint twice, all of
them moved to the new port, the sealed credentials still readable."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import free_port
from tests.example.test_dev_stack import _listening, _tree, _wait

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "consumption-demo-test-" + uuid.uuid4().hex
BASE = "/api/v1/m/consumption-monitor"
DEMO = {"rack A", "rack B", "plug C", "rack D (web UI)", "broken meter"}
T = TypeVar("T")


def _start(state: Path, log: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AUTOPLAT_", "TEMPORAL_"))
    } | {
        "AUTOPLAT_STATE_DIR": str(state),
        "AUTOPLAT_REDIS_PREFIX": f"consumption-demo-{uuid.uuid4().hex[:8]}",
        "AUTOPLAT_ADMIN_EMAIL": "admin@autoplat.local",
        "AUTOPLAT_ADMIN_PASSWORD": PASSWORD,
        "AUTOPLAT_DEV_DEMO_PORT": str(ports["demo"]),
        "AUTOPLAT_DEV_METER_PORT": str(ports["meters"]),
        "TEMPORAL_HTTP_PORT": str(ports["temporal_http"]),
        "TEMPORAL_METRICS_PORT": str(ports["temporal_metrics"]),
        "AUTOPLAT_WORKER_METRICS_PORT": str(ports["worker_metrics"]),
    }  # fmt: skip
    cmd = [
        str(Path(sys.executable).parent / "autoplat"), "dev", "--port", str(ports["api"]),
        "--temporal-port", str(ports["temporal"]), "--ui-port", str(ports["ui"]),
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{ports['api']}/health/live", proc, log)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _until(probe: Callable[[], T | None], what: str, log: Path, deadline_s: float = 90) -> T:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None:
            return last
        time.sleep(0.2)  # polled with a deadline: the demo is set up in the background
    raise AssertionError(f"no {what} after {deadline_s} s; last: {last!r}\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def _login(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=90) as http:
        r = http.post("/api/v1/auth/login", json={"login": "admin@autoplat.local", "password": PASSWORD})
        assert r.status_code == 200, r.text
        http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        yield http


def _demo_endpoints(http: httpx.Client) -> dict[str, dict[str, Any]] | None:
    r = http.get(f"{BASE}/endpoints")
    if r.status_code != 200:  # 404 until the module is enabled
        return None
    items = r.json()["items"]
    return {e["name"]: e for e in items} if {e["name"] for e in items} >= DEMO else None


@pytest.mark.timeout(300)
def test_dev_stack_shows_live_consumption_and_restarts_without_duplicates(tmp_path: Path) -> None:
    names = ("api", "temporal", "temporal_http", "temporal_metrics", "ui", "demo", "worker_metrics", "meters")
    ports = {name: free_port() for name in names}
    state, log = tmp_path / "state", tmp_path / "dev.log"
    api = f"http://127.0.0.1:{ports['api']}"

    proc = _start(state, log, ports)
    try:
        with _login(api) as http:

            def live() -> dict[str, dict[str, Any]] | None:
                r = http.get(f"{BASE}/live")
                if r.status_code != 200:
                    return None
                items = {item["name"]: item for item in r.json()["items"]}
                if set(items) != DEMO:
                    return None
                online = [items[name] for name in DEMO - {"broken meter"}]
                if all(i["status"] == "online" for i in online) and items["broken meter"]["status"] == "error":
                    return items
                return None

            items = _until(live, "live readings of every demo endpoint", log)
            for name in DEMO - {"broken meter"}:
                values = items[name]["values"]
                assert values["power_w"] > 0 and values["total_kwh"] > 0 and values["voltage_v"] > 0, (name, values)
            assert items["rack A"]["power_threshold_w"] == 3000
            assert "answered 500" in items["broken meter"]["last_error"], items["broken meter"]
            assert {items[n]["client"] for n in DEMO} == {"acme", "beta"}

            first = _demo_endpoints(http)
            assert first is not None and len(first) == len(DEMO), first
            assert {e["protocol"] for e in first.values()} == {"json", "prometheus", "html"}
            assert {e["auth"]["type"] for e in first.values()} == {"none", "basic", "form"}
            assert all(e["poll_interval_seconds"] <= 60 for e in first.values())
            assert all(f":{ports['meters']}/" in e["url"] for e in first.values())
            config = http.get("/api/v1/modules/consumption-monitor/config").json()["config"]
            assert "credentials_key" not in config and config["timezone"] == "UTC", config

        # Loopback only: the simulator's port is one of the stack's, and nothing listens elsewhere.
        sockets = _listening(_tree(proc.pid))
        assert {addr for addr, _ in sockets} <= {"0100007F"}, sockets
        assert ("0100007F", ports["meters"]) in sockets
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]

    # The same state folder, the simulator on another port (as when 8098 is taken).
    ports["meters"] = free_port()
    proc = _start(state, log, ports)
    try:
        with _login(api) as http:

            def moved() -> dict[str, dict[str, Any]] | None:
                found = _demo_endpoints(http)
                if found and all(f":{ports['meters']}/" in e["url"] for e in found.values()):
                    return found
                return None

            again = _until(moved, "the demo endpoints on the new simulator port", log)
            everything = http.get(f"{BASE}/endpoints").json()["items"]
            assert len(everything) == len(DEMO), [e["name"] for e in everything]
            assert {n: e["id"] for n, e in again.items()} == {n: e["id"] for n, e in first.items()}
            # The credentials sealed by the first start are read with the key kept in the state folder.
            r = http.post(f"{BASE}/endpoints/{again['rack B']['id']}/test")
            assert r.status_code == 200 and r.json()["ok"] is True, r.text
            assert r.json()["values"]["total_kwh"] > first["rack B"]["health"]["last_values"]["total_kwh"]
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
