"""The service's parts, built once at start-up and handed to every flow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from authsvc import tracing
from authsvc.clock import Clock
from authsvc.config import Settings
from authsvc.db.access import Database
from authsvc.db.engine import create_engine, session_factory
from authsvc.keys import Keys
from authsvc.passwords import Passwords
from authsvc.policies.ratelimit import RateLimitPolicy, build_backend


@dataclass
class App:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # ORM sessions of cold-path writes (SQLite: BEGIN IMMEDIATE).
    write_sessionmaker: async_sessionmaker[AsyncSession]
    # The hot paths' decisions (db/access.py), on the same database.
    db: Database
    keys: Keys
    passwords: Passwords
    # Every rate limit (policies/ratelimit.py), on the memory or Redis backend.
    limits: RateLimitPolicy
    # Set when a flow queues a message, so that the in-process dispatcher sends it at once.
    outbox_ready: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None) -> App:
        engine = create_engine(settings.database_url)
        keys = Keys.derive(settings.master_key())
        return cls(
            settings=settings,
            clock=clock or Clock(),
            engine=engine,
            sessionmaker=session_factory(engine),
            write_sessionmaker=session_factory(engine, writer=True),
            db=Database(engine),
            keys=keys,
            passwords=Passwords(
                memory_kib=settings.argon2_memory_kib,
                time_cost=settings.argon2_time_cost,
                parallelism=settings.argon2_parallelism,
                threads=settings.password_hash_threads,
            ),
            limits=RateLimitPolicy(
                settings, build_backend(settings), keys.lookup_digest("rate-limit keys")
            ),
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; nothing it does is committed."""
        with tracing.db_span("db.session.read", self.db.dialect, None):
            async with self.sessionmaker() as session:
                yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction: committed when the block ends, rolled back whole if it raises."""
        with tracing.db_span("db.session.write", self.db.dialect, None):
            async with self.write_sessionmaker() as session, session.begin():
                yield session

    async def close(self) -> None:
        self.passwords.close()
        await self.limits.backend.close()
        await self.db.close()
        await self.engine.dispose()
