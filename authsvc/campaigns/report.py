"""The readiness report of `authsvc readiness` for one organisation or a relay's members: one
JSON-able structure, which the JSON output prints as is and the HTML page (report_html.py) draws.
Accounts appear masked only (first letter of the email and its domain) with what they lack.
`other_factors` (the counts of an organisation, the kinds of an account) is information only:
an authenticator app or a passkey never makes an account ready."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import select

from authsvc.accounts import directory
from authsvc.app import App
from authsvc.campaigns import relays
from authsvc.db import Account, Organization
from authsvc.db.statements import factors
from authsvc.phones import mask_email


async def _not_ready(app: App, organization_id: Any) -> list[dict[str, Any]]:
    async with app.read() as db:
        rows = (
            await db.execute(
                select(Account, *factors.other_factors(Account.id))
                .where(Account.organization_id == organization_id)
                .order_by(Account.email, Account.id)
            )
        ).all()
    return [
        {
            "account": mask_email(account.email),
            "issues": issues,
            # Information: what else it could sign in with (it is not ready all the same).
            "other_factors": list(directory.other_factors(has_app, has_passkey)),
        }
        for account, has_app, has_passkey in rows
        if (issues := directory.account_issues(account))
    ]


async def _entry(app: App, view: relays.MemberView) -> dict[str, Any]:
    counts = dataclasses.asdict(view.readiness)
    counts.pop("issues")
    return {
        "siret": view.organization.siret,
        "name": view.organization.name,
        **counts,
        "without_ready_administrator": view.without_ready_administrator,
        "administrator_contacts": [dataclasses.asdict(a) for a in view.administrators],
        "campaign": {
            **dataclasses.asdict(view.campaign),
            "campaign_id": str(view.campaign.campaign_id or ""),
        },
        "trend": [{**dataclasses.asdict(d), "day": d.day.isoformat()} for d in view.trend],
        "not_ready": await _not_ready(app, view.organization.organization_id),
    }


async def organization_report(app: App, organization: Organization) -> dict[str, Any]:
    view = await relays.member_view(
        app, relays.MemberOrganization(organization.id, organization.siret, organization.name)
    )
    return {
        "title": f"{organization.name} ({organization.siret})",
        "generated_at": app.clock.now().isoformat(),
        "relay": None,
        "organizations": [await _entry(app, view)],
    }


async def relay_report(app: App, relay: Organization) -> dict[str, Any]:
    views = await relays.overview_of(app, relay.id)
    return {
        "title": f"{relay.name} ({relay.siret}) : organisations membres",
        "generated_at": app.clock.now().isoformat(),
        "relay": {"siret": relay.siret, "name": relay.name},
        "organizations": [await _entry(app, view) for view in views],
    }
