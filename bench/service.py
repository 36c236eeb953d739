"""Service benchmarks against baselines measured in the same run (`make bench`).

Each figure is the median of --repeats measurements of --duration seconds; each ratio compares
two medians taken in this run on this machine. Nothing here passes or fails: it prints.

1. Login (trusted device: argon2id verify + session) per worker — `serve --workers 1` with one
   argon2 thread — against a bare argon2id verify loop on one thread in one process (the
   per-core bound). Target >= 0.85. Also the whole machine: `--workers 2` against the loop
   on 2 threads.
2. Logins with `--workers 2` against `--workers 1` (one argon2 thread per worker). Target 1.7x.
3. Verify and ValidateSession throughput of one server process against a no-op grpc.aio unary
   RPC served by one process, driven by the same client: target >= 0.5, SQLite and PostgreSQL.
   Per RPC also: server CPU per call (the server process's own CPU time, from /proc), database
   round trips per call (the `db_round_trips` field of the server's own log line, counted by
   app.db.round_trips), and Verify's p99 at that load.
4. Verify p99 while logins saturate the CPU (`--workers 2`): target <= 50 ms.
5. Server memory (resident, all processes): idle with 10,000 and 100,000 accounts, with
   20,000 pending flows, and its growth over sustained load (must stay flat per request).
6. Login failure timing: a wrong password, an unknown login and an unknown organisation, one
   call at a time, interleaved; median latencies and their gaps (reported, not asserted: the
   pass/fail property, one argon2 verification and the same statements, is
   tests/api/test_timing.py).

7. Metrics on against off: Verify and ValidateSession of one server process with
   AUTHSVC_METRICS_LISTEN set (recording, /metrics served and scraped once a second by a
   thread here, as Prometheus would) and unset, interleaved in the same run: throughput and
   server CPU per call, and their ratio (target: no more than a few percent). Also the cost of
   one RPC's metric updates (in-flight up and down, a histogram observation, a counter) in
   process and in prometheus-client's multiprocess mode (memory-mapped files, as under
   `serve --workers N`), timed in a subprocess each.
8. Tracing on against off, the same way: AUTHSVC_TRACING=true with every call sampled
   (OTEL_TRACES_SAMPLER=always_on, the worst case) and exported over OTLP/HTTP to a receiver in
   this process, against tracing off (the default); and `tracing-1pct`, one trace in a
   hundred sampled (parentbased_traceidratio 0.01), a production setting.

`--quick`: a smoke run (SQLite, one repeat of 1 s, sections 3 and 6).

The load comes from client processes on the same machine (grpc.aio, `--concurrency` calls in
flight); on 2 cores the client takes CPU from the server, for the service and its baseline
alike. Flows with a known code and trusted devices are written straight into the database with
the service's own building blocks (open_flow, CodeHasher, trust_device), so that setting up
thousands of Verify calls does not cost thousands of argon2 hashes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
API_KEY = "authsvc_bench-" + secrets.token_urlsafe(24)
SECRET_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
POSTGRES_URL = os.environ.get(
    "AUTHSVC_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
NOOP_METHOD = "/bench.Noop/Call"
WIDE = {"count": 1_000_000, "period_s": 60}
# Per-account and per-IP throttles would cap a benchmark that replays few accounts; widened.
RATE_LIMITS = {
    name: WIDE
    for name in (
        "login_ip",
        "login_account",
        "login_organization",
        "verify_ip",
        "verify_account",
        "step_up_ip",
        "step_up_account",
    )
}
RATE_LIMITS |= {
    "login_global": {"count": 1_000_000, "period_s": 1},
    "verify_global": {"count": 1_000_000, "period_s": 1},
}


# ---- measurement helpers -----------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"nproc={os.cpu_count()}, CPU {model}, Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its children, MiB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                pids += [int(c) for c in (task / "children").read_text().split()]
    for each in pids:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by `pid` and its live children, seconds."""
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                pids += [int(c) for c in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def round_trips(log: Path, method: str) -> float:
    """Median database round trips of `method`'s calls, from the server's own log lines."""
    counts = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"method": "{method}"' in line:
            entry = json.loads(line)
            if entry.get("event") == "rpc" and "db_round_trips" in entry:
                counts.append(entry["db_round_trips"])
    return median([float(c) for c in counts])


# ---- argon2 baseline ---------------------------------------------------------------------------


def argon2_rate(threads: int, duration: float) -> float:
    """Bare argon2id verifications per second (service parameters) on `threads` threads."""
    from argon2 import PasswordHasher, Type

    from authsvc.config import Settings

    settings = Settings()
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        type=Type.ID,
    )
    stored = hasher.hash("correct horse battery staple")
    counts = [0] * threads
    stop = threading.Event()

    def loop(slot: int) -> None:
        while not stop.is_set():
            hasher.verify(stored, "correct horse battery staple")
            counts[slot] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(duration)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


# ---- the load client (runs in its own process) -------------------------------------------------


@dataclass(frozen=True)
class Load:
    target: str
    kind: str  # noop | login | verify | validate | refused (Login answered UNAUTHENTICATED)
    items: list[tuple[str, ...]]
    concurrency: int
    duration: float
    warmup: float = 0.5
    rate: float = 0.0  # > 0: open loop at this many calls per second (latency measurement)
    api_key: str = API_KEY  # made by the parent process (a spawned client re-imports this file)


def run_load(load: Load) -> dict[str, Any]:
    return asyncio.run(_run_load(load))


async def _run_load(load: Load) -> dict[str, Any]:
    import grpc

    from authsvc.v1 import auth_service_pb2 as pb
    from authsvc.v1 import auth_service_pb2_grpc, common_pb2

    metadata = (("authorization", f"Bearer {load.api_key}"),)
    client = common_pb2.ClientContext(ip_address="198.51.100.7", user_agent="bench")
    channels = [grpc.aio.insecure_channel(load.target) for _ in range(2)]
    stubs = [auth_service_pb2_grpc.AuthServiceStub(c) for c in channels]
    noops = [c.unary_unary(NOOP_METHOD, None, None) for c in channels]
    loop = asyncio.get_running_loop()
    began = loop.time()
    measure_from = began + load.warmup
    deadline = measure_from + load.duration
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    outputs: list[str] = []
    position = 0

    completed = 0

    def next_item() -> tuple[str, ...] | None:
        nonlocal position
        if not load.items:
            return ()
        if load.kind in ("verify", "refused"):  # each flow (each failing login) once
            if position >= len(load.items):
                return None
            position += 1
            return load.items[position - 1]
        position += 1
        return load.items[position % len(load.items)]

    async def one(slot: int, item: tuple[str, ...]) -> None:
        nonlocal completed
        started = time.perf_counter()
        at = loop.time()
        try:
            if load.kind == "noop":
                await noops[slot % 2](b"", metadata=metadata, timeout=30)
            elif load.kind == "login":
                answer = await stubs[slot % 2].Login(
                    pb.LoginRequest(
                        organization_siret=item[0],
                        login=item[1],
                        password=pb.PasswordCredential(password=item[2]),
                        device_token=item[3],
                        client=client,
                    ),
                    metadata=metadata,
                    timeout=60,
                )
                if not answer.HasField("session"):
                    errors["no session"] += 1
                    return
            elif load.kind == "verify":
                verified = await stubs[slot % 2].Verify(
                    pb.VerifyRequest(flow_id=item[0], code=item[1], client=client),
                    metadata=metadata,
                    timeout=30,
                )
                outputs.append(verified.login.session.token)
            elif load.kind == "validate":
                await stubs[slot % 2].ValidateSession(
                    pb.ValidateSessionRequest(session_token=item[0], client=client),
                    metadata=metadata,
                    timeout=30,
                )
            elif load.kind == "refused":
                try:
                    await stubs[slot % 2].Login(
                        pb.LoginRequest(
                            organization_siret=item[0],
                            login=item[1],
                            password=pb.PasswordCredential(password="a wrong password"),
                            client=client,
                        ),
                        metadata=metadata,
                        timeout=60,
                    )
                    errors["not refused"] += 1
                    return
                except grpc.aio.AioRpcError as refused:
                    if refused.code() != grpc.StatusCode.UNAUTHENTICATED:
                        raise
        except grpc.aio.AioRpcError as error:
            errors[error.code().name] += 1
            return
        completed += 1
        if measure_from <= at and loop.time() <= deadline:
            latencies.append((time.perf_counter() - started) * 1000.0)

    async def closed_loop(slot: int) -> None:
        while loop.time() < deadline:
            item = next_item()
            if item is None:
                return
            await one(slot, item)

    if load.rate > 0:
        tasks: list[asyncio.Task[None]] = []
        interval = 1.0 / load.rate
        tick = began
        while tick < deadline:
            item = next_item()
            if item is None:
                break
            tasks.append(asyncio.create_task(one(len(tasks), item)))
            tick += interval
            await asyncio.sleep(max(0.0, tick - loop.time()))
        await asyncio.gather(*tasks)
    else:
        await asyncio.gather(*(closed_loop(i) for i in range(load.concurrency)))
    for channel in channels:
        await channel.close(None)
    latencies.sort()
    window = min(loop.time(), deadline) - measure_from
    return {
        "rate": len(latencies) / window if window > 0 else 0.0,
        "count": len(latencies),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "errors": dict(errors),
        "outputs": outputs,
        "completed": completed,  # warm-up included: the calls the server's CPU time covers
    }


# ---- servers -----------------------------------------------------------------------------------


async def _serve_noop(port: int) -> None:
    import grpc

    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Noop", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


@dataclass
class Database:
    url: str
    kind: str


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[Database]:
    if kind == "sqlite":
        yield Database(f"sqlite+aiosqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}", kind)
        return
    from sqlalchemy.engine import make_url

    name = f"authsvc_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield Database(make_url(POSTGRES_URL).set(database=name).render_as_string(False), kind)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def postgres_available() -> bool:
    try:
        asyncio.run(_admin("SELECT 1"))
        return True
    except Exception:
        return False


def server_env(db: Database, workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "AUTHSVC_DATABASE_URL": db.url,
        "AUTHSVC_SECRET_KEY": SECRET_KEY,
        "AUTHSVC_API_KEYS": json.dumps([{"name": "bench", "key": API_KEY, "rpcs": ["*"]}]),
        "AUTHSVC_RATE_LIMITS": json.dumps(RATE_LIMITS),
        "AUTHSVC_SMS_PROVIDER": "file",
        "AUTHSVC_VOICE_PROVIDER": "file",
        "AUTHSVC_EMAIL_PROVIDER": "file",
        "AUTHSVC_OUTBOX_FILE": str(workdir / "outbox.jsonl"),
        "AUTHSVC_CODE_TTL_S": "600",
        "AUTHSVC_LOG_FORMAT": "json",
        "AUTHSVC_GRACE_PERIOD_S": "1",
    }
    return env | extra


def prepare(db: Database, workdir: Path, accounts: int) -> None:
    env = server_env(db, workdir)
    for step in (["migrate"], ["seed", "--orgs", "100", "--accounts", str(accounts)]):
        subprocess.run(
            [PY, "-m", "authsvc", *step], env=env, check=True, capture_output=True, timeout=900
        )


@contextlib.contextmanager
def served(
    db: Database | None,
    workdir: Path,
    *,
    workers: int = 1,
    hash_threads: int = 0,
    metrics_port: int | None = None,
    env_extra: dict[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """(target, pid) of `authsvc serve`, or of the no-op server when `db` is None."""
    port = free_port()
    if db is None:
        command = [PY, str(Path(__file__).resolve()), "--serve-noop", str(port)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
    else:
        command = [PY, "-m", "authsvc", "serve", "--listen", f"127.0.0.1:{port}"]
        command += ["--workers", str(workers)]
        extra = {"AUTHSVC_PASSWORD_HASH_THREADS": str(hash_threads)} if hash_threads else {}
        if metrics_port is not None:
            extra["AUTHSVC_METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
        env = server_env(db, workdir, **extra, **(env_extra or {}))
    log = (workdir / f"serve-{port}.log").open("wb")  # round_trips() reads it
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=ROOT)
    try:
        wait_ready(f"127.0.0.1:{port}", process, noop=db is None)
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def wait_ready(target: str, process: subprocess.Popen[bytes], *, noop: bool) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: see its log in the workdir")
        with grpc.insecure_channel(target) as channel:
            try:
                if noop:
                    channel.unary_unary(NOOP_METHOD, None, None)(b"", timeout=1)
                else:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                time.sleep(0.3 if noop else 1.0)  # every worker up
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError("server not ready")


# ---- fixtures written with the service's own building blocks -----------------------------------


def _settings(db: Database) -> Any:
    from authsvc.config import Settings

    return Settings(database_url=db.url, secret_key=SECRET_KEY, code_ttl_s=600)


async def _trusted_devices(db: Database, count: int) -> list[tuple[str, ...]]:
    from sqlalchemy import select

    from authsvc.app import App
    from authsvc.db import Account, Organization
    from authsvc.policies.cadence import trust_device
    from authsvc.seeding import seed_password

    app = App.build(_settings(db))
    try:
        async with app.read() as session:
            rows = (
                await session.execute(
                    select(Account.id, Account.login, Organization.siret)
                    .join(Organization, Organization.id == Account.organization_id)
                    .order_by(Account.login)
                    .limit(count)
                )
            ).all()
        items: list[tuple[str, ...]] = []
        async with app.write() as session:
            for account_id, login, siret in rows:
                trust = trust_device(app, session, account_id, "bench")
                items.append((siret, login, seed_password(), trust.token))
        return items
    finally:
        await app.close()


async def _pending_flows(db: Database, count: int, accounts: int) -> list[tuple[str, ...]]:
    from sqlalchemy import select

    from authsvc.app import App
    from authsvc.db import Account, FlowPurpose
    from authsvc.flows.login import ClientInfo, open_flow

    app = App.build(_settings(db))
    try:
        async with app.read() as session:
            people = (await session.scalars(select(Account).limit(accounts))).all()
        now = app.clock.now()
        items: list[tuple[str, ...]] = []
        for start in range(0, count, 2000):
            async with app.write() as session:
                for i in range(start, min(start + 2000, count)):
                    flow = open_flow(
                        app,
                        session,
                        FlowPurpose.LOGIN,
                        people[i % len(people)],
                        ClientInfo("198.51.100.7", "bench"),
                    )
                    code = f"{secrets.randbelow(10**6):06d}"
                    flow.challenge_id = uuid.uuid4()
                    flow.channel = "sms"
                    flow.code_digest = app.keys.code_hasher.digest(code, flow.challenge_id.bytes)
                    flow.code_expires_at = now + datetime.timedelta(seconds=600)
                    flow.send_count = 1
                    flow.last_sent_at = now
                    items.append((str(flow.id), code))
        return items
    finally:
        await app.close()


def trusted_devices(db: Database, count: int) -> list[tuple[str, ...]]:
    return asyncio.run(_trusted_devices(db, count))


def pending_flows(db: Database, count: int, accounts: int = 5000) -> list[tuple[str, ...]]:
    return asyncio.run(_pending_flows(db, count, accounts))


# ---- the benchmarks ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        context = multiprocessing.get_context("spawn")
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context)
        self.results: list[tuple[str, str, str, str]] = []

    def load(self, load: Load) -> dict[str, Any]:
        return self.pool.submit(run_load, load).result(timeout=load.duration + 120)

    def rates(self, make: Any, repeats: int | None = None) -> list[float]:
        values = []
        for _ in range(repeats or self.args.repeats):
            result = make()
            if result["errors"]:
                print(f"    errors: {result['errors']}", flush=True)
            values.append(result["rate"])
        return values

    def report(self, name: str, measured: str, baseline: str, ratio: str) -> None:
        self.results.append((name, measured, baseline, ratio))
        print(f"  {name}: {measured} | baseline {baseline} | {ratio}", flush=True)

    # 1 and 2 --------------------------------------------------------------------------------

    def logins(self, kind: str) -> None:
        args = self.args
        print(f"logins (trusted device) and the argon2id bound ({kind})", flush=True)
        with database(kind, self.workdir) as db:
            prepare(db, self.workdir, 2000)
            devices = trusted_devices(db, 64)
            per_worker: list[float] = []
            bound_1: list[float] = []
            two_workers: list[float] = []
            bound_2: list[float] = []
            default_1: list[float] = []

            def drive(target: str, concurrency: int) -> dict[str, Any]:
                return self.load(Load(target, "login", devices, concurrency, args.duration))

            for _ in range(args.repeats):  # interleaved: service and baseline alike
                with served(db, self.workdir, workers=1, hash_threads=1) as (target, _):
                    per_worker += self.rates(lambda target=target: drive(target, 8), 1)
                bound_1.append(argon2_rate(1, args.duration))
                with served(db, self.workdir, workers=2, hash_threads=1) as (target, _):
                    two_workers += self.rates(lambda target=target: drive(target, 16), 1)
                bound_2.append(argon2_rate(2, args.duration))
                with served(db, self.workdir, workers=1) as (target, _):
                    default_1 += self.rates(lambda target=target: drive(target, 16), 1)
        self.report(
            f"Login per worker (--workers 1, 1 argon2 thread) vs argon2id loop, 1 thread [{kind}]",
            f"{median(per_worker):.1f}/s",
            f"{median(bound_1):.1f}/s",
            f"{median(per_worker) / median(bound_1):.2f} (target >= 0.85)",
        )
        self.report(
            f"Login, machine (--workers 2, 1 thread each) vs argon2id loop, 2 threads [{kind}]",
            f"{median(two_workers):.1f}/s",
            f"{median(bound_2):.1f}/s",
            f"{median(two_workers) / median(bound_2):.2f}",
        )
        self.report(
            f"Login --workers 2 vs --workers 1 (1 argon2 thread per worker) [{kind}]",
            f"{median(two_workers):.1f}/s",
            f"{median(per_worker):.1f}/s",
            f"{median(two_workers) / median(per_worker):.2f}x (target >= 1.7x)",
        )
        self.report(
            "What the machine gives: argon2id loop, 2 threads vs 1 thread",
            f"{median(bound_2):.1f}/s",
            f"{median(bound_1):.1f}/s",
            f"{median(bound_2) / median(bound_1):.2f}x (2.0x on 2 idle cores)",
        )
        self.report(
            f"Login --workers 2 vs --workers 1 with its default pool (threads = cores) [{kind}]",
            f"{median(two_workers):.1f}/s",
            f"{median(default_1):.1f}/s",
            f"{median(two_workers) / median(default_1):.2f}x",
        )

    # 3 --------------------------------------------------------------------------------------

    def measured(self, pid: int, load: Load) -> dict[str, Any]:
        """`load`'s result, with the server's CPU ms per completed call."""
        before = cpu_seconds(pid)
        result = self.load(load)
        spent = cpu_seconds(pid) - before
        if result["errors"]:
            print(f"    errors: {result['errors']}", flush=True)
        result["cpu_ms"] = spent * 1000 / max(result["completed"], 1)
        return result

    def verify_vs_noop(self, kind: str) -> None:
        args = self.args
        print(f"Verify and ValidateSession vs a no-op RPC ({kind})", flush=True)
        c = args.concurrency
        with database(kind, self.workdir) as db:
            prepare(db, self.workdir, 5000)
            flows = pending_flows(db, args.flows)
            runs: dict[str, list[dict[str, Any]]] = {
                "noop": [],
                "Verify": [],
                "ValidateSession": [],
            }
            trips: dict[str, list[float]] = {"Verify": [], "ValidateSession": []}
            tokens: list[str] = []
            per_run = len(flows) // args.repeats
            for run in range(args.repeats):  # interleaved: the service and its baseline alike
                with served(None, self.workdir) as (target, pid):
                    runs["noop"].append(
                        self.measured(pid, Load(target, "noop", [], c, args.duration))
                    )
                with served(db, self.workdir, workers=1) as (target, pid):
                    batch = flows[run * per_run : (run + 1) * per_run]
                    result = self.measured(pid, Load(target, "verify", batch, c, args.duration))
                    if result["count"] >= len(batch) - c:
                        print("    (ran out of flows: raise --flows)", flush=True)
                    runs["Verify"].append(result)
                    tokens += result["outputs"]
                    items: list[tuple[str, ...]] = [(t,) for t in tokens[-5000:]]
                    runs["ValidateSession"].append(
                        self.measured(pid, Load(target, "validate", items, c, args.duration))
                    )
                    log = self.workdir / f"serve-{target.rpartition(':')[2]}.log"
                    for name in trips:
                        trips[name].append(round_trips(log, name))

            def figure(name: str, key: str) -> float:
                return median([result[key] for result in runs[name]])

            noop_rate, noop_cpu = figure("noop", "rate"), figure("noop", "cpu_ms")
            self.report(
                f"no-op grpc.aio RPC (one process) [{kind}]",
                f"{noop_rate:.0f}/s, server CPU {noop_cpu:.3f} ms/call",
                "—",
                "the baseline",
            )
        for name in ("Verify", "ValidateSession"):
            rate, cpu = figure(name, "rate"), figure(name, "cpu_ms")
            p99 = f", p99 {figure(name, 'p99'):.1f} ms at {c} in flight" if name == "Verify" else ""
            self.report(
                f"{name} ({kind}, one process) vs no-op grpc.aio RPC (one process)",
                f"{rate:.0f}/s, server CPU {cpu:.3f} ms/call, "
                f"{median(trips[name]):.0f} round trips/call{p99}",
                f"{noop_rate:.0f}/s, {noop_cpu:.3f} ms/call",
                f"{rate / noop_rate:.2f} (target >= 0.50); CPU x{cpu / noop_cpu:.1f}",
            )

    # 7 --------------------------------------------------------------------------------------

    def feature_cost(self, kind: str, feature: str) -> None:
        """Verify and ValidateSession with `feature` (metrics or tracing) on vs off."""
        args = self.args
        print(f"Verify and ValidateSession with {feature} on vs off ({kind})", flush=True)
        c = args.concurrency
        with database(kind, self.workdir) as db, otlp_receiver() as (traces, spans_received):
            prepare(db, self.workdir, 5000)
            flows = pending_flows(db, args.flows)
            runs: dict[tuple[str, bool], list[dict[str, Any]]] = {
                (name, on): [] for name in ("Verify", "ValidateSession") for on in (False, True)
            }
            per_run = len(flows) // (2 * args.repeats)
            batches = iter(range(2 * args.repeats))
            tokens: dict[bool, list[str]] = {False: [], True: []}
            for run in range(args.repeats):
                for on in (False, True) if run % 2 == 0 else (True, False):  # each first in turn
                    port = free_port() if on and feature == "metrics" else None
                    env_extra = tracing_env(feature, traces) if on else None
                    with (
                        served(
                            db, self.workdir, workers=1, metrics_port=port, env_extra=env_extra
                        ) as (target, pid),
                        scraping(port),
                    ):
                        index = next(batches)
                        batch = flows[index * per_run : (index + 1) * per_run]
                        result = self.measured(pid, Load(target, "verify", batch, c, args.duration))
                        runs[("Verify", on)].append(result)
                        tokens[on] += result["outputs"]
                        items: list[tuple[str, ...]] = [(t,) for t in tokens[on][-5000:]]
                        runs[("ValidateSession", on)].append(
                            self.measured(pid, Load(target, "validate", items, c, args.duration))
                        )
            exported = spans_received()
        if feature.startswith("tracing"):
            # Proof that "on" measured real work: every call's spans reached the receiver.
            print(f"    OTLP receiver got {exported} export requests", flush=True)
        for name in ("Verify", "ValidateSession"):

            def figure(on: bool, key: str, name: str = name) -> float:
                return median([result[key] for result in runs[(name, on)]])

            on_rate, off_rate = figure(True, "rate"), figure(False, "rate")
            on_cpu, off_cpu = figure(True, "cpu_ms"), figure(False, "cpu_ms")
            self.report(
                f"{name} with {feature} on vs off (one process) [{kind}]",
                f"{on_rate:.0f}/s, server CPU {on_cpu:.3f} ms/call",
                f"{off_rate:.0f}/s, {off_cpu:.3f} ms/call",
                f"throughput {on_rate / off_rate:.3f}, CPU per call x{on_cpu / off_cpu:.3f}"
                + (" (target: within a few percent)" if feature == "metrics" else ""),
            )

    def metrics_updates(self) -> None:
        """One RPC's metric updates, in process and in multiprocess mode (subprocesses)."""
        print("one RPC's metric updates: in process vs multiprocess mode", flush=True)
        costs: dict[str, list[float]] = {"in process": [], "multiprocess": []}
        for _ in range(self.args.repeats):
            for mode in costs:
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                directory = tempfile.mkdtemp(prefix="authsvc-bench-metrics-")
                if mode == "multiprocess":
                    env["AUTHSVC_BENCH_MULTIPROC"] = directory
                try:
                    done = subprocess.run(
                        [PY, str(Path(__file__).resolve()), "--metric-updates"],
                        env=env,
                        check=True,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
                costs[mode].append(float(done.stdout.strip()))
        inproc, multi = median(costs["in process"]), median(costs["multiprocess"])
        self.report(
            "one RPC's metric updates (in-flight +1/-1, histogram, counter), multiprocess vs "
            "in process",
            f"{multi:.2f} µs",
            f"{inproc:.2f} µs",
            f"x{multi / inproc:.1f}",
        )

    # 6 --------------------------------------------------------------------------------------

    def login_failure_timing(self, kind: str) -> None:
        """Wrong password, unknown login, unknown organisation: median latency of each, one
        call at a time, the three interleaved (drift and bursts of load hit them alike)."""
        from authsvc.seeding import account_login, org_siret

        args = self.args
        print(f"Login failure timing ({kind})", flush=True)
        calls = max(20, int(args.duration * 8))
        with database(kind, self.workdir) as db:
            prepare(db, self.workdir, 2000)
            cases: dict[str, list[tuple[str, ...]]] = {
                # Each known account fails once: no lock, and the counter exists from then on.
                "wrong password": [(org_siret(i % 100), account_login(i)) for i in range(2000)],
                "unknown login": [(org_siret(i % 100), f"nobody{i}") for i in range(2000)],
                "unknown organisation": [
                    (org_siret(10_000 + i), account_login(i)) for i in range(2000)
                ],
            }
            p50s: dict[str, list[float]] = {name: [] for name in cases}
            names = list(cases)
            with served(db, self.workdir, workers=1) as (target, _):
                warmup: list[tuple[str, ...]] = [(org_siret(0), f"warmup{i}") for i in range(10)]
                self.load(Load(target, "refused", warmup, 1, 60.0, 0.0))
                for run in range(args.repeats * 3):
                    for name in names[run % 3 :] + names[: run % 3]:  # each kind first in turn
                        batch = cases[name][run * calls : (run + 1) * calls]
                        result = self.load(Load(target, "refused", batch, 1, 60.0, 0.0))
                        if result["errors"]:
                            print(f"    errors: {result['errors']}", flush=True)
                        p50s[name].append(result["p50"])
        reference = median(p50s["wrong password"])
        for name in ("unknown login", "unknown organisation"):
            value = median(p50s[name])
            self.report(
                f"Login failure timing: {name} vs wrong password [{kind}]",
                f"median {value:.1f} ms",
                f"{reference:.1f} ms",
                f"gap {(value - reference) / reference:+.1%} (reported; the test counts the work)",
            )

    # 4 --------------------------------------------------------------------------------------

    def verify_latency_under_logins(self, kind: str, workers: int) -> None:
        args = self.args
        print(f"Verify p99 while logins saturate the CPU ({kind}, --workers {workers})", flush=True)
        with database(kind, self.workdir) as db:
            prepare(db, self.workdir, 2000)
            devices = trusted_devices(db, 64)
            flows = pending_flows(db, int(args.verify_rate * (args.duration + 2)) * args.repeats)
            p99s: list[float] = []
            p50s: list[float] = []
            login_rates: list[float] = []
            per_run = len(flows) // args.repeats
            with served(db, self.workdir, workers=workers) as (target, _):
                for run in range(args.repeats):
                    logins = self.pool.submit(
                        run_load, Load(target, "login", devices, 32, args.duration + 1.0, 0.5)
                    )
                    time.sleep(0.5)  # logins first: the CPU is busy when Verify starts
                    batch = flows[run * per_run : (run + 1) * per_run]
                    result = self.load(
                        Load(target, "verify", batch, 1, args.duration, 0.5, rate=args.verify_rate)
                    )
                    login_rates.append(logins.result(timeout=args.duration + 120)["rate"])
                    if result["errors"]:
                        print(f"    errors: {result['errors']}", flush=True)
                    p99s.append(result["p99"])
                    p50s.append(result["p50"])
        self.report(
            f"Verify p99 at {args.verify_rate:.0f}/s during {median(login_rates):.0f} logins/s "
            f"[{kind}, --workers {workers}]",
            f"p99 {median(p99s):.1f} ms (p50 {median(p50s):.1f} ms)",
            "—",
            "target p99 <= 50 ms",
        )

    # 5 --------------------------------------------------------------------------------------

    def memory(self) -> None:
        args = self.args
        print("server memory (resident, --workers 1)", flush=True)
        c = args.concurrency
        for accounts in (10_000, 100_000):
            with database("sqlite", self.workdir) as db:
                prepare(db, self.workdir, accounts)
                devices = trusted_devices(db, 32)
                with served(db, self.workdir, workers=1) as (target, pid):
                    time.sleep(1.0)
                    idle = rss_mib(pid)
                    self.load(Load(target, "login", devices, 8, 2.0))
                    warmed = rss_mib(pid)
                    flows = pending_flows(db, 20_000)
                    after_flows = rss_mib(pid)
                    done = 0
                    samples = []
                    for batch_start in range(0, 6_000, 1_500):
                        batch = flows[batch_start : batch_start + 1_500]
                        result = self.load(Load(target, "verify", batch, c, 60.0, 0.0))
                        done += result["count"]
                        samples.append((done, rss_mib(pid)))
                    grow = samples[-1][1] - samples[0][1]
                    per_k = grow / max((samples[-1][0] - samples[0][0]) / 1000, 1e-9)
                self.report(
                    f"memory with {accounts:,} accounts",
                    f"idle {idle:.0f} MiB, after logins {warmed:.0f} MiB, "
                    f"+20,000 pending flows {after_flows:.0f} MiB",
                    f"over {samples[-1][0] - samples[0][0]:,} more Verify calls: "
                    f"{samples[0][1]:.0f} -> {samples[-1][1]:.0f} MiB",
                    f"{per_k * 1024:.1f} KiB per 1,000 requests",
                )


def tracing_env(feature: str, traces: str) -> dict[str, str] | None:
    """The server's settings for a tracing variant: every call sampled (the worst case), or
    one trace in a hundred (a production choice: README "Tracing")."""
    if not feature.startswith("tracing"):
        return None
    sampler = (
        {"OTEL_TRACES_SAMPLER": "always_on"}
        if feature == "tracing"
        else {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    )
    return {"AUTHSVC_TRACING": "true", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces, **sampler}


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, Any]]:
    """An OTLP/HTTP traces endpoint on loopback that accepts every export (200, empty
    protobuf answer): (its URL, a function giving how many export requests it took)."""
    import http.server

    received = [0]

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", lambda: received[0]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def scraping(port: int | None) -> Iterator[None]:
    """Scrape http://127.0.0.1:port/metrics once a second meanwhile (as Prometheus would)."""
    if port is None:
        yield
        return
    import httpx

    stop = threading.Event()
    scrapes = [0]

    def scrape() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                scrapes[0] += 1

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        if not scrapes[0]:
            print("    (no scrape answered)", flush=True)


def metric_updates() -> None:
    """Print the µs one RPC's updates take (the wrapper's own calls), median of 5 x 20,000."""
    if directory := os.environ.get("AUTHSVC_BENCH_MULTIPROC"):
        from authsvc import metrics

        os.environ["TMPDIR"] = directory
        metrics.use_multiprocess()
    from authsvc import metrics

    metrics.state.on = True
    children = metrics.rpc_children("Verify")
    answered = children.answered("OK", "")
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20_000):
            children.in_flight.inc()
            children.in_flight.dec()
            children.latency.observe(0.0012)
            answered.inc()
        rounds.append((time.perf_counter() - started) / 20_000 * 1e6)
    print(f"{statistics.median(rounds):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-noop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metric-updates", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--flows", type=int, default=6_000, help="flows for the Verify runs")
    parser.add_argument(
        "--verify-rate", type=float, default=10.0, help="Verify/s in (4): the mix, 0.3 x logins"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[
            "logins",
            "verify",
            "latency",
            "memory",
            "timing",
            "metrics",
            "tracing",
            "tracing-1pct",
        ],
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: SQLite, 1 x 1 s, verify and timing"
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if args.serve_noop:
        asyncio.run(_serve_noop(args.serve_noop))
        return
    if args.metric_updates:
        metric_updates()
        return
    if args.quick:
        args.repeats, args.duration, args.flows, args.skip_postgres = 1, 1.0, 1500, True
        args.only = args.only or ["verify", "timing"]
    only = set(
        args.only
        or ["logins", "verify", "latency", "memory", "timing", "metrics", "tracing", "tracing-1pct"]
    )
    print(
        f"bench/service.py — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{machine()}, load average {os.getloadavg()[0]:.2f}; medians of {args.repeats} x "
        f"{args.duration:.0f} s",
        flush=True,
    )
    tmp = tempfile.mkdtemp(prefix="authsvc-bench-")
    with contextlib.ExitStack() as cleanup:
        if not args.keep:
            cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        bench = Bench(args, Path(tmp))
        try:
            postgres = not args.skip_postgres and postgres_available()
            if not postgres:
                print(f"PostgreSQL skipped: --skip-postgres, or {POSTGRES_URL} does not answer")
            kinds = ["sqlite", "postgres"] if postgres else ["sqlite"]
            if "logins" in only:
                for kind in kinds:
                    bench.logins(kind)
            if "verify" in only:
                for kind in kinds:
                    bench.verify_vs_noop(kind)
            if "latency" in only:
                # SQLite: one process (several processes would queue on its file lock);
                # PostgreSQL: one worker per core, as deployed.
                bench.verify_latency_under_logins("sqlite", 1)
                if postgres:
                    bench.verify_latency_under_logins("postgres", os.cpu_count() or 1)
            if "memory" in only:
                bench.memory()
            if "timing" in only:
                for kind in kinds:
                    bench.login_failure_timing(kind)
            if "metrics" in only:
                bench.metrics_updates()
                for kind in kinds:
                    bench.feature_cost(kind, "metrics")
            for variant in ("tracing", "tracing-1pct"):
                if variant in only:
                    for kind in kinds:
                        bench.feature_cost(kind, variant)
        finally:
            bench.pool.shutdown(cancel_futures=True)
    print("\nsummary")
    for name, measured, baseline, ratio in bench.results:
        print(f"  {name}\n      {measured} | baseline {baseline} | {ratio}")


if __name__ == "__main__":
    main()
