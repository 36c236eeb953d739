"""`make topology`: the multi-replica topology of tests/topology on this machine, until Ctrl-C.

3 `authsvc serve --workers 2` replicas (127.0.0.2/3/4), 2 `authsvc dispatch` processes, HAProxy
with deploy/haproxy/haproxy.cfg in front, on a fresh PostgreSQL database (AUTHSVC_TOPOLOGY_
POSTGRES_URL, default the local server) and the local Redis; one demo account (login "demo",
password below); codes land in the outbox file printed. Everything stops on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sqlalchemy.engine import make_url  # noqa: E402
from support import MOBILE, PASSWORD, SIRET, seed_account  # noqa: E402
from topology.replicas import Topology, common_env  # noqa: E402

from authsvc.config import Settings  # noqa: E402
from authsvc.db.migrate import upgrade  # noqa: E402
from authsvc.server import create_server  # noqa: E402

ADMIN_URL = os.environ.get(
    "AUTHSVC_TOPOLOGY_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AUTHSVC_TOPOLOGY_REDIS_URL", "redis://127.0.0.1:6379/14")


async def _admin(statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def _seed(env: dict[str, str]) -> None:
    settings = Settings(
        database_url=env["AUTHSVC_DATABASE_URL"],
        secret_key=env["AUTHSVC_SECRET_KEY"],
        dispatcher_enabled=False,
    )
    server = await create_server(settings, listen="127.0.0.1:0")
    try:
        await seed_account(server, login="demo", phone=MOBILE)
    finally:
        await server.stop(grace=0)


def main() -> int:
    name = f"authsvc_topology_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    database_url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    work = Path(tempfile.mkdtemp(prefix="authsvc-topology-"))
    topology = Topology(
        work, {**common_env(database_url, REDIS_URL, work), "PYTHONUNBUFFERED": "1"}
    )
    try:
        upgrade(database_url)
        asyncio.run(_seed(topology.env))
        topology.start()
        print(f"HAProxy (h2c, per-request balancing): {topology.lb_address}")
        print(f"replicas: {', '.join(topology.replicas)}   logs and outbox: {work}")
        print(f"demo login: org {SIRET}, login demo, password {PASSWORD!r}")
        print("Ctrl-C stops everything")
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as Ctrl-C
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        topology.stop()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
