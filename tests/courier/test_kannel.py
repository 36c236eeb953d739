"""SMS through a real Kannel: bearerbox + smsbox (Debian package `kannel`) in front of Kannel's
own fake SMSC (`fakesmsc`, package `kannel-extras`), all on free loopback ports.

The `kannel` provider calls smsbox's sendsms interface; bearerbox routes the message to the SMSC
link, where fakesmsc prints what it received. With the service's receipt listener as the
dlr-url, bearerbox reports the SMSC's acceptance then the delivery back to it, end to end from
Login and Challenge over gRPC to DELIVERED (SQLite and PostgreSQL). Skipped with the reason
when Kannel is not installed, except under CI=true, where .ci/run installs it and the test
must run.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from courier.gateways import free_port
from pydantic import SecretStr
from sqlalchemy import select
from support import CLIENT, MOBILE, START, aio_channel, open_login_flow

from authsvc.clock import FrozenClock
from authsvc.config import ProviderName, Settings
from authsvc.courier import templates
from authsvc.courier.providers import DeliveryError, KannelProvider, Outgoing
from authsvc.db import MessageStatus, OutboxMessage, Receipt
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
from authsvc.v1 import common_pb2

BEARERBOX = Path("/usr/sbin/bearerbox")
SMSBOX = Path("/usr/sbin/smsbox")
FAKESMSC = Path("/usr/lib/kannel/test/fakesmsc")
PASSWORD = "kannel-secret"
IN_CI = os.environ.get("CI", "").lower() == "true"


@dataclass
class Kannel:
    url: str
    smsc_log: Path

    def received(self) -> list[str]:
        """The texts fakesmsc received, newlines restored: its protocol is line-based, so
        bearerbox hands a text with line breaks over as one line per part."""
        texts: list[str] = []
        for line in self.smsc_log.read_text(errors="replace").splitlines():
            got = re.search(r"Got message \d+: <(.*)>$", line)
            if got is None:
                continue
            head = re.match(r"(\S+) (\S+) (text|ucs-2) (.*)$", got.group(1))
            if head is not None:
                texts.append(f"{head.group(2)}|{head.group(3)}|{head.group(4)}")
            elif texts:
                texts[-1] += "\n" + got.group(1)
        return texts


def _wait_port(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def kannel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kannel]:
    missing = [str(p) for p in (BEARERBOX, SMSBOX, FAKESMSC) if not p.exists()]
    if missing:
        reason = f"Kannel is not installed (apt-get install kannel kannel-extras): {missing}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("kannel")
    admin, boxes, smsc, sendsms = (free_port() for _ in range(4))
    config = work / "kannel.conf"
    config.write_text(
        f"""group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = {uuid.uuid4().hex}
smsbox-port = {boxes}
smsbox-interface = 127.0.0.1
box-allow-ip = 127.0.0.1
log-file = "{work}/bearerbox.log"
log-level = 1
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = FAKE
port = {smsc}
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {boxes}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
log-file = "{work}/smsbox.log"
log-level = 1

group = sendsms-user
username = authsvc
password = {PASSWORD}
default-sender = PEPs
max-messages = 3
concatenation = true
"""
    )
    smsc_log = work / "fakesmsc.log"
    processes: list[subprocess.Popen[bytes]] = []

    def start(*command: str, output: Path) -> None:
        with output.open("wb") as sink:
            processes.append(
                subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=work)
            )

    try:
        deadline = time.monotonic() + 15
        start(str(BEARERBOX), "-v", "1", str(config), output=work / "bearerbox.out")
        _wait_port(smsc, deadline)
        start(
            str(FAKESMSC),
            "-H",
            "127.0.0.1",
            "-r",
            str(smsc),
            "-m",
            "0",
            "0 0 text x",
            output=smsc_log,
        )
        start(str(SMSBOX), "-v", "1", str(config), output=work / "smsbox.out")
        _wait_port(sendsms, deadline)
        yield Kannel(f"http://127.0.0.1:{sendsms}/cgi-bin/sendsms", smsc_log)
    finally:
        for process in reversed(processes):  # only the processes this fixture started
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def provider(kannel: Kannel, settings: Settings, password: str = PASSWORD) -> KannelProvider:
    return KannelProvider(
        settings.model_copy(
            update={
                "sms_provider": ProviderName.KANNEL,
                "kannel_url": kannel.url,
                "kannel_password": SecretStr(password),
                "kannel_timeout_s": 2.0,
            }
        )
    )


def sms(text: str, to: str = "+33612345678") -> Outgoing:
    return Outgoing(id=uuid.uuid4(), channel="sms", to=to, text=text, created_at=START, attempt=1)


async def wait_received(kannel: Kannel, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(received := kannel.received()) < count:
        assert time.monotonic() < deadline, f"the fake SMSC got {received}"
        await asyncio.sleep(0.05)
    return received


@pytest.fixture
def sqlite_only_settings(tmp_path: Path) -> Settings:
    return Settings(secret_key_file=tmp_path / "secret.key")


async def test_a_code_sms_reaches_the_smsc_through_kannel(
    kannel: Kannel, sqlite_only_settings: Settings
) -> None:
    text = templates.code_text(
        "sms",
        purpose="login",
        code="246810",
        minutes=5,
        service="PEP's",
        domain="peps.cnracl.example",
    )
    before = len(kannel.received())
    sender = provider(kannel, sqlite_only_settings)
    try:
        provider_id = await sender.deliver(sms(text))
    finally:
        await sender.aclose()
    assert provider_id.startswith("kannel-")
    received = (await wait_received(kannel, before + 1))[before]
    assert received == f"+33612345678|text|{text}"  # GSM-7, one segment, WebOTP line intact


async def test_wrong_credentials_are_a_permanent_failure(
    kannel: Kannel, sqlite_only_settings: Settings
) -> None:
    sender = provider(kannel, sqlite_only_settings, password="wrong")
    with pytest.raises(DeliveryError) as refused:
        await sender.deliver(sms("x"))
    await sender.aclose()
    assert refused.value.permanent and "403" in str(refused.value)
    assert PASSWORD not in str(refused.value) and "wrong" not in str(refused.value)


async def test_kannel_down_is_a_retryable_failure(sqlite_only_settings: Settings) -> None:
    down = Kannel(f"http://127.0.0.1:{free_port()}/cgi-bin/sendsms", Path("/dev/null"))
    sender = provider(down, sqlite_only_settings)
    with pytest.raises(DeliveryError) as failed:
        await sender.deliver(sms("x"))
    await sender.aclose()
    assert not failed.value.permanent


# ---- delivery reports: Kannel calls the service's receipt listener back ----------------------


@pytest.fixture
async def kannel_server(
    kannel: Kannel, settings: Settings, clock: FrozenClock
) -> AsyncIterator[Server]:
    receipts = free_port()
    configured = settings.model_copy(
        update={
            "sms_provider": ProviderName.KANNEL,
            "kannel_url": kannel.url,
            "kannel_password": SecretStr(PASSWORD),
            "kannel_timeout_s": 2.0,
            "receipts_listen": f"127.0.0.1:{receipts}",
            "receipts_public_url": f"http://127.0.0.1:{receipts}",
            "delivery_wait_s": 3.0,
        }
    )
    server = await create_server(configured, clock=clock, listen="127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(grace=0)


async def test_kannel_delivery_reports_reach_the_flow_through_the_dlr_url(
    kannel: Kannel, kannel_server: Server
) -> None:
    """Login, Challenge: the code goes out through smsbox with dlr-mask and dlr-url; the fake
    SMSC acknowledges it, bearerbox reports the SMSC's acceptance (8) then the delivery (1) to
    the dlr-url, and Challenge asked again with the same key answers DELIVERED."""
    before = len(kannel.received())
    async with aio_channel(f"127.0.0.1:{kannel_server.port}") as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        flow_id = await open_login_flow(stub, kannel_server)
        request = pb.ChallengeRequest(flow_id=flow_id, idempotency_key="dlr-1", client=CLIENT)
        first = await stub.Challenge(request)
        assert first.delivery_status in (
            common_pb2.DELIVERY_STATUS_SENT,
            common_pb2.DELIVERY_STATUS_DELIVERED,
        )
        [received] = (await wait_received(kannel, before + 1))[before:]
        assert received.startswith(f"{MOBILE}|text|")
        status = first.delivery_status
        deadline = time.monotonic() + 15  # a bound on waiting, not an assertion on time
        while status != common_pb2.DELIVERY_STATUS_DELIVERED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            status = (await stub.Challenge(request)).delivery_status
        assert status == common_pb2.DELIVERY_STATUS_DELIVERED
    async with kannel_server.app.read() as db:
        [message] = list(await db.scalars(select(OutboxMessage)))
    assert (message.status, message.receipt) == (MessageStatus.DELIVERED, Receipt.DELIVERED)
    assert message.provider == ProviderName.KANNEL.value


async def test_a_forged_kannel_report_changes_nothing(
    kannel: Kannel, kannel_server: Server
) -> None:
    """Kannel's callback carries our id and the message's own receipt token: a report with any
    other token (or none) is refused and the message stays as it was."""
    async with aio_channel(f"127.0.0.1:{kannel_server.port}") as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        flow_id = await open_login_flow(stub, kannel_server)
        answer = await stub.Challenge(
            pb.ChallengeRequest(flow_id=flow_id, idempotency_key="forged", client=CLIENT)
        )
    base = kannel_server.app.settings.receipts_public_url
    assert base is not None
    async with httpx.AsyncClient() as client:
        for token in ("", "0" * 43, "forged"):
            forged = await client.get(
                f"{base}/receipts/kannel",
                params={"id": answer.challenge_id, "token": token, "status": "2"},
            )
            assert forged.status_code in (400, 401, 403, 404), forged.text
    async with kannel_server.app.read() as db:
        [message] = list(await db.scalars(select(OutboxMessage)))
    assert message.receipt != Receipt.UNDELIVERED
