"""The hot paths' database access: a decision is one sync function of a Core Connection, and
the Database runs it as one transaction, with as few round trips as the backend allows.

Why sync functions of a `Connection` (SQLAlchemy Core, statements compiled once and cached,
no ORM identity map): the flows call `await app.db.read(fn, ...)` / `write(fn, ...)` and the
whole decision crosses to the database in one move:
- SQLite: the function runs on a database thread, so a transaction costs ONE thread hop,
  however many statements it has. Every write goes through ONE writer connection on ONE
  thread and begins IMMEDIATE: writers queue in order in front of that thread instead of
  waiting on the file lock inside a pool (a deferred transaction that reads first and writes
  later can lose the lock upgrade and sleep out its busy timeout: the long tail). Reads use a
  few reader connections of their own (WAL: readers never wait for the writer).
- PostgreSQL: asyncpg (its prepared-statement cache on), the function run under `run_sync`
  (one greenlet switch per transaction, not per statement). Reads run in autocommit: one
  statement, one round trip, no BEGIN/ROLLBACK. `statement()` is for a decision that is ONE
  statement on PostgreSQL (a data-modifying CTE): it runs in autocommit too, so that the whole
  decision is one round trip; on SQLite it still takes the writer's transaction.

`RoundTrips` counts what reaches the database (statements, BEGIN, COMMIT, ROLLBACK, thread
hops) so that tests can assert the cost of an RPC and the benchmark can report it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from authsvc import tracing

P = ParamSpec("P")
T = TypeVar("T")
Decision = Callable[Concatenate[Connection, P], T]

# The round trips of the RPC (or other metered work) running in this context.
_meter: ContextVar[tuple[str, list[int]] | None] = ContextVar("authsvc_round_trips", default=None)

# How long a read on the event loop's thread may wait for a SQLite lock before it moves to
# a reader thread (which waits as long as it must): the loop never stalls longer than this.
INLINE_BUSY_MS = 20

# SQLite readers: WAL lets them run beside the writer; two cores need no more.
SQLITE_READERS = 4


class RoundTrips:
    """How many times the service went to the database: a statement, a transaction's BEGIN /
    COMMIT / ROLLBACK, a hop to SQLite's database thread. `count` is the process's total;
    `metered()` counts what one piece of work (an RPC, with the tasks it starts) does, through
    a context variable, so concurrent work never mixes in. `last` keeps the count of the
    latest call of each RPC (the log line and the tests read it)."""

    def __init__(self) -> None:
        # No lock: every count happens on the event loop's thread (statement events run in
        # the greenlet of the awaiting task; SQLite's hops are counted before they leave).
        self.count = 0
        self.last: dict[str, int] = {}

    def add(self, n: int = 1) -> None:
        self.count += n
        metered = _meter.get()
        if metered is not None:
            name, meter = metered
            meter[0] += n
            # Kept current, not set at the end: a refused call's answer leaves before its
            # handler's wrapper ends, and whoever reads `last` after it must see its count.
            self.last[name] = meter[0]

    @contextmanager
    def metered(self, name: str) -> Iterator[list[int]]:
        """Count the round trips of the work inside the block (and of the tasks it starts,
        which inherit the context); the total is `[0]` of the yielded list."""
        meter = [0]
        self.last[name] = 0
        token = _meter.set((name, meter))
        try:
            yield meter
        finally:
            _meter.reset(token)

    def watch(self, engine: Engine) -> None:
        """Count every statement and every real transaction command of `engine` (and of the
        engines derived from it with execution_options)."""
        event.listen(engine, "before_cursor_execute", self._statement)
        for name in ("begin", "commit", "rollback"):
            event.listen(engine, name, self._transaction_command)

    def _statement(self, *_args: Any) -> None:
        self.add()

    def _transaction_command(self, connection: Connection) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            self.add()


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Every SQLite connection of the service, async or not.

    WAL lets readers run beside the single writer; the busy timeout makes the rare second
    writer (a cold path's session) queue instead of failing; foreign keys are off by default
    in SQLite. `isolation_level = None` stops the driver from opening transactions on its own
    (it would BEGIN deferred before the first write, the lock upgrade described above):
    SQLAlchemy's `begin` event issues BEGIN or BEGIN IMMEDIATE (`begin_sqlite`)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    dbapi_connection.isolation_level = None


# Execution option that marks a connection whose transactions write (SQLite: BEGIN IMMEDIATE).
WRITER = "authsvc_writer"


def begin_sqlite(connection: Connection) -> None:
    """A transaction that will write takes the write lock at BEGIN, so it never has to
    upgrade a read lock later (which SQLite may refuse without waiting)."""
    writer = connection.get_execution_options().get(WRITER, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


class Database:
    """Runs decisions (sync functions of a Core Connection) against the service's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.round_trips = RoundTrips()
        self.round_trips.watch(engine.sync_engine)
        self._closed = False
        if self.dialect == "sqlite":
            self._sqlite_setup(engine)
        else:
            self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    # ---- SQLite: one writer thread, a few reader threads ----------------------------------

    def _sqlite_setup(self, engine: AsyncEngine) -> None:
        url = make_url(str(engine.url.render_as_string(hide_password=False)))
        sync_url = url.set(drivername="sqlite")
        database = url.database or ""
        if database in ("", ":memory:"):
            raise ValueError("the hot paths need a SQLite file, not an in-memory database")
        Path(database).parent.mkdir(parents=True, exist_ok=True)

        def sync_engine(size: int, timeout_s: float = 30.0) -> Engine:
            # check_same_thread=False: each connection is used by one thread at a time, but
            # not always the thread that opened it (the pool hands it to any reader thread).
            made = create_engine(
                sync_url,
                poolclass=QueuePool,
                pool_size=size,
                max_overflow=0,
                hide_parameters=True,
                connect_args={"timeout": timeout_s, "check_same_thread": False},
            )
            event.listen(made, "connect", sqlite_pragmas)
            event.listen(made, "begin", begin_sqlite)
            return made

        # The statements of these engines are not round trips: the hop to their thread is.
        self._writer_base = sync_engine(1)
        self._writer_engine = self._writer_base.execution_options(**{WRITER: True})
        self._reader_engine = sync_engine(SQLITE_READERS)
        self._inline_engine = sync_engine(1, INLINE_BUSY_MS / 1000)
        event.listen(self._inline_engine, "connect", _inline_busy_timeout)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="authsvc-sqlite-writer")
        self._readers = ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="authsvc-sqlite-read")

    async def _hop(self, executor: ThreadPoolExecutor, work: Callable[[], T]) -> T:
        self.round_trips.add()
        return await asyncio.get_running_loop().run_in_executor(executor, work)

    # ---- what the flows call --------------------------------------------------------------

    async def read(self, decision: Decision[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a read-only decision (nothing it does is committed)."""
        with tracing.db_span("db.read", self.dialect, decision):
            if self.dialect == "sqlite":
                # On the loop's own thread first: an indexed read takes tens of µs, a hop to a
                # thread (futures, wake-ups, the GIL handed back and forth) several times that.
                # A WAL reader never waits for the writer; should it meet a lock anyway (WAL
                # recovery, a checkpoint), it gives up after INLINE_BUSY_MS and takes the hop.
                self.round_trips.add()
                try:
                    with self._inline_engine.connect() as inline:
                        return decision(inline, *args, **kwargs)
                except OperationalError as error:
                    if not _busy(error):
                        raise

                def work() -> T:
                    with self._reader_engine.connect() as connection:
                        return decision(connection, *args, **kwargs)

                return await self._hop(self._readers, work)
            async with self._autocommit.connect() as connection:
                return await connection.run_sync(decision, *args, **kwargs)

    async def write(self, decision: Decision[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a decision as one transaction: committed when it returns, rolled back whole
        when it raises."""
        with tracing.db_span("db.write", self.dialect, decision):
            if self.dialect == "sqlite":
                return await self._sqlite_write(decision, *args, **kwargs)
            async with self.engine.begin() as connection:
                return await connection.run_sync(decision, *args, **kwargs)

    async def statement(self, decision: Decision[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a decision that is ONE statement on PostgreSQL (atomic by itself): autocommit,
        one round trip. On SQLite, where it may take several statements, it runs as
        `write` does."""
        with tracing.db_span("db.statement", self.dialect, decision):
            if self.dialect == "sqlite":
                return await self._sqlite_write(decision, *args, **kwargs)
            async with self._autocommit.connect() as connection:
                return await connection.run_sync(decision, *args, **kwargs)

    async def _sqlite_write(self, decision: Decision[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        def work() -> T:
            with self._writer_engine.begin() as connection:
                return decision(connection, *args, **kwargs)

        return await self._hop(self._writer, work)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.dialect == "sqlite":
            # Let queued transactions finish (they were accepted), then close the connections.
            await asyncio.get_running_loop().run_in_executor(None, self._sqlite_close)

    def _sqlite_close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._writer_base.dispose()
        self._reader_engine.dispose()
        self._inline_engine.dispose()


def _inline_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={INLINE_BUSY_MS}")
    cursor.close()


def _busy(error: OperationalError) -> bool:
    message = str(error.orig).lower()
    return "locked" in message or "busy" in message
