"""Development providers: `console` prints messages, `file` appends them as JSON lines. Both
show codes in clear, so production refuses them (authsvc/config.py)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

from authsvc.courier.providers.base import Outgoing


class ConsoleProvider:
    async def deliver(self, message: Outgoing) -> str:
        subject = f"Subject: {message.subject}\n" if message.subject else ""
        sys.stderr.write(
            f"\n--- {message.channel.upper()} to {message.to} ---\n{subject}{message.text}\n---\n"
        )
        sys.stderr.flush()
        return f"console-{uuid.uuid4()}"

    async def aclose(self) -> None:
        return None


class FileProvider:
    """Appends one JSON object per message: id, reference, channel, to, subject, text,
    created_at."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()

    async def deliver(self, message: Outgoing) -> str:
        message_id = f"file-{uuid.uuid4()}"
        record = {
            "id": message_id,
            "reference": message.reference,
            "channel": message.channel,
            "to": message.to,
            "text": message.text,
            "created_at": message.created_at.isoformat(),
        }
        if message.subject is not None:
            record["subject"] = message.subject
        line = json.dumps(record, ensure_ascii=False)
        async with self._lock:
            await asyncio.to_thread(self._append, line)
        return message_id

    def _append(self, line: str) -> None:
        """One write(2) of the whole line on an O_APPEND descriptor: lines of several
        processes (dispatchers, workers) never interleave, and a reader sees whole lines
        (a buffered text file may split a line into several writes)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, (line + "\n").encode("utf-8"))
        finally:
            os.close(descriptor)

    async def aclose(self) -> None:
        return None
