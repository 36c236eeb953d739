"""The gRPC server: create_server() for tests and serve() for the command line.

Graceful stop: health turns NOT_SERVING first (load balancers stop sending), in-flight calls get
the grace period to finish, the dispatcher stops, then the process exits.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# grpc-stubs predates the asyncio health servicer that grpcio-health-checking exports here.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from authsvc.api.account_servicer import AccountServicer
from authsvc.api.auth_servicer import AuthServicer
from authsvc.app import App
from authsvc.clock import Clock
from authsvc.config import Settings
from authsvc.courier.dispatcher import Dispatcher
from authsvc.federation.assertions import AssertionVerifier
from authsvc.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
)

log = structlog.get_logger("authsvc.server")

AUTH_SERVICE = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
ACCOUNT_SERVICE = account_service_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name
# Requests are small; refuse anything larger before it is parsed.
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass
class Server:
    grpc_server: grpc.aio.Server
    port: int
    app: App
    health: health_aio.HealthServicer
    _stop_dispatcher: asyncio.Event = field(default_factory=asyncio.Event)
    _dispatcher_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.grpc_server.start()
        if self.app.settings.dispatcher_enabled:
            dispatcher = Dispatcher(self.app)
            self._dispatcher_task = asyncio.create_task(dispatcher.run(self._stop_dispatcher))
        for service in (AUTH_SERVICE, ACCOUNT_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(self.app.settings.grace_period_s if grace is None else grace)
        self._stop_dispatcher.set()
        if self._dispatcher_task is not None:
            await self._dispatcher_task
        await self.app.close()


async def create_server(
    settings: Settings,
    *,
    clock: Clock | None = None,
    listen: str | None = None,
    reuse_port: bool = False,
) -> Server:
    """Build (not start) the server; `listen` may end in :0 to take a free port.

    `reuse_port` (serve --workers only) lets several processes bind the same port.
    """
    app = App.build(settings, clock)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    verifier = AssertionVerifier(app)  # one key cache for both services
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(app, verifier), server)
    account_service_pb2_grpc.add_AccountServiceServicer_to_server(
        AccountServicer(app, verifier), server
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (AUTH_SERVICE, ACCOUNT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(listen or settings.listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen or settings.listen}")
    return Server(grpc_server=server, port=port, app=app, health=health_servicer)


async def serve(
    settings: Settings,
    listen: str | None = None,
    *,
    reuse_port: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, or until `stop` is set when the caller handles signals."""
    server = await create_server(settings, listen=listen, reuse_port=reuse_port)
    await server.start()
    log.info(
        "serving",
        listen=listen or settings.listen,
        port=server.port,
        environment=settings.environment.value,
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("draining", grace_s=settings.grace_period_s)
    await server.stop()
    log.info("stopped")
