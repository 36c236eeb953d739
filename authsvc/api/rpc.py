"""The wrapper every RPC handler goes through: request id, rich errors, one log line, metrics.

One canonical line per call: method, outcome (gRPC status name), ErrorInfo reason, latency and
request id. The request itself is never logged: it holds passwords, codes and tokens. The same
outcome, reason and latency feed the RPC metrics (authsvc/metrics.py) when they are recorded:
the wrapper is built once per method, so grpc.aio servers get the RPC metrics that grpc's own
OpenTelemetry plugin does not report for them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from grpc.aio import ServicerContext
from sqlalchemy.exc import DBAPIError

from authsvc import audit, metrics, tracing, validation
from authsvc.api.callers import current_backend, current_request_id, request_id
from authsvc.api.decoding import Undecodable
from authsvc.api.status import to_grpc_status
from authsvc.app import App
from authsvc.errors import Failure, LimiterUnavailable, invalid_field

log = structlog.get_logger("authsvc.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")
Handler = Callable[[S, Req, ServicerContext[Req, Resp]], Awaitable[Resp]]


def _request_id(context: ServicerContext[Req, Resp]) -> str:
    # Read from the metadata by the caller check, which every API handler sits behind.
    return current_request_id.get() or request_id(context.invocation_metadata() or ())


async def _undecodable(servicer: object, name: str) -> None:
    # Throttled per calling backend: garbage names no end user, and charging a shared
    # bucket would let one backend's garbage refuse every other backend's calls.
    app = getattr(servicer, "_app", None)
    if isinstance(app, App):
        await app.limits.malformed(app.clock.now(), name, backend=current_backend.get())
    raise invalid_field("request", "the request body is not a valid message of this RPC")


def rpc(name: str) -> Callable[[Handler[S, Req, Resp]], Handler[S, Req, Resp]]:
    def decorate(handler: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
        @functools.wraps(handler)
        async def wrapper(self: S, request: Req, context: ServicerContext[Req, Resp]) -> Resp:
            request_id = _request_id(context)
            audit.set_request_id(request_id)
            started = time.perf_counter()
            outcome, reason = "OK", ""
            metered_rpc = metrics.rpc_children(name) if metrics.state.on else None
            if metered_rpc is not None:
                metered_rpc.in_flight.inc()
            app = getattr(self, "_app", None)
            metered = app.db.round_trips.metered(name) if isinstance(app, App) else nullcontext([0])
            with metered as meter:
                try:
                    # What every request must be before its handler runs: decodable, and
                    # with no control character in any string field.
                    if isinstance(request, Message):
                        validation.no_control_characters(request)
                    elif isinstance(request, Undecodable):
                        await _undecodable(self, name)
                    response = await handler(self, request, context)
                    context.set_trailing_metadata((("x-request-id", request_id),))
                    return response
                except Failure as failure:
                    outcome, reason = failure.status, failure.reason
                    status = to_grpc_status(failure)
                    await context.abort(
                        status.code,
                        status.details,
                        (*status.trailing_metadata, ("x-request-id", request_id)),
                    )
                    raise  # unreachable: abort raises
                except LimiterUnavailable:
                    # Infrastructure, not the API's contract: sends fail closed until Redis is back.
                    outcome, reason = "UNAVAILABLE", "RATE_LIMITER_UNAVAILABLE"
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        "the rate limiter is unavailable; retry later",
                        (("x-request-id", request_id),),
                    )
                    raise
                except asyncio.CancelledError:
                    outcome = "CANCELLED"
                    raise
                except Exception as error:
                    if isinstance(error, grpc.aio.AbortError):
                        raise
                    if _database_unreachable(error):
                        # A lost or refused database connection (a failover, a restart): the
                        # statement did not commit, the pool reconnects; the caller may retry.
                        outcome, reason = "UNAVAILABLE", "DATABASE_UNAVAILABLE"
                        log.warning("database_unavailable", method=name, request_id=request_id)
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            "the database is unavailable; retry later",
                            (("x-request-id", request_id),),
                        )
                        raise
                    outcome, reason = "INTERNAL", type(error).__name__
                    log.exception("rpc_crashed", method=name, request_id=request_id)
                    await context.abort(
                        grpc.StatusCode.INTERNAL, "internal error", (("x-request-id", request_id),)
                    )
                    raise
                finally:
                    if tracing.enabled():
                        tracing.rpc_outcome(outcome, reason)
                    elapsed = time.perf_counter() - started
                    if metered_rpc is not None:
                        metered_rpc.in_flight.dec()
                        metered_rpc.latency.observe(elapsed)
                        # A crash's exception name stays in the log line, not in a label.
                        metered_rpc.answered(
                            outcome, "INTERNAL" if outcome == "INTERNAL" else reason
                        ).inc()
                    log.info(
                        "rpc",
                        method=name,
                        outcome=outcome,
                        reason=reason,
                        latency_ms=round(elapsed * 1000, 2),
                        request_id=request_id,
                        backend=current_backend.get(),
                        db_round_trips=meter[0],
                    )

        return wrapper

    return decorate


def _database_unreachable(error: Exception) -> bool:
    """A connection to the database lost or refused (not a statement's own error)."""
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated) or isinstance(
            error.orig, (ConnectionError, OSError)
        )
    return isinstance(error, (ConnectionError, OSError)) and not isinstance(
        error, (FileNotFoundError, PermissionError)
    )
