"""A Locust user that speaks gRPC, with every call timed through Locust's request events.

grpc's sync channel runs on gevent once `grpc.experimental.gevent.init_gevent()` has been called,
which must happen before any channel exists: importing this module does it (locustfile imports
it first). Each call fires one `request` event: request_type "grpc", the RPC name, the latency
in ms, the response size, and as exception the gRPC status (code and ErrorInfo reason) unless
that outcome was declared expected for the call; an expected refusal is reported as a success
under the name "<RPC> [<REASON>]", so that refusals the scenario provokes (wrong passwords,
locks, rate limits) are counted apart and never as failures.

Caller authentication: when AUTHSVC_LOADTEST_API_KEY (or a file named by
AUTHSVC_LOADTEST_API_KEY_FILE) is set, every call carries `authorization: Bearer <key>`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.experimental.gevent as grpc_gevent  # type: ignore[import-not-found]

grpc_gevent.init_gevent()

from google.protobuf.message import Message  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from locust import User  # noqa: E402

from authsvc.v1 import auth_service_pb2_grpc  # noqa: E402

R = TypeVar("R", bound=Message)
CALL_TIMEOUT_S = float(os.environ.get("LOADTEST_CALL_TIMEOUT_S", "30"))


def api_key() -> str | None:
    key = os.environ.get("AUTHSVC_LOADTEST_API_KEY", "").strip()
    if key:
        return key
    path = os.environ.get("AUTHSVC_LOADTEST_API_KEY_FILE", "").strip()
    if path:
        return Path(path).read_text().strip() or None
    return None


class RpcFailure(Exception):
    """An unexpected gRPC outcome; its text is what Locust groups failures by."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


def reason_of(error: grpc.RpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed call ('' when there is none)."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return ""
    if status is None:
        return ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            return str(info.reason)
    return ""


class GrpcUser(User):
    abstract = True
    # Calls of this process answered UNAVAILABLE (a replica killed with calls in flight).
    unavailable: int = 0

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._channel = grpc.insecure_channel(self.host or "127.0.0.1:50051")
        self.auth = auth_service_pb2_grpc.AuthServiceStub(self._channel)
        key = api_key()
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {key}"),) if key else ()
        )
        # The last call's status code name and ErrorInfo reason ("OK", ""): what a retry reads.
        self.last_code = "OK"
        self.last_reason = ""

    def on_stop(self) -> None:
        self._channel.close()

    def call(
        self,
        name: str,
        method: Callable[..., R],
        request: Message,
        *,
        expected: Collection[str] = (),
    ) -> R | None:
        """Call `method(request)`, fire the request event; None when the call was refused.

        `expected` holds ErrorInfo reasons (or status code names) that this call may meet by
        design: those are successes named "<name> [<REASON>]".
        """
        started = time.perf_counter()
        try:
            response = method(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            elapsed = (time.perf_counter() - started) * 1000.0
            code = error.code().name if error.code() is not None else "UNKNOWN"
            reason = reason_of(error)
            self.last_code, self.last_reason = code, reason
            if code == "UNAVAILABLE":
                GrpcUser.unavailable += 1
            if reason in expected or code in expected:
                self.environment.events.request.fire(
                    request_type="grpc",
                    name=f"{name} [{reason or code}]",
                    response_time=elapsed,
                    response_length=0,
                    exception=None,
                    context={"code": code, "reason": reason},
                )
            else:
                self.environment.events.request.fire(
                    request_type="grpc",
                    name=name,
                    response_time=elapsed,
                    response_length=0,
                    exception=RpcFailure(code, reason),
                    context={"code": code, "reason": reason},
                )
            return None
        elapsed = (time.perf_counter() - started) * 1000.0
        self.last_code, self.last_reason = "OK", ""
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed,
            response_length=response.ByteSize(),
            exception=None,
            context={"code": "OK"},
        )
        return response

    def unexpected(self, name: str, why: str) -> None:
        """A call that answered but not what the scenario needs (e.g. a session was expected)."""
        self.environment.events.request.fire(
            request_type="check",
            name=name,
            response_time=0.0,
            response_length=0,
            exception=RpcFailure("UNEXPECTED", why),
            context={},
        )
