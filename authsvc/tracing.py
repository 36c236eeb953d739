"""OpenTelemetry traces: one span per RPC, child spans for the work a call waits on.

Off by default (AUTHSVC_TRACING=false): `span()` then returns one shared no-op context manager,
a global read and a call, so the hot paths pay nothing measurable (docs/performance.md). On,
the spans go to an OTLP/HTTP exporter configured by the standard OTEL_* variables
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...) through a batch processor, off the call's path.

What a span may carry is chosen here and by the callers: method names, gRPC status names,
ErrorInfo reasons, decision names, limit names, channel and provider names, round-trip counts.
Never a request field (login, password, code, phone number, token), which is why there is no
grpc or SQLAlchemy auto-instrumentation: see docs/design.md "Tracing".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

AttributeValue = str | int | float | bool

#: The tracer in use; None while tracing is off (the default).
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None
_OFF: AbstractContextManager[None] = nullcontext()

SERVICE_NAME = "authsvc"


def enabled() -> bool:
    return _tracer is not None


def configure(tracing: bool) -> None:
    """Start exporting spans (OTLP/HTTP, OTEL_* variables) when `tracing` is set."""
    if not tracing or _tracer is not None:
        return
    # Imported here: the exporter pulls in requests and the OTLP protobufs, which a process
    # that never traces has no use for.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    install(BatchSpanProcessor(OTLPSpanExporter()))


def install(*processors: SpanProcessor) -> TracerProvider:
    """Trace into `processors` (the exporter's batch processor; tests: an in-memory one)."""
    global _tracer, _provider
    # OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name the service; "authsvc" otherwise.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for processor in processors:
        provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("authsvc")
    return provider


def shutdown() -> None:
    """Flush what is queued and stop tracing (process exit; tests)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@contextmanager
def _child(
    tracer: trace.Tracer, name: str, kind: SpanKind, attributes: Mapping[str, AttributeValue]
) -> Iterator[Any]:
    """A child span that records an exception leaving it by its type only: OpenTelemetry's
    default records the message and stack, which may carry what the span must not (a
    provider's error quoting the number and the text, a database error quoting a login)."""
    with tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as error:
            current.set_attribute("error.type", type(error).__name__)
            current.set_status(Status(StatusCode.ERROR))
            raise


def span(name: str, **attributes: AttributeValue) -> AbstractContextManager[Any]:
    """A child span of the current one around the block (a no-op while tracing is off)."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    return _child(tracer, name, SpanKind.INTERNAL, attributes)


def db_span(operation: str, dialect: str, decision: Any) -> AbstractContextManager[Any]:
    """A span around one database decision (a transaction, or one autocommit statement):
    named by the operation ("db.read", "db.write", "db.statement") and the decision function,
    never by its SQL or parameters. Arguments are passed as they are, so that nothing is
    built while tracing is off."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    return _child(
        tracer,
        operation,
        SpanKind.CLIENT,
        {
            "db.system": "postgresql" if dialect == "postgresql" else dialect,
            "authsvc.decision": getattr(decision, "__name__", "?"),
        },
    )


def _parent(metadata: Iterable[tuple[str, Any]]) -> Context:
    """The caller's trace (W3C `traceparent` / `tracestate` metadata), if it sent one."""
    carrier: dict[str, str] = {}
    for key, value in metadata:
        if key in ("traceparent", "tracestate") and isinstance(value, str):
            carrier[key] = value
    return propagate.extract(carrier)


@contextmanager
def rpc_span(method: str, metadata: Iterable[tuple[str, Any]]) -> Iterator[None]:
    """The server span of one call, continuing the caller's trace (`method`: the full path,
    "/authsvc.v1.AuthService/Verify")."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    service, _, name = method.lstrip("/").partition("/")
    with tracer.start_as_current_span(
        f"{service}/{name}",
        context=_parent(metadata),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        # The wrapper records the outcome itself; an abort is the answer, not a crash.
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        # Every log line of the call (its "rpc" line included) carries the trace id.
        tokens = structlog.contextvars.bind_contextvars(
            trace_id=format(current.get_span_context().trace_id, "032x")
        )
        try:
            yield
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


def rpc_outcome(outcome: str, reason: str) -> None:
    """Record the call's answer on its span: the gRPC status name and the ErrorInfo reason."""
    current = trace.get_current_span()
    current.set_attribute("rpc.grpc.status", outcome)
    if reason:
        current.set_attribute("authsvc.reason", reason)
    if outcome in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS"):
        current.set_status(Status(StatusCode.ERROR, outcome))


def trace_id() -> str:
    """The current trace id (32 hex digits), "" outside a sampled span or while off."""
    if _tracer is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def set_attributes(attributes: Mapping[str, AttributeValue]) -> None:
    if _tracer is not None:
        trace.get_current_span().set_attributes(attributes)
