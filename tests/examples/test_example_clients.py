"""The three example clients (examples/python, examples/typescript, examples/rust) walk the
README's flow against a real `authsvc serve` on SQLite, with codes delivered by the file provider.

`make examples` generates their stubs (buf + protoc-gen-es, tonic-prost-build) and builds them;
`make test` runs it before pytest. Outside CI a client that was not built is skipped with the
command to run; under CI=true it fails.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import MOBILE, SIRET, TEST_API_KEY, TEST_API_KEYS_ENV, sync_channel

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
ADMIN_PASSWORD = "examples-admin-password-2026"

# How each client is started once built, and the artefact that `make examples` leaves.
CLIENTS: dict[str, tuple[list[str], Path]] = {
    "python": (
        [sys.executable, str(ROOT / "examples/python/walkthrough.py")],
        ROOT / "examples/python/walkthrough.py",
    ),
    "typescript": (
        ["node", str(ROOT / "examples/typescript/dist/src/walkthrough.js")],
        ROOT / "examples/typescript/dist/src/walkthrough.js",
    ),
    "rust": (
        [str(ROOT / "target/debug/authsvc-example-client")],
        ROOT / "target/debug/authsvc-example-client",
    ),
}

# What every client prints, in order; the groups are checked below.
EXPECTED = [
    r"login: a code is required \(flow (?P<flow>[\w-]+)\)",
    r"challenge: code sent to (?P<masked>.+), 4 sends left",
    r"resend refused: RESOURCE_EXHAUSTED authsvc\.v1/RESEND_TOO_SOON retry_after=(?P<wait>\d+)s",
    r"verify: session opened, device trusted",
    r"validate: admin ADMIN AAL2",
    r"step-up: grant for CHANGE_OWN_PASSWORD redeemed",
    r"logout: done",
    r"validate after logout refused: UNAUTHENTICATED authsvc\.v1/SESSION_INVALID",
    r"walk-through complete",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_serving(process: subprocess.Popen[bytes], target: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    with sync_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, f"server died:\n{log.read_text()}"
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"not serving:\n{log.read_text()}"
            time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A migrated, bootstrapped SQLite server, one per client: the phone number's send budget
    is the service's, not the test's to loosen. Yields the environment a client needs."""
    env = {
        **os.environ,
        "AUTHSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "k"),
        **TEST_API_KEYS_ENV,
        "AUTHSVC_SMS_PROVIDER": "file",
        "AUTHSVC_VOICE_PROVIDER": "file",
        "AUTHSVC_EMAIL_PROVIDER": "file",
        "AUTHSVC_OUTBOX_FILE": str(tmp_path / "outbox.jsonl"),
        "AUTHSVC_BOOTSTRAP_PASSWORD": ADMIN_PASSWORD,
    }
    authsvc = [sys.executable, "-m", "authsvc"]
    subprocess.run([*authsvc, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run(
        [
            *authsvc,
            "bootstrap",
            "--org-siret",
            SIRET,
            "--org-name",
            "Mairie des exemples",
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
    port = _free_port()
    log = tmp_path / "serve.stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*authsvc, "serve", "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_serving(process, f"127.0.0.1:{port}", log)
        yield {
            **env,
            "AUTHSVC_EXAMPLE_SERVER": f"127.0.0.1:{port}",
            "AUTHSVC_EXAMPLE_ORG": SIRET,
            "AUTHSVC_EXAMPLE_LOGIN": "admin",
            "AUTHSVC_CLIENT_PASSWORD": ADMIN_PASSWORD,
            "AUTHSVC_CLIENT_API_KEY": TEST_API_KEY,
        }
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_example_client_walks_the_readme_flow(language: str, server: dict[str, str]) -> None:
    command, artefact = CLIENTS[language]
    if not artefact.exists():
        reason = f"{artefact.relative_to(ROOT)} not built: run `make examples`"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: make test builds it)")
        pytest.skip(reason)

    outbox = Path(server["AUTHSVC_OUTBOX_FILE"])
    before = len(outbox.read_text(encoding="utf-8").splitlines()) if outbox.exists() else 0
    done = subprocess.run(
        command,
        env=server,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        timeout=90,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stdout.splitlines()
    assert len(lines) == len(EXPECTED), done.stdout
    found: dict[str, str] = {}
    for line, pattern in zip(lines, EXPECTED, strict=True):
        match = re.fullmatch(pattern, line)
        assert match, f"{line!r} does not match {pattern!r}"
        found.update(match.groupdict())

    # The refused resend told when to retry (the 30 s cooldown, counted from the first send).
    assert 0 < int(found["wait"]) <= 30
    # The destination is shown masked, in UTF-8, never in full.
    assert "•" in found["masked"] and MOBILE[-8:] not in found["masked"].replace(" ", "")
    # Exactly two codes went out: the login's and the step-up's; the refused resend sent none.
    delivered = outbox.read_text(encoding="utf-8").splitlines()[before:]
    sent = [json.loads(line) for line in delivered if line]
    assert [message["channel"] for message in sent] == ["sms", "sms"]
    assert {message["to"] for message in sent} == {MOBILE}
