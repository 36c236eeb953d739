"""Turn a domain Failure into a rich gRPC status, in one place.

Every refusal carries google.rpc.ErrorInfo (domain "authsvc.v1", a stable reason); a refusal
with a retry delay adds RetryInfo;
a rate limit adds QuotaFailure naming the limit. Clients read them with
grpc_status.rpc_status.from_call.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from authsvc.errors import Failure

DOMAIN = "authsvc.v1"


def to_grpc_status(failure: Failure) -> grpc.Status:
    details = [
        error_details_pb2.ErrorInfo(reason=failure.reason, domain=DOMAIN, metadata=failure.metadata)
    ]
    if failure.retry_after is not None:
        seconds = max(failure.retry_after, 0.0)
        whole = math.floor(seconds)
        details.append(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=whole, nanos=int((seconds - whole) * 1_000_000_000)
                )
            )
        )
    if failure.quota is not None:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=failure.quota, description=failure.message
                    )
                ]
            )
        )
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    status = status_pb2.Status(
        code=code_pb2.Code.Value(failure.status), message=failure.message, details=packed
    )
    return rpc_status.to_status(status)
