"""The one place where store errors become gRPC status codes.

    InvalidArgument, ConfigError      -> INVALID_ARGUMENT  (the message names the field)
    NotFound                          -> NOT_FOUND         (e.g. an unknown namespace)
    CapacityExceeded                  -> RESOURCE_EXHAUSTED
    LeaseExpired                      -> ABORTED           (retry the whole put)
    TierUnavailable, TransferFailed,
    MetadataUnavailable               -> UNAVAILABLE
    any other exception               -> INTERNAL          (logged with its traceback)

Authentication failures are decided by the auth interceptor (UNAUTHENTICATED,
PERMISSION_DENIED) before a servicer runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from kvstore.errors import (
    CapacityExceeded,
    ConfigError,
    InvalidArgument,
    KVStoreError,
    LeaseExpired,
    NotFound,
    TierUnavailable,
    TransferFailed,
)
from kvstore.metadata.base import MetadataUnavailable
from kvstore.servicer_errors import aborting_on_errors

logger = logging.getLogger(__name__)

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (LeaseExpired, grpc.StatusCode.ABORTED),
    (TierUnavailable, grpc.StatusCode.UNAVAILABLE),
    (TransferFailed, grpc.StatusCode.UNAVAILABLE),
    (MetadataUnavailable, grpc.StatusCode.UNAVAILABLE),
]

F = TypeVar("F", bound=Callable[..., Any])


def status_of(exc: Exception) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, KVStoreError):
        logger.exception("internal error in a handler")
        await context.abort(code, f"internal error: {type(exc).__name__} (see the server log)")
    await context.abort(code, str(exc))


def grpc_errors(handler: F) -> F:
    """Decorate a servicer method (unary or streaming) to map exceptions to statuses."""
    return aborting_on_errors(_abort)(handler)
