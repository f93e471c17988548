"""Channels, deadlines, retries and error mapping shared by every client call.

Every call has a deadline (``timeout_s``, covering all its attempts). Only idempotent
calls are retried, on UNAVAILABLE, with capped exponential backoff and jitter. Puts are
idempotent here: keys name content, so storing a key twice stores nothing. gRPC errors
become the store's exceptions, carrying the server's message.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from kvstore.access import bearer_metadata
from kvstore.errors import (
    CapacityExceeded,
    DeadlineExceeded,
    InvalidArgument,
    KVStoreError,
    LeaseExpired,
    NotFound,
    ServiceUnavailable,
    Unauthenticated,
)

T = TypeVar("T")
MAX_MESSAGE_BYTES = 64 << 20

_ERRORS: dict[grpc.StatusCode, type[KVStoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityExceeded,
    grpc.StatusCode.ABORTED: LeaseExpired,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
}


@dataclass(frozen=True, slots=True)
class CallOptions:
    token: str = ""
    tls_ca_file: Path | None = None  # trust this CA (PEM); None: plaintext
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.05
    chunk_bytes: int = 2 << 20  # data message size; under the 4 MiB default limit of any peer
    data_plane: bool = True  # move bulk bytes over the node's data plane when it has one
    shared_memory: bool = True  # on the node's host, read its arena directly
    data_stripes: int = 4  # data-plane connections a transfer may spread over

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.token)


def open_channel(address: str, options: CallOptions) -> grpc.aio.Channel:
    channel_options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),  # retries are ours, for idempotent calls only
    ]
    if options.tls_ca_file is None:
        return grpc.aio.insecure_channel(address, options=channel_options)
    credentials = grpc.ssl_channel_credentials(root_certificates=options.tls_ca_file.read_bytes())
    return grpc.aio.secure_channel(address, credentials, options=channel_options)


def to_store_error(exc: grpc.aio.AioRpcError, what: str) -> KVStoreError:
    kind = _ERRORS.get(exc.code(), KVStoreError)
    return kind(f"{what}: {exc.details() or exc.code().name}")


async def call(
    what: str,
    attempt: Callable[[float], Awaitable[T]],
    options: CallOptions,
    *,
    idempotent: bool,
) -> T:
    """Run ``attempt(timeout_s)`` within the call's deadline, retrying if idempotent."""
    deadline = time.monotonic() + options.timeout_s
    tries = options.retries + 1 if idempotent else 1
    for number in range(tries):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _late(what, options)
        try:
            async with asyncio.timeout(remaining):  # a backstop: gRPC's deadline comes first
                return await attempt(remaining)
        except TimeoutError:
            raise _late(what, options) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # our caller cancelled: let it go
                raise
            raise _late(what, options) from None  # gRPC cancelled the call at its deadline
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.CANCELLED and time.monotonic() >= deadline:
                raise _late(what, options) from None
            retryable = exc.code() is grpc.StatusCode.UNAVAILABLE and number + 1 < tries
            if not retryable:
                raise to_store_error(exc, what) from None
        pause = min(options.backoff_s * 2**number, 1.0) * random.uniform(0.5, 1.0)
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
    raise ServiceUnavailable(f"{what}: unavailable after {tries} attempts")


def _late(what: str, options: CallOptions) -> DeadlineExceeded:
    """The one error an expired deadline surfaces as, however the call noticed."""
    return DeadlineExceeded(f"{what}: no answer within {options.timeout_s:g} s")
