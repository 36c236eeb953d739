"""A real Prometheus server (Debian's `prometheus`) scrapes `authsvc serve --workers 2` and an
`authsvc dispatch`; after a scripted login over gRPC its query API answers the expected counts.

The workers share the gRPC port (SO_REUSEPORT); the parent's /metrics sums every process's
files (prometheus-client's multiprocess mode), so the count of Login calls is the number made,
whichever worker answered them. No fixed sleep: every wait polls against a deadline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from support import TEST_API_KEYS_ENV, sync_channel

from authsvc.seeding import account_login, org_siret, seed_password
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc, common_pb2

pytestmark = pytest.mark.slow
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
CLIENT = common_pb2.ClientContext(ip_address="203.0.113.19", user_agent="pytest-prometheus")
WRONG_PASSWORDS = 4
FULL_LOGINS = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _until(what: str, check: Callable[[], Any], timeout_s: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def prometheus_binary() -> str:
    if not os.access(PROMETHEUS, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (.ci/run installs Debian's package)")
        pytest.skip("prometheus is not installed")
    return PROMETHEUS


@pytest.fixture
def stack(tmp_path: Path, prometheus_binary: str) -> Iterator[dict[str, Any]]:
    env = {
        **os.environ,
        "AUTHSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "k"),
        **TEST_API_KEYS_ENV,
        "AUTHSVC_SMS_PROVIDER": "file",
        "AUTHSVC_VOICE_PROVIDER": "file",
        "AUTHSVC_EMAIL_PROVIDER": "file",
        "AUTHSVC_OUTBOX_FILE": str(tmp_path / "outbox.jsonl"),
        "AUTHSVC_GRACE_PERIOD_S": "1",
        "AUTHSVC_DISPATCHER_POLL_S": "0.05",
        "AUTHSVC_LOG_FORMAT": "json",
    }
    authsvc = [sys.executable, "-m", "authsvc"]
    for command in (["migrate"], ["seed", "--orgs", "1", "--accounts", "3"]):
        subprocess.run([*authsvc, *command], env=env, check=True, capture_output=True, timeout=60)
    grpc_port, serve_metrics, dispatch_metrics, prometheus_port = (_free_port() for _ in range(4))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: authsvc\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{serve_metrics}']\n"
        "  - job_name: authsvc-dispatch\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{dispatch_metrics}']\n"
    )
    logs = {name: tmp_path / f"{name}.log" for name in ("serve", "dispatch", "prometheus")}
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str], extra: dict[str, str]) -> None:
        with logs[name].open("wb") as sink:
            processes[name] = subprocess.Popen(
                argv, env={**env, **extra}, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
            )

    start(
        "serve",
        [*authsvc, "serve", "--listen", f"127.0.0.1:{grpc_port}", "--workers", "2"],
        {"AUTHSVC_METRICS_LISTEN": f"127.0.0.1:{serve_metrics}"},
    )
    start(
        "dispatch",
        [*authsvc, "dispatch"],
        {"AUTHSVC_METRICS_LISTEN": f"127.0.0.1:{dispatch_metrics}"},
    )
    start(
        "prometheus",
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        {},
    )
    try:
        for name, process in processes.items():
            assert process.poll() is None, logs[name].read_text()
        _until(
            "two workers serving",
            lambda: sum(line.get("event") == "serving" for line in _lines(logs["serve"])) == 2,
        )
        yield {
            "grpc": f"127.0.0.1:{grpc_port}",
            "prometheus": f"http://127.0.0.1:{prometheus_port}",
            "logs": logs,
            "processes": processes,
        }
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _query(base: str, expression: str) -> float | None:
    """The single value of an instant query, or None while it has no result."""
    try:
        answer = httpx.get(f"{base}/api/v1/query", params={"query": expression}, timeout=5)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    result = answer.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _login(stub: auth_service_pb2_grpc.AuthServiceStub, login: str, password: str) -> Any:
    return stub.Login(
        pb.LoginRequest(
            organization_siret=org_siret(0),
            login=login,
            password=pb.PasswordCredential(password=password),
            client=CLIENT,
        ),
        timeout=20,
    )


def test_prometheus_scrapes_workers_and_a_dispatcher(stack: dict[str, Any]) -> None:
    base = stack["prometheus"]
    _until("Prometheus ready", lambda: _query(base, "vector(1)") == 1.0)
    # Both targets up before any call: their first scrapes are the baseline.
    _until("authsvc scraped", lambda: _query(base, 'up{job="authsvc"}') == 1.0)
    _until("dispatcher scraped", lambda: _query(base, 'up{job="authsvc-dispatch"}') == 1.0)

    # A new connection per call: the kernel spreads them over both workers.
    for attempt in range(WRONG_PASSWORDS):
        with sync_channel(stack["grpc"]) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                _login(stub, f"unknown{attempt}", "not the password")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for index in range(FULL_LOGINS):
        with sync_channel(stack["grpc"]) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            pending = _login(stub, account_login(index), seed_password()).pending_flow
            stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT), timeout=20)

    logins = 'sum(authsvc_rpc_requests_total{job="authsvc",method="Login"})'
    total = WRONG_PASSWORDS + FULL_LOGINS
    _until(f"{total} logins in Prometheus", lambda: _query(base, logins) == total)
    refused_logins = (
        'sum(authsvc_rpc_requests_total{job="authsvc",method="Login",'
        'code="UNAUTHENTICATED",reason="INVALID_CREDENTIALS"})'
    )
    assert _query(base, refused_logins) == WRONG_PASSWORDS
    needed = 'sum(authsvc_first_factor_total{credential="password",outcome="code_needed"})'
    assert _query(base, needed) == FULL_LOGINS
    assert _query(base, 'sum(authsvc_codes_issued_total{channel="sms"})') == FULL_LOGINS
    assert _query(base, 'sum(authsvc_rpc_duration_seconds_count{method="Login"})') == total
    # Each code was delivered once, by the parent's dispatcher or by `authsvc dispatch`.
    sent = 'sum(authsvc_deliveries_total{kind="code",outcome="sent"})'
    _until("both codes delivered", lambda: _query(base, sent) == FULL_LOGINS)
    # Workers answered: both of them (the parent's sum is over several processes).
    serve_log = stack["logs"]["serve"]
    assert {line.get("worker") for line in _lines(serve_log) if "method" in line} == {0, 1}
    assert _query(base, 'sum(authsvc_rpc_in_flight{job="authsvc"})') == 0

    directory = next(line["directory"] for line in _lines(serve_log) if line["event"] == "metrics")
    assert Path(directory).is_dir() and any(Path(directory).glob("counter_*.db"))
    serve = stack["processes"]["serve"]
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(30) == 0, serve_log.read_text()
    assert not Path(directory).exists()  # the run's files go with it
