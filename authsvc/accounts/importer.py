"""`authsvc import-accounts`: bring existing accounts over, never dropping one silently.

Each CSV row (login, display_name, email, phone[, role]) becomes an account pending activation,
whose activation link goes to its email. A row whose phone is missing or invalid is imported
all the same, without a phone, and reported: it is "not ready" and cannot log in until an
administrator sets a phone. A row that cannot be an account at all (bad login or email, login
taken, unknown role) is rejected and reported with its reason. Each row is its own transaction.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from authsvc import audit
from authsvc.accounts.creation import create_account
from authsvc.app import App
from authsvc.courier.notices import notify
from authsvc.db import Organization, Role
from authsvc.errors import Failure
from authsvc.otp import random_token, token_digest

COLUMNS = ("login", "display_name", "email", "phone")


@dataclass
class ImportReport:
    imported: int = 0
    not_ready: list[tuple[int, str, str]] = field(default_factory=list)  # line, login, why
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


async def import_rows(app: App, siret: str, rows: Iterable[dict[str, str]]) -> ImportReport:
    async with app.read() as db:
        organization = await db.scalar(select(Organization).where(Organization.siret == siret))
    if organization is None:
        raise Failure(
            "NOT_FOUND", "INVALID_FIELD", f"no organisation {siret}", metadata={"field": "org"}
        )
    report = ImportReport()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        login = (row.get("login") or "").strip()
        try:
            role = Role((row.get("role") or "member").strip().lower())
        except ValueError:
            report.rejected.append((line, login, "role must be admin or member"))
            continue
        token = random_token(32)
        try:
            async with app.write() as db:
                account = await create_account(
                    app,
                    db,
                    organization_id=organization.id,
                    login=login,
                    display_name=(row.get("display_name") or login).strip(),
                    email=(row.get("email") or "").strip(),
                    phone=(row.get("phone") or "").strip(),
                    role=role,
                    password_hash=None,
                    importing=True,
                )
                account.activation_token_digest = token_digest(token)
                account.activation_expires_at = app.clock.now() + timedelta(
                    seconds=app.settings.activation_ttl_s
                )
                await db.flush()
                notify(app, db, account, "activation", activation_token=token)
                audit.record(
                    db,
                    app.clock,
                    "account.imported",
                    organization_id=organization.id,
                    target=account.id,
                    ready="yes" if account.phone_kind else "no",
                )
        except Failure as failure:
            report.rejected.append(
                (line, login, f"{failure.metadata.get('field', '')}: {failure.message}")
            )
            continue
        except IntegrityError:
            report.rejected.append((line, login, "login: already taken in this organisation"))
            continue
        report.imported += 1
        if account.phone_kind is None:
            why = "invalid phone" if account.phone_masked else "no phone"
            report.not_ready.append((line, login, why))
    app.outbox_ready.set()
    return report


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise Failure(
                "INVALID_ARGUMENT",
                "INVALID_FIELD",
                f"missing columns: {', '.join(missing)}",
                metadata={"field": "file"},
            )
        return list(reader)
