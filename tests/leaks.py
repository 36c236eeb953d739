"""Looking for secrets: in what the process logs (structlog events, stdlib logging at DEBUG with
SQLAlchemy's statements and parameters, file descriptors 1 and 2) and at rest (every column of
every table, reflected from the database itself, and on SQLite the raw files too)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url
from structlog.testing import LogCapture
from support import MOBILE

from authsvc.app import App
from authsvc.config import Settings
from authsvc.server import Server

NATIONAL = "0" + MOBILE.removeprefix("+33")  # 0612345678
SIGNIFICANT = MOBILE.removeprefix("+33")  # 612345678
TABLES = {
    "organizations",
    "accounts",
    "flows",
    "sessions",
    "trusted_devices",
    "outbox_messages",
}


def phone_forms() -> dict[str, str]:
    spaced = " ".join([NATIONAL[:2], NATIONAL[2:4], NATIONAL[4:6], NATIONAL[6:8], NATIONAL[8:]])
    return {
        "phone (E.164)": MOBILE,
        "phone (national)": NATIONAL,
        "phone (significant digits)": SIGNIFICANT,
        "phone (spaced)": spaced,
        "phone (international spaced)": "+33 " + spaced[1:],
    }


def code_forms(code: str) -> dict[str, str]:
    return {"code": code, "code (read aloud)": ", ".join(code)}


def find_leaks(where: str, value: object, secrets: dict[str, str]) -> list[str]:
    """Which secrets appear in `value` (text, or bytes searched for the UTF-8 form)."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        blob = bytes(value)
        return [f"{name} in {where}" for name, secret in secrets.items() if secret.encode() in blob]
    text = value if isinstance(value, str) else str(value)
    return [
        f"{name} in {where}"
        for name, secret in secrets.items()
        if secret in text or secret.encode() in text.encode("utf-8", "surrogatepass")
    ]


# ---- capturing what the process logs -----------------------------------------------------------


@dataclass
class Logs:
    events: list[MutableMapping[str, Any]]
    caplog: pytest.LogCaptureFixture
    capfd: pytest.CaptureFixture[str]

    def everything(self) -> str:
        out, err = self.capfd.readouterr()
        rendered = [json.dumps(event, default=repr, ensure_ascii=False) for event in self.events]
        records = [
            f"{record.name} {record.levelname} {record.getMessage()} {record.args!r}"
            for record in self.caplog.records
        ]
        return "\n".join([*rendered, *records, out, err])

    def rpc_methods(self) -> list[str]:
        return [event["method"] for event in self.events if event.get("event") == "rpc"]


def capturing(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[Logs]:
    """The body of a test module's `logs` fixture: everything logged while the test runs."""
    caplog.set_level(logging.DEBUG)
    with captured_events() as events:
        yield Logs(events, caplog, capfd)


@contextmanager
def captured_events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event while the block runs, whichever test configured logging first.

    structlog's capture_logs replaces the configured processor list; a module's logger that was
    used once after `authsvc.log.configure` (cache_logger_on_first_use) keeps the old list and
    its events escape the capture. The list is swapped in place instead: cached loggers share it.
    """
    capture = LogCapture()
    processors = structlog.get_config()["processors"]
    saved = list(processors)
    processors[:] = [capture]
    try:
        yield capture.entries
    finally:
        processors[:] = saved


# ---- reading everything at rest ----------------------------------------------------------------


async def dump(server: Server | App) -> dict[str, list[dict[str, object]]]:
    """Every row of every table, reflected from the database itself (not from the models)."""
    tables: dict[str, list[dict[str, object]]] = {}
    app = server.app if isinstance(server, Server) else server
    async with app.engine.connect() as connection:
        metadata = MetaData()
        await connection.run_sync(metadata.reflect)
        for table in metadata.sorted_tables:
            rows = (await connection.execute(select(table))).mappings().all()
            tables[table.name] = [dict(row) for row in rows]
    return tables


def leaks_at_rest(
    tables: dict[str, list[dict[str, object]]], settings: Settings, secrets: dict[str, str]
) -> list[str]:
    found = []
    for table, rows in tables.items():
        for number, row in enumerate(rows):
            for column, value in row.items():
                found += find_leaks(f"{table}[{number}].{column}", value, secrets)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":  # the raw files too, with the write-ahead log
        assert url.database
        for suffix in ("", "-wal", "-shm"):
            path = Path(url.database + suffix)
            if path.exists():
                found += find_leaks(path.name, path.read_bytes(), secrets)
    return found
