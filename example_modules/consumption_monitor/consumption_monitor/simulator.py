"""A meter simulator for tests and demos: a small asyncio HTTP server on loopback.

    python -m consumption_monitor.simulator --port 8098

Meters (each reading advances its counter by ``step_kwh``):

- ``rack-a``, ``rack-b``: counters that grow;
- ``plug-c``: a counter that resets to 0 every ``reset_every`` readings (a replaced meter);
- ``broken``: answers 500, always.

Variants of each meter (``<m>`` a meter name):

| path | answers | auth |
| --- | --- | --- |
| ``/open/<m>.json`` | JSON: ``$.meter.energy.total_kwh``, ``$.meter.power_w``, ``$.meter.voltage`` | none |
| ``/basic/<m>.json`` | the same | HTTP basic |
| ``/bearer/<m>.json`` | the same | ``Authorization: Bearer <token>`` |
| ``/apikey/<m>.json`` | the same | ``X-API-Key: <api key>`` |
| ``/open/<m>/metrics`` | Prometheus text exposition (``pdu_energy_kwh_total{outlet="1"}`` ...) | none |
| ``/bearer/<m>/metrics`` | the same | bearer |
| ``/html/<m>`` | HTML, comma decimals (``1.234,56 kWh``), link to ``details`` | form at ``/login`` (a cookie) |

Misbehaviour on purpose: ``/slow`` never answers, ``/huge`` streams 50 MB, ``/page`` is HTML (for
an endpoint configured as JSON). ``POST /control/<m>`` with ``{"total_kwh", "power_w", "fail"}``
sets a meter (tests); ``GET /`` lists the meters and their URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

USERNAME, PASSWORD, TOKEN, API_KEY = "admin", "s3cret-pw", "tok-5f1a9c", "key-77e2d0"


@dataclass
class Meter:
    name: str
    total_kwh: float
    power_w: float
    voltage_v: float = 230.4
    step_kwh: float = 0.25
    reset_every: int | None = None
    fail: bool = False
    reads: int = 0

    def read(self) -> dict[str, float]:
        """One reading: the counter moves on (and resets, for a meter that does)."""
        self.reads += 1
        if self.reset_every and self.reads % self.reset_every == 0:
            self.total_kwh = 0.0
        else:
            self.total_kwh = round(self.total_kwh + self.step_kwh, 6)
        current = round(self.power_w / self.voltage_v, 3)
        return {
            "total_kwh": self.total_kwh,
            "power_w": self.power_w,
            "voltage_v": self.voltage_v,
            "current_a": current,
            "power_factor": 0.97,
        }


def default_meters() -> dict[str, Meter]:
    return {
        "rack-a": Meter("rack-a", 1234.5, 2150.0),
        "rack-b": Meter("rack-b", 87.25, 640.0, step_kwh=0.1),
        "plug-c": Meter("plug-c", 3.0, 45.5, step_kwh=0.05, reset_every=5),
        "broken": Meter("broken", 0.0, 0.0, fail=True),
    }


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode())


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, text.encode(), "text/html; charset=utf-8", headers or {})


def _comma(value: float, digits: int = 2) -> str:
    """German style: 1.234,56"""
    return f"{value:,.{digits}f}".replace(",", "_").replace(".", ",").replace("_", ".")


class Simulator:
    """The server. ``await start()``, then ``url``; ``await close()``. ``meters`` may be changed."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, meters: dict[str, Meter] | None = None) -> None:
        self.host, self.port = host, port
        self.meters = meters if meters is not None else default_meters()
        self.sessions: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Simulator:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for writer in list(self._writers):  # connections held open (/slow) end with the server
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- HTTP -------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                self.requests.append({"method": method, "target": target, "headers": headers})
                if urlsplit(target).path == "/huge":
                    await self._huge(writer)
                    return
                if urlsplit(target).path == "/slow":
                    await reader.read()  # never answers: holds the connection until the client gives up
                    return
                response = self._route(method, target, headers, body)
                keep = headers.get("connection", "").lower() != "close"
                extra = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
                writer.write(
                    (
                        f"HTTP/1.1 {response.status} X\r\nContent-Type: {response.content_type}\r\n"
                        f"Content-Length: {len(response.body)}\r\n{extra}"
                        f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
                    ).encode("latin-1")
                    + response.body
                )
                await writer.drain()
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _huge(self, writer: asyncio.StreamWriter) -> None:
        """50 MB of JSON-looking text, streamed without a length (read until the connection closes)."""
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        chunk = b"[" + b"1," * 32767 + b"1"
        for _ in range((50 * 1024 * 1024) // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    def _authorised(self, kind: str, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if kind == "open":
            return True
        if kind == "basic":
            return given == "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        if kind == "bearer":
            return given == f"Bearer {TOKEN}"
        if kind == "apikey":
            return headers.get("x-api-key") == API_KEY
        return False

    def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        if method == "GET" and not parts:
            return _json({"meters": {name: self._links(name) for name in self.meters}})
        if method == "GET" and parts == ["page"]:
            return _html("<!DOCTYPE html><html><body><h1>Welcome to the PDU</h1></body></html>")
        if method == "POST" and len(parts) == 2 and parts[0] == "control" and parts[1] in self.meters:
            meter = self.meters[parts[1]]
            for key, value in json.loads(body or b"{}").items():
                setattr(meter, key, value)
            return _json({"ok": True})
        if parts == ["login"]:
            return self._login(method, url.query, body)
        if len(parts) >= 2 and parts[0] == "html":
            return self._html_page(parts[1:], headers, target)
        if len(parts) >= 2 and parts[0] in ("open", "basic", "bearer", "apikey"):
            kind, name = parts[0], parts[1].removesuffix(".json")
            found = self.meters.get(name)
            if found is None:
                return _json({"error": "no such meter"}, 404)
            meter = found
            if not self._authorised(kind, headers):
                return Response(401, b'{"error": "unauthorized"}', headers={"WWW-Authenticate": 'Basic realm="pdu"'})
            if meter.fail:
                return _json({"error": "sensor bus fault"}, 500)
            if parts[1].endswith(".json") and len(parts) == 2:
                return self._json_reading(meter)
            if len(parts) == 3 and parts[2] == "metrics":
                return self._metrics(meter)
        return _json({"error": "not found"}, 404)

    def _links(self, name: str) -> dict[str, str]:
        return {
            "json": f"{self.url}/open/{name}.json",
            "prometheus": f"{self.url}/open/{name}/metrics",
            "html": f"{self.url}/html/{name}",
        }

    def _json_reading(self, meter: Meter) -> Response:
        r = meter.read()
        return _json(
            {
                "meter": {
                    "id": meter.name,
                    "energy": {"total_kwh": r["total_kwh"], "unit": "kWh"},
                    "power_w": r["power_w"],
                    "voltage": f"{_comma(r['voltage_v'], 1)} V",
                    "phases": [{"current_a": r["current_a"], "power_factor": r["power_factor"]}],
                }
            }
        )

    def _metrics(self, meter: Meter) -> Response:
        r = meter.read()
        text = (
            "# HELP pdu_energy_kwh_total Energy delivered.\n# TYPE pdu_energy_kwh_total counter\n"
            f'pdu_energy_kwh_total{{pdu="{meter.name}",outlet="1"}} {r["total_kwh"]}\n'
            f'pdu_energy_kwh_total{{pdu="{meter.name}",outlet="2"}} 0\n'
            "# TYPE pdu_power_watts gauge\n"
            f'pdu_power_watts{{pdu="{meter.name}",outlet="1"}} {r["power_w"]}\n'
            f'pdu_voltage_volts{{pdu="{meter.name}"}} {r["voltage_v"]}\n'
            f'pdu_current_amperes{{pdu="{meter.name}"}} {r["current_a"]}\n'
        )
        return Response(200, text.encode(), "text/plain; version=0.0.4")

    def _login(self, method: str, query: str, body: bytes) -> Response:
        target = parse_qs(query).get("next", ["/"])[0]
        if method == "GET":
            return _html(
                "<!DOCTYPE html><html><body><h1>PDU login</h1>"
                f"<form method='post' action='/login?next={quote(target)}'>"
                "<input id='username' name='username'><input id='password' name='password' type='password'>"
                "<button id='submit' type='submit'>Sign in</button></form></body></html>"
            )
        form = parse_qs(body.decode())
        if form.get("username") == [USERNAME] and form.get("password") == [PASSWORD]:
            session = secrets.token_hex(8)
            self.sessions.add(session)
            return _html("", 303, {"Location": target, "Set-Cookie": f"session={session}; Path=/; HttpOnly"})
        return _html("<!DOCTYPE html><html><body><p id='error'>Wrong user name or password</p></body></html>", 401)

    def _html_page(self, parts: list[str], headers: dict[str, str], target: str) -> Response:
        cookies = dict(c.strip().partition("=")[::2] for c in headers.get("cookie", "").split(";") if "=" in c)
        if cookies.get("session") not in self.sessions:
            return _html("", 303, {"Location": f"/login?next={quote(target)}"})
        meter = self.meters.get(parts[0])
        if meter is None:
            return _html("<p>no such meter</p>", 404)
        if meter.fail:
            return _html("<!DOCTYPE html><html><body><p>Sensor bus fault</p></body></html>", 500)
        if parts[1:] == ["details"]:
            r = {"current_a": round(meter.power_w / meter.voltage_v, 3), "power_factor": 0.97}
            return _html(
                "<!DOCTYPE html><html><body><table id='phases'>"
                f"<tr><th>Current</th><td id='current'>{_comma(r['current_a'], 3)} A</td></tr>"
                f"<tr><th>cos &phi;</th><td id='pf'>{_comma(r['power_factor'], 2)}</td></tr>"
                "</table></body></html>"
            )
        r = meter.read()
        return _html(
            "<!DOCTYPE html><html><body><h1>Outlet group 1</h1>"
            f"<div class='reading'>Energy: <span id='kwh'>{_comma(r['total_kwh'])} kWh</span></div>"
            f"<div class='reading'>Power: <span id='power'>{_comma(r['power_w'], 1)} W</span></div>"
            f"<div class='reading'>Voltage: <span id='voltage'>{_comma(r['voltage_v'], 1)}</span> V</div>"
            f"<a id='details' href='/html/{meter.name}/details'>Details</a></body></html>"
        )


async def _main(host: str, port: int) -> None:
    async with Simulator(host=host, port=port) as sim:
        print(f"meter simulator on {sim.url}")  # noqa: T201 - a CLI
        print(json.dumps({name: sim._links(name) for name in sim.meters}, indent=2))  # noqa: T201
        print(f"credentials: basic {USERNAME}/{PASSWORD}, bearer {TOKEN}, X-API-Key {API_KEY}")  # noqa: T201
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Meter simulator (JSON, Prometheus, HTML with login) on loopback")
    parser.add_argument("--port", type=int, default=8098)
    parser.add_argument("--host", default="127.0.0.1", help="loopback by default; the simulator has no real security")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
