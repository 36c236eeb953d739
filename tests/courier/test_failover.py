"""Provider failover against two real HTTP gateways (aiohttp servers on 127.0.0.1), with codes
issued over real gRPC (Login, Challenge) and the dispatcher driven round by round, so the tests
count work (rounds, attempts, requests per message id) and never time anything.

- The first gateway stops answering mid-run: every code it held goes to the second in the very
  next round (no backoff), with the same message id; none is lost, none accepted twice; once its
  breaker half-opens the first gets one probe, and after it succeeds takes the traffic again.
- A code whose lifetime ended while the first gateway timed out is not sent to the second.
- A permanent refusal of a number does not trip the breaker.
- The ambiguous case: the first gateway accepted, then its answer never came. The second gets
  the same reference (X-Authsvc-Message-Id, the idempotency key a gateway deduplicates on),
  unless the first one's signed "delivered" receipt arrived meanwhile: then nothing more is sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from courier.gateways import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from support import CLIENT, PASSWORD, aio_channel, seed_account

from authsvc.app import App
from authsvc.clock import FrozenClock
from authsvc.config import HttpGateway, ProviderEntry, ProviderName, Settings
from authsvc.courier import receipts
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.failover import BreakerState
from authsvc.courier.outbox import enqueue
from authsvc.courier.templates import Rendered
from authsvc.db import MessageStatus, OutboxMessage
from authsvc.db.migrate import upgrade
from authsvc.providers_cli import breaker_states
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

SECRET_A = "secret-of-gateway-a"
SECRET_B = "secret-of-gateway-b"
THRESHOLD = 2
OPEN_S = 30.0
REFUSED_NUMBER = "+33698765432"


class Gateway:
    """A real HTTP gateway: "ok" accepts; "hang" stops answering (the request is received, the
    answer never comes); "accept-hang" accepts (would deliver) but its answer never comes.
    A number in `refused` is refused for good (HTTP 400), whatever the mode."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.refused: set[str] = set()
        self.received: list[str] = []  # message ids (X-Authsvc-Message-Id), in order
        self.accepted: list[str] = []
        self.texts: dict[str, str] = {}
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _send(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        reference = request.headers["X-Authsvc-Message-Id"]
        self.received.append(reference)
        if body["to"] in self.refused:
            return web.json_response({"error": "invalid destination"}, status=400)
        if self.mode == "accept-hang":
            self.accepted.append(reference)
            self.texts[reference] = body["text"]
        if self.mode in ("hang", "accept-hang"):
            await self._release.wait()  # until the test ends: the client has given up
            return web.json_response({"error": "too late"}, status=503)
        self.accepted.append(reference)
        self.texts[reference] = body["text"]
        return web.json_response({"id": f"gw-{len(self.accepted)}"})

    async def start(self) -> None:
        application = web.Application()
        application.router.add_post("/send", self._send)
        self._runner = web.AppRunner(application, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/send"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def gateways() -> AsyncIterator[tuple[Gateway, Gateway]]:
    a, b = Gateway(), Gateway()
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


def failover_settings(settings: Settings, a: Gateway, b: Gateway) -> Settings:
    entries = (
        ProviderEntry(
            name="a",
            kind=ProviderName.HTTP,
            http=HttpGateway(url=a.url, hmac_secret=SecretStr(SECRET_A), timeout_s=1.0),
        ),
        ProviderEntry(
            name="b",
            kind=ProviderName.HTTP,
            http=HttpGateway(url=b.url, hmac_secret=SecretStr(SECRET_B), timeout_s=5.0),
        ),
    )
    return settings.model_copy(
        update={
            "sms_providers": entries,
            "dispatcher_enabled": False,  # the test drives the dispatcher, round by round
            "delivery_wait_s": 0.0,
            "provider_breaker_failures": THRESHOLD,
            "provider_breaker_open_s": OPEN_S,
        }
    )


@pytest.fixture
async def server(
    settings: Settings, clock: FrozenClock, gateways: tuple[Gateway, Gateway]
) -> AsyncIterator[Server]:
    server = await create_server(
        failover_settings(settings, *gateways), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.AuthServiceStub(channel)


@pytest.fixture
async def dispatcher(server: Server) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(server.app)
    yield dispatcher
    await dispatcher.close()


class Codes:
    """Codes issued over gRPC, one per account (each with its own number)."""

    def __init__(self, stub: Stub, server: Server) -> None:
        self._stub = stub
        self._server = server
        self._accounts = 0
        self.flows: list[str] = []

    async def issue(self, count: int = 1, *, phone: str | None = None) -> list[str]:
        issued = []
        for _ in range(count):
            self._accounts += 1
            number = phone or f"+33612345{self._accounts:03d}"
            alice = await seed_account(self._server, login=f"user{self._accounts}", phone=number)
            response = await self._stub.Login(
                pb.LoginRequest(
                    organization_siret=alice.organization_siret,
                    login=alice.login,
                    password=pb.PasswordCredential(password=PASSWORD),
                    client=CLIENT,
                )
            )
            flow_id = response.pending_flow.flow_id
            await self._stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
            issued.append(flow_id)
        self.flows += issued
        return issued


@pytest.fixture
def codes(stub: Stub, server: Server) -> Codes:
    return Codes(stub, server)


async def drain(dispatcher: Dispatcher, limit: int = 10) -> int:
    """Dispatch rounds until one claims nothing; the number of rounds that claimed something."""
    for rounds in range(limit):
        if await dispatcher.run_once() == 0:
            return rounds
    raise AssertionError(f"still claiming after {limit} rounds")


async def outbox(server: Server) -> dict[str, OutboxMessage]:
    async with server.app.read() as db:
        return {str(m.id): m for m in await db.scalars(select(OutboxMessage))}


def state(dispatcher: Dispatcher, name: str, clock: FrozenClock) -> BreakerState:
    [found] = [h for h in dispatcher.failover.health(clock.now()) if h.provider == name]
    return found.state


async def test_a_gateway_that_stops_answering_hands_over_and_takes_back_after_recovery(
    server: Server,
    stub: Stub,
    codes: Codes,
    dispatcher: Dispatcher,
    gateways: tuple[Gateway, Gateway],
    clock: FrozenClock,
) -> None:
    a, b = gateways
    # Both up: the first in order takes everything.
    await codes.issue(2)
    assert await drain(dispatcher) == 1
    assert len(a.accepted) == 2 and b.received == []

    # The first stops answering mid-run: three codes time out on it, at once (one round).
    a.mode = "hang"
    await codes.issue(3)
    before = len(a.received)
    # Round 1: all three time out on A (its breaker opens at the second); round 2: all three on
    # B, with no backoff wait in between (the clock has not moved).
    assert await drain(dispatcher) == 2
    assert len(a.received) == before + 3 and len(b.accepted) == 3
    assert state(dispatcher, "a", clock) is BreakerState.OPEN
    assert state(dispatcher, "b", clock) is BreakerState.CLOSED

    # While A's breaker is open nothing is tried on it: one round, straight to B.
    await codes.issue(2)
    received = len(a.received)
    assert await drain(dispatcher) == 1
    assert len(a.received) == received and len(b.accepted) == 5

    # A recovers; its breaker half-opens after OPEN_S: the next code is its probe, and once the
    # probe succeeds A takes the traffic again.
    a.mode = "ok"
    clock.advance(OPEN_S)
    await codes.issue(1)
    assert await drain(dispatcher) == 1
    assert len(a.accepted) == 3 and state(dispatcher, "a", clock) is BreakerState.CLOSED
    await codes.issue(2)
    assert await drain(dispatcher) == 1
    assert len(a.accepted) == 5 and len(b.accepted) == 5

    # None lost, none accepted twice, each recorded with the gateway that accepted it.
    messages = await outbox(server)
    accepted = Counter(a.accepted + b.accepted)
    assert set(accepted) == set(messages) and set(accepted.values()) == {1}
    for message_id, message in messages.items():
        assert message.status == MessageStatus.SENT and message.payload_sealed is None
        assert message.provider == ("http:a" if message_id in a.accepted else "http:b")
        # One attempt, or two when A timed out first (no third: B took each at once).
        assert message.attempts == (2 if message_id in a.received[2:5] else 1)

    # The codes B received are live: one of them verifies (Verify refuses an expired code).
    handed_over = a.received[2]
    flow = codes.flows[2]
    match = re.search(r"#(\d{6})$", b.texts[handed_over])
    assert match
    verified = await stub.Verify(pb.VerifyRequest(flow_id=flow, code=match.group(1), client=CLIENT))
    assert verified.login.session.token


async def test_a_code_that_expires_during_failover_is_never_sent(
    server: Server,
    codes: Codes,
    dispatcher: Dispatcher,
    gateways: tuple[Gateway, Gateway],
    clock: FrozenClock,
) -> None:
    a, b = gateways
    a.mode = "hang"
    await codes.issue(1)
    assert await dispatcher.run_once() == 1  # times out on A
    clock.advance(server.app.settings.code_ttl_s)  # the code's lifetime ends meanwhile
    assert await dispatcher.run_once() == 1  # the attempt that would go to B
    [message] = (await outbox(server)).values()
    assert message.status == MessageStatus.ABANDONED and message.payload_sealed is None
    assert message.last_error == "the code expired before delivery"
    assert b.received == [] and a.accepted == []


async def test_a_permanent_refusal_does_not_trip_the_breaker(
    server: Server,
    codes: Codes,
    dispatcher: Dispatcher,
    gateways: tuple[Gateway, Gateway],
    clock: FrozenClock,
) -> None:
    a, b = gateways
    a.refused.add(REFUSED_NUMBER)
    for _ in range(THRESHOLD + 1):  # more refusals than the breaker's threshold
        await codes.issue(1, phone=REFUSED_NUMBER)
    assert await drain(dispatcher) == 1
    assert len(a.received) == THRESHOLD + 1 and a.accepted == []
    assert state(dispatcher, "a", clock) is BreakerState.CLOSED
    await codes.issue(1)
    assert await drain(dispatcher) == 1
    assert len(a.accepted) == 1 and b.received == []  # a refused number is not a failover
    statuses = Counter(m.status for m in (await outbox(server)).values())
    assert statuses == {MessageStatus.ABANDONED: THRESHOLD + 1, MessageStatus.SENT: 1}


async def test_a_lost_answer_goes_on_with_the_same_reference_or_stops_on_a_receipt(
    server: Server, codes: Codes, dispatcher: Dispatcher, gateways: tuple[Gateway, Gateway]
) -> None:
    a, b = gateways
    a.mode = "accept-hang"
    await codes.issue(2)
    assert await dispatcher.run_once() == 2  # both accepted by A, both answers lost
    ids = list(a.accepted)
    assert len(ids) == 2
    # A's signed receipt for the first: it was delivered. It speaks for A only.
    body = json.dumps({"message_id": ids[0], "status": "delivered"}).encode()
    stamp = str(int(time.time()))
    signed = {
        receipts.TIMESTAMP_HEADER.lower(): stamp,
        "x-authsvc-signature": receipts.webhook_signature(SECRET_A.encode(), stamp, body),
    }
    claim = receipts.check_webhook(server.app, "sms", signed, body, float(stamp))
    assert claim.provider_prefix == "http:a"
    assert await receipts.apply(server.app, claim, source="test") is MessageStatus.DELIVERED
    # The next round sends only the second, to B, under the same reference A had.
    assert await drain(dispatcher) == 1
    assert b.accepted == [ids[1]]
    messages = await outbox(server)
    assert messages[ids[0]].status == MessageStatus.DELIVERED
    assert messages[ids[1]].status == MessageStatus.SENT
    assert messages[ids[1]].provider == "http:b"
    # A's late receipt for the second (B's message now) changes nothing.
    body = json.dumps({"message_id": ids[1], "status": "undelivered"}).encode()
    signed["x-authsvc-signature"] = receipts.webhook_signature(SECRET_A.encode(), stamp, body)
    claim = receipts.check_webhook(server.app, "sms", signed, body, float(stamp))
    assert await receipts.apply(server.app, claim, source="test") is None
    assert (await outbox(server))[ids[1]].status == MessageStatus.SENT


async def test_channel_health_follows_the_breakers(
    server: Server, codes: Codes, gateways: tuple[Gateway, Gateway], clock: FrozenClock
) -> None:
    a, b = gateways
    heard: list[tuple[str, bool]] = []
    dispatcher = Dispatcher(server.app, on_channel=lambda c, s: heard.append((c, s)))
    try:
        a.mode = b.mode = "hang"
        await codes.issue(THRESHOLD)
        assert await dispatcher.run_once() == THRESHOLD  # A opens
        assert await dispatcher.run_once() == THRESHOLD  # B opens
        assert heard[-1] == ("sms", False)
        assert not dispatcher.failover.serving("sms", clock.now())
        clock.advance(OPEN_S)  # both half-open: a probe each may go
        assert dispatcher.failover.serving("sms", clock.now())
    finally:
        await dispatcher.close()


def test_the_status_command_reads_the_published_gauge() -> None:
    exposition = (
        "# HELP authsvc_provider_breaker_state x\n# TYPE authsvc_provider_breaker_state gauge\n"
        'authsvc_provider_breaker_state{channel="sms",provider="a"} 2.0\n'
        'authsvc_provider_breaker_state{channel="sms",provider="b"} 0.0\n'
        'authsvc_provider_breaker_state{channel="voice",provider="http"} 1.0\n'
    )
    assert breaker_states(exposition) == {
        ("sms", "a"): "open",
        ("sms", "b"): "closed",
        ("voice", "http"): "half_open",
    }


# ---- configuration -----------------------------------------------------------------------------


def entry(name: str, url: str = "https://sms.example/send") -> dict[str, object]:
    return {"name": name, "kind": "http", "http": {"url": url}}


def test_the_one_provider_form_is_a_list_of_one() -> None:
    settings = Settings(sms_provider="http", sms_http={"url": "https://sms.example/send"})
    [only] = settings.channel_providers("sms")
    assert (only.name, only.kind, only.recorded_as) == ("http", ProviderName.HTTP, "http")
    listed = Settings(sms_providers=[entry("primary"), {"name": "backup", "kind": "kannel"}])
    assert [e.recorded_as for e in listed.channel_providers("sms")] == [
        "http:primary",
        "kannel:backup",
    ]


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"sms_providers": [entry("a")], "sms_provider": "http"}, id="both-forms"),
        pytest.param({"sms_providers": [entry("a"), entry("a")]}, id="same-name"),
        pytest.param(
            {"sms_providers": [{"name": "k", "kind": "kannel"}, {"name": "l", "kind": "kannel"}]},
            id="kannel-twice",
        ),
        pytest.param({"voice_providers": [{"name": "k", "kind": "kannel"}]}, id="kannel-voice"),
        pytest.param({"sms_providers": [{"name": "a", "kind": "http"}]}, id="http-no-gateway"),
        pytest.param({"sms_providers": [entry("Bad Name")]}, id="bad-name"),
    ],
)
def test_a_wrong_provider_list_is_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)  # type: ignore[arg-type]


def test_production_checks_every_listed_gateway() -> None:
    production = {
        "environment": "production",
        "secret_key": "k" * 43,
        "tls_terminated_upstream": True,
        "email_provider": "smtp",
        "voice_providers": [entry("v")],
    }
    with pytest.raises(ValidationError, match="PROVIDERS \\(b\\) url"):
        Settings(sms_providers=[entry("a"), entry("b", "http://plain.example")], **production)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="development provider"):
        Settings(sms_providers=[entry("a"), {"name": "f", "kind": "file"}], **production)  # type: ignore[arg-type]


# ---- the commands, as an operator runs them ------------------------------------------------------


async def test_dispatch_publishes_its_breakers_to_providers_status(
    tmp_path: Path, gateways: tuple[Gateway, Gateway]
) -> None:
    """`authsvc dispatch` (its own process) fails over from a silent gateway, logs the change
    without the gateway's URL (which carries a key here), and `authsvc providers status` reads
    the breakers off its /metrics."""
    a, b = gateways
    a.mode = "hang"
    database = f"sqlite+aiosqlite:///{tmp_path / 'authsvc.db'}"
    await asyncio.to_thread(upgrade, database)
    listen = f"127.0.0.1:{free_port()}"
    providers = [
        {
            "name": "a",
            "kind": "http",
            "http": {"url": f"{a.url}?api_key=TOPSECRET", "timeout_s": 0.5},
        },
        {"name": "b", "kind": "http", "http": {"url": b.url}},
    ]
    env = {
        **os.environ,
        "AUTHSVC_DATABASE_URL": database,
        "AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
        "AUTHSVC_SMS_PROVIDERS": json.dumps(providers),
        "AUTHSVC_PROVIDER_BREAKER_FAILURES": "1",
        "AUTHSVC_PROVIDER_BREAKER_OPEN_S": "3600",
        "AUTHSVC_METRICS_LISTEN": listen,
        "AUTHSVC_DISPATCHER_POLL_S": "0.05",
        "AUTHSVC_LOG_FORMAT": "json",
    }
    app = App.build(Settings(database_url=database, secret_key_file=tmp_path / "secret.key"))
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
            message_id = enqueue(
                app,
                db,
                channel="sms",
                template="test",
                to="+33612345678",
                masked_to="+33 •••••••78",
                message=Rendered(text="code 135790", summary="code ••••", secrets=("135790",)),
                flow_id=None,
            )
        deadline = asyncio.get_running_loop().time() + 30  # a guard, not what is tested
        while not b.accepted:
            assert process.returncode is None, "the dispatcher exited"
            assert asyncio.get_running_loop().time() < deadline, "nothing delivered"
            await asyncio.sleep(0.05)
        assert b.accepted == [str(message_id)] and a.received == [str(message_id)]
        status = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "authsvc",
            "providers",
            "status",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(status.communicate(), 30)
        assert status.returncode == 0  # sms still has a provider that takes messages
        rows = [line.split() for line in out.decode().splitlines()[1:]]
        assert ["sms", "1", "a", "http", "open"] in rows
        assert ["sms", "2", "b", "http", "closed"] in rows
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
        await app.close()
    assert process.returncode == 0, err.decode()
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    [change] = [event for event in events if event.get("event") == "provider_breaker"]
    assert (change["provider"], change["state"], change["was"]) == ("a", "open", "closed")
    assert "TOPSECRET" not in err.decode() and "135790" not in err.decode()


async def test_serve_tells_a_channel_whose_providers_are_all_open_on_its_health_name(
    settings: Settings, clock: FrozenClock, gateways: tuple[Gateway, Gateway]
) -> None:
    a, b = gateways
    configured = failover_settings(settings, a, b).model_copy(
        update={"dispatcher_enabled": True}  # serve's own dispatcher sets the names
    )
    server = await create_server(configured, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def sms_health() -> int:
                request = health_pb2.HealthCheckRequest(service="authsvc.provider.sms")
                status: int = (await health.Check(request, timeout=5)).status
                return status

            assert await sms_health() == health_pb2.HealthCheckResponse.SERVING
            a.mode = b.mode = "hang"
            await Codes(pb_grpc.AuthServiceStub(channel), server).issue(THRESHOLD)
            deadline = asyncio.get_running_loop().time() + 30  # a guard, not what is tested
            while await sms_health() != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert asyncio.get_running_loop().time() < deadline, "still serving"
                await asyncio.sleep(0.05)
            # Both breakers opened on their own failures: each gateway got the threshold's worth.
            assert len(a.received) >= THRESHOLD and len(b.received) >= THRESHOLD
            voice = health_pb2.HealthCheckRequest(service="authsvc.provider.voice")
            assert (await health.Check(voice, timeout=5)).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        await server.stop(grace=0)
