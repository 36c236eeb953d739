"""`authsvc audit export`: JSON lines of the audit trail from a cursor, on SQLite and PostgreSQL.

The events come from real flows over gRPC; the export runs through the command's own `main`
(its own App and engine, as an operator's cron would). Checked: runs resumed from the cursor
file add up to the whole trail in feed order, with no gap and no duplicate; `--after` and
`--organization`; refusals that write nothing; no phone number or password in what leaves; and
on PostgreSQL, a transaction that commits after a later one is not skipped by the cursor.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from leaks import find_leaks, phone_forms
from sqlalchemy import Connection, insert, select
from support import (
    CLIENT,
    OTHER_SIRET,
    PASSWORD,
    Inbox,
    Seeded,
    failure_of,
    seed_account,
    sign_in,
)

from authsvc import audit
from authsvc.audit_export import WITHHELD, scrub
from authsvc.cli import main
from authsvc.config import Settings
from authsvc.db import AuditEvent
from authsvc.db.statements import table
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub

AUDIT = table(AuditEvent)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the server's database, with the server's key."""
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AUTHSVC_SECRET_KEY_FILE", str(settings.secret_key_file))


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as done:
        assert isinstance(done.code, int)
        return done.code
    raise AssertionError("main returned without an exit code")


async def export(*argv: str) -> int:
    # Its own thread: the command runs its own event loop (asyncio.run), as from a shell.
    return await asyncio.to_thread(_main, ["audit", "export", *argv])


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _feed_order(connection: Connection) -> list[tuple[int, str | None]]:
    rows = connection.execute(
        select(AUDIT.c.sequence, AUDIT.c.organization_id).order_by(AUDIT.c.txid, AUDIT.c.sequence)
    )
    return [
        (row.sequence, str(row.organization_id) if row.organization_id else None) for row in rows
    ]


async def feed(server: Server) -> list[tuple[int, str | None]]:
    return await server.app.db.read(_feed_order)


async def wrong_password(stub: AuthServiceAsyncStub, who: Seeded) -> None:
    await failure_of(
        stub.Login(
            pb.LoginRequest(
                organization_siret=who.organization_siret,
                login=who.login,
                password=pb.PasswordCredential(password=PASSWORD + "!"),
                client=CLIENT,
            )
        )
    )


async def export_until_caught_up(server: Server, out: Path, *argv: str) -> int:
    """Run the export, resumed, until it has written every event of the database; the runs.

    On PostgreSQL the feed stops below the oldest write transaction still running in the whole
    cluster (other databases' too: test databases created from a template, their migrations),
    so one run may end short of the newest events. It never skips one: the next run takes it."""
    expected = [sequence for sequence, _ in await feed(server)]
    for runs in range(1, 200):
        assert await export(*argv, "--output", str(out)) == 0
        if [event["id"] for event in lines(out)] == expected:
            return runs
        await asyncio.sleep(0.05)
    raise AssertionError(f"export did not catch up: {len(lines(out))} of {len(expected)}")


@pytest.mark.usefixtures("cli_env")
async def test_runs_from_the_cursor_file_add_up_to_the_whole_trail(
    server: Server, stub: AuthServiceAsyncStub, inbox: Inbox, alice: Seeded, tmp_path: Path
) -> None:
    out, cursor = tmp_path / "audit.jsonl", tmp_path / "audit.cursor"
    await wrong_password(stub, alice)
    await sign_in(stub, inbox, alice)
    await export_until_caught_up(server, out, "--cursor-file", str(cursor), "--batch", "2")
    first = lines(out)
    assert first, "a login writes audit events"
    assert cursor.read_text().strip() == str(first[-1]["id"])

    # More events meanwhile, in another organisation too; the next runs take only those.
    bob = await seed_account(server, login="bob", siret=OTHER_SIRET)
    session = (await sign_in(stub, inbox, alice)).session.token
    await wrong_password(stub, bob)
    await stub.Logout(pb.LogoutRequest(session_token=session, client=CLIENT))
    await export_until_caught_up(server, out, "--cursor-file", str(cursor), "--batch", "3")
    everything = lines(out)
    second = everything[len(first) :]
    assert second, "the second runs found the new events"
    # A run with nothing new writes nothing and leaves the cursor.
    assert await export("--cursor-file", str(cursor), "--output", str(out)) == 0
    assert lines(out) == everything

    expected = await feed(server)
    exported = [(event["id"], event["organization_id"]) for event in everything]
    assert exported == expected  # every event, once, in feed order
    assert len({event["id"] for event in everything}) == len(everything)
    assert cursor.read_text().strip() == str(everything[-1]["id"])
    types = {event["event_type"] for event in everything}
    assert {"code.verified", "session.logout"} <= types, types

    # --after: the same tail as the cursor gave; --organization: that organisation's only.
    tail = tmp_path / "tail.jsonl"
    assert await export("--after", str(first[-1]["id"]), "--output", str(tail)) == 0
    assert lines(tail) == second
    bobs = tmp_path / "bob.jsonl"
    assert await export("--organization", OTHER_SIRET, "--output", str(bobs)) == 0
    bob_id = lines(bobs)[0]["organization_id"]
    of_bob = [event for event in everything if event["organization_id"] == bob_id]
    assert lines(bobs) == of_bob and any(e["event_type"].startswith("login") for e in of_bob)
    assert bob_id != first[0]["organization_id"]
    assert (out.stat().st_mode & 0o777) == 0o600  # IPs and account ids: the owner's only

    leaks = find_leaks("export", out.read_text(), {**phone_forms(), "password": PASSWORD})
    assert leaks == []


@pytest.mark.usefixtures("cli_env")
async def test_unknown_cursor_or_organisation_is_refused_and_writes_nothing(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, tmp_path: Path
) -> None:
    await wrong_password(stub, alice)
    out, cursor = tmp_path / "audit.jsonl", tmp_path / "audit.cursor"
    assert await export("--after", "999999", "--output", str(out)) == 2
    assert await export("--after", "-1", "--output", str(out)) == 2
    assert await export("--organization", "00000000000000", "--output", str(out)) == 2
    cursor.write_text("not a number\n")
    assert await export("--cursor-file", str(cursor), "--output", str(out)) == 2
    assert lines(out) == []
    assert cursor.read_text() == "not a number\n"


async def test_a_transaction_that_commits_late_is_not_skipped(
    server: Server, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL draws a sequence value at INSERT, not at COMMIT: the row of a transaction
    still open has a lower id than one committed after it. The export must wait for it rather
    than move its cursor past it."""
    app = server.app
    if app.db.dialect != "postgresql":
        pytest.skip("SQLite serialises its writers: commit order is sequence order")
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AUTHSVC_SECRET_KEY_FILE", str(settings.secret_key_file))
    out, cursor = tmp_path / "audit.jsonl", tmp_path / "audit.cursor"

    def row(event_type: str) -> dict[str, Any]:
        return audit.event(app.clock, event_type, organization_id=None)

    async with app.engine.connect() as held:
        transaction = await held.begin()
        await held.execute(insert(AUDIT), [row("test.late")])  # the lower id, not committed

        def early(connection: Connection) -> None:
            connection.execute(insert(AUDIT), [row("test.early")])

        await app.db.write(early)
        assert await export("--cursor-file", str(cursor), "--output", str(out)) == 0
        assert [e["event_type"] for e in lines(out)] == []  # the early one waits: it may pass
        await transaction.commit()
    await export_until_caught_up(server, out, "--cursor-file", str(cursor))
    exported = lines(out)
    assert [e["event_type"] for e in exported] == ["test.late", "test.early"]
    assert exported[0]["id"] < exported[1]["id"]


# ---- what a detail value may carry out -------------------------------------------------------

MOBILES = st.from_regex(r"\A0[67][0-9]{8}\Z").map(lambda national: "+33" + national[1:])


@given(MOBILES, st.sampled_from(["{}", "to {} now", "{}, then", "tel:{}"]))
def test_a_full_phone_number_never_leaves_in_clear(e164: str, template: str) -> None:
    national = "0" + e164[3:]
    for written in (e164, national, " ".join(national[i : i + 2] for i in range(0, 10, 2))):
        value = scrub("note", template.format(written))
        assert written not in value and national not in value and e164 not in value
        assert e164[-2:] in value  # masked as the service masks numbers: the last two kept


def test_ids_counts_and_masked_values_stay_secret_keys_are_withheld() -> None:
    flow = str(uuid.uuid4())
    assert scrub("flow_id", flow) == flow
    assert scrub("recipients", "1234") == "1234"
    assert scrub("new", "+33 •••••••78") == "+33 •••••••78"
    assert scrub("email", "j•••@example.fr") == "j•••@example.fr"
    assert scrub("email", "jeanne.martin@example.fr") == "j•••@example.fr"
    for key in ("password", "session_token", "code", "otp", "client_secret"):
        assert scrub(key, "anything") == WITHHELD
    assert scrub("purpose", "login") == "login"
