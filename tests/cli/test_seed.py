"""`authsvc seed`: deterministic test organisations and accounts, made like any other account."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from authsvc import validation
from authsvc.app import App
from authsvc.config import Environment, Settings
from authsvc.db import Account, AccountStatus, Organization, Role
from authsvc.phones import parse_phone
from authsvc.seeding import (
    account_login,
    account_org,
    account_phone,
    org_siret,
    seed,
    seed_password,
)


def test_sirets_pass_the_check_digit_and_phones_are_french_mobiles() -> None:
    for index in (0, 1, 9, 10, 99, 12_345, 999_999):
        assert validation.siret(org_siret(index)) == org_siret(index)
    assert len({org_siret(j) for j in range(1000)}) == 1000
    phones = {account_phone(index) for index in range(0, 80_000_000, 7919)}
    assert len(phones) == len(range(0, 80_000_000, 7919))  # distinct
    for phone in list(phones)[:2000]:
        assert parse_phone(phone, default_region="FR").kind.value == "mobile"
    with pytest.raises(ValueError):
        account_phone(80_000_000)


async def test_seed_creates_accounts_that_log_in_with_the_shared_password(
    tmp_path: Path, settings: Settings
) -> None:
    app = App.build(settings)
    try:
        report = await seed(app, orgs=3, accounts=20)
        assert (report.organizations, report.accounts) == (3, 20)
        again = await seed(app, orgs=3, accounts=5, start=20)  # organisations are reused
        assert again.organizations == 0
        async with app.read() as db:
            assert await db.scalar(select(func.count()).select_from(Account)) == 25
            accounts = (await db.scalars(select(Account).order_by(Account.login))).all()
            orgs = {o.id: o.siret for o in (await db.scalars(select(Organization))).all()}
        hashes = {account.password_hash for account in accounts[:20]}
        assert len(hashes) == 1  # hashed once per run
        assert await app.passwords.verify(hashes.pop(), seed_password())
        for index, account in enumerate(accounts):
            assert account.login == account_login(index)
            assert orgs[account.organization_id] == org_siret(account_org(index, 3))
            assert account.status == AccountStatus.ACTIVE
            assert account.role == (Role.ADMIN if index < 3 else Role.MEMBER)
            assert account.phone_sealed is not None
            # Sealed exactly as create_account does: bound to the account id.
            assert app.keys.sealer.open(account.phone_sealed, account.id.bytes) == account_phone(
                index
            )
    finally:
        await app.close()


async def test_seed_is_refused_in_production(settings: Settings) -> None:
    app = App.build(settings.model_copy(update={"environment": Environment.PRODUCTION}))
    try:
        with pytest.raises(RuntimeError, match="production"):
            await seed(app, orgs=1, accounts=1)
    finally:
        await app.close()
