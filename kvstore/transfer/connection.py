"""Client connections to a data-plane server: blocking sockets, one thread at a time.

Bulk bytes are received with ``recv_into`` straight into their destination (one syscall
per range with ``MSG_WAITALL``), and sent from views of their source, so Python never
copies a block. Calls run on the transfer engine's worker threads; socket calls release
the GIL, so several connections move bytes in parallel. Every call is bounded by the
connection's timeout; a connection that failed is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore.errors import (
    CapacityExceeded,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    TransferFailed,
    Unauthenticated,
)
from kvstore.transfer import frames
from kvstore.transfer.conn import PlainConn
from kvstore.transfer.frames import Op, Status


@dataclass(frozen=True, slots=True)
class SharedSegmentInfo:
    """A segment the peer shares on its host: where to map it, and how to know it."""

    name: str
    path: str
    size: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class PeerHello:
    node_id: str
    host_id: str
    shared: tuple[SharedSegmentInfo, ...]


class Connection:
    def __init__(
        self,
        address: str,
        *,
        token: str,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"data plane {address}: no connection within {timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise TransferFailed(f"data plane {address}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.plain = ssl_context is None
        self.sock: socket.socket = (
            sock if ssl_context is None else ssl_context.wrap_socket(sock, server_hostname=host)
        )
        self.broken = False
        self._ids = itertools.count(1)
        self._header = memoryview(bytearray(frames.HEADER_BYTES))
        self.hello = self._hello(token)

    def _hello(self, token: str) -> PeerHello:
        _, body = self.call(Op.HELLO, frames.pack_str(token))
        node_id, pos = frames.unpack_str(body, 0)
        host_id, pos = frames.unpack_str(body, pos)
        count = frames.unpack_u64(body, pos)
        pos += 8
        shared = []
        for _ in range(count):
            name, pos = frames.unpack_str(body, pos)
            path, pos = frames.unpack_str(body, pos)
            size, inode, device = (frames.unpack_u64(body, pos + 8 * i) for i in range(3))
            pos += 24
            shared.append(SharedSegmentInfo(name, path, size, inode, device))
        return PeerHello(node_id, host_id, tuple(shared))

    def call(
        self, op: Op, payload: bytes, data: Sequence[memoryview] = ()
    ) -> tuple[frames.Header, memoryview]:
        """Send a request (and its data), return the reply's header and metadata."""
        request_id = next(self._ids)
        try:
            self.send(op, payload, data, request_id)
            header = self.recv_header()
            body = memoryview(bytearray(header.payload_bytes))
            self.recv_into(body)
        except BaseException:
            self.broken = True
            raise
        if header.status is not Status.OK:
            _raise_status(self.address, header.status, bytes(body).decode(errors="replace"))
        return header, body

    def send(
        self, op: Op, payload: bytes, data: Sequence[memoryview] = (), request_id: int = 0
    ) -> None:
        try:
            self.sock.sendall(frames.pack_header(op, request_id, len(payload)) + payload)
            for view in data:
                self.sock.sendall(view)
        except TimeoutError as exc:
            self.broken = True
            raise DeadlineExceeded(f"data plane {self.address}: send timed out") from exc
        except OSError as exc:
            self.broken = True
            raise TransferFailed(f"data plane {self.address}: {exc.strerror or exc}") from exc

    def recv_header(self) -> frames.Header:
        self.recv_into(self._header)
        try:
            return frames.unpack_header(self._header)
        except frames.FrameError as exc:
            self.broken = True
            raise TransferFailed(f"data plane {self.address}: {exc}") from exc

    def recv_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly, or raise (the peer died, or the timeout passed)."""
        try:
            while view.nbytes:
                got = (
                    self.sock.recv_into(view, view.nbytes, socket.MSG_WAITALL)
                    if self.plain
                    else self.sock.recv_into(view, view.nbytes)
                )
                if got == 0:
                    raise TransferFailed(
                        f"data plane {self.address}: the peer closed the connection"
                    )
                view = view[got:]
        except TimeoutError as exc:
            self.broken = True
            raise DeadlineExceeded(
                f"data plane {self.address}: no data within the timeout"
            ) from exc
        except OSError as exc:
            self.broken = True
            raise TransferFailed(f"data plane {self.address}: {exc.strerror or exc}") from exc
        except TransferFailed:
            self.broken = True
            raise

    def alive(self) -> bool:
        """False when the peer closed this idle connection (or sent what no request
        asked for): one zero-timeout poll (TLS sockets may hold buffered bytes; trusted)."""
        if not self.plain:
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)  # readable while idle: end of stream, or bytes nobody asked for

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError):
            self.sock.close()


def _raise_status(address: str, status: Status, message: str) -> None:
    text = f"data plane {address}: {message}"
    if status is Status.DENIED:
        raise Unauthenticated(text)
    if status is Status.NOT_FOUND:
        raise NotFound(text)
    if status is Status.FULL:
        raise CapacityExceeded(text)
    if status is Status.INVALID:
        raise InvalidArgument(text)
    raise TransferFailed(text)


class ConnectionPool:
    """Reusable connections to one peer, spread over all its data-plane addresses."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        token: str,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not addresses:
            raise TransferFailed("a peer without data-plane addresses")
        self.addresses = list(addresses)
        self._token = token
        self._timeout_s = timeout_s
        self._ssl = ssl_context
        self._idle: list[Connection] = []
        self._open = 0
        self._next = itertools.cycle(range(len(self.addresses)))
        self._lock = threading.Lock()

    @property
    def num_open(self) -> int:
        return self._open

    @property
    def plain(self) -> bool:
        return self._ssl is None

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def take(self) -> Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.alive():
                    return conn
                conn.close()  # the server hung up on it while idle (its idle timeout)
                self._open -= 1
            address = self.addresses[next(self._next)]
            self._open += 1
        try:
            return Connection(
                address, token=self._token, timeout_s=self._timeout_s, ssl_context=self._ssl
            )
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def give(self, conn: Connection) -> None:
        """Return a connection; a broken one is closed instead of reused."""
        if conn.broken:
            conn.close()
            with self._lock:
                self._open -= 1
            return
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            conn.close()


def local_host_id() -> str:
    """This machine's identity: the kernel boot id (shared by every process on the host)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return f"{socket.gethostname()}-{os.getuid()}"


class LoopChannel:
    """One connection driven from the event loop, for small control requests (leases).

    A worker-thread hop costs about as much as the round trip itself, so pins and
    releases for shared-memory reads go through the loop's non-blocking socket calls;
    requests are serialized by a lock. Plain TCP only (TLS sockets are thread-driven).
    """

    def __init__(self, conn: Connection, timeout_s: float) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self.sock = conn.sock
        self.sock.setblocking(False)
        self._io = PlainConn(self.sock)  # buffered: header and metadata in one receive
        self._lock = asyncio.Lock()
        self._header = memoryview(bytearray(frames.HEADER_BYTES))

    async def call(
        self,
        op: Op,
        payload: bytes,
        receive: Callable[[memoryview], Sequence[memoryview]] | None = None,
    ) -> memoryview:
        """Send a request, return the reply's metadata. ``receive(metadata)`` names the
        buffers the bytes that follow the metadata land in, if any."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):  # one deadline for the call
                    await loop.sock_sendall(
                        self.sock, frames.pack_header(op, 0, len(payload)) + payload
                    )
                    body, header = await self._reply(loop, receive)
            except (OSError, frames.FrameError, TimeoutError, TransferFailed) as exc:
                self.conn.broken = True
                raise TransferFailed(f"data plane {self.conn.address}: {exc}") from exc
        if header.status is not Status.OK:
            _raise_status(self.conn.address, header.status, bytes(body).decode(errors="replace"))
        return body

    async def _reply(
        self,
        loop: asyncio.AbstractEventLoop,
        receive: Callable[[memoryview], Sequence[memoryview]] | None,
    ) -> tuple[memoryview, frames.Header]:
        await self._io.recv_into(self._header)
        header = frames.unpack_header(self._header)
        body = memoryview(bytearray(header.payload_bytes))
        await self._io.recv_into(body)
        if header.status is Status.OK and receive is not None:
            for view in receive(body):
                await self._io.recv_into(view)
        return body, header

    async def send(self, op: Op, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await loop.sock_sendall(
                        self.sock, frames.pack_header(op, 0, len(payload)) + payload
                    )
            except (OSError, TimeoutError) as exc:
                self.conn.broken = True
                raise TransferFailed(f"data plane {self.conn.address}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()
