"""A relay and its members made with the command line, for the CLI and browser suites."""

from __future__ import annotations

import asyncio
import csv
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from authsvc.cli import main
from authsvc.db import Account, AccountStatus, Organization, PasskeyCredential, SecondFactor

RELAY = "21180001500011"
MEMBER_A = "21800000000008"
MEMBER_B = "21800000100006"


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert isinstance(done.value.code, int)
    return done.value.code


async def _signed_in_once(database_url: str, siret: str, logins: list[str]) -> None:
    """What a first login with a code leaves: the account active, its phone verified."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            org = select(Organization.id).where(Organization.siret == siret).scalar_subquery()
            await connection.execute(
                update(Account)
                .where(Account.organization_id == org, Account.login.in_(logins))
                .values(status=AccountStatus.ACTIVE, phone_verified_at=Account.created_at)
            )
    finally:
        await engine.dispose()


async def give_other_factors(
    database_url: str,
    siret: str,
    *,
    apps: tuple[str, ...] = (),
    pending_apps: tuple[str, ...] = (),
    passkeys: tuple[str, ...] = (),
) -> None:
    """The rows an enrolment leaves (the ORM models that accounts/factors.py and
    accounts/passkeys.py add): a confirmed app, an enrolment never confirmed, a passkey. The
    readiness reports read only that they exist, so the secret and the key are stand-ins."""
    engine = create_async_engine(database_url)
    try:
        async with AsyncSession(engine) as db, db.begin():
            org = select(Organization.id).where(Organization.siret == siret).scalar_subquery()
            rows = await db.execute(
                select(Account.login, Account.id, Account.created_at).where(
                    Account.organization_id == org
                )
            )
            accounts = {login: (id_, created) for login, id_, created in rows.all()}
            for login in apps + pending_apps:
                id_, created = accounts[login]
                db.add(
                    SecondFactor(
                        id=uuid.uuid4(),
                        account_id=id_,
                        kind="totp",
                        name="Work phone",
                        secret_sealed=os.urandom(48),
                        confirmed_at=created if login in apps else None,
                        last_used_step=None,
                        created_at=created,
                        last_used_at=None,
                    )
                )
            for login in passkeys:
                id_, created = accounts[login]
                db.add(
                    PasskeyCredential(
                        id=uuid.uuid4(),
                        account_id=id_,
                        credential_id=os.urandom(32),
                        public_key=os.urandom(77),
                        sign_count=0,
                        name="Laptop",
                        transports="internal",
                        created_at=created,
                        last_used_at=None,
                    )
                )
    finally:
        await engine.dispose()


def build_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None = None
) -> Path:
    """A relay and two members: A's only administrator never signed in (but has a passkey), B
    has ready accounts, and authenticator apps and a passkey (`give_other_factors`). On
    `database_url` (already migrated) or a new SQLite file."""
    database_url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("AUTHSVC_DATABASE_URL", database_url)
    monkeypatch.setenv("AUTHSVC_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.setenv("AUTHSVC_EMAIL_PROVIDER", "file")
    monkeypatch.setenv("AUTHSVC_OUTBOX_FILE", str(tmp_path / "outbox.jsonl"))
    monkeypatch.setenv("AUTHSVC_BOOTSTRAP_PASSWORD", "a long enough password")
    assert run(["migrate"]) == 0
    for siret, name, phone in (
        (RELAY, "CDG 18", "+33612345601"),
        (MEMBER_A, "Mairie d'Aubigny", "+33612345602"),
        (MEMBER_B, "Mairie de Bourges", "+33612345603"),
    ):
        assert (
            run(
                [
                    "bootstrap",
                    "--org-siret",
                    siret,
                    "--org-name",
                    name,
                    "--admin-login",
                    "admin",
                    "--admin-email",
                    f"admin@{siret}.example",
                    "--admin-phone",
                    phone,
                ]
            )
            == 0
        )
    rows = [["login", "display_name", "email", "phone", "role"]]
    rows += [
        [f"agent{i}", f"Agent {i}", f"agent{i}@bourges.example", f"06 11 22 33 {i:02d}", "member"]
        for i in range(6)
    ]
    rows += [["sansnum", "Sans Numéro", "sansnum@bourges.example", "", "member"]]
    path = tmp_path / "accounts.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert run(["import-accounts", str(path), "--org", MEMBER_B]) == 0  # imported, one not ready
    # B's accounts that signed in once (their phone got a code): ready.
    asyncio.run(_signed_in_once(database_url, MEMBER_B, ["admin", "agent0", "agent1", "agent2"]))
    # Other second factors, which change nobody's readiness: B's apps on a ready agent and on a
    # not-ready one, an enrolment never confirmed, a passkey; A's administrator's passkey.
    asyncio.run(
        give_other_factors(
            database_url,
            MEMBER_B,
            apps=("agent0", "agent3"),
            pending_apps=("agent4",),
            passkeys=("agent1",),
        )
    )
    asyncio.run(give_other_factors(database_url, MEMBER_A, passkeys=("admin",)))
    members = tmp_path / "members.csv"
    members.write_text(f"siret;nom\n{MEMBER_A};Aubigny\n{MEMBER_B};Bourges\n")
    assert run(["relay", "import", "--relay", RELAY, str(members)]) == 0
    return tmp_path
