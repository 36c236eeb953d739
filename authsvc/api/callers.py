"""Caller authentication: only known backends may call, and only the RPCs they were given.

A backend proves who it is with an API key (`authorization: Bearer <key>` metadata; only the
key's SHA-256 is stored, in the `backends` table or in AUTHSVC_API_KEYS) and/or a client
certificate (mTLS: its identity, a SAN or the CN, is the backend's name). A call without
valid credentials, or to an RPC the backend may not call, is refused before any RPC logic
runs: PERMISSION_DENIED with ErrorInfo PERMISSION_DENIED (common.proto, "Callers"). Health
checking and reflection stay open.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
import structlog
from sqlalchemy import select

from authsvc import metrics, tracing
from authsvc.api.decoding import Undecodable, tolerant
from authsvc.api.status import to_grpc_status
from authsvc.app import App
from authsvc.db import Backend
from authsvc.errors import Failure, invalid_field
from authsvc.otp import random_token
from authsvc.v1 import (
    account_service_pb2,
    auth_service_pb2,
    factor_service_pb2,
    passkey_service_pb2,
    readiness_service_pb2,
)

log = structlog.get_logger("authsvc.rpc")

KEY_PREFIX = "authsvc_"
MAX_KEY_LENGTH = 128
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
#: The calling backend's name, for the RPC's log line ("" before authentication).
current_backend: contextvars.ContextVar[str] = contextvars.ContextVar("authsvc_backend", default="")
#: The call's request id (its x-request-id, or a new one), set with the caller check.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "authsvc_request_id", default=""
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(metadata: Iterable[tuple[str, Any]]) -> str:
    """The caller's x-request-id when well formed, else a new one (answered in the trailers)."""
    for key, value in metadata:
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def _methods() -> dict[str, str]:
    """Every RPC of the API: full method path -> "Service/Method"."""
    found = {}
    for module in (
        auth_service_pb2,
        account_service_pb2,
        readiness_service_pb2,
        factor_service_pb2,
        passkey_service_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = f"{service.name}/{method.name}"
    return found


METHODS = _methods()


def normalise_rpcs(patterns: Iterable[str]) -> frozenset[str]:
    """ "*", "AuthService/*", "AuthService/Login" or "Login" -> the full method paths."""
    chosen: set[str] = set()
    for raw in patterns:
        pattern = raw.strip().removeprefix("authsvc.v1.")
        if not pattern:
            continue
        if pattern == "*":
            matches = set(METHODS)
        elif pattern.endswith("/*"):
            service = pattern[:-2]
            matches = {path for path, short in METHODS.items() if short.startswith(service + "/")}
        elif "/" in pattern:
            matches = {path for path, short in METHODS.items() if short == pattern}
        else:
            matches = {path for path, short in METHODS.items() if short.endswith("/" + pattern)}
        if not matches:
            raise ValueError(f"unknown RPC {raw!r}")
        chosen |= matches
    if not chosen:
        raise ValueError("a backend needs at least one RPC")
    return frozenset(chosen)


def new_key() -> str:
    return KEY_PREFIX + random_token(32)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


#: Which credentials name a backend (the `backends.credentials` column, ApiKey.credentials).
CREDENTIALS = ("key", "mtls", "both")


def accepts_key(credentials: str) -> bool:
    return credentials in ("key", "both")


def accepts_certificate(credentials: str) -> bool:
    # Anything else (an unknown value in the table) accepts no certificate: fail closed.
    return credentials in ("mtls", "both")


@dataclass(frozen=True)
class Caller:
    name: str
    rpcs: frozenset[str]


class CallerRegistry:
    """The backends allowed to call: from configuration, plus the `backends` table (re-read
    every `api_keys_refresh_s`, so `authsvc backend add|revoke` takes effect without a restart).
    """

    def __init__(self, app: App) -> None:
        self._app = app
        self._static_keys: dict[bytes, Caller] = {}
        self._static_names: dict[str, Caller] = {}
        for entry in app.settings.api_keys:
            caller = Caller(entry.name, normalise_rpcs(entry.rpcs))
            if accepts_key(entry.accepts):
                if entry.key is not None:
                    self._static_keys[key_digest(entry.key.get_secret_value())] = caller
                if entry.key_sha256 is not None:
                    self._static_keys[bytes.fromhex(entry.key_sha256)] = caller
            if accepts_certificate(entry.accepts):
                self._static_names[entry.name] = caller
        self.by_digest: dict[bytes, Caller] = dict(self._static_keys)
        self.by_name: dict[str, Caller] = dict(self._static_names)

    async def refresh(self) -> None:
        async with self._app.read() as db:
            rows = list(await db.scalars(select(Backend).where(Backend.revoked_at.is_(None))))
        by_digest, by_name = dict(self._static_keys), dict(self._static_names)
        for row in rows:
            try:
                caller = Caller(row.name, normalise_rpcs(row.rpcs.split()))
            except ValueError:
                log.warning("backend_rpcs_invalid", backend=row.name)
                continue
            # A certificate names only a backend that accepts certificates: a key backend's
            # name is not an mTLS identity (a client certificate of that name gets nothing).
            if accepts_certificate(row.credentials):
                by_name[row.name] = caller
            else:
                by_name.pop(row.name, None)
            if row.key_digest is not None and accepts_key(row.credentials):
                by_digest[row.key_digest] = caller
        self.by_digest, self.by_name = by_digest, by_name

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self._app.settings.api_keys_refresh_s)
            except TimeoutError:
                try:
                    await self.refresh()
                except Exception:  # keep the last good list; say so
                    log.exception("backends_refresh_failed")

    def identify(
        self, metadata: Sequence[tuple[str, Any]], peer: Iterable[bytes] | None
    ) -> Caller | None:
        bearer = [value for key, value in metadata if key == "authorization"]
        if bearer:
            if len(bearer) != 1 or not isinstance(bearer[0], str):
                return None
            scheme, _, key = bearer[0].partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key or len(key) > MAX_KEY_LENGTH:
                return None
            return self.by_digest.get(key_digest(key))
        for identity in peer or ():
            caller = self.by_name.get(identity.decode("utf-8", "replace"))
            if caller is not None:
                return caller
        return None


def _denied() -> Failure:
    return Failure(
        "PERMISSION_DENIED",
        "PERMISSION_DENIED",
        "this backend may not call this RPC (missing, unknown or unauthorised credentials)",
    )


if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class Guard:
    """Stands for the grpc server while the services register their handlers, and registers
    each of them guarded: the caller check runs inside the handler, built once per method.

    (A grpc.aio ServerInterceptor did the same per call: one more coroutine, a handler and
    closures built for every call, ~45 µs of server CPU per call on this machine.) Every
    handler reaches the server through here, so none is left unguarded.
    """

    def __init__(self, server: grpc.aio.Server, registry: CallerRegistry) -> None:
        self._server = server
        self._registry = registry

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            [_GuardedGenericHandler(handler, self._registry) for handler in handlers]
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        # grpc-stubs predates registered method handlers (grpcio >= 1.62).
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service,
            {
                name: guarded(f"/{service}/{name}", handler, self._registry)
                for name, handler in handlers.items()
            },
        )


class _GuardedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], registry: CallerRegistry) -> None:
        self._inner = inner
        self._registry = registry
        self._guarded: dict[str, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        method = handler_call_details.method
        found = self._guarded.get(method)
        if found is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            # A handler per method: the registered services return the same one every time.
            found = self._guarded[method] = guarded(method, handler, self._registry)
        return found


_UNTRACED = nullcontext()


def guarded(method: str, handler: Handler, registry: CallerRegistry) -> Handler:
    """`handler` behind the caller check (open services: behind the body check only)."""
    if method.startswith(OPEN_SERVICES):
        return _open_and_tolerant(handler)
    inner = cast(Behavior | None, handler.unary_unary)
    if inner is None:  # the API has unary RPCs only
        return handler

    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = cast(Sequence[tuple[str, Any]], context.invocation_metadata() or ())
        # Who calls first (no I/O): only a known backend's `traceparent` is continued. A
        # stranger's would choose the trace id written in our logs and force sampling past
        # the operator's sampler. A refused call is traced too, in a trace of its own.
        caller = registry.identify(metadata, context.peer_identities())
        propagated = metadata if caller is not None else ()
        # (Checked per call, not per registration: tracing may be switched on after start-up.)
        with tracing.rpc_span(method, propagated) if tracing.enabled() else _UNTRACED:
            current_request_id.set(request_id(metadata))
            if caller is None or method not in caller.rpcs:
                await _refuse(context, method, caller)
            current_backend.set(caller.name if caller else "")
            return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        checked,
        # An undecodable body still reaches `checked` (as UNDECODABLE): authenticated,
        # answered and logged like any call, never grpc's UNKNOWN.
        request_deserializer=tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _open_and_tolerant(handler: Handler) -> Handler:
    """Health checking needs no credentials, yet an undecodable body still answers
    INVALID_FIELD with its ErrorInfo, never grpc's UNKNOWN naming the server's exception."""
    inner = cast(Behavior | None, handler.unary_unary)
    if inner is None:  # streams (Health.Watch, reflection): grpc's own handling
        return handler

    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            status = to_grpc_status(invalid_field("request", "the request body is not valid"))
            await context.abort(status.code, status.details, status.trailing_metadata)
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        checked,
        request_deserializer=tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


async def _refuse(
    context: grpc.aio.ServicerContext[Any, Any], method: str, caller: Caller | None
) -> None:
    started = time.perf_counter()
    request_id = current_request_id.get()
    if metrics.state.on:  # refused before the RPC's own wrapper: counted here
        short = method.rpartition("/")[2]
        metrics.rpc_children(short).answered("PERMISSION_DENIED", "PERMISSION_DENIED").inc()
    log.info(
        "rpc",
        method=method.rpartition("/")[2],
        outcome="PERMISSION_DENIED",
        reason="PERMISSION_DENIED",
        backend=caller.name if caller else "",
        caller="unauthorised" if caller else "unauthenticated",
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        request_id=request_id,
    )
    if tracing.enabled():
        tracing.rpc_outcome("PERMISSION_DENIED", "PERMISSION_DENIED")
    status = to_grpc_status(_denied())
    await context.abort(
        status.code, status.details, (*status.trailing_metadata, ("x-request-id", request_id))
    )


async def register_backend(
    app: App, name: str, rpcs: Sequence[str], *, credentials: str = "key"
) -> str | None:
    """Add (or replace) a backend; returns its new API key, shown once (None: mTLS only).

    `credentials`: "key" (API key only, the default), "mtls" (client certificate whose
    identity is `name`, only) or "both"."""
    from authsvc.db import Backend as Row

    if credentials not in CREDENTIALS:
        raise ValueError(f"credentials: one of {', '.join(CREDENTIALS)}")
    patterns = " ".join(
        sorted(short for path, short in METHODS.items() if path in normalise_rpcs(rpcs))
    )
    key = new_key() if accepts_key(credentials) else None
    async with app.write() as db:
        existing = await db.get(Row, name)
        if existing is not None:
            await db.delete(existing)
            await db.flush()
        db.add(
            Row(
                name=name,
                key_digest=key_digest(key) if key else None,
                rpcs=patterns,
                credentials=credentials,
                created_at=app.clock.now(),
                revoked_at=None,
            )
        )
    return key


async def register_key(app: App, name: str, key: str, rpcs: Sequence[str] = ("*",)) -> None:
    """Register a given key (the development key of `make run`)."""
    from authsvc.db import Backend as Row

    normalise_rpcs(rpcs)
    async with app.write() as db:
        existing = await db.get(Row, name)
        if existing is not None:
            await db.delete(existing)
            await db.flush()
        db.add(
            Row(
                name=name,
                key_digest=key_digest(key),
                rpcs=" ".join(rpcs),
                credentials="key",
                created_at=app.clock.now(),
                revoked_at=None,
            )
        )


async def revoke_backend(app: App, name: str) -> bool:
    from sqlalchemy import update

    async with app.write() as db:
        done = await db.execute(
            update(Backend)
            .where(Backend.name == name, Backend.revoked_at.is_(None))
            .values(revoked_at=app.clock.now())
        )
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def list_backends(app: App) -> list[Backend]:
    async with app.read() as db:
        return list(await db.scalars(select(Backend).order_by(Backend.name)))
