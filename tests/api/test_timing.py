"""Enumeration by timing: an unknown organisation, an unknown login and a known login with a
wrong password do the same work, so they take the same time.

Asserted by counting the work, not by timing it (a shared machine's load would decide a timed
test): each of the three runs exactly one argon2id verification (the unknown ones against the
dummy hash); an unknown organisation and an unknown login run the very same statements (the SQL
text with its parameters stripped, every statement of every engine of the process), and a wrong
password the same round trips in the same order (its failure is counted on the account's row,
an unknown login's on a login_failures row). The time itself is measured, and reported, by
bench/service.py ("Login failure timing").
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, event
from support import CLIENT, SIRET, aio_channel, seed_account

from authsvc.clock import FrozenClock
from authsvc.config import Rate, Settings
from authsvc.seeding import org_siret
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc

# A valid SIRET that names no organisation of the test database.
UNKNOWN_SIRET = org_siret(4242)


@pytest.fixture
async def quiet(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    """A server whose only database work is its calls' (no dispatcher, no backend refresh)."""
    plenty = Rate(count=100_000, period_s=60)
    limits = settings.rate_limits.model_copy(
        update={"login_ip": plenty, "login_organization": plenty}
    )
    server = await create_server(
        settings.model_copy(
            update={"rate_limits": limits, "dispatcher_enabled": False, "api_keys_refresh_s": 300}
        ),
        clock=clock,
        listen="127.0.0.1:0",
    )
    await server.start()
    yield server
    await server.stop(grace=0)


_LITERALS = re.compile(r"\$\d+|%\(\w+\)s|\?|:\w+|'[^']*'|\b\d+\b")


def shape(statement: str) -> str:
    """The statement without its parameters: placeholders and literals become `?`."""
    return " ".join(_LITERALS.sub("?", statement).split())


@contextmanager
def statements() -> Iterator[list[str]]:
    """The shapes of every statement any engine of this process runs inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(shape(statement))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


class _CountingHasher:
    """The server's own argon2 hasher, each verification counted (and really run)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.verified = 0

    def verify(self, stored: str | bytes, password: str | bytes) -> bool:
        self.verified += 1
        return bool(self._real.verify(stored, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def verifications(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingHasher]:
    """Every argon2id verification the server's Passwords run inside the block."""
    counting = _CountingHasher(server.app.passwords._hasher)
    with monkeypatch.context() as patch:
        patch.setattr(server.app.passwords, "_hasher", counting)
        yield counting


async def _login(stub: Any, siret: str, login: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Login(
            pb.LoginRequest(
                organization_siret=siret,
                login=login,
                password=pb.PasswordCredential(password="a wrong password"),
                client=CLIENT,
            )
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()


CASES = {
    "unknown organisation": (UNKNOWN_SIRET, "member"),
    "unknown login": (SIRET, "nobody"),
    "wrong password": (SIRET, "member"),
}
Work = dict[str, list[tuple[int, list[str]]]]


@pytest.fixture
async def work(quiet: Server, monkeypatch: pytest.MonkeyPatch) -> Work:
    """Per case, for its first failure and a later one: (argon2 verifications, statements)."""
    await seed_account(quiet, login="member")
    done: Work = {}
    async with aio_channel(f"127.0.0.1:{quiet.port}") as channel:
        stub: Any = auth_service_pb2_grpc.AuthServiceStub(channel)
        await _login(stub, SIRET, "warmup")  # first-call work (prepared statements, caches)
        for _attempt in range(2):  # the first failure of a login (a new counter), then another
            for name, (siret, login) in CASES.items():
                with verifications(quiet, monkeypatch) as hashed, statements() as ran:
                    await _login(stub, siret, login)
                done.setdefault(name, []).append((hashed.verified, list(ran)))
    return done


async def test_each_failure_runs_exactly_one_argon2_verification(work: Work) -> None:
    assert {name: [hashed for hashed, _ in seen] for name, seen in work.items()} == {
        name: [1, 1] for name in CASES
    }


async def test_an_unknown_organisation_and_an_unknown_login_run_the_same_statements(
    work: Work,
) -> None:
    assert all(ran for _, ran in work["unknown login"]), "the listener saw no statement"
    assert [ran for _, ran in work["unknown organisation"]] == [
        ran for _, ran in work["unknown login"]
    ]


def kinds(ran: list[str]) -> list[str]:
    """Each statement as a transaction start, a read or a write (an upsert is a write): the
    failure is counted on the account's row for a known login, on a login_failures row for an
    unknown one, so the tables differ; the round trips must not."""
    return [
        "begin" if shape.startswith("BEGIN") else "read" if shape.startswith("SELECT") else "write"
        for shape in ran
    ]


async def test_an_unknown_login_and_a_wrong_password_make_the_same_round_trips(
    work: Work,
) -> None:
    assert [kinds(ran) for _, ran in work["unknown login"]] == [
        kinds(ran) for _, ran in work["wrong password"]
    ]
