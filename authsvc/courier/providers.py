"""Channel providers. `console` and `file` are for development: they show codes in clear and are
refused in production."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Protocol

from authsvc.config import ProviderName, Settings


class DeliveryError(Exception):
    """The provider did not accept the message. `permanent` ones are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Provider(Protocol):
    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        """Hand the message over; return the provider's message id."""
        ...


class ConsoleProvider:
    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        sys.stderr.write(f"\n--- {channel.upper()} to {to} ---\n{text}\n---\n")
        sys.stderr.flush()
        return f"console-{uuid.uuid4()}"


class FileProvider:
    """Appends one JSON object per message: channel, to, text, created_at."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()

    async def send(self, *, channel: str, to: str, text: str, created_at: datetime) -> str:
        message_id = f"file-{uuid.uuid4()}"
        line = json.dumps(
            {
                "id": message_id,
                "channel": channel,
                "to": to,
                "text": text,
                "created_at": created_at.isoformat(),
            },
            ensure_ascii=False,
        )
        async with self._lock:
            await asyncio.to_thread(self._append, line)
        return message_id

    def _append(self, line: str) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One provider per channel, as configured."""
    file_provider = FileProvider(settings.outbox_file)
    by_name: dict[ProviderName, Provider] = {
        ProviderName.CONSOLE: ConsoleProvider(),
        ProviderName.FILE: file_provider,
    }
    return {
        "sms": by_name[settings.sms_provider],
        "voice": by_name[settings.voice_provider],
        "email": by_name[settings.email_provider],
    }
