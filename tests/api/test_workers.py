"""`authsvc serve --workers 2`: two processes share the port, one dispatcher (in the parent)
delivers, SIGTERM to the parent stops everything and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import TEST_API_KEYS_ENV, sync_channel

from authsvc.seeding import account_login, account_phone, org_siret, seed_password
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc, common_pb2

pytestmark = pytest.mark.slow
CLIENT = common_pb2.ClientContext(ip_address="203.0.113.9", user_agent="pytest-workers")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.jsonl"
    env = {
        **os.environ,
        "AUTHSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "k"),
        **TEST_API_KEYS_ENV,
        "AUTHSVC_SMS_PROVIDER": "file",
        "AUTHSVC_VOICE_PROVIDER": "file",
        "AUTHSVC_EMAIL_PROVIDER": "file",
        "AUTHSVC_OUTBOX_FILE": str(outbox),
        "AUTHSVC_GRACE_PERIOD_S": "2",
        "AUTHSVC_DISPATCHER_POLL_S": "0.05",
        "AUTHSVC_LOG_FORMAT": "json",
    }
    authsvc = [sys.executable, "-m", "authsvc"]
    for command in (["migrate"], ["seed", "--orgs", "1", "--accounts", "3"]):
        subprocess.run([*authsvc, *command], env=env, check=True, capture_output=True, timeout=60)
    port = _free_port()
    stderr = tmp_path / "serve.stderr"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [*authsvc, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "2"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 30
        while sum(line.get("event") == "serving" for line in _lines(stderr)) < 2:
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        pids = next(line["pids"] for line in _lines(stderr) if line["event"] == "workers started")
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)

        # New connections land on both workers (the kernel spreads them by source port).
        for attempt in range(16):
            with sync_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
                with pytest.raises(grpc.RpcError) as refused:
                    auth_service_pb2_grpc.AuthServiceStub(channel).Login(
                        pb.LoginRequest(
                            organization_siret=org_siret(0),
                            login=f"unknown{attempt}",  # no account: nothing gets locked
                            password=pb.PasswordCredential(password="not the password"),
                            client=CLIENT,
                        ),
                        timeout=20,
                    )
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with sync_channel(f"127.0.0.1:{port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            login = stub.Login(
                pb.LoginRequest(
                    organization_siret=org_siret(0),
                    login=account_login(1),
                    password=pb.PasswordCredential(password=seed_password()),
                    client=CLIENT,
                ),
                timeout=20,
            )
            flow_id = login.pending_flow.flow_id
            stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT), timeout=20)
        # The parent's dispatcher delivers the code, exactly once.
        deadline = time.monotonic() + 10
        while not (outbox.exists() and outbox.read_text().strip()):
            assert time.monotonic() < deadline, "no SMS delivered by the parent's dispatcher"
            time.sleep(0.05)
        time.sleep(0.3)
        messages = [json.loads(line) for line in outbox.read_text().splitlines()]
        assert [m["to"] for m in messages] == [account_phone(1)]

        workers_seen = {line.get("worker") for line in _lines(stderr) if "method" in line}
        assert workers_seen == {0, 1}, workers_seen

        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, stderr.read_text()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.05)
        stopped = [line for line in _lines(stderr) if line["event"] == "stopped"]
        assert sorted(line.get("worker", -1) for line in stopped) == [-1, 0, 1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("false", "asyncio")])
def test_workers_run_on_uvloop_unless_the_setting_turns_it_off(
    tmp_path: Path, setting: str | None, loop: str
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "AUTHSVC_UVLOOP"}
    env |= {
        "AUTHSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "k"),
        **TEST_API_KEYS_ENV,
        "AUTHSVC_OUTBOX_FILE": str(tmp_path / "outbox.jsonl"),
        "AUTHSVC_LOG_FORMAT": "json",
        "AUTHSVC_GRACE_PERIOD_S": "1",
    }
    if setting is not None:
        env["AUTHSVC_UVLOOP"] = setting
    authsvc = [sys.executable, "-m", "authsvc"]
    subprocess.run([*authsvc, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    stderr = tmp_path / "serve.stderr"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [*authsvc, "serve", "--listen", f"127.0.0.1:{_free_port()}", "--workers", "2"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 30
        while sum(line.get("event") == "serving" for line in _lines(stderr)) < 2:
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, stderr.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    serving = [line for line in _lines(stderr) if line["event"] == "serving"]
    assert sorted(line["worker"] for line in serving) == [0, 1]
    assert [line["event_loop"] for line in serving] == [loop, loop]
