"""Operator commands of the readiness campaigns, wired into `authsvc` (cli.py):

- `authsvc relay add --relay SIRET MEMBER_SIRET...` designates the relay (a centre de gestion)
  and adds members; `relay remove --relay SIRET MEMBER_SIRET...`; `relay list --relay SIRET`;
  `relay import --relay SIRET FILE` adds the SIRETs of a file (one a line, or a CSV whose first
  column is the SIRET; a header line is skipped);
- `authsvc campaign start --org SIRET` or `--relay SIRET` (all its members); `campaign run`
  runs the due rounds once (the server runs them every AUTHSVC_CAMPAIGN_TICK_S);
  `campaign stop ID`.
Each change is in the audit trails, as over the API (actor: none, an operator).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from authsvc.config import Settings
from authsvc.errors import Failure

T = TypeVar("T")


def add_parsers(commands: Any) -> None:
    relay = commands.add_parser("relay", help="relays (centres de gestion) and their members")
    actions = relay.add_subparsers(dest="action", required=True)
    for name, what in (("add", "designate the relay, add members"), ("remove", "remove members")):
        change = actions.add_parser(name, help=what)
        change.add_argument("--relay", required=True, help="the relay's SIRET")
        change.add_argument("members", nargs="+", help="members' SIRETs")
    listing = actions.add_parser("list", help="the relay's members")
    listing.add_argument("--relay", required=True)
    imported = actions.add_parser("import", help="add the members listed in a file")
    imported.add_argument("--relay", required=True)
    imported.add_argument("file", help="one SIRET a line (or CSV, SIRET first)")

    campaign = commands.add_parser("campaign", help="readiness campaigns")
    campaign_actions = campaign.add_subparsers(dest="action", required=True)
    start = campaign_actions.add_parser("start", help="email every not-ready account")
    scope = start.add_mutually_exclusive_group(required=True)
    scope.add_argument("--org", help="an organisation's SIRET")
    scope.add_argument("--relay", help="a relay's SIRET: all its members")
    campaign_actions.add_parser("run", help="run the due rounds once")
    stop = campaign_actions.add_parser("stop", help="end a campaign")
    stop.add_argument("campaign_id")


def read_sirets(path: Path) -> list[str]:
    sirets: list[str] = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        first = line.split(",")[0].split(";")[0].strip().replace(" ", "")
        if first and first.isdigit():
            sirets.append(first)
    return sirets


def _with_app(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from authsvc.app import App

    async def run() -> T:
        app = App.build(settings)
        try:
            return await work(app)
        finally:
            await app.close()

    return asyncio.run(run())


def run(settings: Settings, args: argparse.Namespace) -> int | None:
    """Run one of these commands; None when `args` names another one."""
    if args.command not in ("relay", "campaign"):
        return None
    try:
        if args.command == "relay":
            return _relay(settings, args)
        return _campaign(settings, args)
    except Failure as failure:
        print(f"refused: {failure.message} ({failure.reason})", file=sys.stderr)
        return 2


def _relay(settings: Settings, args: argparse.Namespace) -> int:
    from authsvc.campaigns import relays

    async def work(app: Any) -> list[relays.MemberOrganization]:
        relay = await relays.organization_by_siret(app, args.relay)
        if args.action == "list":
            async with app.read() as db:
                return await relays.members_of(db, relay.id)
        given = read_sirets(Path(args.file)) if args.action == "import" else args.members
        sirets = relays.normalise_sirets(given, "members")
        async with app.write() as db:
            if args.action == "remove":
                return await relays.remove_members(app, db, relay, sirets, actor=None)
            return await relays.add_members(app, db, relay, sirets, actor=None, designate=True)

    members = _with_app(settings, work)
    verb = {"add": "members", "import": "members", "remove": "removed", "list": "members"}
    print(f"{verb[args.action]}: {len(members)}")
    for member in members:
        print(f"  {member.siret}  {member.name}")
    return 0


def _campaign(settings: Settings, args: argparse.Namespace) -> int:
    from authsvc.campaigns import campaign, relays

    if args.action == "run":
        done = _with_app(settings, campaign.run_due)
        print(
            f"emails queued: {done.sent}, became ready: {done.became_ready}, "
            f"organisations waiting for budget: {len(done.deferred_organizations)}"
            + (", provider limit reached" if done.provider_limit_reached else "")
        )
        return 0
    if args.action == "stop":
        try:
            campaign_id = uuid.UUID(args.campaign_id)
        except ValueError:
            print("refused: not a campaign id", file=sys.stderr)
            return 2
        stopped = _with_app(settings, lambda app: campaign.stop(app, campaign_id, actor=None))
        print("campaign ended" if stopped else "no running campaign with this id")
        return 0 if stopped else 1

    async def start(app: Any) -> campaign.Started:
        runner = await relays.organization_by_siret(app, args.relay or args.org)
        if args.org:
            targets = [runner.id]
        else:
            async with app.read() as db:
                if not await relays.is_relay(db, runner.id):
                    raise relays.not_a_relay()
                targets = [m.organization_id for m in await relays.members_of(db, runner.id)]
        return await campaign.start(
            app, runner_id=runner.id, organization_ids=targets, started_by=None
        )

    started = _with_app(settings, start)
    print(f"campaign {started.campaign_id} started: {started.recipients} accounts to email")
    if started.already_covered:
        print(f"left out (a running campaign covers them): {len(started.already_covered)}")
    return 0
