"""Deadlines surface as DeadlineExceeded, however the call noticed them; a caller's
own cancellation still propagates."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kvstore.client.calls import CallOptions, call
from kvstore.errors import DeadlineExceeded

OPTIONS = CallOptions(timeout_s=0.05, retries=0)


class _Cancelled(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Locally cancelled"
        )


async def test_a_call_that_never_answers_exceeds_its_deadline() -> None:
    async def silent(timeout_s: float) -> None:
        await asyncio.sleep(10)

    with pytest.raises(DeadlineExceeded, match=r"no answer within 0\.05 s"):
        await call("Get", silent, OPTIONS, idempotent=True)


async def test_a_stream_cancelled_at_its_deadline_is_deadline_exceeded() -> None:
    async def cancelled_by_grpc(timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        raise asyncio.CancelledError  # what a grpc.aio stream raises when its deadline hits

    async def status_cancelled(timeout_s: float) -> None:
        await asyncio.sleep(timeout_s + 0.01)
        raise _Cancelled()

    for attempt in (cancelled_by_grpc, status_cancelled):
        with pytest.raises(DeadlineExceeded):
            await call("Get", attempt, CallOptions(timeout_s=0.2, retries=0), idempotent=True)


async def test_the_callers_cancellation_still_propagates() -> None:
    async def slow(timeout_s: float) -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(call("Get", slow, CallOptions(timeout_s=5), idempotent=True))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
