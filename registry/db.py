"""Database engine and session factory. Nothing connects at import time."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    kwargs: dict = {"echo": echo}
    if url.startswith("sqlite"):
        # One file, many tasks: wait for locks instead of failing at once.
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # No server-side prepared statements: psycopg's prepare bookkeeping cost more client CPU per
        # job run than it saved the server, and they break behind PgBouncer in transaction mode.
        # While the server is down or unreachable, a connection attempt fails within
        # CONNECT_TIMEOUT_SECONDS and a request waits at most POOL_TIMEOUT_SECONDS for a pooled
        # connection: callers get a prompt "unavailable" (is_unavailable) instead of hanging.
        # Connections beyond pool_size are opened and closed per checkout, and a PostgreSQL
        # connection costs a server process start: under 20 concurrent requests a pool of 10
        # opened ~70 connections a second. Keep enough for the steady concurrency instead.
        kwargs.update(
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            connect_args={"prepare_threshold": None, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
        )
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        _configure_sqlite(engine.sync_engine)
    else:
        _ping_idle_connections(engine.sync_engine)
    return engine


#: Pooled PostgreSQL connections per process kept open, and how many more a burst may open.
POOL_SIZE = 20
POOL_OVERFLOW = 10
#: How long opening a connection to PostgreSQL may take.
CONNECT_TIMEOUT_SECONDS = 5
#: How long a caller waits for a pooled connection when all are in use.
POOL_TIMEOUT_SECONDS = 10.0


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot serve this right now (down, restarting, the
    connection lost, the pool exhausted, or a transaction it rolled back to break a deadlock or a
    serialization conflict), as opposed to a statement it refused: the first is transient,
    retried by workers and answered 503 by the API; the second is a bug or bad input, and fails
    the same way every time."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and not _is_statement_error(exc)
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    return isinstance(exc, ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError)
    )


def _is_statement_error(exc: sa_exc.DBAPIError) -> bool:
    """An OperationalError the server raised about the statement itself (a lock timeout, a
    cancelled query, disk full), not about the connection, and not a transaction worth running
    again."""
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    # Class 08: connection exceptions; 57P0x: the server is shutting down or starting up.
    return bool(sqlstate) and not sqlstate.startswith(("08", "57P")) and sqlstate not in TRANSIENT_SQLSTATES


#: Transactions the server rolled back that succeed when run again: a deadlock victim (40P01), a
#: serialization failure (40001).
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


#: A pooled connection unused for longer than this is tested before it is handed out.
IDLE_PING_SECONDS = 5.0


def _ping_idle_connections(engine: Engine) -> None:
    """Pessimistic disconnect handling for idle connections only.

    ``pool_pre_ping`` costs a round trip on every checkout (five per job run). Connections in
    steady use are not pinged; one that sat idle for ``IDLE_PING_SECONDS`` (when a database restart
    or an idle-connection timeout most likely hit it) is, and a dead one is replaced before use. A
    restart in the middle of heavy use fails the statements in flight once; SQLAlchemy then
    recycles the whole pool (worker activities retry; the API answers 503 once per process).
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["autoplat_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        since = record.info.get("autoplat_idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure means "dead": the pool retries
            raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc
        if not alive:
            raise DisconnectionError("idle connection failed its ping")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def unit_of_work(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session that commits on success and rolls back on any error: the one place that commits.

    The error that ended the unit is the one raised: a rollback that fails too (the connection
    lost with it, or ended while a cancellation was being handled) must not turn a cancellation
    into an ordinary error, which a loop that survives errors would take for one and go on."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException as exc:
            try:
                await session.rollback()
            except Exception as failed:  # noqa: BLE001 - the original error is the one that matters
                log.debug("rollback after %s failed: %r", type(exc).__name__, failed)
            raise
