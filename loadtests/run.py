"""Run a load-test scenario end to end: `python -m loadtests.run` (what `make loadtest` does).

1. an SMS sink (loadtests/sms_sink.py) that the server delivers codes to: the `http` provider
   posts to it (signed), or the `file` provider writes lines it follows (--provider file);
2. a fresh database: SQLite in var/loadtest/<name>/, or a new PostgreSQL database on the server
   named by --database-url / AUTHSVC_LOADTEST_DATABASE_URL (dropped afterwards; --redis-url or
   AUTHSVC_LOADTEST_REDIS_URL is handed to the server as AUTHSVC_REDIS_URL);
3. `authsvc migrate`, `authsvc seed --orgs --accounts`, `authsvc serve --workers N` on a free
   loopback port, with settings fit for load (--server-env KEY=VALUE adds or overrides);
4. Locust headless, bounded by the scenario's own end and by --run-time, optionally in several
   processes (--processes N);
5. the server is stopped (SIGTERM, drained), then reports/<name>.html, reports/<name>_*.csv and
   reports/<name>_summary.md (throughput, p50/p95/p99 per RPC, failures, server memory, SMS,
   and the server's own figures from its /metrics scraped before and after the run).

Exit status: 1 when Locust recorded more unexpected failures than --max-failures (default: any
number; the smoke run in `make test` uses 0), 2 when the run itself could not happen.
Every process it starts is stopped before it returns, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests import failover, ledger, server_metrics
from loadtests.fleet import Fleet
from loadtests.summary import write_summary

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LOAD_RATE_LIMITS = {
    "login_ip": {"count": 10_000, "period_s": 60},
    "login_account": {"count": 10_000, "period_s": 60},
    "verify_ip": {"count": 10_000, "period_s": 60},
    "verify_account": {"count": 10_000, "period_s": 60},
    "step_up_ip": {"count": 10_000, "period_s": 60},
    "step_up_account": {"count": 10_000, "period_s": 3600},
    "send_ip": {"count": 10_000, "period_s": 3600},
    "send_organization": {"count": 1_000_000, "period_s": 3600},
    "send_global": {"count": 10_000_000, "period_s": 3600},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (its own, not its children's), seconds."""
    try:
        # Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """The server's CPU time so far: the parent (dispatcher) and its workers."""
    return sum(cpu_seconds(p) for p in (pid, *children(pid)))


@dataclass
class MemorySampler:
    """Resident memory of the server (parent and workers), once a second."""

    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, total KiB, procs)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(1.0):
            pids = [self.pid, *children(self.pid)]
            self.samples.append(
                (time.monotonic() - began, sum(rss_kib(p) for p in pids), len(pids))
            )

    def stop(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def process(
    command: list[str], *, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if callable(check) and check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.1)


def health_ok(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def _postgres(admin_url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def database(url: str | None, run_dir: Path) -> Iterator[str]:
    if not url or url.startswith("sqlite"):
        yield url or f"sqlite+aiosqlite:///{run_dir / 'authsvc.db'}"
        return
    from sqlalchemy.engine import make_url

    name = f"authsvc_loadtest_{uuid.uuid4().hex[:10]}"
    asyncio.run(_postgres(url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_postgres(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _postgres_counters(url: str) -> dict[str, int]:
    """Commits and rows written in the database of `url` since the server started."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted "
                        "FROM pg_stat_database WHERE datname = :name"
                    ),
                    {"name": make_url(url).database},
                )
            ).one()
        return {
            "commits": int(row[0]),
            "inserted": int(row[1]),
            "updated": int(row[2]),
            "deleted": int(row[3]),
        }
    finally:
        await engine.dispose()


def redis_commands(url: str) -> int:
    """Redis' total_commands_processed (INFO stats), over a bare socket."""
    from urllib.parse import urlparse

    where = urlparse(url)
    with socket.create_connection((where.hostname or "127.0.0.1", where.port or 6379), 5) as conn:
        conn.sendall(b"INFO stats\r\n")
        data = b""
        while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    return 0


def backend_counters(database_url: str, redis_url: str | None) -> dict[str, int]:
    counters: dict[str, int] = {}
    if database_url.startswith("postgresql"):
        with contextlib.suppress(Exception):
            counters |= {
                f"pg_{k}": v for k, v in asyncio.run(_postgres_counters(database_url)).items()
            }
    if redis_url:
        with contextlib.suppress(OSError, ValueError):
            counters["redis_commands"] = redis_commands(redis_url)
    return counters


class Serving:
    """`serving(...)`: the service under load, one server or a --topology fleet; yields the
    address Locust calls, the pid whose memory is sampled, a CPU-seconds reader, the fleet."""

    exit_code: int | None = None

    @contextlib.contextmanager
    def __call__(
        self, args: argparse.Namespace, env: dict[str, str], run_dir: Path
    ) -> Iterator[tuple[str, int, Callable[[], float], Fleet | None]]:
        if not args.topology:
            serve_cmd = [PY, "-m", "authsvc", "serve", "--workers", str(args.workers)]
            with process(serve_cmd, env=env, log=run_dir / "serve.log") as server:
                target = env["AUTHSVC_LISTEN"]
                wait_for(lambda: server.poll() is None and health_ok(target), "the server", 60)
                yield target, server.pid, lambda: server_cpu_seconds(server.pid), None
            self.exit_code = server.returncode
            return
        fleet = Fleet(run_dir, env, args.topology, args.workers)
        try:
            fleet.start()
            # The last replica is never the one killed: its memory is the one sampled.
            yield fleet.lb_address, fleet.replicas[-1].pid, fleet.cpu_seconds, fleet
        finally:
            fleet.stop()
        # A replica stopped by SIGTERM exits 0; the killed one's -9 is the fault, not a failure.
        codes = [p.returncode for p in fleet.replicas if p.returncode != -signal.SIGKILL]
        self.exit_code = next((code for code in codes if code != 0), 0)


serving = Serving()


@dataclass
class Kill:
    """SIGKILL to replica 1 at `at_s` seconds into the Locust run (a timer thread); what
    HAProxy saw of it afterwards."""

    fleet: Fleet | None
    at_s: float | None
    killed_after_s: float | None = None
    _timer: threading.Timer | None = None
    _began: float = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        if self.fleet is not None and self.at_s is not None:
            self._timer = threading.Timer(self.at_s, self._kill)
            self._timer.daemon = True
            self._timer.start()

    def _kill(self) -> None:
        assert self.fleet is not None
        self.fleet.kill(0)
        self.killed_after_s = round(time.monotonic() - self._began, 1)
        print(f"replica1 killed (SIGKILL) {self.killed_after_s} s into the run", file=sys.stderr)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def report(self) -> dict[str, Any]:
        states = self.fleet.lb_states() if self.fleet is not None else {}
        return {
            "replicas": self.fleet.count if self.fleet is not None else 1,
            "killed_after_s": self.killed_after_s,
            "lb_states_at_end": states,
        }


def consistency_scan(env: dict[str, str]) -> dict[str, Any]:
    """`authsvc check-consistency --json` on the run's database, once the load is over."""
    done = subprocess.run(
        [PY, "-m", "authsvc", "check-consistency", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    try:
        found: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return {"violations": -1, "counts": {}, "error": done.stderr[-2000:]}
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="run a load-test scenario end to end")
    parser.add_argument("--scenario", default="national_peak")
    parser.add_argument("--name", help="report name (default: scenario and time)")
    parser.add_argument("--users", type=int, default=60, help="users at the peak")
    parser.add_argument("--ramp", type=float, default=30.0, help="seconds to reach the peak")
    parser.add_argument("--peak", type=float, default=60.0, help="seconds at the peak")
    parser.add_argument("--rampdown", type=float, default=10.0, help="seconds to leave")
    parser.add_argument("--pacing", type=float, default=2.0, help="a journey per user every s")
    parser.add_argument("--mix", default="70,25,5,0", help="trusted,code,stepup,abuse weights")
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--orgs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server procs")
    parser.add_argument("--processes", type=int, default=1, help="Locust processes")
    parser.add_argument("--provider", choices=["http", "file"], default="http")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AUTHSVC_LOADTEST_DATABASE_URL"),
        help="PostgreSQL admin URL: a fresh database is made on it (default: SQLite)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("AUTHSVC_LOADTEST_REDIS_URL"))
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-time", type=float, help="hard bound in s (default: wave + 15)")
    parser.add_argument("--max-failures", type=int, default=-1, help="-1: any number")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--smoke", action="store_true", help="~15 s, small, zero failures")
    parser.add_argument(
        "--fail-primary-at",
        type=float,
        metavar="S",
        help="two SMS/voice gateways; the primary stops answering S s into the run",
    )
    parser.add_argument(
        "--fail-primary-for", type=float, default=10.0, metavar="D", help="for D s (default 10)"
    )
    parser.add_argument(
        "--topology",
        type=int,
        default=0,
        metavar="N",
        help="N replicas (1-3, each --workers) + 2 dispatchers behind HAProxy (PostgreSQL, Redis)",
    )
    parser.add_argument(
        "--kill-replica-at",
        type=float,
        metavar="S",
        help="with --topology >= 2: SIGKILL replica 1 (and its workers) S s into the run",
    )
    args = parser.parse_args(argv)
    if args.fail_primary_at is not None and args.provider != "http":
        parser.error("--fail-primary-at needs --provider http (the gateways are the sink's)")
    if args.topology:
        if not (args.database_url or "").startswith("postgresql"):
            parser.error("--topology: replicas share a PostgreSQL database (--database-url)")
        if not args.redis_url:
            parser.error("--topology: replicas share their limits in Redis (--redis-url)")
    if args.kill_replica_at is not None and args.topology < 2:
        parser.error("--kill-replica-at needs --topology 2 or 3 (a replica left to serve)")
    if args.fail_primary_at is not None and args.topology:
        parser.error("--fail-primary-at runs against one server (its /metrics), not --topology")
    if args.smoke:
        args.users, args.ramp, args.peak, args.rampdown = 8, 3.0, 10.0, 2.0
        args.pacing, args.accounts, args.orgs, args.mix = 1.0, 2_000, 20, "4,2,1,1"
        args.workers = min(args.workers, 2)
        args.max_failures = 0 if args.max_failures < 0 else args.max_failures
        args.name = args.name or "smoke"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    name = args.name or f"{args.scenario}-{started:%Y%m%d-%H%M%S}"
    run_dir = ROOT / "var" / "loadtest" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    wave_s = args.ramp + args.peak + args.rampdown
    run_time = args.run_time or wave_s + 15

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    base_env["PYTHONPATH"] = str(ROOT)
    # The load generator is one more backend: its key (given, or made for this run) is the
    # one the server accepts, sent by every call as `authorization: Bearer`.
    api_key = os.environ.get("AUTHSVC_LOADTEST_API_KEY", "").strip()
    key_file = os.environ.get("AUTHSVC_LOADTEST_API_KEY_FILE", "").strip()
    if not api_key and key_file:
        api_key = Path(key_file).read_text().strip()
    api_key = api_key or f"authsvc_loadtest-{secrets.token_urlsafe(32)}"
    base_env["AUTHSVC_LOADTEST_API_KEY"] = api_key

    sink_port_file = run_dir / "sink.port"
    sink_port_file.unlink(missing_ok=True)
    outbox = run_dir / "outbox.jsonl"
    outbox.unlink(missing_ok=True)
    hmac_secret = secrets.token_urlsafe(24)
    sink_cmd = [PY, "-m", "loadtests.sms_sink", "--port", "0", "--port-file", str(sink_port_file)]
    sink_cmd += ["--max-seconds", str(run_time + 600)]
    sink_cmd += ["--stall-s", str(3 * failover.TIMEOUT_S)]
    sink_cmd += (
        ["--tail", str(outbox)] if args.provider == "file" else ["--hmac-secret", hmac_secret]
    )

    with (
        process(sink_cmd, env=base_env, log=run_dir / "sink.log") as sink,
        database(args.database_url, run_dir) as database_url,
    ):
        wait_for(lambda: sink_port_file.exists() and sink_port_file.read_text(), "the SMS sink")
        sink_url = f"http://127.0.0.1:{sink_port_file.read_text().strip()}"
        gateway = json.dumps({"url": f"{sink_url}/sms", "hmac_secret": hmac_secret})
        port = free_port()
        # One server: its /metrics is scraped around the run (the summary's server side). The
        # topology's replicas would share the port: their figures are the fleet's logs.
        metrics_url = None if args.topology else f"http://127.0.0.1:{free_port()}/metrics"
        server_env = {
            **base_env,
            "AUTHSVC_DATABASE_URL": database_url,
            "AUTHSVC_SECRET_KEY": secrets.token_urlsafe(32),
            "AUTHSVC_LISTEN": f"127.0.0.1:{port}",
            "AUTHSVC_SMS_PROVIDER": args.provider,
            "AUTHSVC_VOICE_PROVIDER": args.provider,
            "AUTHSVC_EMAIL_PROVIDER": "file",
            "AUTHSVC_OUTBOX_FILE": str(outbox),
            "AUTHSVC_DISPATCHER_POLL_S": "0.05",
            "AUTHSVC_LOG_FORMAT": "json",
            "AUTHSVC_GRACE_PERIOD_S": "5",
            "AUTHSVC_API_KEYS": json.dumps([{"name": "loadtest", "key": api_key, "rpcs": ["*"]}]),
            # A simulated person makes far more journeys than a real one: per-account and
            # per-IP throttles are widened so that they do not cap the run; lockouts, the
            # per-number send limits and the breakers keep their defaults.
            "AUTHSVC_RATE_LIMITS": json.dumps(LOAD_RATE_LIMITS),
        }
        if metrics_url:  # the server's own counts and latency histograms, beside Locust's
            server_env["AUTHSVC_METRICS_LISTEN"] = metrics_url.removeprefix("http://").removesuffix(
                "/metrics"
            )
        if args.fail_primary_at is not None:
            for channel in ("SMS", "VOICE"):  # the list replaces the one-provider form
                server_env.pop(f"AUTHSVC_{channel}_PROVIDER")
            server_env |= failover.server_env(sink_url, hmac_secret)
        elif args.provider == "http":
            server_env["AUTHSVC_SMS_HTTP"] = gateway
            server_env["AUTHSVC_VOICE_HTTP"] = gateway
        if args.redis_url:
            server_env["AUTHSVC_RATE_LIMIT_BACKEND"] = "redis"
            server_env["AUTHSVC_REDIS_URL"] = args.redis_url
            server_env["AUTHSVC_REDIS_KEY_PREFIX"] = f"authsvc-loadtest:{name}:"
        for item in args.server_env:
            key, _, value = item.partition("=")
            server_env[key] = value

        authsvc = [PY, "-m", "authsvc"]
        for step in (
            ["migrate"],
            ["seed", "--orgs", str(args.orgs), "--accounts", str(args.accounts)],
        ):
            began = time.perf_counter()
            done = subprocess.run(
                [*authsvc, *step],
                env=server_env,
                capture_output=True,
                text=True,
                timeout=600,
                cwd=ROOT,
            )
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                raise SystemExit(f"authsvc {step[0]} failed")
            print(f"authsvc {' '.join(step)}: {time.perf_counter() - began:.1f} s", file=sys.stderr)

        ledger_dir = run_dir / "ledger"
        ledger_dir.mkdir(exist_ok=True)
        for stale in ledger_dir.glob("*.json"):
            stale.unlink()
        with serving(args, server_env, run_dir) as (target, server_pid, cpu, fleet):
            sampler = MemorySampler(server_pid)
            sampler.start()
            prefix = args.out / name
            locust_env = {
                **base_env,
                "LOADTEST_SCENARIO": args.scenario,
                "LOADTEST_ACCOUNTS": str(args.accounts),
                "LOADTEST_ORGS": str(args.orgs),
                "LOADTEST_SINK_URL": sink_url,
                "LOADTEST_USERS": str(args.users),
                "LOADTEST_RAMP_S": str(args.ramp),
                "LOADTEST_PEAK_S": str(args.peak),
                "LOADTEST_RAMPDOWN_S": str(args.rampdown),
                "LOADTEST_PACING_S": str(args.pacing),
                "LOADTEST_MIX": args.mix,
                "LOADTEST_PROCESSES": str(
                    (os.cpu_count() or 1) if args.processes == -1 else max(args.processes, 1)
                ),
                "LOADTEST_LEDGER_DIR": str(ledger_dir),
                # With a fault to survive, sessions are checked again once it is over.
                "LOADTEST_KEEP_SESSIONS": "1" if args.kill_replica_at is not None else "0",
            }
            locust_cmd = [
                PY, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
                "--headless", "--host", target, "--run-time", f"{int(run_time)}s",
                "--stop-timeout", "10", "--csv", str(prefix), "--csv-full-history",
                "--html", f"{prefix}.html", "--only-summary", "--loglevel", "WARNING",
            ]  # fmt: skip
            if args.processes > 1 or args.processes == -1:
                locust_cmd += ["--processes", str(args.processes)]
            print(
                f"locust: {args.scenario}, {args.users} users, wave {wave_s:.0f} s, "
                f"server --workers {args.workers}",
                file=sys.stderr,
            )
            before = backend_counters(database_url, args.redis_url)
            scraped_before = server_metrics.scrape(metrics_url) if metrics_url else None
            cpu_before = cpu()
            outage = (
                failover.PrimaryOutage(sink_url, args.fail_primary_at, args.fail_primary_for)
                if args.fail_primary_at is not None
                else None
            )
            if outage is not None:
                outage.start()
            began = time.perf_counter()
            kill = Kill(fleet, args.kill_replica_at)
            kill.start()
            locust = subprocess.run(
                locust_cmd, env=locust_env, cwd=ROOT, timeout=run_time + 120,
                stdout=(run_dir / "locust.log").open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            elapsed = time.perf_counter() - began
            kill.cancel()
            if outage is not None:
                outage.stop()
                # Every code queued before Locust stopped must reach a gateway: count after
                # the outbox is empty.
                if metrics_url and not failover.wait_drained(metrics_url):
                    print("the outbox did not drain within 60 s", file=sys.stderr)
            server_cpu_s = cpu() - cpu_before
            after = backend_counters(database_url, args.redis_url)
            server_side = (
                server_metrics.figures(scraped_before, server_metrics.scrape(metrics_url), elapsed)
                if metrics_url and scraped_before is not None
                else None
            )
            sampler.stop()
            with urllib.request.urlopen(f"{sink_url}/stats", timeout=5) as answer:
                sink_stats = json.loads(answer.read())
            faults: dict[str, Any] | None = (
                dict(ledger.total(ledger_dir)) if args.topology else None
            )
            if faults is not None:
                faults |= kill.report()
                faults["consistency"] = consistency_scan(server_env)
        server_code = serving.exit_code
        sink.send_signal(signal.SIGTERM)

    failover_lines: list[str] = []
    failover_failures = 0
    if outage is not None and server_side is not None:
        failover_lines, failover_failures = failover.markdown(outage, sink_stats, server_side)
    failures = write_summary(
        prefix=prefix,
        args=vars(args)
        | {
            "name": name,
            "run_time": run_time,
            "locust_s": round(elapsed, 1),
            "server_cpu_s": round(server_cpu_s, 1),
        },
        started=started,
        memory=sampler.samples,
        sink=sink_stats,
        server_exit=server_code,
        backends={k: after[k] - before[k] for k in after if k in before},
        locust_exit=locust.returncode,
        server_side=server_side,
        extra_sections=failover_lines,
        faults=faults,
    )
    failures += failover_failures
    if faults is not None:  # the kill run's counts, for tests and scripts
        (prefix.parent / f"{prefix.name}_faults.json").write_text(json.dumps(faults, indent=1))
    print(f"report: {prefix}.html, {prefix}_summary.md (unexpected failures: {failures})")
    print((prefix.parent / f"{prefix.name}_summary.md").read_text())
    if locust.returncode not in (0, 1) or not (prefix.parent / f"{prefix.name}_stats.csv").exists():
        print(f"locust exited {locust.returncode}: see {run_dir / 'locust.log'}", file=sys.stderr)
        return 2
    if server_code != 0:
        print(f"server exited {server_code}: see {run_dir / 'serve.log'}", file=sys.stderr)
        return 2
    if args.max_failures >= 0 and failures > args.max_failures:
        return 1
    if faults is not None and (
        faults["codes_lost"] or faults["sessions_lost"] or faults["consistency"]["violations"]
    ):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
