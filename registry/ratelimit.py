"""Failed-login rate limiting in Redis, per account and per client IP (fixed windows)."""

from __future__ import annotations

import hashlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from registry.errors import RateLimited

log = logging.getLogger(__name__)


class LoginLimiter:
    def __init__(
        self, redis: Redis, *, max_failures: int, ip_max_failures: int, window_seconds: int, prefix: str = "autoplat"
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_failures = max_failures
        self.ip_max_failures = ip_max_failures
        self.window = window_seconds

    def _keys(self, login: str, ip: str | None) -> tuple[str, str]:
        account = hashlib.sha256(login.strip().lower().encode()).hexdigest()[:32]
        return f"{self.prefix}:login-fail:acct:{account}", f"{self.prefix}:login-fail:ip:{ip or 'unknown'}"

    async def check(self, login: str, ip: str | None) -> None:
        """Raise RateLimited when the account or the IP has too many recent failures.

        When Redis is unreachable the check is skipped (logged): logins stay possible and the
        readiness probe reports Redis down.
        """
        account_key, ip_key = self._keys(login, ip)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in (account_key, ip_key):
                    pipe.get(key)
                    pipe.ttl(key)
                acct, acct_ttl, ipc, ip_ttl = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("login rate limiter unavailable: %s", exc)
            return
        if acct is not None and int(acct) >= self.max_failures:
            raise RateLimited("too many failed logins for this account", retry_after=max(int(acct_ttl), 1))
        if ipc is not None and int(ipc) >= self.ip_max_failures:
            raise RateLimited("too many failed logins from this address", retry_after=max(int(ip_ttl), 1))

    async def failed(self, login: str, ip: str | None) -> None:
        account_key, ip_key = self._keys(login, ip)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in (account_key, ip_key):
                    pipe.incr(key)
                    pipe.expire(key, self.window, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("login rate limiter unavailable: %s", exc)

    async def succeeded(self, login: str) -> None:
        account_key, _ = self._keys(login, None)
        try:
            await self.redis.delete(account_key)
        except (RedisError, OSError) as exc:
            log.warning("login rate limiter unavailable: %s", exc)
