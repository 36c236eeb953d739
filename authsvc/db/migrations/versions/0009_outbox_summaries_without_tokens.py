"""outbox: no activation token left in the summaries of messages already stored

Before this revision a summary was the sent text with whatever looked like a code masked, which
kept in clear any activation token without a digit (about one in 1,500). Summaries are now
rendered from the template with placeholders, but rows already stored keep the old ones. The row
does not hold what the template needs (the holder's name, the service name at the time), so an
activation summary is not re-rendered: the token's line, which the activation template has
always written as "Votre code d'activation : <token>", is rewritten with the placeholder; a
summary without that line is dropped (NULL) rather than kept on a guess. Code messages need
nothing: their codes are digits, which the old masking did catch.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MASK = "••••"
# The templates whose secret is not all digits, with the line that writes it.
_TOKEN_LINES = {"activation": re.compile(r"^(Votre code d'activation : ).*$", re.MULTILINE)}

_outbox = sa.table(
    "outbox_messages",
    sa.column("id", sa.Uuid()),
    sa.column("template", sa.String()),
    sa.column("summary", sa.Text()),
)


def rewritten(template: str, summary: str) -> str | None:
    """The summary with its token line masked; None when that line cannot be found."""
    line = _TOKEN_LINES[template]
    masked, found = line.subn(lambda match: match.group(1) + MASK, summary)
    return masked if found else None


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_outbox.c.id, _outbox.c.template, _outbox.c.summary).where(
            _outbox.c.template.in_(list(_TOKEN_LINES)), _outbox.c.summary.is_not(None)
        )
    ).all()
    for message_id, template, summary in rows:
        connection.execute(
            sa.update(_outbox)
            .where(_outbox.c.id == message_id)
            .values(summary=rewritten(template, summary))
        )


def downgrade() -> None:
    # Nothing to restore: the tokens are gone for good, which is the point.
    pass
