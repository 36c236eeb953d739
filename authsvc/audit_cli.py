"""`authsvc audit export`: the audit trail as JSON lines on stdout (or a file), for a SIEM.

    authsvc audit export --cursor-file var/audit.cursor >> /var/log/authsvc-audit.jsonl
    authsvc audit export --after 41 --organization 21180001500011

Each line is one event (audit_export.event_json) with its `id`; the lines come in feed order
(db/statements/audit_feed.py). `--after ID` starts after the event ID; `--cursor-file` starts
after the id it holds (none: from the first event) and is advanced atomically after each batch
written, so that a run that stops (or is killed) resumes where the last batch ended: no gap, and
no duplicate unless it died between writing a batch and advancing the file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from authsvc.config import Settings


def add_parsers(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the audit trail for a SIEM")
    actions = audit.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="audit events as JSON lines, from a cursor")
    export.add_argument("--after", type=int, help="start after this event id (0: the first)")
    export.add_argument(
        "--cursor-file",
        type=Path,
        help="read the cursor from this file (when --after is not given) and advance it "
        "atomically after each batch written",
    )
    export.add_argument("--organization", "--org", help="only this organisation (SIRET)")
    export.add_argument(
        "--batch", type=int, default=500, help="events per read (and per cursor advance)"
    )
    export.add_argument("--output", "-o", type=Path, help="append to this file, not stdout")


async def _organization_id(app: Any, siret: str) -> uuid.UUID:
    from sqlalchemy import select

    from authsvc.audit_export import ExportRefused
    from authsvc.db import Organization

    async with app.read() as db:
        found = await db.scalar(select(Organization.id).where(Organization.siret == siret))
    if found is None:
        raise ExportRefused(f"no organisation {siret}")
    return uuid.UUID(str(found))


def run(settings: Settings, args: argparse.Namespace) -> int | None:
    """Run `audit export`; None when `args` names another command."""
    if args.command != "audit":
        return None
    from authsvc.app import App
    from authsvc.audit_export import MAX_BATCH, ExportRefused, export

    if args.after is not None and args.after < 0:
        print("audit export refused: --after is an event id (0 or more)", file=sys.stderr)
        return 2
    if not 1 <= args.batch <= MAX_BATCH:
        print(f"audit export refused: --batch from 1 to {MAX_BATCH}", file=sys.stderr)
        return 2

    async def work(out: TextIO) -> Any:
        app = App.build(settings)
        try:
            organization = (
                await _organization_id(app, args.organization) if args.organization else None
            )
            return await export(
                app,
                out,
                after=args.after,
                cursor_file=args.cursor_file,
                organization_id=organization,
                of_organization=organization is not None,
                batch=args.batch,
            )
        finally:
            await app.close()

    try:
        if args.output is None:
            report = asyncio.run(work(sys.stdout))
        else:
            # The trail holds IP addresses and account ids: a new file is the owner's alone.
            descriptor = os.open(args.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "a", encoding="utf-8") as out:
                report = asyncio.run(work(out))
    except ExportRefused as refused:
        print(f"audit export refused: {refused}", file=sys.stderr)
        return 2
    print(f"exported {report.exported} events; last id {report.last_id}", file=sys.stderr)
    return 0
