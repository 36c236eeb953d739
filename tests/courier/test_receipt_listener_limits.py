"""Attack review (session 5): the receipt listener shares its process and file descriptors with
the gRPC API and faces the internet. Half-sent requests (slowloris) once held ~1,100 sockets for
an hour and turned the API's health checks into DEADLINE_EXCEEDED. Now connections are capped
and each one has a lifetime: the stranger's sockets are closed, the API answers throughout, and
a gateway's receipt gets through once the attack stops."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from courier.gateways import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import aio_channel

from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.courier import receipt_listener
from authsvc.server import Server, create_server

CAP = 40
LIFETIME_S = 1.0


@pytest.fixture
async def listening(
    settings: Settings, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Server]:
    monkeypatch.setattr(receipt_listener, "MAX_CONNECTIONS", CAP)
    monkeypatch.setattr(receipt_listener, "CONNECTION_LIFETIME_S", LIFETIME_S)
    configured = settings.model_copy(update={"receipts_listen": f"127.0.0.1:{free_port()}"})
    server = await create_server(configured, clock=clock, listen="127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(grace=0)


def _half_open(port: int) -> socket.socket:
    """A request that never ends: a request line and one header, then silence."""
    attacker = socket.create_connection(("127.0.0.1", port), timeout=5)
    attacker.sendall(b"POST /receipts/http/sms HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return attacker


def _closed_by_server(attacker: socket.socket) -> bool:
    attacker.settimeout(0.0)
    try:
        return attacker.recv(1) == b""
    except BlockingIOError:
        return False  # still open
    except OSError:
        return True  # reset


async def test_half_open_requests_are_capped_and_closed_and_the_api_answers(
    listening: Server,
) -> None:
    assert listening.receipts is not None
    listener = listening.receipts
    attackers = [await asyncio.to_thread(_half_open, listener.port) for _ in range(3 * CAP)]
    try:
        await asyncio.sleep(0.2)  # let the loop accept them all
        assert listener.live[0] <= CAP  # beyond the cap, accepted and closed at once
        async with aio_channel(f"127.0.0.1:{listening.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # Every half-open socket is closed by the server within its lifetime (bounded poll).
        for _ in range(200):
            if listener.live[0] == 0:
                break
            await asyncio.sleep(0.05)
        assert listener.live[0] == 0
        assert all(_closed_by_server(attacker) for attacker in attackers)
    finally:
        for attacker in attackers:
            attacker.close()
    # A gateway's request is served again (refused here: no such channel's provider is http).
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"http://127.0.0.1:{listener.port}/receipts/http/sms", content=b"{}"
        )
    assert 400 <= answer.status_code < 500


async def test_a_head_request_applies_no_kannel_receipt(listening: Server) -> None:
    assert listening.receipts is not None
    async with httpx.AsyncClient() as client:
        answer = await client.head(
            f"http://127.0.0.1:{listening.receipts.port}/receipts/kannel",
            params={"id": "x", "token": "y", "status": "1"},
        )
    assert answer.status_code == 405
