"""How a transaction locks an account's row ahead of its decision (PostgreSQL; SQLite
serialises its writers and SQLAlchemy leaves the clause out).

FOR NO KEY UPDATE, never FOR UPDATE: the account's key never changes, and FOR UPDATE also
conflicts with the FOR KEY SHARE lock that every insert of a row referencing the account takes
for its foreign key (a flow, a ceremony, a session, an audit row). A transaction holding the
account FOR UPDATE and waiting for a flow's row, against one holding that flow and inserting a
ceremony (its foreign key waiting for the account), deadlocked: PostgreSQL aborted one with
INTERNAL (attack review of issue 16: a clone's detection or a factor's removal racing a passkey
window). FOR NO KEY UPDATE still queues every other writer of the row, which is what the locks
are for (the cap's count, the security epoch, the code lock).
"""

from __future__ import annotations

from typing import Final

# The ORM's spelling (Session.get(..., with_for_update=ACCOUNT_ROW)); Core statements write
# `.with_for_update(key_share=True)`.
ACCOUNT_ROW: Final = {"key_share": True}
