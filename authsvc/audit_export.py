"""Audit events out of the database for a SIEM: one JSON object per event, read from a cursor.

`authsvc audit export` (audit_cli.py) writes them as JSON lines; the webhook sink
(courier/audit_webhook.py) posts them in batches. Both read the feed of
db/statements/audit_feed.py (a position order no late commit can jump behind) and shape each
event with `event_json`.

An audit row holds no secret by construction (authsvc/audit.py: action names, masked contacts,
ids). The export does not take that on trust, since a SIEM keeps what it is sent for years:
every detail value goes through `scrub`, which masks a full phone number or e-mail address found
in it and withholds the value of a key that names a secret.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import phonenumbers

from authsvc.app import App
from authsvc.db.statements import audit_feed
from authsvc.db.statements.audit_feed import START, Position
from authsvc.phones import mask_e164, mask_email

DEFAULT_BATCH = 500
MAX_BATCH = 10_000
WITHHELD = "[withheld]"
_SECRET_KEY = re.compile(r"password|secret|token|otp|(?:^|_)code$|(?:^|_)pin$", re.IGNORECASE)
# A clear address: a local part of two characters or more (a masked one is "j•••").
_EMAIL = re.compile(r"[\w.+-]{2,}@[\w-]+(?:\.[\w-]+)+")
_NUMBER_HINT = re.compile(r"\d(?:[\s.()-]{0,2}\d){5,}")


class ExportRefused(Exception):
    """The export cannot start (an unknown cursor or organisation); nothing was written."""


def _mask_numbers(value: str) -> str:
    if _NUMBER_HINT.search(value) is None:  # no run of six digits: no phone number to find
        return value
    masked, end, parts = value, 0, []
    for match in phonenumbers.PhoneNumberMatcher(value, "FR", phonenumbers.Leniency.POSSIBLE):
        e164 = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
        parts += [value[end : match.start], mask_e164(e164)]
        end = match.end
    if parts:
        masked = "".join(parts) + value[end:]
    return masked


def scrub(key: str, value: str) -> str:
    """A detail value as it may leave the database (defence in depth, see the module doc)."""
    if _SECRET_KEY.search(key):
        return WITHHELD
    try:
        uuid.UUID(value)
        return value  # an id: hex digits, never a number to mask
    except ValueError:
        pass
    value = _EMAIL.sub(lambda found: mask_email(found.group(0)), value)
    return _mask_numbers(value)


def _id(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def event_json(row: Any) -> dict[str, Any]:
    """One audit row (audit_feed.read) as exported: stable keys, ids as text, UTC ISO time."""
    try:
        details = json.loads(row.details)
    except ValueError:
        details = {}
    if not isinstance(details, dict):
        details = {}
    return {
        "id": row.sequence,
        "occurred_at": row.occurred_at.isoformat(),
        "organization_id": _id(row.organization_id),
        "event_type": row.event_type,
        "outcome": row.outcome,
        "actor_account_id": _id(row.actor_account_id),
        "target_account_id": _id(row.target_account_id),
        "ip_address": row.ip_address,
        "request_id": row.request_id,
        "details": {str(k): scrub(str(k), str(v)) for k, v in details.items()},
    }


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


# ---- the cursor file -------------------------------------------------------------------------


def read_cursor(path: Path) -> int:
    """The id of the last event exported (0: none yet, or no file)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit() or len(text) > 19:
        raise ExportRefused(f"{path}: not a cursor (the id of an audit event)")
    return int(text)


def write_cursor(path: Path, sequence: int) -> None:
    """Replace the cursor file atomically (write a sibling, fsync, rename): a crash leaves the
    old cursor or the new one, never a torn file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(f"{sequence}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _sync(out: TextIO) -> None:
    """Flush what was written, and make it durable when it is a regular file: the cursor must
    never get ahead of the lines (a crash between them re-exports a batch, never skips one)."""
    out.flush()
    try:
        descriptor = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    if stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.fsync(descriptor)


# ---- the export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportReport:
    exported: int
    last_id: int  # the cursor after the export (unchanged when nothing was exported)


async def start_position(app: App, after: int) -> Position:
    if after == 0:
        return START
    position = await app.db.read(audit_feed.position_of, after)
    if position is None:
        raise ExportRefused(f"no audit event {after}: resume from an id this export printed")
    return position


async def export(
    app: App,
    out: TextIO,
    *,
    after: int | None = None,
    cursor_file: Path | None = None,
    organization_id: uuid.UUID | None = None,
    of_organization: bool = False,
    batch: int = DEFAULT_BATCH,
) -> ExportReport:
    """Write every settled event after the cursor (`after`, else the cursor file's, else the
    start) as JSON lines, in feed order; after each batch, the cursor file is advanced to its
    last event."""
    start = after if after is not None else (read_cursor(cursor_file) if cursor_file else 0)
    position = await start_position(app, start)
    exported, last_id = 0, start
    while True:
        rows: Sequence[Any] = await app.db.read(
            audit_feed.read, position, batch, organization_id, of_organization=of_organization
        )
        if not rows:
            break
        out.write("".join(dumps(event_json(row)) + "\n" for row in rows))
        _sync(out)
        last = rows[-1]
        position, last_id = Position(last.txid, last.sequence), last.sequence
        exported += len(rows)
        if cursor_file is not None:
            write_cursor(cursor_file, last_id)
        if len(rows) < batch:
            break
    return ExportReport(exported, last_id)
