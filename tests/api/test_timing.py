"""Enumeration by timing: an unknown login and a known login with a wrong password take the
same time (the unknown one is checked against a dummy argon2 hash, and both write their audit
row and count their failure).

A statistical property, made robust for a noisy 2-core machine: the two kinds are interleaved
(in a random order within each pair, so that drift and bursts of load hit both alike), the
medians are compared (insensitive to outliers), and the measurement is taken once more before
failing. 100 tries of each kind: each costs one argon2id verification at the OWASP floor
(~50-150 ms here), so this is the largest sample that keeps the test near 30 s; the median of
100 samples is already stable to about 1% on this path, well inside the 5% bound.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from support import CLIENT, SIRET, aio_channel, seed_account

from authsvc.clock import FrozenClock
from authsvc.config import Rate, Settings
from authsvc.policies import lockout
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc

pytestmark = pytest.mark.slow
TRIES = 100
ACCOUNTS = 10
BOUND = 0.05


@pytest.fixture
async def roomy(settings: Settings, clock: FrozenClock, database_url: str) -> AsyncIterator[Server]:
    if not database_url.startswith("sqlite"):
        pytest.skip("timing is the argon2 path's property; measured once, on SQLite")
    plenty = Rate(count=100_000, period_s=60)
    limits = settings.rate_limits.model_copy(
        update={"login_ip": plenty, "login_organization": plenty}
    )
    server = await create_server(
        settings.model_copy(update={"rate_limits": limits}), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    yield server
    await server.stop(grace=0)


async def _measure(server: Server, stub: Any, names: list[str]) -> tuple[float, float]:
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    ghosts = 0
    for round_ in range(TRIES):
        if round_ % ACCOUNTS == 0:  # at most 1 failure per account between clears: no lock
            async with server.app.write() as db:
                for account_id in server_ids:
                    await lockout.clear(db, account_id)
        pair = ["known", "unknown"]
        random.shuffle(pair)
        for kind in pair:
            if kind == "known":
                name = names[round_ % ACCOUNTS]
            else:
                ghosts += 1
                name = f"ghost{ghosts}-{random.randrange(10**9)}"
            request = pb.LoginRequest(
                organization_siret=SIRET,
                login=name,
                password=pb.PasswordCredential(password="a wrong password"),
                client=CLIENT,
            )
            started = time.perf_counter()
            try:
                await stub.Login(request)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
            timings[kind].append(time.perf_counter() - started)
    return statistics.median(timings["known"]), statistics.median(timings["unknown"])


server_ids: list[uuid.UUID] = []


async def test_unknown_and_known_logins_take_the_same_time(roomy: Server) -> None:
    people = [await seed_account(roomy, login=f"member{i}") for i in range(ACCOUNTS)]
    server_ids[:] = [who.account_id for who in people]
    async with aio_channel(f"127.0.0.1:{roomy.port}") as channel:
        stub: Any = auth_service_pb2_grpc.AuthServiceStub(channel)
        await _measure_warmup(stub)
        results = []
        for _ in range(2):
            known, unknown = await _measure(roomy, stub, [who.login for who in people])
            gap = abs(known - unknown) / min(known, unknown)
            results.append((known, unknown, gap))
            print(f"timing medians: known {known * 1000:.1f} ms, unknown {unknown * 1000:.1f} ms")
            if gap <= BOUND:
                return
    raise AssertionError(f"medians differ by more than {BOUND:.0%} twice: {results}")


async def _measure_warmup(stub: Any) -> None:
    for index in range(3):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Login(
                pb.LoginRequest(
                    organization_siret=SIRET,
                    login=f"warmup{index}",
                    password=pb.PasswordCredential(password="x"),
                    client=CLIENT,
                )
            )
