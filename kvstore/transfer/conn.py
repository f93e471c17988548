"""Server-side connections: exact reads into buffers and writes of views, on the loop.

Plain TCP uses the loop's socket methods (``sock_recv_into`` lands bytes in their
destination, ``sock_sendall`` sends slot views without copying them in Python). TLS goes
through asyncio streams, which add a copy; the TLS cost is measured separately.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Protocol


class ServerConn(Protocol):
    async def recv_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly; raises ``ConnectionError`` if the peer goes away."""
        ...

    async def send(self, parts: Sequence[bytes | memoryview]) -> None: ...

    def shutdown_write(self) -> bool:
        """Send the end of the stream but keep reading; False where the transport cannot
        (TLS streams)."""
        ...

    def close(self) -> None: ...


class PlainConn:
    """Reads go through a small buffer first: one receive usually brings a request's
    header and metadata together (one loop wake-up, not two); large reads that find the
    buffer empty land straight in their destination."""

    BUFFER_BYTES = 64 << 10

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._buffer = memoryview(bytearray(self.BUFFER_BYTES))
        self._start = self._end = 0

    async def recv_into(self, view: memoryview) -> None:
        buffered = self._end - self._start
        if buffered:
            take = min(buffered, view.nbytes)
            view[:take] = self._buffer[self._start : self._start + take]
            self._start += take
            view = view[take:]
        if view.nbytes and view.nbytes < self.BUFFER_BYTES:
            await self._fill(view.nbytes)
            return await self.recv_into(view)
        while view.nbytes:
            got = await self.loop.sock_recv_into(self.sock, view)
            if got == 0:
                raise ConnectionError("peer closed the connection")
            view = view[got:]
        return None

    async def _fill(self, wanted: int) -> None:
        """Receive into the empty buffer until it holds ``wanted`` bytes (or more)."""
        self._start = self._end = 0
        while self._end < wanted:
            got = await self.loop.sock_recv_into(self.sock, self._buffer[self._end :])
            if got == 0:
                raise ConnectionError("peer closed the connection")
            self._end += got

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        small = [p for p in parts if len(p) < 65536]
        if len(small) == len(parts):
            await self.loop.sock_sendall(self.sock, b"".join(parts))
            return
        for part in parts:
            await self.loop.sock_sendall(self.sock, part)

    def shutdown_write(self) -> bool:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


class StreamConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def recv_into(self, view: memoryview) -> None:
        try:
            data = await self.reader.readexactly(view.nbytes)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("peer closed the connection") from exc
        view[:] = data

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        for part in parts:
            self.writer.write(part)
        await self.writer.drain()

    def shutdown_write(self) -> bool:
        if not self.writer.can_write_eof():
            return False
        self.writer.write_eof()
        return True

    def close(self) -> None:
        self.writer.close()
