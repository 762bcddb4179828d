"""The server's own refusals, each with one HTTP status and one gRPC status.

Why a module: the same refusal is raised in the batcher (a full queue), the transformer (the predictor is
unreachable) and the REST front door (a body over the limit), and answered by three paths: the lean infer route
(serving.rest), KServe's FastAPI routes (exception handlers registered in serving.server) and gRPC (KServe's
interceptor turns a `GrpcException` into its status code). Subclassing `GrpcException` is what lets KServe's
interceptor answer RESOURCE_EXHAUSTED / UNAVAILABLE instead of INTERNAL without wrapping its servicer.
"""

from __future__ import annotations

import orjson
from fastapi.responses import Response
from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException

__all__ = [
    "RETRY_AFTER_S",
    "BodyTooLarge",
    "Overloaded",
    "PredictorUnavailable",
    "ServiceUnavailable",
    "ShuttingDown",
    "error_response",
    "service_unavailable_handler",
]

RETRY_AFTER_S = 1  # what a 503 tells a client to wait: about one queue's worth of work at capacity, rounded up


class ServiceUnavailable(GrpcException):
    """The request was not served for a reason that passes (HTTP 503 with Retry-After; gRPC UNAVAILABLE)."""

    status_code = StatusCode.UNAVAILABLE
    http_status = 503

    def __init__(self, reason: str, retry_after_s: int = RETRY_AFTER_S):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.reason


class Overloaded(ServiceUnavailable):
    """The micro-batcher's queue is full (gRPC RESOURCE_EXHAUSTED)."""

    status_code = StatusCode.RESOURCE_EXHAUSTED


class ShuttingDown(ServiceUnavailable):
    """The model stopped taking requests (only after the server's drain: see serving.shutdown)."""


class PredictorUnavailable(ServiceUnavailable):
    """The transformer could not reach its predictor (connection refused or reset, timeout, predictor 503)."""


class BodyTooLarge(Exception):
    """A request body over --max_body_bytes (HTTP 413; gRPC has its own limit, grpc_max_receive_message_length)."""

    def __init__(self, limit: int, size: int | None = None):
        self.limit, self.size = limit, size
        got = f" ({size} bytes)" if size is not None else ""
        super().__init__(f"the request body{got} exceeds the limit of {limit} bytes (--max_body_bytes)")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"error": message}` with the status: the body every shoprank error has."""
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


async def service_unavailable_handler(_: object, exc: Exception) -> Response:
    """FastAPI exception handler for ServiceUnavailable (KServe's own routes: v1, versioned v2, --fast_infer
    false)."""
    assert isinstance(exc, ServiceUnavailable)
    return error_response(exc.http_status, exc.reason, {"retry-after": str(exc.retry_after_s)})
