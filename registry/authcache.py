"""Which sessions are alive: a per-process cache of session checks, kept honest through Redis.

An access token names its session (claim ``fam``: the refresh-token family of one login). Every
authenticated request needs to know that this session is still alive and who its user is now
(active, role). Reading that from the database on every request is what this cache saves.

Invalidation: each user has a *stamp* in Redis (``<prefix>:auth:stamp:<user id>``), a random value
that is replaced whenever one of the user's sessions ends or the user changes (logout, reuse
detection, password change, role change, deactivation, deletion, an admin's revoke). A cached check
remembers the stamp it was made under, and a request trusts it only while the stamp in Redis is the
same (one Redis GET) and the check is younger than ``AUTOPLAT_AUTH_CACHE_SECONDS``. The stamp is
replaced *after* the change is committed, and a request reads the stamp *before* it reads the
database, so a check made against the old data is always stamped with the old value: every API
process refuses a revoked session from the first request after the revoking one answered.

Stamps are random rather than counters so that a Redis that restarted empty can never hand back an
old value. When Redis cannot be reached every request checks the database (fail safe), and the
cache is not used again until Redis answers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import event, exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from registry.models import RefreshSession, User

log = logging.getLogger(__name__)

#: A stamp outlives any access token by far; when it expires, the next check simply reads the DB.
STAMP_TTL_SECONDS = 24 * 3600
#: After Redis failed, go straight to the database for this long (no connect timeout per request).
REDIS_RETRY_SECONDS = 1.0
MAX_ENTRIES = 10_000

_PENDING = "autoplat.auth.pending"
_COMMITTED = "autoplat.auth.committed"
_HOOKED = "autoplat.auth.hooked"


@dataclass(frozen=True)
class Principal:
    """The user behind a live session, as of the last check."""

    user_id: str
    email: str
    role: str
    family_id: str


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    stamp: str
    checked_at: float


def touch(session: AsyncSession, user_id: str) -> None:
    """Record that ``user_id``'s sessions or account change in this transaction.

    The change reaches the other API processes once the transaction commits and the owner of the
    unit of work calls :meth:`SessionCache.invalidate` with :func:`committed`.
    """
    sync = session.sync_session
    sync.info.setdefault(_PENDING, set()).add(user_id)
    if not sync.info.get(_HOOKED):
        sync.info[_HOOKED] = True
        event.listen(sync, "after_commit", _after_commit)
        event.listen(sync, "after_rollback", _after_rollback)


def _after_commit(sync: Session) -> None:
    sync.info.setdefault(_COMMITTED, set()).update(sync.info.pop(_PENDING, ()))


def _after_rollback(sync: Session) -> None:
    sync.info.pop(_PENDING, None)


def committed(session: AsyncSession) -> set[str]:
    """The users whose changes this session committed since the last call (and forgets them)."""
    return set(session.sync_session.info.pop(_COMMITTED, ()))


class SessionCache:
    """One per API process. ``principal()`` answers "is this session alive, and whose is it?"."""

    def __init__(
        self,
        *,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession],
        prefix: str,
        max_age_seconds: float,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.prefix = prefix
        self.max_age_seconds = max_age_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._redis_down_until = 0.0
        #: Checks answered from the database (observable in tests and by operators through logs).
        self.db_checks = 0

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}:auth:stamp:{user_id}"

    async def principal(self, *, user_id: str, family_id: str) -> Principal | None:
        """The live session's user, or None when the session ended or the user is gone or inactive."""
        stamp = await self._stamp(user_id)
        entry = self._entries.get(family_id)
        if (
            stamp is not None
            and entry is not None
            and entry.stamp == stamp
            and entry.principal.user_id == user_id
            and time.monotonic() - entry.checked_at < self.max_age_seconds
        ):
            self._entries.move_to_end(family_id)
            return entry.principal
        checked_at = time.monotonic()
        principal = await self._load(user_id=user_id, family_id=family_id)
        if principal is None or stamp is None:
            self._entries.pop(family_id, None)
            return principal
        self._entries[family_id] = _Entry(principal=principal, stamp=stamp, checked_at=checked_at)
        self._entries.move_to_end(family_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return principal

    async def invalidate(self, user_ids: Iterable[str]) -> None:
        """Call after committing a change to these users' sessions or accounts."""
        users = set(user_ids)
        if not users:
            return
        for family_id in [f for f, e in self._entries.items() if e.principal.user_id in users]:
            del self._entries[family_id]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.set(self._key(user_id), uuid.uuid4().hex, ex=STAMP_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # The other processes either can't reach Redis either (they check the DB) or see the
            # change when their cached check ages out (AUTOPLAT_AUTH_CACHE_SECONDS).
            log.error("session revocation not announced to other API processes (Redis: %s)", exc)
            self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    async def _stamp(self, user_id: str) -> str | None:
        """The user's current stamp (created when missing), or None when Redis is unreachable."""
        if time.monotonic() < self._redis_down_until:
            return None
        key = self._key(user_id)
        try:
            stamp: object = await self.redis.get(key)
            if stamp is None:
                fresh = uuid.uuid4().hex
                # Whoever sets it first wins; everyone reads the winner's value.
                previous = await self.redis.set(key, fresh, ex=STAMP_TTL_SECONDS, nx=True, get=True)
                stamp = previous if isinstance(previous, (bytes, str)) else fresh
        except (RedisError, OSError) as exc:
            log.warning("session cache bypassed, Redis unreachable: %s", exc)
            self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
            return None
        return stamp.decode() if isinstance(stamp, bytes) else str(stamp)

    async def _load(self, *, user_id: str, family_id: str) -> Principal | None:
        self.db_checks += 1
        alive = exists().where(
            RefreshSession.family_id == family_id,
            RefreshSession.user_id == user_id,
            RefreshSession.revoked_at.is_(None),
            RefreshSession.expires_at > datetime.now(UTC),
        )
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(User.id, User.email, User.role).where(User.id == user_id, User.is_active.is_(True), alive)
                )
            ).first()
        if row is None:
            return None
        return Principal(user_id=row.id, email=row.email, role=row.role, family_id=family_id)
