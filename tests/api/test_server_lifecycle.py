"""The server around the API: health checking, reflection, SIGTERM draining, one log line per RPC.

Health and reflection are checked on the in-process `server` fixture. Draining and logging are
checked on the real command, `python -m authsvc serve`, run as a subprocess whose stderr is a
file (not a terminal), so it logs JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import MOBILE, SIRET, TEST_API_KEYS_ENV, sync_channel

from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc
from authsvc.v1 import common_pb2

AUTH_SERVICE = "authsvc.v1.AuthService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
RPCS = {
    "Login",
    "Challenge",
    "Verify",
    "AuthorizeSensitiveAction",
    "ValidateSession",
    "Logout",
    "RedeemActionGrant",
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ADMIN_PASSWORD = "lifecycle-admin-password-2026"
GRACE_S = 2.0
CLIENT = common_pb2.ClientContext(ip_address="198.51.100.4", user_agent="lifecycle-test")


# ---- (a) health and (b) reflection on a running server -----------------------------------------


@pytest.mark.parametrize("service", ["", AUTH_SERVICE])
async def test_health_answers_serving(channel: grpc.aio.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == SERVING


async def test_health_of_an_unknown_service_is_not_found(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health.Check(health_pb2.HealthCheckRequest(service="authsvc.v1.Nope"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_auth_service(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo(
        [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=AUTH_SERVICE),
        ],
        timeout=5,
    )
    responses = [response async for response in call]
    assert len(responses) == 2

    listed = {service.name for service in responses[0].list_services_response.service}
    assert {AUTH_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE} <= listed

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    services = {
        f"{file.package}.{service.name}": {method.name for method in service.method}
        for file in files
        for service in file.service
    }
    assert services.get(AUTH_SERVICE) == RPCS


# ---- the real command as a subprocess ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    stderr: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_lines(self) -> list[dict[str, Any]]:
        """stderr, one JSON object per line: nothing else may be written there."""
        lines = []
        for line in self.stderr.read_text().splitlines():
            if line.strip():
                parsed = json.loads(line)
                assert isinstance(parsed, dict), line
                lines.append(parsed)
        return lines

    def wait_serving(self, timeout: float = 20.0) -> None:
        """Poll the health service (with a deadline) until it answers SERVING."""
        deadline = time.monotonic() + timeout
        with sync_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process.poll() is None, f"server died:\n{self.stderr.read_text()}"
                try:
                    response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if response.status == SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"not SERVING after {timeout} s:\n{self.stderr.read_text()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@pytest.fixture
def serve_env(tmp_path: Path) -> dict[str, str]:
    """A migrated SQLite database with one organisation and its administrator."""
    env = {
        **os.environ,
        "AUTHSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "k"),
        **TEST_API_KEYS_ENV,
        "AUTHSVC_SMS_PROVIDER": "file",
        "AUTHSVC_VOICE_PROVIDER": "file",
        "AUTHSVC_EMAIL_PROVIDER": "file",
        "AUTHSVC_OUTBOX_FILE": str(tmp_path / "outbox.jsonl"),
        "AUTHSVC_GRACE_PERIOD_S": str(GRACE_S),
        "AUTHSVC_BOOTSTRAP_PASSWORD": ADMIN_PASSWORD,
    }
    env.pop("AUTHSVC_LOG_FORMAT", None)  # auto: JSON because stderr is not a terminal
    authsvc = [sys.executable, "-m", "authsvc"]
    subprocess.run([*authsvc, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run(
        [
            *authsvc,
            "bootstrap",
            "--org-siret",
            SIRET,
            "--org-name",
            "Mairie de test",
            "--admin-login",
            "admin",
            "--admin-email",
            "admin@example.fr",
            "--admin-phone",
            MOBILE,
        ],
        env=env,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    return env


@pytest.fixture
def served(serve_env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    with _serving(serve_env, tmp_path) as server:
        yield server


@contextlib.contextmanager
def _serving(serve_env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    port = _free_port()
    stderr_path = tmp_path / "serve.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "serve", "--listen", f"127.0.0.1:{port}"],
            env=serve_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = Served(process, port, stderr_path)
    try:
        server.wait_serving()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("false", "asyncio")])
def test_serve_runs_on_uvloop_unless_the_setting_turns_it_off(
    serve_env: dict[str, str], tmp_path: Path, setting: str | None, loop: str
) -> None:
    env = {key: value for key, value in serve_env.items() if key != "AUTHSVC_UVLOOP"}
    if setting is not None:
        env["AUTHSVC_UVLOOP"] = setting
    with _serving(env, tmp_path) as server:
        assert server.stop() == 0
        serving = [line for line in server.log_lines() if line["event"] == "serving"]
    assert [line["event_loop"] for line in serving] == [loop]


# ---- (c) SIGTERM drains ------------------------------------------------------------------------


def test_sigterm_turns_health_not_serving_then_exits_cleanly(served: Served) -> None:
    with sync_channel(served.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=AUTH_SERVICE), timeout=30)
        assert next(watch).status == SERVING

        served.process.send_signal(signal.SIGTERM)
        # The open watch learns that the server is draining (NOT_SERVING), or its stream ends.
        seen: list[int] = []
        try:
            seen.extend(update.status for update in watch)
        except grpc.RpcError as ended:
            assert isinstance(ended, grpc.Call)
            assert ended.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the watch never ended"
        assert not seen or seen[0] == NOT_SERVING, seen
        assert SERVING not in seen

        # The watch was kept open: the grace period bounds the drain (the wait's timeout is
        # a hang guard, not a measurement).
        assert served.process.wait(GRACE_S + 10) == 0

    events = [line["event"] for line in served.log_lines()]
    assert "serving" in events and "draining" in events and "stopped" in events
    assert events.index("serving") < events.index("draining") < events.index("stopped")
    draining = next(line for line in served.log_lines() if line["event"] == "draining")
    assert draining["grace_s"] == GRACE_S
    assert draining["level"] == "info" and draining["timestamp"]


def test_sigterm_with_no_call_open_exits_at_once(served: Served) -> None:
    # The timeout is a hang guard, not a measurement.
    assert served.stop(timeout=GRACE_S + 5) == 0
    with sync_channel(served.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as gone:
            health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert isinstance(gone.value, grpc.Call)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


# ---- (d) one structured log line per RPC -------------------------------------------------------


def _call(
    method: grpc.UnaryUnaryMultiCallable[Any, Any], request: Any, request_id: str | None
) -> tuple[grpc.StatusCode, str]:
    """Make a call that must fail; return its code and the x-request-id trailer."""
    metadata = None if request_id is None else (("x-request-id", request_id),)
    with pytest.raises(grpc.RpcError) as refused:
        method(request, metadata=metadata, timeout=10)
    error = refused.value
    assert isinstance(error, grpc.Call)
    echoed = [value for key, value in error.trailing_metadata() or () if key == "x-request-id"]
    assert len(echoed) == 1 and isinstance(echoed[0], str), echoed
    return error.code(), echoed[0]


def test_one_json_log_line_per_rpc_with_the_request_id(served: Served) -> None:
    wrong_password = "not-the-admin-password-0xC0FFEE"
    with sync_channel(served.target) as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        login = pb.LoginRequest(
            organization_siret=SIRET,
            login="admin",
            password=pb.PasswordCredential(password=wrong_password),
            client=CLIENT,
        )
        challenge = pb.ChallengeRequest(
            flow_id="00000000-0000-4000-8000-000000000000", client=CLIENT
        )
        calls = [
            ("Login", *_call(stub.Login, login, "req-login-1")),
            ("Challenge", *_call(stub.Challenge, challenge, "req.challenge_2")),
            ("Challenge", *_call(stub.Challenge, challenge, None)),  # the server makes one
            ("Challenge", *_call(stub.Challenge, challenge, "not a valid id!")),
        ]
    assert [(method, code) for method, code, _ in calls] == [
        ("Login", grpc.StatusCode.UNAUTHENTICATED),
        ("Challenge", grpc.StatusCode.NOT_FOUND),
        ("Challenge", grpc.StatusCode.NOT_FOUND),
        ("Challenge", grpc.StatusCode.NOT_FOUND),
    ]
    assert calls[0][2] == "req-login-1" and calls[1][2] == "req.challenge_2"
    generated = {calls[2][2], calls[3][2]}
    assert len(generated) == 2 and "not a valid id!" not in generated
    assert all(len(request_id) == 32 for request_id in generated)

    assert served.stop() == 0
    rpc_lines = [line for line in served.log_lines() if line["event"] == "rpc"]
    assert [(line["method"], line["request_id"]) for line in rpc_lines] == [
        (method, request_id) for method, _, request_id in calls
    ]
    expected = [("UNAUTHENTICATED", "INVALID_CREDENTIALS")] + [("NOT_FOUND", "FLOW_NOT_FOUND")] * 3
    assert [(line["outcome"], line["reason"]) for line in rpc_lines] == expected
    for line in rpc_lines:
        assert isinstance(line["latency_ms"], int | float) and line["latency_ms"] >= 0
        assert line["level"] == "info" and line["timestamp"]
    assert rpc_lines[0]["latency_ms"] > 0  # argon2 ran, even for a wrong password

    logged = served.stderr.read_text()
    assert wrong_password not in logged and ADMIN_PASSWORD not in logged
