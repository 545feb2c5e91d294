"""Module code is contained (DESIGN.md, decision 12): handlers run in confined processes of the worker.

Each test runs real jobs through the API, Temporal and a worker with the default isolation
(``process``), and checks what a handler can and cannot do, and what happens to its neighbours
when it misbehaves.
"""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, running_worker
from tests.jobs.helpers import put_module, write_module

CODE = """
import asyncio, os, time
from pathlib import Path


def probe(ctx):
    secret = Path(ctx.config["secret_file"])
    try:
        secret.read_text()
        read = "read"
    except OSError as exc:
        read = type(exc).__name__
    try:
        os.listdir(secret.parent)
        listed = "listed"
    except OSError as exc:
        listed = type(exc).__name__
    others = {}
    for name, path in (("shadow", "/etc/shadow"), ("worker_environ", f"/proc/{os.getppid()}/environ")):
        try:
            Path(path).read_bytes()
            others[name] = "read"
        except OSError as exc:
            others[name] = type(exc).__name__
    status = Path("/proc/self/status").read_text()
    cap_eff = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    Path(os.environ["TMPDIR"], "scratch.txt").write_text("a handler may write its own temp folder")
    print("printed line")
    ctx.logger.info("probe ran", extra={"pid": os.getpid()})
    return {
        "pid": os.getpid(),
        "env": sorted(os.environ),
        "secret": read,
        "state_dir": listed,
        "cap_eff": cap_eff,
        "others": others,
        "no_new_privs": next(line.split()[1] for line in status.splitlines() if line.startswith("NoNewPrivs:")),
    }


def hog(ctx):
    Path(ctx.config["marker"]).write_text(str(os.getpid()))
    data = bytearray(2 * 1024 * 1024 * 1024)
    return len(data)


def spin(ctx):
    while True:
        pass


def quick(ctx):
    return {"n": ctx.config.get("n"), "pid": os.getpid()}


def crash(ctx):
    ctx.logger.info("about to exit")
    os._exit(7)


def stuck(ctx):
    Path(ctx.config["marker"]).write_text(str(os.getpid()))
    time.sleep(600)  # stuck in C code on purpose: the behaviour under test (killed at the timeout)


def chatty(ctx):
    ctx.storage.put_sync("k", {"v": 1})
    doc = ctx.storage.get_document_sync("k")
    state = ctx.state.update_sync(lambda s: {**s, "runs": s.get("runs", 0) + 1})
    event_id = ctx.emit_sync("isolation.tested", {"ok": True})
    docs = ctx.storage.query_sync("")
    return {"doc": doc.value, "key": doc.key, "state": state, "event": bool(event_id), "keys": [d.key for d in docs]}


async def chatty_async(ctx):
    await ctx.storage.put("a", [1, 2])
    value = await ctx.storage.get("a")
    snapshot = await ctx.state.get()
    missing = await ctx.storage.get("nope", "default")
    try:
        await ctx.notify.email("ops@example.com", "s", "t")
        notify = "sent"
    except Exception as exc:
        notify = type(exc).__name__
    return {"value": value, "version": snapshot.version, "missing": missing, "notify": notify}
"""

CONFIG = {
    "type": "object",
    "properties": {"secret_file": {"type": "string"}, "marker": {"type": "string"}, "n": {"type": "integer"}},
}
JOBS = [
    {"name": "probe", "description": "d", "handler": "probe", "config": CONFIG},
    {"name": "hog", "description": "d", "handler": "hog", "config": CONFIG, "limits": {"memoryMb": 256}},
    {"name": "spin", "description": "d", "handler": "spin", "config": CONFIG, "limits": {"cpuSeconds": 1}},
    {"name": "quick", "description": "d", "handler": "quick", "config": CONFIG},
    {"name": "crash", "description": "d", "handler": "crash", "config": CONFIG},
    {"name": "stuck", "description": "d", "handler": "stuck", "config": CONFIG},
    {"name": "chatty", "description": "d", "handler": "chatty", "config": CONFIG},
    {"name": "chatty-async", "description": "d", "handler": "chatty_async", "config": CONFIG},
]
_MANIFEST_EXTRA = {"permissions": {"services": ["storage", "state"]}}


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    folder = write_module(tmp_path, name="tenant", code=CODE, jobs=JOBS, extra=_MANIFEST_EXTRA)
    return await put_module(sessions, settings.state_dir, folder)


async def _job(client: Any, headers: dict[str, str], job_type: str, **extra: Any) -> dict[str, Any]:
    body = {"module": "tenant", "job_type": job_type, "name": f"{job_type}-job", "schedule": None, **extra}
    r = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _run(client: Any, headers: dict[str, str], job: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", json=body or None, headers=headers)
    assert r.status_code in (200, 202), r.text
    return r.json()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_handler_cannot_read_platform_secrets_nor_see_its_environment(
    client, worker, module, operator_headers, settings, monkeypatch
):
    # What an attacker was after: a secret file in the state folder and the worker's environment.
    secret = Path(settings.state_dir) / "jwt-secret-probe"
    secret.write_text("platform secret")
    monkeypatch.setenv("AUTOPLAT_ADMIN_PASSWORD", "leaked-if-you-see-this")
    job = await _job(client, operator_headers, "probe", config={"secret_file": str(secret)})
    body = await _run(client, operator_headers, job)
    assert body["status"] == "COMPLETED", body
    result = body["result"]
    assert result["pid"] != os.getpid()
    assert result["secret"] == "PermissionError"
    assert result["state_dir"] == "PermissionError"
    assert not [k for k in result["env"] if k.startswith("AUTOPLAT_")]
    assert set(result["env"]) <= {"HOME", "TMPDIR", "PATH", "LANG", "LC_ALL", "MALLOC_ARENA_MAX", "LC_CTYPE"}
    assert result["no_new_privs"] == "1"
    # Not the worker's environment through /proc, nor the system's password hashes.
    assert result["others"] == {"shadow": "PermissionError", "worker_environ": "PermissionError"}
    if os.geteuid() == 0:
        assert int(result["cap_eff"], 16) == 0
    logs = (await client.get(f"/api/v1/executions/{body['id']}/logs", headers=operator_headers)).json()
    messages = [e["message"] for e in logs["entries"]]
    assert "probe ran" in messages
    assert "printed line" in messages


async def test_memory_hog_fails_alone_and_the_worker_keeps_its_memory(
    client, module, operator_headers, tmp_path, temporal_settings, temporal_env
):
    # 21 runs at once on a 2-core box where API, worker and Temporal share the CPU: the default
    # heartbeat timeout (10 s), not the 2 s of the `worker` fixture.
    temporal_settings.heartbeat_timeout_seconds = 10
    quick = await _job(client, operator_headers, "quick")
    hog = await _job(client, operator_headers, "hog", config={"marker": str(tmp_path / "hog")})
    async with running_worker(temporal_settings, temporal_env.client):
        baseline = _rss_mib()
        runs = [_run(client, operator_headers, quick, config={"n": n}) for n in range(20)]
        results = await asyncio.gather(_run(client, operator_headers, hog), *runs)
        grown = _rss_mib() - baseline
    failed, ordinary = results[0], results[1:]
    assert failed["status"] == "FAILED", failed
    assert failed["error"]["message"] == "memory limit 256 MiB exceeded"
    assert failed["attempt"] == 1  # a limit breach is not retried
    assert [r["status"] for r in ordinary] == ["COMPLETED"] * 20, [
        (r["error"], r["steps"]) for r in ordinary if r["status"] != "COMPLETED"
    ][:1]
    assert sorted(r["result"]["n"] for r in ordinary) == list(range(20))
    # The allocation happened in the handler's process, not here (the worker runs in this process).
    assert grown < 150
    hog_pid = int((tmp_path / "hog").read_text())
    await eventually(lambda: _gone(hog_pid), what="the hog's process replaced")


async def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_cpu_limit_ends_a_busy_handler(client, worker, module, operator_headers):
    job = await _job(client, operator_headers, "spin", timeout_seconds=60)
    body = await _run(client, operator_headers, job)
    assert body["status"] == "FAILED", body
    assert body["error"]["message"] == "CPU time limit 1 s exceeded"


async def test_a_crashed_process_fails_its_run_only(client, worker, module, operator_headers):
    crash = await _job(client, operator_headers, "crash")
    body = await _run(client, operator_headers, crash)
    assert body["status"] == "FAILED"
    assert body["error"]["message"] == "handler process exited with code 7"
    logs = (await client.get(f"/api/v1/executions/{body['id']}/logs", headers=operator_headers)).json()
    assert "about to exit" in [e["message"] for e in logs["entries"]]
    quick = await _job(client, operator_headers, "quick")
    assert (await _run(client, operator_headers, quick))["status"] == "COMPLETED"


async def test_a_handler_stuck_in_c_code_is_killed_at_its_timeout(client, worker, module, operator_headers, tmp_path):
    marker = tmp_path / "stuck"
    job = await _job(client, operator_headers, "stuck", timeout_seconds=2, config={"marker": str(marker)})
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)
    execution_id = r.json()["id"]

    async def final() -> dict[str, Any] | None:
        row = (await client.get(f"/api/v1/executions/{execution_id}", headers=operator_headers)).json()
        return row if row["status"] not in ("PENDING", "RUNNING") else None

    row = await eventually(final, timeout=30, what="the stuck run ended")
    assert row["status"] == "TIMED_OUT", row
    pid = int(marker.read_text())
    await eventually(lambda: _gone(pid), timeout=10, what="the stuck handler's process killed")


async def test_services_are_answered_by_the_worker(client, worker, module, operator_headers):
    job = await _job(client, operator_headers, "chatty")
    first = await _run(client, operator_headers, job)
    assert first["status"] == "COMPLETED", first
    assert first["result"] == {"doc": {"v": 1}, "key": "k", "state": {"runs": 1}, "event": True, "keys": ["k"]}
    second = await _run(client, operator_headers, job)
    assert second["result"]["state"] == {"runs": 2}
    events = (await client.get("/api/v1/events?name=isolation.tested", headers=operator_headers)).json()
    assert events["total"] == 2
    job = await _job(client, operator_headers, "chatty-async")
    body = await _run(client, operator_headers, job)
    assert body["status"] == "COMPLETED", body
    # notify is not declared in permissions.services: refused by the worker, as in-process.
    assert body["result"] == {"value": [1, 2], "version": 0, "missing": "default", "notify": "JobError"}


async def test_processes_are_recycled_after_their_runs(
    client, module, operator_headers, temporal_settings, temporal_env
):
    temporal_settings.handler_max_runs = 2
    temporal_settings.handler_pool_size = 1
    async with running_worker(temporal_settings, temporal_env.client):
        job = await _job(client, operator_headers, "quick")
        pids = [(await _run(client, operator_headers, job))["result"]["pid"] for _ in range(3)]
    assert pids[0] == pids[1]
    assert pids[2] != pids[1]


def test_open_files_and_memory_caps_are_hard() -> None:
    """The caps a handler process gets cannot be raised by the handler (they are hard limits)."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        "from autoplat import _confine\n"
        "limits = _confine.Limits(memory_bytes=2**30, open_files=64)\n"
        "_confine.confine(read=_confine.allowed_reads([]), write=[], limits=limits)\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n"
        "    print('raised')\n"
        "except (ValueError, OSError):\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30, env={})
    assert out.stdout.strip() == "refused", out.stderr
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] != 64  # the test process is untouched


async def test_the_import_check_is_confined_like_handlers(tmp_path, state_dir):
    """Code that runs at registration (module-level statements) gets no more than a handler."""
    from registry.services.modules import check_handlers

    secret = state_dir / "import-check-secret"
    secret.write_text("platform secret")
    package = tmp_path / "sneaky"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "handlers.py").write_text(
        "import os\n"
        f"assert not [k for k in os.environ if k.startswith('AUTOPLAT_')], 'environment leaked'\n"
        f"SECRET = open({str(secret)!r}).read()\n"
        "def run(ctx):\n"
        "    return SECRET\n"
    )
    manifest = {"jobs": [{"name": "run", "handler": "sneaky.handlers:run"}]}
    failures = await check_handlers(tmp_path, manifest, forbidden=[str(state_dir)])
    assert list(failures) == ["sneaky.handlers:run"]
    assert failures["sneaky.handlers:run"].startswith("PermissionError")
    # A module reading its own files imports under the same confinement.
    (package / "data.txt").write_text("shipped with the module")
    (package / "handlers.py").write_text(
        "from pathlib import Path\n"
        "DATA = (Path(__file__).parent / 'data.txt').read_text()\n"
        "def run(ctx):\n"
        "    return DATA\n"
    )
    assert await check_handlers(tmp_path, manifest, forbidden=[str(state_dir)]) == {}
