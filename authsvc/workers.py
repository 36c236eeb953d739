"""`authsvc serve --workers N`: N server processes sharing one port, one dispatcher.

The pattern of grpc's examples/python/multiprocessing: the parent forks the workers before any
gRPC server, channel or event loop exists (gRPC's core does not survive a fork once started),
and every worker binds the same address with SO_REUSEPORT, so the kernel spreads connections
over them. Then:

- the parent runs the outbox dispatcher, once (workers have it disabled and answer Challenge
  with the delivery status found at once, since no dispatcher shares their process; the parent
  picks new messages up within `dispatcher_poll_s`);
- each worker hashes passwords on cpu_count / N threads unless AUTHSVC_PASSWORD_HASH_THREADS
  says otherwise, so N workers never run more argon2 threads than there are cores;
- SIGTERM or SIGINT to the parent is passed to every worker, which drains as `serve` does
  (health NOT_SERVING, in-flight calls get the grace period); the parent then stops its
  dispatcher and exits 0 when every worker exited 0;
- if a worker dies on its own, the parent stops the others and exits 1: a process supervisor
  (systemd, Kubernetes) restarts the whole, which is simpler to reason about than respawning;
- a worker whose parent is killed outright (SIGKILL) gets SIGTERM from the kernel (Linux
  PR_SET_PDEATHSIG), so no orphan keeps the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
from multiprocessing.process import BaseProcess

import structlog

from authsvc import eventloop, metrics
from authsvc.config import Environment, RateLimitBackend, Settings

log = structlog.get_logger("authsvc.workers")

_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1


def worker_settings(settings: Settings, workers: int) -> Settings:
    """What each worker runs with: no dispatcher, no wait for one, its share of the cores."""
    threads = settings.password_hash_threads or max(1, (os.cpu_count() or 1) // workers)
    return settings.model_copy(
        update={
            # The parent serves /metrics for all (the workers write their shared files).
            "metrics_listen": "",
            "dispatcher_enabled": False,
            "delivery_wait_s": 0.0,
            "password_hash_threads": threads,
        }
    )


MEMORY_LIMITER_WITH_WORKERS = (
    "--workers {workers} with AUTHSVC_RATE_LIMIT_BACKEND=memory: each worker keeps its own "
    "rate-limit buckets, so every limit is multiplied by {workers}"
)


def check_limiter(settings: Settings, workers: int) -> None:
    """Several workers must share their rate limits: in production the Redis backend is
    required (refused otherwise, before any fork); in development a warning says so."""
    if workers <= 1 or settings.rate_limit_backend is not RateLimitBackend.MEMORY:
        return
    message = MEMORY_LIMITER_WITH_WORKERS.format(workers=workers)
    if settings.environment is Environment.PRODUCTION:
        raise SystemExit(f"refused: {message}; set AUTHSVC_RATE_LIMIT_BACKEND=redis")
    log.warning(message + "; use the redis backend outside development", workers=workers)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker(settings: Settings, listen: str, index: int) -> None:
    _die_with_parent()
    structlog.contextvars.bind_contextvars(worker=index)
    eventloop.run(_serve_worker(settings, listen), use_uvloop=settings.uvloop)


async def _serve_worker(settings: Settings, listen: str) -> None:
    from authsvc.server import serve

    # Signals were blocked before the fork: handle them on this loop first, then unblock (a
    # signal that arrived meanwhile is delivered now, to the handler).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    await serve(settings, listen, reuse_port=True, stop=stop)


def serve_workers(settings: Settings, listen: str | None, workers: int) -> int:
    check_limiter(settings, workers)
    address = listen or settings.listen
    if address.rsplit(":", 1)[-1] == "0":
        raise SystemExit("--workers needs a fixed port: workers must share it")
    per_worker = worker_settings(settings, workers)
    if settings.database_url.startswith("sqlite"):
        log.warning(
            "several workers on SQLite: writes from different processes wait on its file lock "
            "(busy timeout); use PostgreSQL to scale writes",
            workers=workers,
        )
    # Metrics: the files of this run's processes in a directory of its own, made before the
    # forks (every process then writes there), served and removed by the parent.
    directory = metrics.use_multiprocess() if settings.metrics_listen else None
    context = multiprocessing.get_context("fork")
    # No signal may reach the parent between the forks and its handlers: block, fork, handle.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    processes: list[BaseProcess] = []
    for index in range(workers):
        process = context.Process(
            target=_worker, args=(per_worker, address, index), name=f"authsvc-worker-{index}"
        )
        process.start()
        processes.append(process)
    log.info("workers started", workers=workers, listen=address, pids=[p.pid for p in processes])
    try:
        return eventloop.run(_supervise(settings, processes), use_uvloop=settings.uvloop)
    finally:
        if directory is not None:
            metrics.remove_multiprocess(directory)


async def _supervise(settings: Settings, processes: list[BaseProcess]) -> int:
    from authsvc.app import App
    from authsvc.campaigns import campaign
    from authsvc.courier.audit_webhook import AuditWebhook
    from authsvc.courier.dispatcher import Dispatcher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    exposition = metrics.serve_http(settings.metrics_listen) if settings.metrics_listen else None
    if exposition is not None:
        log.info(
            "metrics",
            metrics_port=exposition.port,
            directory=os.environ.get(metrics.MULTIPROC_ENV, ""),
        )
    app = App.build(settings) if settings.dispatcher_enabled else None
    stop_dispatcher = asyncio.Event()
    dispatcher = (
        asyncio.create_task(Dispatcher(app).run(stop_dispatcher)) if app is not None else None
    )
    # Campaign rounds run beside the one dispatcher (workers run neither).
    rounds = (
        asyncio.create_task(campaign.run_forever(app, stop_dispatcher)) if app is not None else None
    )
    # The audit webhook sink too, when configured (its leases would allow several anyway).
    webhook = (
        asyncio.create_task(AuditWebhook(app).run(stop_dispatcher))
        if app is not None and settings.audit_webhook_url is not None
        else None
    )
    crashed = False
    while not stop.is_set():
        if any(not process.is_alive() for process in processes):
            crashed = True
            log.error("worker exited", exit_codes=[process.exitcode for process in processes])
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)

    log.info("draining workers", grace_s=settings.grace_period_s)
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = loop.time() + settings.shutdown_delay_s + settings.grace_period_s + 10.0
    for process in processes:
        await asyncio.to_thread(process.join, max(deadline - loop.time(), 0.1))
        if process.is_alive():
            log.error("worker did not stop: killed", pid=process.pid)
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
    stop_dispatcher.set()
    if dispatcher is not None:
        await dispatcher
    if rounds is not None:
        await rounds
    if webhook is not None:
        await webhook
    if app is not None:
        await app.close()
    for process in processes:
        if process.pid is not None:
            metrics.process_exited(process.pid)
    if exposition is not None:
        exposition.close()
    codes = [process.exitcode for process in processes]
    log.info("stopped", exit_codes=codes)
    return 0 if not crashed and all(code == 0 for code in codes) else 1
