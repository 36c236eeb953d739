"""`authsvc seed`: test organisations and accounts, fast, for load tests and benchmarks.

Everything is deterministic from an index, so that a load generator knows each account's
organisation, login and phone without reading the database:
- organisation `j` has SIRET `8` + j on 12 digits + a Luhn check digit;
- account `i` belongs to organisation `i % orgs`, has login `agent{i:07d}` and its own French
  mobile number +33 6 xx xx xx xx (a permutation of `i`, see account_phone), as per-number
  send limits and the pumping breaker expect of real people.

Accounts are made by `authsvc.accounts.create_account` (the same validation, phone parsing,
sealing and digests as every other account) and inserted in batches, one transaction per
batch. All share one argon2id hash of the test password, computed once: hashing 100,000
passwords would take an hour of CPU. Development databases only: production refuses to seed.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select

from authsvc.accounts import create_account
from authsvc.app import App
from authsvc.config import Environment
from authsvc.db import Organization, Role
from authsvc.db.base import new_id

# The shared password of seeded accounts (development and load tests only).
SEED_PASSWORD = "charge-nationale-2026!"  # noqa: S105
SEED_PASSWORD_ENV = "AUTHSVC_SEED_PASSWORD"  # noqa: S105 (a variable name)
MAX_ACCOUNTS = 80_000_000  # numbers +33 6 00.. to +33 6 80.., but 6 39..
BATCH = 5_000
_SPREAD = 48_271_117  # odd and not a multiple of 5: prime to 80,000,000


def luhn_digit(digits: str) -> str:
    """The digit that makes `digits + digit` pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # doubled once the check digit is appended
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return str((10 - total % 10) % 10)


def org_siret(index: int) -> str:
    body = f"8{index:012d}"
    return body + luhn_digit(body)


def account_login(index: int) -> str:
    return f"agent{index:07d}"


def account_phone(index: int) -> str:
    """A distinct mobile number per index, spread over the whole +33 6 range, so that
    consecutive accounts never share a number prefix (what the SMS-pumping breaker watches)."""
    if not 0 <= index < MAX_ACCOUNTS:
        raise ValueError("account index out of range")
    # Multiplying by a number prime to MAX_ACCOUNTS permutes 0 .. MAX_ACCOUNTS - 1; the first
    # two digits after +33 6 then take the 80 values 00-80 but 39 (all allocated to mobiles).
    spread = index * _SPREAD % MAX_ACCOUNTS
    block, rest = divmod(spread, 1_000_000)
    return f"+336{block + (block >= 39):02d}{rest:06d}"


def account_org(index: int, orgs: int) -> int:
    return index % orgs


def seed_password() -> str:
    return os.environ.get(SEED_PASSWORD_ENV) or SEED_PASSWORD


@dataclass(frozen=True)
class SeedReport:
    organizations: int
    accounts: int
    seconds: float


async def seed(
    app: App,
    *,
    orgs: int,
    accounts: int,
    start: int = 0,
    password: str | None = None,
    admins: bool = True,
) -> SeedReport:
    """Create `orgs` organisations (those missing) and accounts `start` .. `start+accounts-1`.

    With `admins`, the first account of each organisation is its administrator.
    """
    if app.settings.environment is Environment.PRODUCTION:
        raise RuntimeError("seeding test accounts is refused in production")
    if orgs < 1 or accounts < 0 or start < 0 or start + accounts > MAX_ACCOUNTS:
        raise ValueError("orgs >= 1 and 0 <= start, start + accounts <= 80,000,000")
    began = time.perf_counter()
    password_hash = await app.passwords.hash_async(password or seed_password())
    now = app.clock.now()
    sirets = [org_siret(j) for j in range(orgs)]
    org_ids: dict[str, uuid.UUID] = {}
    async with app.read() as db:
        for offset in range(0, orgs, BATCH):
            chunk = sirets[offset : offset + BATCH]
            rows = await db.execute(
                select(Organization.siret, Organization.id).where(Organization.siret.in_(chunk))
            )
            org_ids.update({siret: org_id for siret, org_id in rows})
    created_orgs = 0
    for offset in range(0, orgs, BATCH):
        async with app.write() as db:
            for j in range(offset, min(offset + BATCH, orgs)):
                if sirets[j] in org_ids:
                    continue
                organization = Organization(
                    id=new_id(), siret=sirets[j], name=f"Collectivité de charge {j}", created_at=now
                )
                db.add(organization)
                org_ids[sirets[j]] = organization.id
                created_orgs += 1
    for offset in range(start, start + accounts, BATCH):
        async with app.write() as db:
            for i in range(offset, min(offset + BATCH, start + accounts)):
                login = account_login(i)
                await create_account(
                    app,
                    db,
                    organization_id=org_ids[sirets[account_org(i, orgs)]],
                    login=login,
                    display_name=f"Agent {i}",
                    email=f"{login}@charge.example",
                    phone=account_phone(i),
                    role=Role.ADMIN if admins and i < orgs else Role.MEMBER,
                    password_hash=password_hash,
                )
    return SeedReport(created_orgs, accounts, time.perf_counter() - began)
