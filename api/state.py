"""Process-wide resources of the API, opened in the app's lifespan and closed with it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from registry.authcache import SessionCache
from registry.errors import ServiceUnavailable
from registry.ratelimit import LoginLimiter
from registry.services.lifecycle import LifecycleHooks, NoHooks

if TYPE_CHECKING:
    from registry.services.jobs import SecretCodec
    from workflows.control import Runner
    from workflows.schedules import ScheduleManager
from registry.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    limiter: LoginLimiter
    #: Called by module lifecycle transitions; the jobs capability plugs in Temporal schedules.
    hooks: LifecycleHooks = field(default_factory=NoHooks)
    #: Which sessions are alive (registry/authcache.py); one per process, invalidated through Redis.
    auth: SessionCache = field(init=False)

    def __post_init__(self) -> None:
        self.limiter.known_client_seconds = self.settings.login_known_client_days * 24 * 3600
        self.auth = SessionCache(
            redis=self.redis,
            sessions=self.sessions,
            prefix=self.settings.redis_prefix,
            max_age_seconds=self.settings.auth_cache_seconds,
        )
        if isinstance(self.hooks, NoHooks):
            from workflows.hooks import ScheduleHooks

            self.hooks = ScheduleHooks(self.schedules)

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

    async def schedules(self) -> ScheduleManager:
        from workflows.schedules import ScheduleManager

        return ScheduleManager(await self.temporal(), self.settings.task_queue)

    async def runner(self) -> Runner:
        from workflows.control import Runner

        return Runner(self.settings, self.sessions, self.temporal)

    def secret_codec(self) -> SecretCodec:
        from registry.services.jobs import SecretCodec

        return SecretCodec(self.settings.encryption_key())
