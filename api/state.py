"""Process-wide resources of the API, opened in the app's lifespan and closed with it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from registry.errors import ServiceUnavailable
from registry.ratelimit import LoginLimiter
from registry.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    limiter: LoginLimiter
    _temporal: Client | None = None
    _temporal_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def temporal(self) -> Client:
        """The Temporal client, connected on first use so the API starts while Temporal is down."""
        if self._temporal is not None:
            return self._temporal
        async with self._temporal_lock:
            if self._temporal is None:
                from workflows.client import connect, ensure_search_attributes

                try:
                    client = await asyncio.wait_for(connect(self.settings), timeout=10)
                except Exception as exc:  # noqa: BLE001 - any connection failure means "unavailable"
                    raise ServiceUnavailable(f"Temporal is unreachable at {self.settings.temporal_address}") from exc
                try:
                    await ensure_search_attributes(client, self.settings.temporal_namespace)
                except Exception as exc:  # noqa: BLE001
                    log.warning("search attributes not registered: %s", exc)
                self._temporal = client
        assert self._temporal is not None
        return self._temporal

    def set_temporal(self, client: Client) -> None:
        self._temporal = client
