"""Prometheus metrics: every name and label of the service, defined here and nowhere else.

Business code calls the small functions below; none takes an account, login, organisation,
phone number, IP or token, and every label value comes from a finite set the code defines
(`LABEL_VALUES`, asserted by tests/api/test_metrics_cardinality.py).

Recording is off until the process serves /metrics (`serve_http`) or prepares the shared
directory of `serve --workers N` (`use_multiprocess`): with AUTHSVC_METRICS_LISTEN empty each
call below costs one attribute test.

Under `serve --workers N` every process (the parent and its workers) writes its values to
memory-mapped files of a directory the parent makes for the run (prometheus-client's
multiprocess mode); the parent serves /metrics, summing them with MultiProcessCollector.
Every metric has labels, so no value exists before the first call: `use_multiprocess` switches
the value class before any is made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    values,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets (seconds): a ValidateSession takes ~0.5 ms, a login tens of ms (argon2).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# ---- the definitions -------------------------------------------------------------------------

RPC_REQUESTS = Counter(
    "authsvc_rpc_requests",
    "RPCs answered, by method, gRPC status code and ErrorInfo reason (empty when OK).",
    ("method", "code", "reason"),
)
RPC_LATENCY = Histogram(
    "authsvc_rpc_duration_seconds",
    "Server-side time of an RPC, from the handler's start to its answer.",
    ("method",),
    buckets=RPC_BUCKETS,
)
RPC_IN_FLIGHT = Gauge(
    "authsvc_rpc_in_flight",
    "RPCs being handled now.",
    ("method",),
    multiprocess_mode="livesum",
)
FIRST_FACTOR = Counter(
    "authsvc_first_factor",
    "First factors checked, by credential (password or federated): outcome session (trusted "
    "device), code_needed, or the refusal's reason.",
    ("credential", "outcome"),
)
CODES_ISSUED = Counter(
    "authsvc_codes_issued",
    "Codes issued by Challenge (queued for delivery), by channel and flow purpose.",
    ("channel", "purpose"),
)
DELIVERIES = Counter(
    "authsvc_deliveries",
    "Delivery attempts of queued messages: kind code or notice; outcome sent, retry, abandoned.",
    ("channel", "provider", "kind", "outcome"),
)
SEND_LATENCY = Histogram(
    "authsvc_provider_send_duration_seconds",
    "Time of one provider call by the dispatcher, whatever its outcome.",
    ("provider",),
    buckets=SEND_BUCKETS,
)
SEND_ERRORS = Counter(
    "authsvc_provider_errors",
    "Provider calls that failed: kind permanent, transient or crash (a provider bug).",
    ("provider", "kind"),
)
VERIFY = Counter(
    "authsvc_verify",
    "Verify outcomes: verified with the flow's purpose, or refused with the reason.",
    ("outcome", "detail"),
)
STEP_UP = Counter(
    "authsvc_step_up_grants",
    "Step-up grants: stage requested, issued, redeemed or refused (with the reason).",
    ("stage", "reason"),
)
LOCKOUTS = Counter(
    "authsvc_lockouts",
    "Locks set: factor password or code.",
    ("factor",),
)
RATE_LIMITED = Counter(
    "authsvc_rate_limit_refusals",
    "Requests refused by a rate limit, by the limit's name.",
    ("limit",),
)
BREAKER_TRIPS = Counter(
    "authsvc_breaker_trips",
    "Pumping breakers tripped (a number prefix's sends stopped), by channel.",
    ("channel",),
)
AUDIT_WEBHOOK_BATCHES = Counter(
    "authsvc_audit_webhook_batches",
    "Batches of audit events POSTed to the audit webhook, by result: delivered (a 2xx), "
    "rejected (another answer), unreachable (timeout or connection error), superseded "
    "(answered 2xx, but another dispatcher had taken the organisation over meanwhile).",
    ("result",),
)
# Labelled by the provider's configured name (AUTHSVC_<CHANNEL>_PROVIDERS: bounded by the
# configuration; the one-provider form is named after its kind).
PROVIDER_BREAKER = Gauge(
    "authsvc_provider_breaker_state",
    "A provider's circuit breaker in the dispatcher: 0 closed, 1 half-open (probing), 2 open.",
    ("channel", "provider"),
    multiprocess_mode="livemax",
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
OUTBOX_DEPTH = Gauge(
    "authsvc_outbox_messages",
    "Messages waiting in the outbox (read by the dispatcher), by channel and status.",
    ("channel", "status"),
    multiprocess_mode="livemostrecent",
)
OUTBOX_OLDEST = Gauge(
    "authsvc_outbox_oldest_age_seconds",
    "Age of the oldest message waiting in the outbox (0 when none), by channel.",
    ("channel",),
    multiprocess_mode="livemostrecent",
)
HASH_QUEUE = Gauge(
    "authsvc_password_hash_queue",
    "argon2 jobs waiting for a thread of the pool.",
    ("operation",),
    multiprocess_mode="livesum",
)
HASH_WAIT = Histogram(
    "authsvc_password_hash_wait_seconds",
    "Time an argon2 job waited for a thread of the pool.",
    ("operation",),
    buckets=WAIT_BUCKETS,
)
DB_CHECKED_OUT = Gauge(
    "authsvc_db_connections_checked_out",
    "Database connections taken from the pool now, by database dialect.",
    ("dialect",),
    multiprocess_mode="livesum",
)
REDIS_ERRORS = Counter(
    "authsvc_redis_errors",
    "Failed calls to the Redis rate-limit backend, by operation.",
    ("backend", "operation"),
)
REDIS_FALLBACK = Gauge(
    "authsvc_redis_fallback",
    "1 while the Redis rate-limit backend is unreachable (sends refused, other limits in "
    "process), else 0.",
    ("backend",),
    multiprocess_mode="livemax",
)

ALL = (
    RPC_REQUESTS,
    RPC_LATENCY,
    RPC_IN_FLIGHT,
    FIRST_FACTOR,
    CODES_ISSUED,
    DELIVERIES,
    SEND_LATENCY,
    SEND_ERRORS,
    VERIFY,
    STEP_UP,
    LOCKOUTS,
    RATE_LIMITED,
    BREAKER_TRIPS,
    AUDIT_WEBHOOK_BATCHES,
    PROVIDER_BREAKER,
    OUTBOX_DEPTH,
    OUTBOX_OLDEST,
    HASH_QUEUE,
    HASH_WAIT,
    DB_CHECKED_OUT,
    REDIS_ERRORS,
    REDIS_FALLBACK,
)


def label_values() -> dict[str, frozenset[str]]:
    """Every value each label may take: the finite sets the code defines."""
    import grpc

    from authsvc.api.callers import METHODS
    from authsvc.config import ProviderName, Settings
    from authsvc.courier.providers import CHANNELS
    from authsvc.db import FlowPurpose, MessageStatus
    from authsvc.policies.memory import MemoryBackend
    from authsvc.policies.pumping import BREAKER_LIMIT
    from authsvc.policies.ratelimit import RateLimitPolicy, limit_names
    from authsvc.v1 import common_pb2

    values = common_pb2.ErrorReason.DESCRIPTOR.values
    reasons = {value.name.removeprefix("ERROR_REASON_") for value in values}
    reasons |= set(EXTRA_REASONS)
    purposes = {purpose.value for purpose in FlowPurpose}
    return {
        "method": frozenset(short.rpartition("/")[2] for short in METHODS.values()),
        "code": frozenset(code.name for code in grpc.StatusCode),
        "credential": frozenset({"password", "federated"}),
        "reason": frozenset({""} | reasons),
        "outcome": frozenset(
            {"session", "code_needed", "verified", "refused", "sent", "retry", "abandoned"}
            | reasons
        ),
        "detail": frozenset(purposes | reasons),
        "channel": frozenset(CHANNELS),
        "purpose": frozenset(purposes),
        "provider": frozenset(p.value for p in ProviderName) | {"custom"},
        "kind": frozenset({"code", "notice", "permanent", "transient", "crash"}),
        "stage": frozenset({"requested", "issued", "redeemed", "refused"}),
        "factor": frozenset({"password", "code"}),
        "limit": limit_names(RateLimitPolicy(Settings(), MemoryBackend(), b"k" * 32))
        | {BREAKER_LIMIT},
        "status": frozenset(
            s.value for s in (MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.FAILED)
        ),
        "operation": frozenset({"verify", "hash", "consume", "health", "connect"}),
        "dialect": frozenset({"sqlite", "postgresql"}),
        "backend": frozenset({"redis", "redis-cluster"}),
        "result": frozenset(AUDIT_WEBHOOK_RESULTS),
    }


#: What became of one audit webhook batch (courier/audit_webhook.py).
AUDIT_WEBHOOK_RESULTS = ("delivered", "rejected", "unreachable", "superseded")

#: Reasons the RPC wrapper answers besides the ErrorInfo reasons of common.proto.
EXTRA_REASONS = ("RATE_LIMITER_UNAVAILABLE", "DATABASE_UNAVAILABLE", "INTERNAL")

# ---- recording ---------------------------------------------------------------------------------


class _State:
    on = False


state = _State()


@dataclass
class _RpcChildren:
    """One method's pre-bound children: no label lookup on the hot path."""

    method: str
    latency: Any
    in_flight: Any
    requests: dict[tuple[str, str], Any]

    def answered(self, code: str, reason: str) -> Any:
        child = self.requests.get((code, reason))
        if child is None:
            child = self.requests[(code, reason)] = RPC_REQUESTS.labels(self.method, code, reason)
        return child


_rpc_children: dict[str, _RpcChildren] = {}


def rpc_children(method: str) -> _RpcChildren:
    """The children of one method, made on its first call (after the value class is chosen)."""
    children = _rpc_children.get(method)
    if children is None:
        children = _rpc_children[method] = _RpcChildren(
            method, RPC_LATENCY.labels(method), RPC_IN_FLIGHT.labels(method), {}
        )
    return children


def first_factor(credential: str, outcome: str) -> None:
    """`credential` password or federated; `outcome` session, code_needed or the reason."""
    if state.on:
        FIRST_FACTOR.labels(credential, outcome).inc()


def code_issued(channel: str, purpose: str) -> None:
    if state.on:
        CODES_ISSUED.labels(channel, purpose).inc()


def verified(purpose: str) -> None:
    if state.on:
        VERIFY.labels("verified", purpose).inc()


def verify_refused(reason: str) -> None:
    if state.on:
        VERIFY.labels("refused", reason).inc()


def step_up(stage: str, reason: str = "") -> None:
    if state.on:
        STEP_UP.labels(stage, reason).inc()


def lockout(factor: str) -> None:
    if state.on:
        LOCKOUTS.labels(factor).inc()


def rate_limited(limit: str) -> None:
    if state.on:
        RATE_LIMITED.labels(limit).inc()


def breaker_tripped(channel: str) -> None:
    if state.on:
        BREAKER_TRIPS.labels(channel).inc()


def delivery(channel: str, provider: str, kind: str, outcome: str) -> None:
    if state.on:
        DELIVERIES.labels(channel, provider, kind, outcome).inc()


def provider_call(provider: str, seconds: float, error: str | None) -> None:
    """One provider call: its time, and `error` permanent, transient or crash if it failed."""
    if state.on:
        SEND_LATENCY.labels(provider).observe(seconds)
        if error is not None:
            SEND_ERRORS.labels(provider, error).inc()


def audit_webhook_batch(result: str) -> None:
    """One POST of the audit webhook: `result` one of AUDIT_WEBHOOK_RESULTS."""
    if state.on:
        AUDIT_WEBHOOK_BATCHES.labels(result).inc()


def provider_breaker(channel: str, provider: str, breaker: str) -> None:
    """A provider breaker's state (closed, half_open, open) as the dispatcher holds it."""
    if state.on:
        PROVIDER_BREAKER.labels(channel, provider).set(BREAKER_STATES[breaker])


def outbox(depths: dict[tuple[str, str], int], oldest: dict[str, float]) -> None:
    """The outbox as the dispatcher read it: every (channel, status) and channel is set, zero
    included, so a drained queue reads 0 rather than its last depth."""
    if state.on:
        for (channel, status), count in depths.items():
            OUTBOX_DEPTH.labels(channel, status).set(count)
        for channel, age in oldest.items():
            OUTBOX_OLDEST.labels(channel).set(age)


@contextmanager
def hash_job(operation: str) -> Iterator[Callable[[], None]]:
    """Around an argon2 job handed to the pool: call the yielded function when a thread starts
    it (from that thread); the queue gauge and the wait are recorded."""
    if not state.on:
        yield _nothing
        return
    queued = HASH_QUEUE.labels(operation)
    submitted = time.perf_counter()
    started = False

    def start() -> None:
        nonlocal started
        started = True
        queued.dec()
        HASH_WAIT.labels(operation).observe(time.perf_counter() - submitted)

    queued.inc()
    try:
        yield start
    finally:
        if not started:  # cancelled before a thread took it
            queued.dec()


def _nothing() -> None:
    return None


def db_checkout(dialect: str, delta: int) -> None:
    if state.on:
        DB_CHECKED_OUT.labels(dialect).inc(delta)


def redis_error(backend: str, operation: str) -> None:
    if state.on:
        REDIS_ERRORS.labels(backend, operation).inc()


def redis_fallback(backend: str, falling_back: bool) -> None:
    if state.on:
        REDIS_FALLBACK.labels(backend).set(1 if falling_back else 0)


# ---- exposition ------------------------------------------------------------------------------


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"AUTHSVC_METRICS_LISTEN: HOST:PORT expected, not {listen!r}")
    return host.strip("[]"), int(port)


@dataclass
class Exposition:
    """The /metrics HTTP server of this process (a thread of prometheus-client's)."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


def serve_http(listen: str) -> Exposition:
    """Serve /metrics on `listen` (port 0: a free one) and start recording. Under
    multiprocess mode (the parent of `serve --workers N`) it sums every process's files."""
    host, port = split_listen(listen)
    registry: CollectorRegistry = REGISTRY
    directory = os.environ.get(MULTIPROC_ENV)
    if directory and multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    server = make_server(
        host, port, make_wsgi_app(registry), ThreadingWSGIServer, handler_class=_ScrapeHandler
    )
    thread = Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    state.on = True
    return Exposition(server, thread)


class _ScrapeHandler(WSGIRequestHandler):
    """prometheus-client's server, but a connection that sends nothing for `timeout` seconds
    is closed: each connection holds a thread, and idle ones must not pile up (attack review:
    300 idle connections made 300 threads). Quiet: a scrape a second is not worth a line."""

    timeout = 5.0  # socketserver.StreamRequestHandler sets it on the connection

    def log_message(self, format: str, *args: Any) -> None:
        pass


def stop_recording() -> None:
    state.on = False


def multiprocess() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def use_multiprocess() -> str:
    """Before `serve --workers N` forks: a new directory for this run's files, every value made
    from now on memory-mapped there, recording on (the workers inherit all of it)."""
    made = [m for m in ALL if m._metrics]
    if made:
        raise RuntimeError(f"metrics recorded before multiprocess mode: {made[0]._name}")
    directory = tempfile.mkdtemp(prefix="authsvc-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _rpc_children.clear()
    state.on = True
    return directory


def process_exited(pid: int) -> None:
    """A worker ended: its live gauges stop counting (its counters stay in the sums)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def remove_multiprocess(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == directory:
        del os.environ[MULTIPROC_ENV]
