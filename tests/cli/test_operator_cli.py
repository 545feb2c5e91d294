"""The operator CLI (``autoplat login / modules / jobs / executions / logs / events``) as a user runs it:
a separate process talking HTTP to a real API (uvicorn) with a real worker on Temporal."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from tests.conftest import PASSWORD, free_port
from tests.jobs.helpers import put_module, write_module

CODE = """
import time
from pathlib import Path
from autoplat import JobError

def ok(ctx):
    ctx.logger.info("adding %d", ctx.config["n"])
    return {"sum": ctx.config["n"] + 1}

def boom(ctx):
    ctx.logger.info("about to fail")
    raise JobError("boom")

def _wait(ctx, path):
    while not Path(path).exists():
        time.sleep(0.02)
        ctx.check_cancelled()

def gated(ctx):
    _wait(ctx, ctx.config["gate"])
    ctx.logger.info("through the first gate")
    _wait(ctx, ctx.config["gate"] + ".2")
    ctx.logger.info("through the second gate")
    return {"ok": True}
"""
N = {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}}
GATE = {"type": "object", "properties": {"gate": {"type": "string"}}}
JOBS = [
    {"name": "ok", "description": "adds one", "handler": "ok", "config": N},
    {"name": "boom", "description": "fails", "handler": "boom"},
    {"name": "gated", "description": "waits for a file", "handler": "gated", "config": GATE},
]
#: How long one CLI call may take (each is a fresh process).
CALL_TIMEOUT = 60


class Cli:
    """Runs ``autoplat`` in a subprocess with its own config folder (never the user's)."""

    def __init__(self, config_dir: Path, api_url: str) -> None:
        self.env = {
            **os.environ,
            "AUTOPLAT_CONFIG_DIR": str(config_dir),
            "AUTOPLAT_API_URL": api_url,
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        self.env.pop("AUTOPLAT_TOKEN", None)

    async def start(self, *args: str, stdin: bool = False) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "autoplat.cli",
            *args,
            env=self.env,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def __call__(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        proc = await self.start(*args, stdin=input is not None)
        out, err = await asyncio.wait_for(proc.communicate(input.encode() if input is not None else None), CALL_TIMEOUT)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        code, out, err = await self(*args, "--json")
        assert code == 0, (args, out, err)
        return json.loads(out)


def _one_line_error(err: str, *fragments: str) -> None:
    """What a user sees when they must act: one line saying what to do, never a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


async def test_operator_cli_end_to_end(worker, server, sessions, settings, make_user, tmp_path):
    await put_module(sessions, settings.state_dir, write_module(tmp_path, name="cli-demo", code=CODE, jobs=JOBS))
    admin = await make_user("admin", password=PASSWORD)
    config_dir = tmp_path / "config"
    cli = Cli(config_dir, server)

    # Before login: one line saying what to do, exit 2.
    code, _, err = await cli("jobs", "list")
    assert code == 2
    _one_line_error(err, "not logged in", "autoplat login")

    # Login (password from stdin): the session is kept 0600, without the password.
    code, out, err = await cli("login", "--login", admin.email, "--password-stdin", input=PASSWORD + "\n")
    assert code == 0, err
    assert f"as {admin.email} (admin)" in out
    creds_file = config_dir / "credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    creds = json.loads(creds_file.read_text())
    assert creds["api_url"] == server and PASSWORD not in creds_file.read_text()
    code, _, err = await cli("login", "--login", admin.email, "--password-stdin", input="wrong-password\n")
    assert code == 2
    _one_line_error(err, "wrong login or password")

    # Modules: a table for people, JSON for scripts; disable / enable.
    code, out, _ = await cli("modules", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "VERSION", "STATUS"]
    assert any(line.split()[:3] == ["cli-demo", "1.0.0", "ENABLED"] for line in out.splitlines())
    assert (await cli("modules", "disable", "cli-demo"))[1].strip() == "cli-demo 1.0.0: DISABLED"
    assert (await cli.json("modules", "enable", "cli-demo"))["status"] == "ENABLED"
    shown = await cli("modules", "show", "cli-demo")
    assert shown[0] == 0 and "gated" in shown[1] and "ENABLED" in shown[1]
    code, _, err = await cli("modules", "show", "no-such-module")
    assert code == 3 and "not_found" in err and "Traceback" not in err

    # A module from `module init`, registered with the session of `autoplat login`, runs on the platform.
    code, _, err = await cli("module", "init", "first-mod", str(tmp_path / "first-mod"))
    assert code == 0, err
    code, out, err = await cli("module", "register", str(tmp_path / "first-mod"), "--upload", "--enable")
    assert (code, out.strip()) == (0, "first-mod 0.1.0: ENABLED"), err
    await cli.json("jobs", "create", "first-mod", "hello", "--schedule", "none")
    hello = await cli.json("jobs", "run", "hello", "--wait")
    assert (hello["status"], hello["result"]) == ("COMPLETED", {"message": "Hello, world!"})

    # Jobs: create, run and wait; the exit code says how the run ended.
    ok_job = await cli.json("jobs", "create", "cli-demo", "ok", "--name", "ok-job", "--config", '{"n": 2}')
    await cli.json("jobs", "create", "cli-demo", "boom", "--name", "boom-job")
    code, out, err = await cli("jobs", "run", "ok-job", "--wait")
    assert code == 0, err
    assert "COMPLETED" in out and 'result: {"sum": 3}' in out
    ran = await cli.json("jobs", "run", ok_job["id"], "--wait", "--config", '{"n": 41}')
    assert ran["status"] == "COMPLETED" and ran["result"] == {"sum": 42}
    code, out, _ = await cli("jobs", "run", "boom-job", "--wait")
    assert code == 1 and "FAILED" in out and "boom" in out
    listed = await cli.json("jobs", "list", "--module", "cli-demo")
    assert sorted(j["name"] for j in listed) == ["boom-job", "ok-job"]
    assert (await cli.json("jobs", "show", "ok-job"))["config"] == {"n": 2}
    code, _, err = await cli("jobs", "run", "no-such-job")
    assert code == 3
    _one_line_error(err, "no job named 'no-such-job'")
    code, _, err = await cli("jobs", "run", "ok-job", "--config", "{not json")
    assert code == 2
    _one_line_error(err, "config is not valid JSON")

    # Executions and their logs.
    runs = await cli.json("executions", "list", "--job", "ok-job")
    assert [r["status"] for r in runs] == ["COMPLETED", "COMPLETED"]
    failed = (await cli.json("executions", "list", "--status", "failed"))[0]
    assert (await cli.json("executions", "show", failed["id"]))["error"]["message"] == "boom"
    code, out, _ = await cli("logs", failed["id"])
    assert code == 0 and "about to fail" in out
    retried = await cli.json("executions", "retry", failed["id"])
    assert retried["id"] != failed["id"]

    # logs --follow streams live lines of a running execution and exits with its outcome.
    gate = tmp_path / "gate"
    await cli.json(
        "jobs", "create", "cli-demo", "gated", "--name", "gated-job", "--config", json.dumps({"gate": str(gate)})
    )
    started = await cli.json("jobs", "run", "gated-job")
    follow = await cli.start("logs", started["id"], "--follow")
    assert follow.stdout is not None and follow.stderr is not None
    assert b"following" in await asyncio.wait_for(follow.stderr.readline(), CALL_TIMEOUT)
    gate.write_text("open")  # the handler logs only once the stream is open: nothing is stored yet
    first = await asyncio.wait_for(follow.stdout.readline(), CALL_TIMEOUT)
    assert b"through the first gate" in first  # live: the run is still blocked on the second gate
    assert (await cli.json("executions", "show", started["id"]))["status"] == "RUNNING"
    Path(f"{gate}.2").write_text("open")
    rest, err_bytes = await asyncio.wait_for(follow.communicate(), CALL_TIMEOUT)
    assert follow.returncode == 0, err_bytes
    assert b"through the second gate" in rest and b"COMPLETED" in err_bytes

    # Cancel: the followed run ends CANCELLED, so --follow exits 1.
    gate.unlink()
    Path(f"{gate}.2").unlink()
    stuck = await cli.json("jobs", "run", "gated-job")
    assert (await cli.json("executions", "cancel", stuck["id"]))["id"] == stuck["id"]
    code, _, err = await cli("logs", stuck["id"], "--follow")
    assert code == 1 and "CANCELLED" in err

    # Events: tail is subscribed (it says so on stderr) before the post; it stops after --count.
    tail = await cli.start("events", "tail", "--pattern", "cli.*", "--count", "1", "--json")
    assert tail.stderr is not None
    assert b"listening" in await asyncio.wait_for(tail.stderr.readline(), CALL_TIMEOUT)
    posted = await cli.json("events", "post", "cli.hello", "--payload", '{"n": 1}', "--source", "tests")
    out_bytes, _ = await asyncio.wait_for(tail.communicate(), CALL_TIMEOUT)
    assert tail.returncode == 0
    seen = json.loads(out_bytes)
    assert (seen["id"], seen["name"], seen["payload"]) == (posted["id"], "cli.hello", {"n": 1})

    # An expired access token is refreshed on the way (the refresh token rotates)...
    creds = json.loads(creds_file.read_text())
    creds_file.write_text(json.dumps({**creds, "access_expires_at": 0}))
    assert (await cli("jobs", "list"))[0] == 0
    refreshed = json.loads(creds_file.read_text())
    assert refreshed["refresh_token"] != creds["refresh_token"]
    assert refreshed["access_expires_at"] > creds["access_expires_at"] - 60
    # ...and a login that cannot be refreshed any more says so: exit 2, one line.
    creds_file.write_text(json.dumps({**refreshed, "access_expires_at": 0, "refresh_token": creds["refresh_token"]}))
    code, _, err = await cli("jobs", "list")
    assert code == 2
    _one_line_error(err, "login has expired", "autoplat login")

    # No API there: one line, exit 2.
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = await cli("login", "--api", dead, "--login", admin.email, "--password-stdin", input=PASSWORD + "\n")
    assert code == 2
    _one_line_error(err, f"cannot reach the API at {dead}")

    # Logout forgets the session here and ends it on the API.
    code, _, _ = await cli("login", "--login", admin.email, "--password-stdin", input=PASSWORD + "\n")
    assert code == 0
    refresh_token = json.loads(creds_file.read_text())["refresh_token"]
    code, out, _ = await cli("logout")
    assert code == 0 and "session ended" in out and not creds_file.exists()
    import httpx

    async with httpx.AsyncClient(base_url=server) as http:
        r = await http.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
    assert r.status_code == 401
    code, _, err = await cli("modules", "list")
    assert code == 2
    _one_line_error(err, "not logged in")


async def test_an_api_url_that_is_not_autoplat_is_one_line_not_a_traceback(tmp_path):
    """A wrong --api (some other web server answering 200 with HTML): one line, exit 2."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = b"<html>not autoplat</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        cli = Cli(tmp_path / "config", f"http://127.0.0.1:{site.server_address[1]}")
        cli.env["AUTOPLAT_TOKEN"] = "not-checked-by-this-server"
        code, _, err = await cli("modules", "list")
    finally:
        site.shutdown()
    assert code == 2, err
    _one_line_error(err, "no JSON", "AUTOPLAT_API_URL")
