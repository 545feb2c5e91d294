"""The consumption-monitor demo of ``autoplat dev``: a meter simulator and the module set up to read it.

``./run.sh`` shows the consumption monitor with live data a minute after a fresh start (issue 18):

- :class:`MeterSimulator` serves the module's own simulator
  (``example_modules/consumption_monitor/consumption_monitor/simulator.py``) on loopback, in the
  dev stack's process, stopped with it. Its port is 8098 (``AUTOPLAT_DEV_METER_PORT``); a busy port
  falls back to a free one, and the set-up re-points the demo endpoints at it. The meters' counters
  are kept in the state folder (``meter-simulator.json``), so a restart continues them instead of
  showing every meter as reset (which the module would bill as a whole meter's consumption).
- :func:`set_up` registers, installs and enables the module, sets its timezone (UTC), creates the demo
  endpoints **through the module's routes** (the API a user calls; one per protocol and auth
  kind, and the ``broken`` meter for an endpoint in error) and starts a first ``collect`` run.

The set-up runs as a background task once the API serves: a failure is logged and the platform
runs on without the demo. It is idempotent: endpoints are found by name; a second start creates
none, and changes only the URLs of those that point at another simulator port.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

log = logging.getLogger("autoplat.dev")

ROOT = Path(__file__).resolve().parent.parent
MODULE_PATH = ROOT / "example_modules" / "consumption_monitor"
MODULE = "consumption-monitor"
#: The simulator's port in the dev stack (the docs' examples name it too).
METER_PORT = 8098
METERS_FILE = "meter-simulator.json"
#: The meters read by the demo: the simulator's own, and ``rack-d`` for the HTML endpoint (so no
#: meter is read, and billed, twice).
EXTRA_METERS = {"rack-d": {"total_kwh": 512.0, "power_w": 1320.0, "step_kwh": 0.15}}


class DemoError(Exception):
    """A set-up step that did not work, with what it answered."""


def _simulator_code() -> ModuleType:
    """The module's simulator, loaded from its file (the module's package stays off ``sys.path``)."""
    name = "autoplat_dev_meter_simulator"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODULE_PATH / "consumption_monitor" / "simulator.py")
    if spec is None or spec.loader is None:
        raise DemoError(f"cannot load the meter simulator from {MODULE_PATH}")
    code = importlib.util.module_from_spec(spec)
    sys.modules[name] = code  # dataclasses look their module up there
    spec.loader.exec_module(code)
    return code


class MeterSimulator:
    """The simulator on ``127.0.0.1:port`` (a free port when it is taken), its counters kept in ``state_file``."""

    def __init__(self, port: int, state_file: Path) -> None:
        self.port = port
        self.wanted = port
        self.state_file = state_file
        self.error: str | None = None
        self._sim: Any = None
        self._saver: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        try:
            code = _simulator_code()
            meters = code.default_meters()
            for name, fields in EXTRA_METERS.items():
                meters[name] = code.Meter(name, **fields)
            self._restore(meters)
            self.port = self.wanted if _bindable(self.wanted) else 0
            self._sim = code.Simulator(host="127.0.0.1", port=self.port, meters=meters)
            await self._sim.start()
        except Exception as exc:  # noqa: BLE001 - the platform runs without its demo
            self.error = f"{type(exc).__name__}: {exc}"
            self._sim = None
            log.warning("meter simulator: not started: %s", self.error)
            return
        self.port = self._sim.port
        if self.port != self.wanted:
            log.warning(
                "meter simulator: 127.0.0.1:%s is taken, serving on %s (set AUTOPLAT_DEV_METER_PORT)",
                self.wanted,
                self.port,
            )
        self._saver = asyncio.create_task(self._save_every(30))

    @property
    def running(self) -> bool:
        return self._sim is not None

    def note(self) -> str:
        if self._sim is None:
            return f"not started: {self.error}"
        meters = ", ".join(self._sim.meters)
        return f"{self.url}/   (meters {meters}; the consumption monitor's demo endpoints read them)"

    def _restore(self, meters: dict[str, Any]) -> None:
        try:
            saved = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("meter simulator: ignoring %s (%s): counters start again", self.state_file, exc)
            return
        for name, values in saved.items() if isinstance(saved, dict) else ():
            meter = meters.get(name)
            if meter is not None and isinstance(values, dict):
                meter.total_kwh = float(values.get("total_kwh", meter.total_kwh))
                meter.reads = int(values.get("reads", meter.reads))

    def save(self) -> None:
        if self._sim is None:
            return
        counters = {name: {"total_kwh": m.total_kwh, "reads": m.reads} for name, m in self._sim.meters.items()}
        try:
            self.state_file.write_text(json.dumps(counters, indent=1), encoding="utf-8")
        except OSError as exc:
            log.warning("meter simulator: cannot save its counters to %s: %s", self.state_file, exc)

    async def _save_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)  # a crash loses at most this much of the counters' progress
            self.save()

    async def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
        if self._sim is not None:
            self.save()
            await self._sim.close()
            self._sim = None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- the demo endpoints ---------------------------------------------------------------------------

_JSON_FIELDS = {
    "total_kwh": {"path": "$.meter.energy.total_kwh"},
    "power_w": {"path": "$.meter.power_w"},
    "voltage_v": {"path": "$.meter.voltage", "regex": r"([\d.,]+)\s*V", "decimal": "comma"},
    "current_a": {"path": "$.meter.phases[0].current_a"},
}


def demo_endpoints(simulator_url: str) -> list[dict[str, Any]]:
    """The endpoint bodies the demo creates (``POST /endpoints``), pointing at ``simulator_url``."""
    sim, username, password = simulator_url, "admin", "s3cret-pw"
    common = {"vendor": "meter simulator", "poll_interval_seconds": 60}
    return [
        {
            **common,
            "name": "rack A",
            "type": "pdu",
            "location": "DC1 / row 4",
            "client": "acme",
            "url": f"{sim}/open/rack-a.json",
            "protocol": "json",
            "fields": _JSON_FIELDS,
            "power_threshold_w": 3000,
        },
        {
            **common,
            "name": "rack B",
            "type": "pdu",
            "location": "DC1 / row 5",
            "client": "beta",
            "url": f"{sim}/basic/rack-b.json",
            "protocol": "json",
            "auth": {"type": "basic"},
            "credentials": {"username": username, "password": password},
            "fields": _JSON_FIELDS,
        },
        {
            **common,
            "name": "plug C",
            "type": "smart_plug",
            "location": "DC1 / lab",
            "client": "beta",
            "url": f"{sim}/open/plug-c/metrics",
            "protocol": "prometheus",
            "fields": {
                "total_kwh": {"metric": "pdu_energy_kwh_total", "labels": {"outlet": "1"}},
                "power_w": {"metric": "pdu_power_watts"},
                "voltage_v": {"metric": "pdu_voltage_volts"},
            },
        },
        {
            **common,
            "name": "rack D (web UI)",
            "type": "pdu",
            "location": "DC2 / row 1",
            "client": "acme",
            "url": f"{sim}/html/rack-d",
            "protocol": "html",
            "auth": {
                "type": "form",
                "steps": [
                    {"action": "goto", "url": f"{sim}/login"},
                    {"action": "fill", "selector": "#username", "value": "{{username}}"},
                    {"action": "fill", "selector": "#password", "value": "{{password}}"},
                    {"action": "click", "selector": "#submit"},
                ],
            },
            "credentials": {"username": username, "password": password},
            "fields": {
                "total_kwh": {"selector": "#kwh", "regex": r"([\d.,]+)\s*kWh", "decimal": "comma"},
                "power_w": {"selector": "#power", "regex": r"([\d.,]+)\s*W", "decimal": "comma"},
                "voltage_v": {"selector": "#voltage", "decimal": "comma"},
            },
        },
        {
            **common,
            "name": "broken meter",
            "type": "power_meter",
            "location": "DC2 / row 2",
            "client": "acme",
            "url": f"{sim}/open/broken.json",
            "protocol": "json",
            "fields": _JSON_FIELDS,
        },
    ]


# --- the set-up -------------------------------------------------------------------------------------


async def set_up(*, state: Any, api_url: str, simulator_url: str) -> None:
    """Module enabled and configured, demo endpoints present and pointing at ``simulator_url``, a first
    collection started. Raises :class:`DemoError` (or the error of a step) when a step fails."""
    from registry.services import modules as module_service

    summary = await module_service.ensure_module_from_path(state=state, path=MODULE_PATH)
    log.info("consumption demo: module %s", summary)
    if not summary.endswith(": ENABLED"):
        raise DemoError(f"the module is not enabled ({summary})")
    token = await _session_token(state)
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        try:
            await _configure(http)
            await _ensure_endpoints(http, simulator_url)
            jobs = await _call(http, "GET", "/api/v1/jobs", params={"module": MODULE, "limit": 100})
            collect = [j for j in jobs["items"] if j["job_type"] == "collect"]
            if not collect:
                raise DemoError("the module has no collect job (its manifest asks for one with createJob)")
            live = f"GET {api_url}/api/v1/m/{MODULE}/live"
            soon = _starts_within(collect[0].get("next_runs") or [], seconds=15)
            if soon is not None:
                # A run started now would overlap the scheduled one (overlap "skip" only holds
                # between scheduled runs) and read every endpoint twice.
                log.info("consumption demo: the scheduled collection at %s reads them first. Live: %s", soon, live)
            else:
                execution = await _call(http, "POST", f"/api/v1/jobs/{collect[0]['id']}/execute")
                log.info(
                    "consumption demo: first collection started (execution %s), then every minute. Live: %s",
                    execution.get("id"),
                    live,
                )
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await http.post("/api/v1/auth/logout")  # ends the set-up's own session


def _starts_within(next_runs: list[str], *, seconds: float) -> str | None:
    """The first of a job's ``next_runs`` when it is at most ``seconds`` away."""
    if not next_runs:
        return None
    at = datetime.fromisoformat(next_runs[0])
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return next_runs[0] if (at - datetime.now(UTC)).total_seconds() <= seconds else None


async def _session_token(state: Any) -> str:
    """An access token of the first admin, in a session of its own (ended by the set-up's logout)."""
    from sqlalchemy import select

    from registry.db import unit_of_work
    from registry.models import Role, User, new_id
    from registry.services.auth import _issue
    from registry.services.common import Actor

    async with unit_of_work(state.sessions) as session:
        user = await session.scalar(
            select(User)
            .where(User.role == Role.admin.value, User.is_active.is_(True))
            .order_by(User.created_at)
            .limit(1)
        )
        if user is None:
            raise DemoError("no active admin to set the demo up with")
        pair = await _issue(
            session=session, settings=state.settings, user=user, family_id=new_id(), actor=Actor.system("autoplat dev")
        )
    return pair.access_token


async def _call(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    r = await http.request(method, path, **kwargs)
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        raise DemoError(f"{method} {path} answered {r.status_code}: {message}")
    return r.json() if r.content else None


async def _configure(http: httpx.AsyncClient) -> None:
    """Timezone UTC, once (a timezone already set is left alone). No key: the module seals the
    endpoints' credentials with the platform's vault (a ``credentials_key`` set by a demo of module
    0.2 stays in the config, so what it sealed stays readable)."""
    path = f"/api/v1/modules/{MODULE}/config"
    current = (await _call(http, "GET", path))["config"]
    if current.get("timezone"):
        return
    await _call(http, "PUT", path, json={"config": {**current, "timezone": "UTC"}})
    log.info("consumption demo: module config set (timezone UTC)")


async def _ensure_endpoints(http: httpx.AsyncClient, simulator_url: str) -> None:
    base = f"/api/v1/m/{MODULE}/endpoints"
    existing = {e["name"]: e for e in (await _call(http, "GET", base))["items"]}
    counts = {"created": 0, "re-pointed": 0, "already there": 0}
    for body in demo_endpoints(simulator_url):
        found = existing.get(body["name"])
        if found is None:
            await _call(http, "POST", base, json=body)
            counts["created"] += 1
        elif found.get("url") != body["url"]:
            # Another simulator port than last time: the URLs move, the rest stays as the user left it.
            change = {"url": body["url"], **({"auth": body["auth"]} if body["protocol"] == "html" else {})}
            await _call(http, "PATCH", f"{base}/{found['id']}", json=change)
            counts["re-pointed"] += 1
        else:
            counts["already there"] += 1
    log.info(
        "consumption demo: endpoints on %s: %s", simulator_url, ", ".join(f"{n} {what}" for what, n in counts.items())
    )


async def run_set_up(*, state: Any, api_url: str, simulator_url: str) -> None:
    """:func:`set_up` as the dev stack's background task: errors are logged, never raised."""
    try:
        await set_up(state=state, api_url=api_url, simulator_url=simulator_url)
    except asyncio.CancelledError:
        raise
    except DemoError as exc:
        log.error("consumption demo: set-up failed, the platform runs on without it: %s", exc)
    except Exception:
        log.exception("consumption demo: set-up failed, the platform runs on without it")
