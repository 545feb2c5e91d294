"""Module storage (``ctx.storage``) and per-job state (``ctx.state``).

``ctx.storage`` is the module's private document store: JSON values under string keys, optional
TTL, batch upsert, and queries by key prefix with simple equality filters on top-level fields.
A module only ever sees its own documents.

``ctx.state`` is one JSON object per job, kept between runs (a sync cursor, a high-water mark),
with a version for optimistic concurrency: :meth:`JobStateBase.update` re-reads and retries when
another run changed it in between.

Both have async methods for async handlers and ``*_sync`` twins for sync handlers. The platform
keeps them in its database; :class:`MemoryStorage` / :class:`MemoryState` implement the same
contract in memory for :mod:`autoplat.testing`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from autoplat._sync import Runner
from autoplat.errors import JobError

__all__ = [
    "Document",
    "JobStateBase",
    "MemoryState",
    "MemoryStorage",
    "StateConflict",
    "StateSnapshot",
    "StorageBase",
    "StorageError",
]

MAX_KEY_LENGTH = 512
DEFAULT_MAX_VALUE_BYTES = 256 * 1024
MAX_BATCH = 500
MAX_QUERY_LIMIT = 1000
MAX_FILTERS = 10
FIELD_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
Scalar = str | int | float | bool | None


class StorageError(JobError):
    """An invalid storage call: bad key, value too large, bad filter (fails the step, no retry)."""


class StateConflict(Exception):
    """The job state changed since it was read (``expected_version`` did not match).

    Retryable: :meth:`JobStateBase.update` retries it itself.
    """

    def __init__(self, message: str, *, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


@dataclass(frozen=True)
class Document:
    """A stored document."""

    key: str
    value: Any
    expires_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class StateSnapshot:
    """A job's state and its version (0: never written)."""

    value: dict[str, Any]
    version: int


# --- validation shared by every implementation ----------------------------------------------------
def check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise StorageError("a storage key is a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise StorageError(f"storage key longer than {MAX_KEY_LENGTH} characters", details={"key": key[:64]})
    if any(ord(c) < 32 for c in key):
        raise StorageError("storage keys may not contain control characters")
    return key


def check_value(value: Any, limit: int, *, what: str = "value") -> Any:
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"the {what} is not JSON-serialisable: {exc}") from None
    if len(encoded.encode("utf-8")) > limit:
        raise StorageError(f"the {what} is larger than {limit} bytes", details={"limit": limit})
    if "\\u0000" in encoded:
        # PostgreSQL's jsonb cannot hold NUL characters; refused everywhere for one contract.
        raise StorageError(f"the {what} contains a NUL character (\\u0000), which cannot be stored")
    # What is stored is the JSON round trip (tuples become lists, keys become strings).
    return json.loads(encoded)


def check_ttl(ttl: float | timedelta | None) -> datetime | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise StorageError("ttl must be positive (seconds)")
    return datetime.now(UTC) + timedelta(seconds=seconds)


def check_where(where: Mapping[str, Any] | None) -> dict[str, Scalar]:
    where = dict(where or {})
    if len(where) > MAX_FILTERS:
        raise StorageError(f"at most {MAX_FILTERS} filters")
    for name, value in where.items():
        if not isinstance(name, str) or not FIELD_PATTERN.match(name):
            raise StorageError(f"filter field {name!r} must be a top-level field name ([A-Za-z0-9_-], 1-64)")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise StorageError(f"filter on {name!r}: only str, int, float, bool or None values can be compared")
    return where


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
        raise StorageError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
    return limit


def items_of(items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    pairs = list(items.items()) if isinstance(items, Mapping) else [tuple(p) for p in items]
    if len(pairs) > MAX_BATCH:
        raise StorageError(f"at most {MAX_BATCH} documents per batch")
    # One document per key, the last value winning (as separate puts would).
    return list(dict((k, v) for k, v in pairs).items())  # noqa: C402 - tuples of any iterable shape


def matches(value: Any, where: Mapping[str, Scalar]) -> bool:
    """JSON equality of top-level fields (``True`` is not ``1``); the in-memory reference semantics."""
    if not isinstance(value, dict):
        return not where
    for name, expected in where.items():
        if name not in value:
            return False
        actual = value[name]
        if isinstance(expected, bool) or isinstance(actual, bool):
            if type(expected) is not type(actual) or expected != actual:
                return False
        elif actual != expected:
            return False
    return True


# --- the interfaces ----------------------------------------------------------------------------------
class _Twins:
    _runner: Runner | None

    def _sync(self, aw: Awaitable[Any]) -> Any:
        if self._runner is None:
            close = getattr(aw, "close", None)
            if close is not None:
                close()
            raise RuntimeError("the *_sync methods are only available inside a sync handler")
        return self._runner(aw)

    def bind(self, runner: Runner | None) -> Any:
        """Use ``runner`` for the ``*_sync`` twins (the harness binds each run's loop)."""
        self._runner = runner
        return self


class StorageBase(_Twins):
    """``ctx.storage``: the module's own documents. Subclasses implement the ``_`` methods."""

    def __init__(self, *, runner: Runner | None = None, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self._runner = runner
        self.max_value_bytes = max_value_bytes

    async def put(self, key: str, value: Any, *, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` (any JSON) under ``key``, replacing what was there.

        Args:
            ttl: Seconds (or a timedelta) after which the document expires.
        """
        await self._upsert([(check_key(key), check_value(value, self.max_value_bytes))], check_ttl(ttl))

    async def put_many(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *, ttl: float | timedelta | None = None
    ) -> int:
        """Upsert several documents at once (all or nothing); returns how many were written."""
        pairs = [(check_key(k), check_value(v, self.max_value_bytes)) for k, v in items_of(items)]
        if pairs:
            await self._upsert(pairs, check_ttl(ttl))
        return len(pairs)

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` when absent or expired."""
        document = await self._get(check_key(key))
        return default if document is None else document.value

    async def get_document(self, key: str) -> Document | None:
        """The :class:`Document` under ``key`` (with its expiry), or ``None``."""
        return await self._get(check_key(key))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; ``True`` when something was deleted."""
        return await self._delete(check_key(key))

    async def query(
        self, prefix: str = "", *, where: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[Document]:
        """Documents whose key starts with ``prefix`` and whose top-level fields equal ``where``,
        in key order (at most ``limit``)."""
        if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH:
            raise StorageError("prefix must be a string of at most 512 characters")
        if any(ord(c) < 32 for c in prefix):
            raise StorageError("a prefix may not contain control characters")
        return await self._query(prefix, check_where(where), check_limit(limit))

    async def _upsert(self, pairs: list[tuple[str, Any]], expires_at: datetime | None) -> None:
        raise NotImplementedError

    async def _get(self, key: str) -> Document | None:
        raise NotImplementedError

    async def _delete(self, key: str) -> bool:
        raise NotImplementedError

    async def _query(self, prefix: str, where: dict[str, Scalar], limit: int) -> list[Document]:
        raise NotImplementedError

    def put_sync(self, key: str, value: Any, *, ttl: float | timedelta | None = None) -> None:
        self._sync(self.put(key, value, ttl=ttl))

    def put_many_sync(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *, ttl: float | timedelta | None = None
    ) -> int:
        return self._sync(self.put_many(items, ttl=ttl))  # type: ignore[no-any-return]

    def get_sync(self, key: str, default: Any = None) -> Any:
        return self._sync(self.get(key, default))

    def get_document_sync(self, key: str) -> Document | None:
        return self._sync(self.get_document(key))  # type: ignore[no-any-return]

    def delete_sync(self, key: str) -> bool:
        return self._sync(self.delete(key))  # type: ignore[no-any-return]

    def query_sync(
        self, prefix: str = "", *, where: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[Document]:
        return self._sync(self.query(prefix, where=where, limit=limit))  # type: ignore[no-any-return]


class JobStateBase(_Twins):
    """``ctx.state``: this job's state, kept between runs, with optimistic versioning."""

    #: How often :meth:`update` re-reads and re-applies its function on a conflict.
    UPDATE_ATTEMPTS = 5

    def __init__(self, *, runner: Runner | None = None, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self._runner = runner
        self.max_value_bytes = max_value_bytes

    async def get(self) -> StateSnapshot:
        """The state and its version (``{}`` and 0 before the first write)."""
        return await self._read()

    async def value(self) -> dict[str, Any]:
        """Just the state (``{}`` before the first write)."""
        return (await self._read()).value

    async def set(self, value: Mapping[str, Any], *, expected_version: int | None = None) -> int:
        """Replace the state; returns the new version.

        Raises:
            StateConflict: ``expected_version`` was given and the stored version differs.
        """
        if not isinstance(value, Mapping):
            raise StorageError("the job state is a JSON object (a dict)")
        checked = check_value(dict(value), self.max_value_bytes, what="job state")
        return await self._write(checked, expected_version)

    async def update(self, fn: Callable[[dict[str, Any]], Mapping[str, Any] | None]) -> dict[str, Any]:
        """Read, apply ``fn`` to a copy (return the new state, or mutate it and return None), write
        with a version check; retried on :class:`StateConflict`. Returns the written state."""
        for attempt in range(1, self.UPDATE_ATTEMPTS + 1):
            snapshot = await self._read()
            draft = copy.deepcopy(snapshot.value)
            result = fn(draft)
            new = dict(result) if result is not None else draft
            try:
                await self.set(new, expected_version=snapshot.version)
            except StateConflict:
                if attempt == self.UPDATE_ATTEMPTS:
                    raise
                continue
            return new
        raise AssertionError("unreachable")

    async def _read(self) -> StateSnapshot:
        raise NotImplementedError

    async def _write(self, value: dict[str, Any], expected_version: int | None) -> int:
        raise NotImplementedError

    def get_sync(self) -> StateSnapshot:
        return self._sync(self.get())  # type: ignore[no-any-return]

    def value_sync(self) -> dict[str, Any]:
        return self._sync(self.value())  # type: ignore[no-any-return]

    def set_sync(self, value: Mapping[str, Any], *, expected_version: int | None = None) -> int:
        return self._sync(self.set(value, expected_version=expected_version))  # type: ignore[no-any-return]

    def update_sync(self, fn: Callable[[dict[str, Any]], Mapping[str, Any] | None]) -> dict[str, Any]:
        return self._sync(self.update(fn))  # type: ignore[no-any-return]


# --- in memory (the test harness) ----------------------------------------------------------------------
class MemoryStorage(StorageBase):
    """:class:`StorageBase` in a dict (``autoplat.testing``); pass one to several runs to keep data."""

    def __init__(self, *, runner: Runner | None = None, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        super().__init__(runner=runner, max_value_bytes=max_value_bytes)
        self.documents: dict[str, Document] = {}

    def _live(self, key: str) -> Document | None:
        document = self.documents.get(key)
        if document is not None and document.expires_at is not None and document.expires_at <= datetime.now(UTC):
            del self.documents[key]
            return None
        return document

    async def _upsert(self, pairs: list[tuple[str, Any]], expires_at: datetime | None) -> None:
        now = datetime.now(UTC)
        for key, value in pairs:
            self.documents[key] = Document(key=key, value=value, expires_at=expires_at, updated_at=now)

    async def _get(self, key: str) -> Document | None:
        document = self._live(key)
        return None if document is None else copy.deepcopy(document)

    async def _delete(self, key: str) -> bool:
        return self._live(key) is not None and self.documents.pop(key, None) is not None

    async def _query(self, prefix: str, where: dict[str, Scalar], limit: int) -> list[Document]:
        found = []
        for key in sorted(self.documents):
            document = self._live(key)
            if document is not None and key.startswith(prefix) and matches(document.value, where):
                found.append(copy.deepcopy(document))
                if len(found) >= limit:
                    break
        return found


class MemoryState(JobStateBase):
    """:class:`JobStateBase` in memory (``autoplat.testing``)."""

    def __init__(
        self,
        value: Mapping[str, Any] | None = None,
        *,
        runner: Runner | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        super().__init__(runner=runner, max_value_bytes=max_value_bytes)
        self._value: dict[str, Any] = dict(value or {})
        self._version = 1 if value is not None else 0

    async def _read(self) -> StateSnapshot:
        return StateSnapshot(value=copy.deepcopy(self._value), version=self._version)

    async def _write(self, value: dict[str, Any], expected_version: int | None) -> int:
        if expected_version is not None and expected_version != self._version:
            raise StateConflict(
                f"job state is at version {self._version}, not {expected_version}", current_version=self._version
            )
        self._value = value
        self._version += 1
        return self._version
