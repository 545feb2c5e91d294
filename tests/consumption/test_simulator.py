"""The meter simulator's command line: ``python -m consumption_monitor.simulator --port N``."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx

from tests.conftest import eventually, free_port
from tests.consumption.helpers import MODULE


async def test_the_cli_serves_growing_and_resetting_meters_on_loopback():
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumption_monitor.simulator", "--port", str(port),
        env={**os.environ, "PYTHONPATH": str(MODULE)}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        banner = await asyncio.wait_for(process.stdout.readline(), 10)  # type: ignore[union-attr]
        assert banner.decode().strip() == f"meter simulator on http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def index() -> dict | None:
                try:
                    return dict((await client.get("/")).json())
                except httpx.TransportError:
                    return None

            meters = (await eventually(index, timeout=10, what="the simulator"))["meters"]
            assert set(meters) == {"rack-a", "rack-b", "plug-c", "broken"}
            totals = [(await client.get("/open/plug-c.json")).json()["meter"]["energy"]["total_kwh"] for _ in range(6)]
            assert totals == [3.05, 3.1, 3.15, 3.2, 0.0, 0.05]  # grows, resets on the 5th reading
            assert (await client.get("/open/broken.json")).status_code == 500
            assert (await client.get("/basic/rack-a.json")).status_code == 401
            metrics = (await client.get("/open/rack-a/metrics")).text
            assert 'pdu_energy_kwh_total{pdu="rack-a",outlet="1"} 1234.75' in metrics
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) is not None
