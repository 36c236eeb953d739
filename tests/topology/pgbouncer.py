"""PgBouncer (Debian's package) in front of the test PostgreSQL server, on a free loopback port,
in a temporary directory; `pool_mode` session or transaction. It runs as the `postgres` user
when the tests run as root (PgBouncer refuses root)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PGBOUNCER = Path("/usr/sbin/pgbouncer")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PgBouncer:
    """`directory`: made here (pytest's own temporary tree is closed to the postgres user)."""

    upstream_host: str
    upstream_port: int
    pool_mode: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    directory: Path = Path()

    def start(self) -> None:
        if not PGBOUNCER.exists():
            raise FileNotFoundError("pgbouncer (apt-get install pgbouncer)")
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="authsvc-pgbouncer-"))
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.upstream_host} port={self.upstream_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\nmax_client_conn = 500\ndefault_pool_size = 20\n"
            # PgBouncer drops the startup parameters it does not know unless told to let
            # them through; asyncpg sends none that matter here.
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
        )
        command = [str(PGBOUNCER), str(config)]
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            shutil.chown(self.directory, user.pw_uid, user.pw_gid)
            for path in self.directory.iterdir():
                shutil.chown(path, user.pw_uid, user.pw_gid)
            command = [str(PGBOUNCER), "-u", "postgres", str(config)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_file = self.directory / "pgbouncer.log"
                    log = log_file.read_text(errors="replace") if log_file.exists() else ""
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
