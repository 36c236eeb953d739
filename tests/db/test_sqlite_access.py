"""SQLite under app.db: reads on the loop's thread give way to a reader thread when the file
is locked, instead of stalling the event loop or failing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sqlalchemy import Connection, text

from authsvc.db.access import Database
from authsvc.db.engine import create_engine
from authsvc.db.migrate import upgrade


def _count_organizations(connection: Connection) -> int:
    return int(connection.execute(text("SELECT count(*) FROM organizations")).scalar_one())


async def test_a_locked_file_moves_the_read_to_a_reader_thread(tmp_path: Path) -> None:
    path = tmp_path / "authsvc.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    database = Database(engine)
    # Another process's exclusive lock (locking_mode=EXCLUSIVE keeps even WAL readers out).
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE held (x INTEGER)")
    try:
        reading = asyncio.ensure_future(database.read(_count_organizations))
        before = database.round_trips.count
        # The loop keeps running while the read waits in its thread.
        for _ in range(50):
            await asyncio.sleep(0.01)
            if database.round_trips.count > before:
                break
        assert not reading.done()
        holder.close()  # the lock goes with the connection (WAL keeps exclusive mode on)
        assert await reading == 0
        assert database.round_trips.count >= 2  # the inline attempt, then the hop
    finally:
        holder.close()
        await database.close()
        await engine.dispose()
