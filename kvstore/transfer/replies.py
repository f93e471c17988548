"""How a data-plane handler answers: a reply frame, an error status for an exception,
and draining bytes of a refused request so the stream stays in step."""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.errors import CapacityExceeded, InvalidArgument, NotFound
from kvstore.transfer import frames
from kvstore.transfer.conn import ServerConn
from kvstore.transfer.frames import Status


async def reply(conn: ServerConn, header: frames.Header, status: Status, body: bytes) -> None:
    await conn.send([frames.pack_header(header.op, header.request_id, len(body), status), body])


async def reply_ok(
    conn: ServerConn, header: frames.Header, body: bytes, data: Sequence[memoryview] = ()
) -> None:
    """An OK reply with its metadata, then ``data`` back to back."""
    head = frames.pack_header(header.op, header.request_id, len(body))
    await conn.send([head, body, *data])


def status_of(exc: Exception) -> Status:
    if isinstance(exc, NotFound):
        return Status.NOT_FOUND
    if isinstance(exc, CapacityExceeded):
        return Status.FULL
    if isinstance(exc, InvalidArgument | ValueError):
        return Status.INVALID
    return Status.ERROR


async def discard(conn: ServerConn, num_bytes: int, scratch: memoryview) -> None:
    """Read and drop ``num_bytes`` into ``scratch`` (keeps the stream in step after a
    refused request without allocating what the peer declared)."""
    while num_bytes > 0:
        take = min(num_bytes, scratch.nbytes)
        await conn.recv_into(scratch[:take])
        num_bytes -= take
