"""The load test's multi-replica topology (`loadtests.run --topology N`): N `authsvc serve`
replicas on their own loopback addresses, 2 `authsvc dispatch` processes and HAProxy with the
shipped deploy/haproxy/haproxy.cfg in front, the same layout as tests/topology/replicas.py (the
fault tests' topology) but with the load run's settings (SMS to the sink, widened throttles).

Each process is started in its own session (process group): `kill(i)` is SIGKILL to a replica
and its workers at once, as when a machine or a container dies. The configuration names three
servers: with fewer replicas the remaining lines repeat the first addresses (HAProxy then
balances over the same replica twice, which changes nothing but its weight).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CONFIG_SERVERS = 3
# NOT_SERVING first on SIGTERM, while HAProxy's checks (250 ms, 2 failures) take it out.
SHUTDOWN_DELAY_S = "1.5"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Fleet:
    run_dir: Path
    env: dict[str, str]
    count: int
    workers: int
    replicas: list[subprocess.Popen[bytes]] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)  # dispatchers, HAProxy
    lb_address: str = ""
    stats_socket: Path = Path()

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.run_dir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout_s: float = 90.0) -> None:
        if not 1 <= self.count <= CONFIG_SERVERS:
            raise SystemExit(f"--topology: 1 to {CONFIG_SERVERS} replicas")
        if not HAPROXY.exists():
            raise SystemExit("--topology needs HAProxy: apt-get install haproxy")
        port = free_port()
        replica_env = {
            **self.env,
            "AUTHSVC_DISPATCHER_ENABLED": "false",
            "AUTHSVC_SHUTDOWN_DELAY_S": SHUTDOWN_DELAY_S,
        }
        for index, host in enumerate(REPLICA_HOSTS[: self.count], start=1):
            address = f"{host}:{port}"
            self.addresses.append(address)
            command = [sys.executable, "-m", "authsvc", "serve", "--listen", address]
            command += ["--workers", str(self.workers)]
            self.replicas.append(self._spawn(f"replica{index}", command, replica_env))
        for index in range(2):
            dispatch = [sys.executable, "-m", "authsvc", "dispatch"]
            self.others.append(self._spawn(f"dispatcher{index}", dispatch, self.env))
        self.lb_address = f"127.0.0.1:{free_port()}"
        self.stats_socket = self.run_dir / "haproxy.sock"
        self.stats_socket.unlink(missing_ok=True)
        lb_env = {
            **os.environ,
            "AUTHSVC_LB_LISTEN": self.lb_address,
            "AUTHSVC_LB_STATS": str(self.stats_socket),
            **{
                f"AUTHSVC_REPLICA_{i + 1}": self.addresses[i % self.count]
                for i in range(CONFIG_SERVERS)
            },
        }
        haproxy = [str(HAPROXY), "-db", "-f", str(HAPROXY_CONFIG)]
        self.others.append(self._spawn("haproxy", haproxy, lb_env))
        deadline = time.monotonic() + timeout_s
        while set(self.lb_states().values()) != {"UP"} or len(self.lb_states()) < CONFIG_SERVERS:
            if time.monotonic() > deadline:
                raise SystemExit(f"the topology did not come up: {self.lb_states()}")
            if any(p.poll() is not None for p in (*self.replicas, *self.others)):
                raise SystemExit(f"a topology process exited: see {self.run_dir}")
            time.sleep(0.1)

    def lb_states(self) -> dict[str, str]:
        """HAProxy's view of each server line (UP, DOWN ...), from its stats socket."""
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(self.stats_socket))
                client.sendall(b"show stat\n")
                chunks = []
                while chunk := client.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return {}
        lines = b"".join(chunks).decode().splitlines()
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"].split(" ")[0]
            for row in rows
            if row.get("pxname") == "replicas" and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def kill(self, index: int) -> None:
        """SIGKILL to replica `index` and its workers (its process group)."""
        process = self.replicas[index]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def cpu_seconds(self) -> float:
        """CPU time so far of every service process (replicas, their workers, dispatchers)."""
        pids = [p.pid for p in (*self.replicas, *self.others[:2])]
        return sum(_cpu_s(pid) + sum(_cpu_s(c) for c in _children(pid)) for pid in pids)

    def stop(self) -> None:
        processes = [*self.replicas, *self.others]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
