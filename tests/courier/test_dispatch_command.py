"""`authsvc dispatch`: the dispatcher alone, in its own process, delivers what the API queued
into the shared database, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from authsvc.app import App
from authsvc.config import Settings
from authsvc.courier.outbox import enqueue
from authsvc.courier.templates import Rendered
from authsvc.db.migrate import upgrade


async def test_dispatch_command_delivers_and_stops_on_sigterm(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'authsvc.db'}"
    await asyncio.to_thread(upgrade, database)  # Alembic runs its own event loop
    env = {
        **os.environ,
        "AUTHSVC_DATABASE_URL": database,
        "AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
        "AUTHSVC_SMS_PROVIDER": "file",
        "AUTHSVC_OUTBOX_FILE": str(tmp_path / "outbox.jsonl"),
        "AUTHSVC_DISPATCHER_POLL_S": "0.05",
        "AUTHSVC_LOG_FORMAT": "json",
    }
    settings = Settings(
        database_url=database,
        secret_key_file=tmp_path / "secret.key",
        sms_provider="file",
        outbox_file=tmp_path / "outbox.jsonl",
    )
    app = App.build(settings)  # makes the key file the dispatcher will read
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authsvc",
        "dispatch",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with app.write() as db:
            enqueue(
                app,
                db,
                channel="sms",
                template="test",
                to="+33612345678",
                masked_to="+33 •••••••78",
                message=Rendered(text="code 135790", summary="code ••••", secrets=("135790",)),
                flow_id=None,
            )
        outbox = tmp_path / "outbox.jsonl"
        deadline = asyncio.get_running_loop().time() + 20
        while not outbox.exists():
            assert process.returncode is None, "the dispatcher exited"
            assert asyncio.get_running_loop().time() < deadline, "nothing delivered"
            await asyncio.sleep(0.05)
        [line] = outbox.read_text().splitlines()
        assert json.loads(line)["text"] == "code 135790"
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 20)
        await app.close()
    assert process.returncode == 0, err.decode()
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    names = [event.get("event") for event in events]
    assert "dispatching" in names and "message_sent" in names and "stopped" in names
    assert "135790" not in err.decode() and "12345678" not in err.decode()
