"""Password-guessing limits in Redis: per account, per client address, with a pass for known clients.

Every attempt (a login, or a password change proving the current password) is counted *before* its
password is checked, in one Lua script, so concurrent attempts are counted one by one: 30 wrong
passwords sent at once count as 30, and only the first ``max_failures`` of them are even checked.
A correct password resets the account's count (and does not count against the address).

Throttling an account must not hand its owner's access to whoever guesses: while an account is over
its budget, an address that logged in to it successfully within ``known_client_seconds`` may still
try, with a budget of its own (``max_failures`` per window for that address and account). An attacker
elsewhere gets ``max_failures`` guesses per window; the owner, from a place they used before, keeps
logging in. (A new place has to wait for the window to end.)

When Redis is unreachable the limits are skipped (logged): logins stay possible, and the readiness
probe reports Redis down.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from registry.errors import RateLimited

log = logging.getLogger(__name__)

# KEYS: account count, address count, (account, address) count, account's known addresses
# ARGV: window seconds, max failures, address max failures, address id
# Returns {verdict, retry_after}: 0 go, 1 address over its limit, 2 account throttled, 3 go on the known
# client's own budget, 4 known client over its own budget.
_BEGIN = """
local window = tonumber(ARGV[1])
local function count(key)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, window) end
  return n
end
local function ttl(key)
  local t = redis.call('TTL', key)
  if t < 1 then return 1 end
  return t
end
local by_ip = count(KEYS[2])
local by_account = count(KEYS[1])
if by_ip > tonumber(ARGV[3]) then return {1, ttl(KEYS[2])} end
if by_account <= tonumber(ARGV[2]) then return {0, 0} end
if ARGV[4] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 1 then
  if count(KEYS[3]) <= tonumber(ARGV[2]) then return {3, 0} end
  return {4, ttl(KEYS[3])}
end
return {2, ttl(KEYS[1])}
"""


@dataclass(frozen=True)
class Attempt:
    """One counted attempt; hand it back to :meth:`LoginLimiter.succeeded` when the password was right."""

    account_key: str
    ip_key: str
    client_key: str
    known_key: str
    client_id: str
    known_client: bool = False
    counted: bool = True


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class LoginLimiter:
    def __init__(
        self,
        redis: Redis,
        *,
        max_failures: int,
        ip_max_failures: int,
        window_seconds: int,
        known_client_seconds: int = 30 * 24 * 3600,
        prefix: str = "autoplat",
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_failures = max_failures
        self.ip_max_failures = ip_max_failures
        self.window = window_seconds
        #: 0 turns the known-client pass off.
        self.known_client_seconds = known_client_seconds
        self._begin = redis.register_script(_BEGIN)

    def _attempt(self, account: str, ip: str | None) -> Attempt:
        acct = _digest(account.strip().lower())
        client = _digest(ip) if ip else ""
        base = f"{self.prefix}:login-fail"
        return Attempt(
            account_key=f"{base}:acct:{acct}",
            ip_key=f"{base}:ip:{ip or 'unknown'}",
            client_key=f"{base}:client:{acct}:{client}",
            known_key=f"{self.prefix}:login-known:{acct}",
            client_id=client,
        )

    async def begin(self, account: str, ip: str | None) -> Attempt:
        """Count an attempt on ``account`` from ``ip``; RateLimited (429) when it may not be tried."""
        attempt = self._attempt(account, ip)
        known_id = attempt.client_id if self.known_client_seconds > 0 else ""
        try:
            verdict, retry_after = await self._begin(
                keys=[attempt.account_key, attempt.ip_key, attempt.client_key, attempt.known_key],
                args=[self.window, self.max_failures, self.ip_max_failures, known_id],
            )
        except (RedisError, OSError) as exc:
            log.warning("login rate limiter unavailable: %s", exc)
            return Attempt(**{**attempt.__dict__, "counted": False})
        verdict, retry_after = int(verdict), int(retry_after)
        if verdict == 1:
            raise RateLimited("too many failed logins from this address", retry_after=retry_after)
        if verdict in (2, 4):
            raise RateLimited("too many failed logins for this account", retry_after=retry_after)
        return Attempt(**{**attempt.__dict__, "known_client": verdict == 3})

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: undo this attempt's count, reset the budget it used, remember the client."""
        if not attempt.counted:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.decr(attempt.ip_key)
                if attempt.known_client:
                    # The account stays throttled for everyone else; this client's budget is whole again.
                    pipe.decr(attempt.account_key)
                    pipe.delete(attempt.client_key)
                else:
                    pipe.delete(attempt.account_key, attempt.client_key)
                if attempt.client_id and self.known_client_seconds > 0:
                    pipe.sadd(attempt.known_key, attempt.client_id)
                    pipe.expire(attempt.known_key, self.known_client_seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("login rate limiter unavailable: %s", exc)
