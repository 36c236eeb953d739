"""Request bodies that are not a valid protobuf message.

grpc answers a deserializer's exception with UNKNOWN (naming the server's exception class),
before any handler, interceptor logic or log line runs. So handlers are registered with a
deserializer that never raises: an undecodable body becomes the UNDECODABLE sentinel, the caller
authentication runs as for any call, and the RPC wrapper answers INVALID_FIELD ("request") with
its log line and the RPC's rate limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import DecodeError


class Undecodable:
    """The request of a call whose body could not be decoded."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<undecodable request>"


UNDECODABLE: Final = Undecodable()


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering UNDECODABLE instead of raising on a malformed body."""
    if deserializer is None:
        return None

    def decode(body: bytes) -> Any:
        try:
            return deserializer(body)
        except (DecodeError, ValueError, TypeError, RuntimeError):
            # DecodeError for wire-format errors; the C implementation may raise others (e.g. a
            # RuntimeError for bad UTF-8 in a string field on some versions).
            return UNDECODABLE

    return decode
