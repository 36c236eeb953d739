"""The multi-replica topology as processes: 3 `authsvc serve --workers 2` replicas on their own
loopback addresses (127.0.0.2/3/4), 2 `authsvc dispatch` processes, one PostgreSQL database,
the local Redis for the limits, HAProxy (deploy/haproxy/haproxy.cfg, the shipped file) in front.

Every process is started in its own session (process group), so that `kill(group, SIGKILL)`
takes a replica down with its workers at once, as a machine or a container dies. `stop()` ends
whatever is left.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import TEST_API_KEYS_ENV, Seeded

ROOT = Path(__file__).resolve().parents[2]
HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# HAProxy checks every 250 ms and needs 2 failures: out within 0.5 s (plus one check timeout
# when a replica hangs rather than refuses). A replica told to stop keeps serving for longer.
SHUTDOWN_DELAY_S = 1.5
STARTUP_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def common_env(database_url: str, redis_url: str, work: Path) -> dict[str, str]:
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return {
        **os.environ,
        **TEST_API_KEYS_ENV,
        "PYTHONPATH": str(ROOT),
        "AUTHSVC_DATABASE_URL": database_url,
        "AUTHSVC_SECRET_KEY": key,
        "AUTHSVC_SMS_PROVIDER": "file",
        "AUTHSVC_VOICE_PROVIDER": "file",
        "AUTHSVC_EMAIL_PROVIDER": "file",
        "AUTHSVC_OUTBOX_FILE": str(work / "outbox.jsonl"),
        "AUTHSVC_RATE_LIMIT_BACKEND": "redis",
        "AUTHSVC_REDIS_URL": redis_url,
        "AUTHSVC_REDIS_KEY_PREFIX": f"authsvc-topology-{secrets.token_hex(6)}:",
        "AUTHSVC_LOG_FORMAT": "json",
        "AUTHSVC_GRACE_PERIOD_S": "5",
        "AUTHSVC_SHUTDOWN_DELAY_S": str(SHUTDOWN_DELAY_S),
        "AUTHSVC_DISPATCHER_POLL_S": "0.05",
        "AUTHSVC_DISPATCHER_LEASE_S": "5",
    }


@dataclass
class Topology:
    work: Path
    env: dict[str, str]
    replicas: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    dispatchers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None
    lb_address: str = ""
    stats_socket: Path = Path()
    seeded: list[Seeded] = field(default_factory=list)

    # ---- starting ------------------------------------------------------------------------

    def start(self) -> None:
        port = free_port()
        for index, host in enumerate(REPLICA_HOSTS, start=1):
            self.start_replica(f"replica{index}", f"{host}:{port}")
        for index in range(2):
            self.start_dispatcher(index)
        self.start_haproxy()
        deadline = time.monotonic() + STARTUP_S
        for address in self.replicas:
            poll(partial(self.serving, address), deadline)
        poll(self.all_up, deadline)

    def all_up(self) -> bool:
        return self.lb_states() == {name: "UP" for name in self.names()}

    def names(self) -> dict[str, str]:
        """HAProxy's server name of each replica address."""
        return {f"replica{i}": address for i, address in enumerate(self.replicas, start=1)}

    def start_replica(self, name: str, address: str) -> None:
        log = (self.work / f"{name}.log").open("ab")
        self.replicas[address] = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "serve", "--listen", address, "--workers", "2"],
            env={**self.env, "AUTHSVC_DISPATCHER_ENABLED": "false"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_dispatcher(self, index: int) -> subprocess.Popen[bytes]:
        log = (self.work / f"dispatcher{index}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "authsvc", "dispatch"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.dispatchers.append(process)
        return process

    def start_haproxy(self) -> None:
        self.lb_address = f"127.0.0.1:{free_port()}"
        self.stats_socket = self.work / "haproxy.sock"
        addresses = list(self.replicas)
        env = {
            **os.environ,
            "AUTHSVC_LB_LISTEN": self.lb_address,
            "AUTHSVC_LB_STATS": str(self.stats_socket),
            **{f"AUTHSVC_REPLICA_{i}": a for i, a in enumerate(addresses, start=1)},
        }
        log = (self.work / "haproxy.log").open("ab")
        self.haproxy = subprocess.Popen(
            [str(HAPROXY), "-db", "-f", str(HAPROXY_CONFIG)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    # ---- observing ----------------------------------------------------------------------

    def serving(self, address: str) -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(self.stats_socket))
            client.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := client.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def lb_stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's `show stat` rows of the replicas' backend, by server name."""
        try:
            lines = self.admin("show stat").splitlines()
        except OSError:
            return {}
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == "replicas" and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def lb_states(self) -> dict[str, str]:
        return {name: row["status"].split(" ")[0] for name, row in self.lb_stats().items()}

    def rpc_counts(self, name: str) -> int:
        """How many RPCs the replica logged (one json line per call)."""
        path = self.work / f"{name}.log"
        count = 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                if json.loads(line).get("event") == "rpc":
                    count += 1
            except ValueError:
                continue
        return count

    # ---- faults and stopping --------------------------------------------------------------

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL to the process and everything in its group (a replica and its workers)."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        processes = [*self.replicas.values(), *self.dispatchers]
        if self.haproxy is not None:
            processes.append(self.haproxy)
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def poll(ready: Callable[[], bool], deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("the topology did not become ready")
        time.sleep(0.05)
