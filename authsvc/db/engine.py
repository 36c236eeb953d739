"""The asyncio engine: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) by URL.

The hot paths run their decisions through `authsvc.db.access.Database` on this engine (and,
on SQLite, on a writer thread of their own); the cold paths use ORM sessions on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from authsvc import metrics
from authsvc.db.access import WRITER, begin_sqlite, sqlite_pragmas

_METERED = "authsvc_metered"


def _meter_pool(engine: AsyncEngine) -> AsyncEngine:
    """The checked-out gauge follows the pool's own events; a connection taken while
    recording was off is not given back to the gauge either."""
    dialect = engine.dialect.name

    def checkout(_dbapi: Any, record: Any, _proxy: Any) -> None:
        if metrics.state.on:
            record.info[_METERED] = True
            metrics.db_checkout(dialect, 1)

    def checkin(_dbapi: Any, record: Any) -> None:
        if record.info.pop(_METERED, False):
            metrics.DB_CHECKED_OUT.labels(dialect).dec()

    event.listen(engine.sync_engine.pool, "checkout", checkout)
    event.listen(engine.sync_engine.pool, "checkin", checkin)
    return engine


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    parsed = make_url(url)
    # hide_parameters: an error's log line must never carry an email, a digest or a hash.
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs
        )
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", begin_sqlite)
        return _meter_pool(engine)
    # No pre-ping: with asyncpg it costs BEGIN, a ping and ROLLBACK (three round trips) on
    # every checkout. A connection that died is invalidated by the error it raises (the pool
    # then reconnects), and pool_recycle retires connections before a proxy's idle timeout.
    return _meter_pool(
        create_async_engine(
            url, pool_size=10, max_overflow=20, pool_recycle=1800, hide_parameters=True, **kwargs
        )
    )


def session_factory(
    engine: AsyncEngine, *, writer: bool = False
) -> async_sessionmaker[AsyncSession]:
    """ORM sessions; `writer` ones begin IMMEDIATE on SQLite (access.begin_sqlite)."""
    bind = engine.execution_options(**{WRITER: True}) if writer else engine
    return async_sessionmaker(bind, expire_on_commit=False)
