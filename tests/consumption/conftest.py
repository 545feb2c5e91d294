"""Fixtures of the consumption-monitor tests: the meter simulator, a real browser session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.consumption.helpers import MODULE  # noqa: F401 - puts the module's code on sys.path


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    from consumption_monitor.simulator import Simulator

    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A real ctx.browser (system Chromium), its screenshots kept in ``.saved``."""
    from activities.services.browser import BrowserPool, BrowserSession
    from registry.settings import Settings

    saved: dict[str, bytes] = {}

    async def save(name: str, content_type: str, data: bytes) -> dict[str, Any]:
        saved[name] = data
        return {"name": name, "content_type": content_type, "size": len(data), "url": f"/artifacts/{name}"}

    pool = BrowserPool(Settings(dev_mode=True, http_allow_private="loopback"))
    session = BrowserSession(pool, save=save)
    session.saved = saved  # type: ignore[attr-defined]
    try:
        yield session
    finally:
        await session.close()
        await pool.close()
