"""Helpers of the consumption-monitor tests: the module folder, route calls through the SDK harness."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from autoplat import HttpRequest
from autoplat.testing import MemoryServices, arun_step

MODULE = Path(__file__).resolve().parents[2] / "example_modules" / "consumption_monitor"
if str(MODULE) not in sys.path:
    sys.path.insert(0, str(MODULE))  # the simulator and the handlers, imported by the tests

MANIFEST = json.loads((MODULE / "manifest.json").read_text())
#: The legacy ``credentials_key`` of 0.2 (0.3 seals credentials with ``ctx.vault`` and needs none).
KEY = "test-credentials-key-0123456789"
CONFIG: dict[str, Any] = {"retries": 0, "timeout_seconds": 5}


def memory() -> MemoryServices:
    services = MemoryServices()
    services.series.declare_from(MANIFEST)
    return services


async def call(
    services: MemoryServices,
    handler: Any,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    query: dict[str, Any] | None = None,
    body: Any = None,
    module_config: dict[str, Any] | None = None,
    browser: Any = None,
) -> tuple[int, Any, list[dict[str, Any]]]:
    """Run a route handler as the platform would: ``(status, body, log lines)``."""

    async def route(ctx: Any) -> dict[str, Any]:
        answer = await handler(ctx)
        return {"status": ctx.response.status, "headers": dict(ctx.response.headers), "body": answer}

    step = await arun_step(
        route,
        request=HttpRequest(method=method, path=path, params=params or {}, query=query or {}, body=body),
        module_config={**CONFIG, **(module_config or {})},
        services={"browser": browser} if browser is not None else None,
        hosts=MANIFEST["permissions"]["hosts"],
        allow_private="loopback",
        memory=services,
        module=MANIFEST["name"],
    )
    return step.result["status"], step.result["body"], step.logs


def json_endpoint(url: str, **extra: Any) -> dict[str, Any]:
    """A JSON endpoint reading the simulator's document."""
    return {
        "name": "rack A",
        "type": "pdu",
        "vendor": "Raritan",
        "location": "DC1 / row 4",
        "client": "acme",
        "url": url,
        "protocol": "json",
        "fields": {
            "total_kwh": {"path": "$.meter.energy.total_kwh"},
            "power_w": {"path": "meter.power_w"},
            "voltage_v": {"path": "$.meter.voltage", "regex": r"([\d.,]+)\s*V", "decimal": "comma"},
            "current_a": {"path": "$.meter.phases[0].current_a"},
        },
        **extra,
    }
