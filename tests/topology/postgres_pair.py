"""A PostgreSQL primary and its streaming standby of their own (Debian's PostgreSQL binaries:
initdb, pg_basebackup, pg_ctl), on free loopback ports in a temporary directory, with
synchronous replication (a commit returns once the standby has it). The shared server of the
other suites is never touched. Run as the `postgres` user when the tests run as root."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BIN = next(
    iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/nonexistent")
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresPair:
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="authsvc-pg-")))
    primary_port: int = 0
    standby_port: int = 0

    def _run(self, *command: str) -> None:
        done = subprocess.run(
            _as_postgres(list(command)), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")

    def start(self) -> None:
        if not (BIN / "initdb").exists():
            raise FileNotFoundError("PostgreSQL server binaries (apt-get install postgresql)")
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            shutil.chown(self.directory, user.pw_uid, user.pw_gid)
        self.primary_port, self.standby_port = _free_port(), _free_port()
        primary = self.directory / "primary"
        self._run(str(BIN / "initdb"), "-D", str(primary), "-A", "trust", "-U", "postgres")
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "wal_level = replica\nmax_wal_senders = 4\nfsync = off\n"
                # Synchronous: a commit is acknowledged once the standby has flushed it.
                "synchronous_standby_names = 'standby'\nsynchronous_commit = on\n"
            )
        with (primary / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        self.pg_ctl("primary", "start", port=self.primary_port)
        standby = self.directory / "standby"
        self._run(
            str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary_port),
            "-U", "postgres", "-D", str(standby), "-R", "-X", "stream",
        )  # fmt: skip
        with (standby / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"primary_conninfo = 'host=127.0.0.1 port={self.primary_port} user=postgres "
                "application_name=standby'\n"
                # Once promoted it is alone: waiting for a synchronous standby would stop every
                # commit (a failover manager such as Patroni relaxes this the same way).
                "synchronous_standby_names = ''\n"
            )
        self.pg_ctl("standby", "start", port=self.standby_port)

    def pg_ctl(self, which: str, action: str, *, port: int = 0, mode: str = "fast") -> None:
        command = [str(BIN / "pg_ctl"), "-D", str(self.directory / which), "-w", "-t", "60"]
        if action == "start":
            command += ["-l", str(self.directory / f"{which}.log"), "-o", f"-p {port}"]
        if action == "stop":
            command += ["-m", mode]
        self._run(*command, action)

    def url(self, database: str = "postgres") -> str:
        """Both servers; the driver connects to whichever is the primary now."""
        return (
            f"postgresql+asyncpg://postgres@/{database}?host=127.0.0.1:{self.primary_port}"
            f"&host=127.0.0.1:{self.standby_port}&target_session_attrs=primary"
        )

    def stop(self) -> None:
        for which in ("standby", "primary"):
            if (self.directory / which / "postmaster.pid").exists():
                with contextlib.suppress(RuntimeError):
                    self.pg_ctl(which, "stop", mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
