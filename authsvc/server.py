"""The gRPC server: create_server() for tests and serve() for the command line.

Graceful stop: health turns NOT_SERVING first (load balancers stop sending), in-flight calls get
the grace period to finish, the dispatcher stops, then the process exits.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import cast

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# grpc-stubs predates the asyncio health servicer that grpcio-health-checking exports here.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from authsvc import health as health_names
from authsvc import metrics, tracing
from authsvc.api.account_servicer import AccountServicer
from authsvc.api.auth_servicer import AuthServicer
from authsvc.api.callers import CallerRegistry, Guard
from authsvc.api.factor_servicer import FactorServicer
from authsvc.api.passkey_servicer import PasskeyServicer
from authsvc.api.readiness_servicer import ReadinessServicer
from authsvc.app import App
from authsvc.campaigns import campaign
from authsvc.clock import Clock
from authsvc.config import Settings
from authsvc.courier.audit_webhook import AuditWebhook
from authsvc.courier.dispatcher import Dispatcher
from authsvc.courier.providers import CHANNELS
from authsvc.courier.receipt_listener import ReceiptListener
from authsvc.federation.assertions import AssertionVerifier
from authsvc.flows.voice_fallback import VoiceFallback
from authsvc.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    factor_service_pb2,
    factor_service_pb2_grpc,
    passkey_service_pb2,
    passkey_service_pb2_grpc,
    readiness_service_pb2,
    readiness_service_pb2_grpc,
)

log = structlog.get_logger("authsvc.server")

AUTH_SERVICE = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
ACCOUNT_SERVICE = account_service_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name
FACTOR_SERVICE = factor_service_pb2.DESCRIPTOR.services_by_name["FactorService"].full_name
PASSKEY_SERVICE = passkey_service_pb2.DESCRIPTOR.services_by_name["PasskeyService"].full_name
# Current grpcurl and Postman ask for reflection v1 first, older clients for v1alpha.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
READINESS_SERVICE = readiness_service_pb2.DESCRIPTOR.services_by_name["ReadinessService"].full_name
# Requests are small; refuse anything larger before it is parsed.
MAX_MESSAGE_BYTES = 64 * 1024
# Request headers (API key, request id, user agent of the backend): bounded as well.
MAX_METADATA_BYTES = 16 * 1024
# Health names (authsvc/health.py): "" and LIVENESS, READINESS, SENDS, the API services'.
SENDS_HEALTH = health_names.SENDS
API_SERVICES = (
    AUTH_SERVICE,
    ACCOUNT_SERVICE,
    READINESS_SERVICE,
    FACTOR_SERVICE,
    PASSKEY_SERVICE,
)


@dataclass
class Server:
    grpc_server: grpc.aio.Server
    port: int
    app: App
    health: health_aio.HealthServicer
    callers: CallerRegistry | None = None
    _stop_dispatcher: asyncio.Event = field(default_factory=asyncio.Event)
    _dispatcher_task: asyncio.Task[None] | None = None
    _stop_watchers: asyncio.Event = field(default_factory=asyncio.Event)
    _watchers: list[asyncio.Task[None]] = field(default_factory=list)
    readiness: health_names.Readiness | None = None
    reuse_port: bool = False
    receipts: ReceiptListener | None = None
    # /metrics of this process (AUTHSVC_METRICS_LISTEN; a worker of `serve --workers` has
    # none: the parent serves every process's sums).
    metrics_http: metrics.Exposition | None = None
    _health_updates: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        if self.callers is not None:
            await self.callers.refresh()  # the backends allowed to call, before the first call
            self._watchers.append(asyncio.create_task(self.callers.run(self._stop_watchers)))
        if self.app.settings.metrics_listen:
            self.metrics_http = metrics.serve_http(self.app.settings.metrics_listen)
        # Before the port opens: the limiter's first connection (a Redis Cluster's slot map,
        # the script on every node) is not paid inside the first decision's timeout, where it
        # made that decision fall back to the in-process limiter (or a send fail closed).
        await self.app.limits.backend.connect()
        await self.grpc_server.start()
        if self.app.settings.receipts_listen is not None:
            self.receipts = ReceiptListener(
                self.app, self.app.settings.receipts_listen, reuse_port=self.reuse_port
            )
            await self.receipts.start()
        if self.app.settings.dispatcher_enabled:
            for channel in CHANNELS:
                await self.health.set(
                    health_names.PROVIDER_PREFIX + channel, health_pb2.HealthCheckResponse.SERVING
                )
            dispatcher = Dispatcher(self.app, on_channel=self._provider_health)
            self._dispatcher_task = asyncio.create_task(dispatcher.run(self._stop_dispatcher))
            self._watchers.append(
                asyncio.create_task(campaign.run_forever(self.app, self._stop_watchers))
            )
            if self.app.settings.audit_webhook_url is not None:
                webhook = AuditWebhook(self.app)
                self._watchers.append(asyncio.create_task(webhook.run(self._stop_watchers)))
            if self.app.settings.voice_fallback_after_s > 0:  # beside the dispatcher
                fallback = VoiceFallback(self.app)
                self._watchers.append(asyncio.create_task(fallback.run(self._stop_watchers)))
        for name in ("", health_names.LIVENESS):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        # The first probe before start() returns: readiness is known from the first call on.
        # While the database, its schema or Redis is not there, the readiness names answer
        # NOT_SERVING (balancers stop sending, as during a PostgreSQL failover); the probe goes
        # on every interval and a dead connection is invalidated by its own error, so the pool
        # reconnects by itself.
        self.readiness = health_names.Readiness(self.app, self.health, API_SERVICES)
        await self.readiness.update()
        self._watchers.append(asyncio.create_task(self.readiness.run(self._stop_watchers)))

    def _provider_health(self, channel: str, serving: bool) -> None:
        """A channel's providers changed health (the dispatcher's breakers): its health name."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.create_task(self.health.set(health_names.PROVIDER_PREFIX + channel, status))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(self.app.settings.grace_period_s if grace is None else grace)
        if self.receipts is not None:
            await self.receipts.stop()
        self._stop_watchers.set()
        for task in self._watchers:
            await task
        self._stop_dispatcher.set()
        if self._dispatcher_task is not None:
            await self._dispatcher_task
        if self.metrics_http is not None:
            self.metrics_http.close()
            metrics.stop_recording()
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
    callers = CallerRegistry(app)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    # Every service registers through the guard: each handler behind the caller check.
    guard = cast(grpc.aio.Server, Guard(server, callers))
    verifier = AssertionVerifier(app)  # one key cache for both services
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(app, verifier), guard)
    account_service_pb2_grpc.add_AccountServiceServicer_to_server(
        AccountServicer(app, verifier), guard
    )
    readiness_service_pb2_grpc.add_ReadinessServiceServicer_to_server(ReadinessServicer(app), guard)
    factor_service_pb2_grpc.add_FactorServiceServicer_to_server(FactorServicer(app), guard)
    passkey_service_pb2_grpc.add_PasskeyServiceServicer_to_server(PasskeyServicer(app), guard)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, guard)
    serve_reflection(
        guard,
        (*API_SERVICES, health.SERVICE_NAME),
    )
    credentials = server_credentials(settings)
    address = listen or settings.listen
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return Server(
        grpc_server=server,
        port=port,
        app=app,
        health=health_servicer,
        callers=callers,
        reuse_port=reuse_port,
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from AUTHSVC_TLS_CERT_FILE / KEY_FILE; with AUTHSVC_TLS_CLIENT_CA_FILE, mutual TLS
    (every client presents a certificate from that CA; its identity names the backend)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


async def serve(
    settings: Settings,
    listen: str | None = None,
    *,
    reuse_port: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, or until `stop` is set when the caller handles signals."""
    # Here, not in main(): each worker of `serve --workers` has its own exporter thread.
    tracing.configure(settings.tracing)
    if stop is None:
        # Before anything starts: a SIGTERM that comes while the server starts (its port may
        # already answer) drains it once started, instead of killing the process mid-start.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    server = await create_server(settings, listen=listen, reuse_port=reuse_port)
    await server.start()
    log.info(
        "serving",
        listen=listen or settings.listen,
        port=server.port,
        metrics_port=server.metrics_http.port if server.metrics_http else None,
        environment=settings.environment.value,
        # "uvloop" or "asyncio" (AUTHSVC_UVLOOP): which loop runs this process's calls.
        event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
    )
    await stop.wait()
    log.info(
        "draining", grace_s=settings.grace_period_s, shutdown_delay_s=settings.shutdown_delay_s
    )
    if settings.shutdown_delay_s:
        # NOT_SERVING first, calls still served while the balancers take this replica out.
        await server.health.enter_graceful_shutdown()
        await asyncio.sleep(settings.shutdown_delay_s)
    await server.stop()
    tracing.shutdown()  # the spans still queued leave before the process does
    log.info("stopped")


def serve_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """gRPC reflection under both of its names, grpc.reflection.v1 and v1alpha.

    grpcio-reflection implements v1alpha only; v1 renamed the package and kept every message and
    field number, so the same servicer answers both with the same messages on the wire.
    """
    names = (*services, REFLECTION_V1, reflection.SERVICE_NAME)
    servicer = ReflectionServicer(names)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in (REFLECTION_V1, reflection.SERVICE_NAME):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
