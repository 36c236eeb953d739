"""The per-call stack, layer by layer (`python bench/stack.py`): what the plumbing every RPC goes
through costs, without any of the RPC's own work.

Two measurements, both printed, nothing asserted:

1. Each layer's function on its own, in this process (median of --repeats timings of --calls
   calls, µs per call): the caller check (CallerRegistry.identify), the request id, the
   control-character check of a VerifyRequest, audit.set_request_id and the JSON log line
   (written to /dev/null through the service's own structlog configuration).
2. Server CPU per call on a real grpc.aio server (its own process, its CPU time read from
   /proc) answering ValidateSession with an empty response, stacked up one layer at a time:
   bare handler; + the caller check (callers.Guard); + the `rpc` wrapper (request id,
   well-formedness, error mapping, log line). STACK_UVLOOP=1 runs the server on uvloop.
   The client runs in another process, --concurrency calls in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

API_KEY = "authsvc_stack-" + "k" * 32
LAYERS = ("bare", "guard", "guard+rpc")


def _settings(workdir: str) -> Any:
    from authsvc.config import ApiKey, Settings

    return Settings(
        database_url=f"sqlite+aiosqlite:///{workdir}/stack.db",
        secret_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        api_keys=(ApiKey(name="bench", key=API_KEY, rpcs=("*",)),),
        log_format="json",
    )


def _per_call(function: Callable[[], object], calls: int, repeats: int) -> float:
    """Median µs of this process's CPU time per call of `function` (CPU time, not wall time:
    other processes' load on a shared machine changes it less)."""
    timings = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            function()
        timings.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(timings)


def layers_in_process(calls: int, repeats: int) -> list[tuple[str, float]]:
    import structlog

    from authsvc import audit, log, validation
    from authsvc.api import rpc
    from authsvc.api.callers import CallerRegistry
    from authsvc.app import App
    from authsvc.config import LogFormat
    from authsvc.v1 import auth_service_pb2 as pb
    from authsvc.v1 import common_pb2

    with tempfile.TemporaryDirectory() as workdir:
        app = App.build(_settings(workdir))
        registry = CallerRegistry(app)
        metadata = (
            ("authorization", f"Bearer {API_KEY}"),
            ("x-request-id", "bench-0123456789abcdef"),
            ("user-agent", "grpc-python/1.85"),
        )
        request = pb.VerifyRequest(
            flow_id="6f1c1b1e-8e4b-4bb2-9d1e-2f0f6b6b6b6b",
            code="123456",
            client=common_pb2.ClientContext(ip_address="198.51.100.7", user_agent="bench"),
        )

        class Context:
            def invocation_metadata(self) -> Any:
                return metadata

        context: Any = Context()
        stderr = sys.stderr
        with open(os.devnull, "w") as devnull:
            sys.stderr = devnull
            try:
                log.configure(LogFormat.JSON)
                logger = structlog.get_logger("authsvc.rpc")
                results = [
                    (
                        "caller check (identify)",
                        _per_call(lambda: registry.identify(metadata, []), calls, repeats),
                    ),
                    ("request id", _per_call(lambda: rpc._request_id(context), calls, repeats)),
                    (
                        "control characters (VerifyRequest)",
                        _per_call(
                            lambda: validation.no_control_characters(request), calls, repeats
                        ),
                    ),
                    (
                        "audit.set_request_id",
                        _per_call(
                            lambda: audit.set_request_id("bench-0123456789abcdef"), calls, repeats
                        ),
                    ),
                    (
                        "log line (JSON)",
                        _per_call(
                            lambda: logger.info(
                                "rpc",
                                method="Verify",
                                outcome="OK",
                                reason="",
                                latency_ms=1.23,
                                request_id="bench-0123456789abcdef",
                                backend="bench",
                            ),
                            calls,
                            repeats,
                        ),
                    ),
                ]
            finally:
                sys.stderr = stderr
        asyncio.run(app.close())
    return results


# ---- the server (its own process) --------------------------------------------------------------


async def _serve(layer: str, port: int, workdir: str) -> None:
    import grpc

    from authsvc import log
    from authsvc.api.callers import CallerRegistry, Guard
    from authsvc.api.rpc import rpc
    from authsvc.app import App
    from authsvc.config import LogFormat
    from authsvc.v1 import auth_service_pb2 as pb
    from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

    log.configure(LogFormat.JSON)
    app = App.build(_settings(workdir))

    class Bare(pb_grpc.AuthServiceServicer):
        async def ValidateSession(self, request: Any, context: Any) -> Any:
            return pb.ValidateSessionResponse()

    class Wrapped(pb_grpc.AuthServiceServicer):
        _app = app

        @rpc("ValidateSession")
        async def ValidateSession(self, request: Any, context: Any) -> Any:
            return pb.ValidateSessionResponse()

    server = grpc.aio.server()
    registrar: Any = server if layer == "bare" else Guard(server, CallerRegistry(app))
    servicer: Any = Wrapped() if layer == "guard+rpc" else Bare()  # type: ignore[abstract]
    pb_grpc.add_AuthServiceServicer_to_server(servicer, registrar)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0)
    await app.close()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(target: str, concurrency: int, duration: float) -> int:
    import grpc

    from authsvc.v1 import auth_service_pb2 as pb
    from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {API_KEY}"), ("x-request-id", "bench-1"))
    request = pb.ValidateSessionRequest(session_token="t" * 43)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        deadline = time.monotonic() + duration
        done = 0

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await stub.ValidateSession(request, metadata=metadata, timeout=10)
                done += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done


def _client(target: str, concurrency: int, duration: float, pipe: Any) -> None:
    pipe.send(asyncio.run(_drive(target, concurrency, duration)))


def server_cpu_per_call(
    layer: str, concurrency: int, duration: float, env: dict[str, str]
) -> float:
    """Server CPU µs per call of `layer` over one measurement."""
    import multiprocessing

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", layer, str(port), workdir],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            context = multiprocessing.get_context("spawn")
            warm_end, warm_start = context.Pipe(False)
            warm = context.Process(
                target=_client, args=(f"127.0.0.1:{port}", concurrency, 0.5, warm_start)
            )
            warm.start()
            warm_end.recv()
            warm.join()
            receive, send = context.Pipe(False)
            client = context.Process(
                target=_client, args=(f"127.0.0.1:{port}", concurrency, duration, send)
            )
            before = _cpu_s(server.pid)
            client.start()
            calls: int = receive.recv()
            after = _cpu_s(server.pid)
            client.join()
        finally:
            server.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(10)
            if server.poll() is None:
                server.kill()
                server.wait()
    return (after - before) / max(calls, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--in-process-only", action="store_true")
    args = parser.parse_args()
    if args.serve:
        layer, port, workdir = args.serve
        from authsvc import eventloop

        eventloop.run(
            _serve(layer, int(port), workdir), use_uvloop=os.environ.get("STACK_UVLOOP") == "1"
        )
        return
    print(f"bench/stack.py, load average {os.getloadavg()[0]:.2f}; medians of {args.repeats}")
    print("each layer in process (µs per call):")
    for name, value in layers_in_process(args.calls, args.repeats):
        print(f"  {name:40s} {value:8.1f}")
    if args.in_process_only:
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(
        "server CPU per call, ValidateSession with an empty answer "
        f"(µs, {args.concurrency} in flight):"
    )
    measured: dict[str, list[float]] = {layer: [] for layer in LAYERS}
    for _ in range(args.repeats):  # interleaved: drift and bursts of load hit every layer alike
        for layer in LAYERS:
            measured[layer].append(server_cpu_per_call(layer, args.concurrency, args.duration, env))
    previous = 0.0
    for layer in LAYERS:
        value = statistics.median(measured[layer])
        print(f"  {layer:40s} {value:8.1f}  (+{value - previous:.1f})")
        previous = value


if __name__ == "__main__":
    main()
