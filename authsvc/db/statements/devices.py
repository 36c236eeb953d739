"""Trusted devices: the row of a device that just passed a code (cadence.trust_device)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert

from authsvc.db import TrustedDevice
from authsvc.db.statements import table

DEVICES = table(TrustedDevice)


def add(connection: Connection, row: dict[str, Any]) -> None:
    connection.execute(insert(DEVICES), row)
