"""Migration 0009: summaries stored before summaries came from the template lose any activation
token they kept (the old masking missed a token without a digit); other summaries are untouched."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from authsvc.db import OutboxMessage
from authsvc.db.migrate import alembic_config

TOKEN = "kPqRsTuVwXyZaBcDeFgHiJkLmNoPqRsTuVwXyZ_-abc"  # no digit: the old summary kept it
OLD_ACTIVATION = (
    "PEP's : activez votre compte\n\nBonjour Nadia,\n\nUn compte PEP's vient d'être créé pour "
    f"vous.\n\nVotre code d'activation : {TOKEN}\n\nIl sert une seule fois.\n\n-- \nPEP's\n"
)
OLD_SMS = "PEP's : votre code de connexion est ••••. Il expire dans 5 minutes.\n\n@peps #••••"
COLUMNS: tuple[str, ...] = ("id", "channel", "template", "destination_masked", "summary")
COLUMNS += ("status", "attempts", "next_attempt_at", "created_at")
UNKNOWN_WORDING = f"PEP's : activez votre compte\n\nJeton : {TOKEN}\n"


async def _run(url: str, statement: sa.Executable) -> list[sa.Row[tuple[object, ...]]]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(statement)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


def test_stored_activation_summaries_lose_their_token(database_url: str) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "0009-1")  # the schema as it was, with old rows in it
    now = datetime(2026, 11, 30, tzinfo=UTC)
    outbox = sa.table(  # the columns the outbox had before 0009, with the models' types
        "outbox_messages",
        *(sa.column(name, OutboxMessage.__table__.c[name].type) for name in COLUMNS),
    )
    rows = {
        "activation": ("email", "activation", OLD_ACTIVATION),
        "reworded": ("email", "activation", UNKNOWN_WORDING),
        "sms": ("sms", "login_code_sms", OLD_SMS),
    }
    ids = {name: uuid.uuid4() for name in rows}
    asyncio.run(
        _run(
            database_url,
            sa.insert(outbox).values(
                [
                    {
                        "id": ids[name],
                        "channel": channel,
                        "template": template,
                        "destination_masked": "n•••@mairie.example",
                        "summary": summary,
                        "status": "sent",
                        "attempts": 1,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for name, (channel, template, summary) in rows.items()
                ]
            ),
        )
    )
    command.upgrade(config, "head")
    stored: dict[object, object] = dict(
        asyncio.run(_run(database_url, sa.select(outbox.c.id, outbox.c.summary)))  # type: ignore[arg-type]
    )
    assert stored[ids["activation"]] == OLD_ACTIVATION.replace(TOKEN, "••••")
    assert stored[ids["reworded"]] is None  # no known line to mask: dropped, not guessed
    assert stored[ids["sms"]] == OLD_SMS
    assert all(TOKEN not in str(summary) for summary in stored.values())
