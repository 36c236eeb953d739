"""A real Redis Cluster for the tests: 6 `redis-server` processes in cluster mode (3 primaries,
3 replicas) on free loopback ports, in a temporary directory, made by `redis-cli --cluster create`.

A node is killed with SIGKILL by the fault tests; `stop()` ends every process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

# Short enough that a failover takes a second or two, long enough not to flap on a busy machine.
NODE_TIMEOUT_MS = 1000
STARTUP_S = 30.0


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout


@dataclass
class RedisClusterNodes:
    directory: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{min(self.processes)}"

    def start(self, count: int = 6) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise FileNotFoundError("redis-server / redis-cli (Debian package redis-server)")
        for _ in range(count):
            port = free_cluster_port()
            self.processes[port] = self._spawn(port)
        deadline = time.monotonic() + STARTUP_S
        for port in self.processes:
            _poll(partial(_answers, port), deadline)
        addresses = [f"127.0.0.1:{port}" for port in self.processes]
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        self.wait_ok(deadline)

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        return subprocess.Popen(
            ["redis-server", *_options(port, node_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ok(self, deadline: float) -> None:
        """Until every live node says the cluster is ok and sees 3 primaries serving slots."""
        for port in self.live():
            _poll(partial(self._ok, port), deadline)

    def _ok(self, port: int) -> bool:
        info = redis_cli(port, "cluster", "info")
        if "cluster_state:ok" not in info:
            return False
        primaries = [
            line
            for line in redis_cli(port, "cluster", "nodes").splitlines()
            if "master" in line.split()[2] and "fail" not in line.split()[2]
        ]
        return len(primaries) == 3

    def live(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def primary_of(self, key: str) -> int:
        """The port of the primary serving `key`'s slot, as the cluster sees it now."""
        slot = int(redis_cli(self.live()[0], "cluster", "keyslot", key).strip())
        for port in self.live():
            if not redis_cli(port, "role").startswith("master"):
                continue
            for line in redis_cli(port, "cluster", "nodes").splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for ranges in fields[8:]:
                        low, _, high = ranges.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            return port
        views = {port: redis_cli(port, "cluster", "nodes") for port in self.live()}
        raise LookupError(f"no live primary serves slot {slot}: {views}")

    def replicated(self, primary: int) -> bool:
        """Whether every replica of `primary` has acknowledged everything it has written."""
        info = dict(
            line.split(":", 1)
            for line in redis_cli(primary, "info", "replication").splitlines()
            if ":" in line
        )
        offset = int(info["master_repl_offset"])
        replicas = [value for key, value in info.items() if key.startswith("slave")]
        return bool(replicas) and all(
            int(dict(kv.split("=") for kv in replica.split(","))["offset"]) >= offset
            for replica in replicas
        )

    def kill(self, port: int) -> None:
        process = self.processes[port]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)


def _options(port: int, directory: Path) -> list[str]:
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": str(directory),
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        "cluster-node-timeout": str(NODE_TIMEOUT_MS),
        "save": "",
        "appendonly": "no",
        "logfile": str(directory / "redis.log"),
    }
    return [item for name, value in options.items() for item in (f"--{name}", value)]


def _answers(port: int) -> bool:
    return redis_cli(port, "ping").strip() == "PONG"


def _poll(ready: Callable[[], bool], deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("the Redis Cluster did not become ready")
        time.sleep(0.05)
