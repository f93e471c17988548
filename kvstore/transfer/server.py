"""A data-plane server: bulk bytes of named segments, separate from gRPC.

One listener per data-plane address (several addresses stand for several NICs). Each
connection first says HELLO; when the cluster has a token, a peer that does not present
it is refused and disconnected. Then requests are served one at a time per connection
(clients open several connections to go in parallel).

The server itself serves its segments (``ranges.py``: READ_RANGES, WRITE_RANGES, layer
arrivals a receiver awaits with ``wait_layer``). Other ops are registered
(``register``, ``ops.py``) with the role each needs; an op nobody registered is
answered NOT_FOUND and the connection goes on. A store node registers its store's ops
(``kvstore/server/dataplane.py``); an engine worker's data plane serves segments only.

    connection ──HELLO──▶ caller (owner, role)
               ──op────▶ served? ── no ──▶ NOT_FOUND "operation X is not served here"
                            │ yes
                         role enough? ── no ──▶ DENIED, hang up (data may follow)
                            │ yes
                         handler (replies itself; a KVStoreError becomes a status)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from kvstore.access import Access, Role
from kvstore.errors import KVStoreError
from kvstore.transfer import frames
from kvstore.transfer.arrivals import LayerArrivals
from kvstore.transfer.conn import PlainConn, ServerConn, StreamConn
from kvstore.transfer.frames import Op, Status
from kvstore.transfer.ops import Caller, Handler, OpTable, Request, Service
from kvstore.transfer.ranges import RangeOps, ReadGuard, SegmentGuard, WriteGuard
from kvstore.transfer.replies import reply, status_of
from kvstore.transfer.segments import SegmentRegistry

logger = logging.getLogger(__name__)

OPEN = Access()  # no tokens: every peer holds every right
ACCEPT_BACKOFF_S = 0.05  # pause after a failed accept (out of descriptors, say)
LINGER_S = 1.0  # after hanging up: drain what the peer still sends until it pauses this long
MAX_LINGER_BYTES = 1 << 30  # ... or this much came
SCRATCH_BYTES = 256 << 10


class _HangUp(Exception):
    """The request was answered (refused), but bytes of it may follow: hang up."""


class _RateLimitedWarning:
    """One WARNING per ``interval_s`` for a recurring failure, with how many were quiet."""

    def __init__(self, what: str, interval_s: float = 10.0) -> None:
        self._what = what
        self._interval_s = interval_s
        self._last_s = -interval_s
        self._quiet = 0

    def note(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_s < self._interval_s:
            self._quiet += 1
            return
        logger.warning("%s: %s (%d more since the last warning)", self._what, exc, self._quiet)
        self._last_s, self._quiet = now, 0


class SegmentServer:
    def __init__(
        self,
        node_id: str,
        host_id: str,
        segments: SegmentRegistry,
        *,
        access: Access = OPEN,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout_s: float = 300.0,
        max_connections_per_peer: int = 256,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``access``: the tokens that admit a peer, and the role each grants (none
        configured: no authentication). ``idle_timeout_s`` bounds each request, from
        waiting for its header to its reply (an idle or stalled peer is hung up on);
        ``max_connections_per_peer`` caps open connections per peer address.
        ``observe(op, seconds)`` times each served request."""
        self.node_id = node_id
        self.host_id = host_id
        self.segments = segments
        self.arrivals = LayerArrivals()
        self._ranges = RangeOps(segments, self.arrivals)
        self._ops = OpTable()
        self._ops.register(Op.READ_RANGES, self._ranges.read, role=Role.READER)
        self._ops.register(Op.WRITE_RANGES, self._ranges.write, role=Role.WRITER)
        self._services: list[Service] = []
        self._access = access
        self._ssl = ssl_context
        self._idle_timeout_s = idle_timeout_s
        self._max_per_peer = max_connections_per_peer
        self._per_peer: Counter[str] = Counter()
        self._accept_errors = _RateLimitedWarning("data-plane accept failed")
        self._observe = observe
        self._owners = itertools.count(1)
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))
        self._servers: list[asyncio.Server] = []
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.addresses: list[str] = []
        self.accepted: Counter[str] = Counter()  # connections accepted per address

    def register(self, op: Op, handler: Handler, *, role: Role) -> None:
        """Serve ``op`` with ``handler`` to callers holding at least ``role``; an op is
        registered once (``InvalidArgument`` otherwise)."""
        self._ops.register(op, handler, role=role)

    def guard(self, segment: str, *, read: ReadGuard | None, write: WriteGuard | None) -> None:
        """Let ``read``/``write`` decide which ranges of ``segment`` a request may touch
        (None: that direction is refused); see ``ranges.py``."""
        self._ranges.guard(segment, SegmentGuard(read, write))

    def attach(self, service: Service) -> None:
        """Run ``service`` while the server listens; close it when the server closes."""
        self._services.append(service)
        if self.addresses:
            self._spawn(service.run())

    async def start(self, hosts: Sequence[str], port: int) -> list[str]:
        """Listen on each host (one port; 0 picks one, then reused for the other hosts)."""
        for host in hosts:
            if self._ssl is not None:
                server = await asyncio.start_server(self._on_stream, host, port, ssl=self._ssl)
                self._servers.append(server)
                port = server.sockets[0].getsockname()[1]
            else:
                listener = socket.create_server((host, port))
                listener.setblocking(False)
                self._listeners.append(listener)
                port = listener.getsockname()[1]
                self._spawn(self._accept_loop(listener, f"{host}:{port}"))
            self.addresses.append(f"{host}:{port}")
        for service in self._services:
            self._spawn(service.run())
        return self.addresses

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for listener in self._listeners:
            listener.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for service in self._services:
            await service.close()

    async def wait_layer(self, transfer_id: int, layer: int, timeout_s: float = 30.0) -> None:
        """Wait until layer ``layer`` of incoming transfer ``transfer_id`` has landed."""
        await self.arrivals.wait(transfer_id, layer, timeout_s)

    # -- connections ------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket, address: str) -> None:
        """Accept until closed. An accept error (out of descriptors, buffers or memory; a
        peer that gave up in the backlog) costs a short pause, never the listener."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:
                if listener.fileno() < 0:
                    return  # closed under us
                self._accept_errors.note(exc)
                await asyncio.sleep(ACCEPT_BACKOFF_S)
                continue
            self.accepted[address] += 1
            if not self._admit(peer[0]):
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve(PlainConn(sock), peer[0]))

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        if not self._admit(peer):
            writer.close()
            return
        await self._serve(StreamConn(reader, writer), peer)

    def _admit(self, peer: str) -> bool:
        """Count a connection from ``peer``; False when the peer is at its cap."""
        if self._per_peer[peer] >= self._max_per_peer:
            logger.debug("refused a connection from %s: %d open", peer, self._per_peer[peer])
            return False
        self._per_peer[peer] += 1
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: ServerConn, peer: str) -> None:
        header_buf = memoryview(bytearray(frames.HEADER_BYTES))
        caller: Caller | None = None
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout_s):
                    header, payload = await self._receive(conn, header_buf, caller is not None)
                    if caller is None:
                        caller = await self._hello(conn, header, payload)
                        if caller is None:
                            return
                        continue
                    await self._dispatch(conn, header, payload, caller)
        except (frames.FrameError, _HangUp) as exc:
            logger.debug("data-plane peer %s hung up on: %s", peer, exc)
            await self._linger(conn)
        except TimeoutError:
            logger.debug("data-plane connection from %s idle or stalled; closed", peer)
        except (ConnectionError, OSError) as exc:
            logger.debug("data-plane connection ended: %s", exc)
        except Exception:
            logger.exception("data-plane connection from %s failed", peer)
        finally:
            conn.close()
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]

    async def _linger(self, conn: ServerConn) -> None:
        """Hang up after an answer the peer must still read (an error: its request's
        bytes may follow, or our stream is out of step with its): end our side of the
        stream, then drop what the peer still sends until it pauses, ends, or sent
        ``MAX_LINGER_BYTES``. Closing with its bytes unread would reset the connection,
        and a peer still sending would lose our answer."""
        if not conn.shutdown_write():
            return
        drained = 0
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            while drained < MAX_LINGER_BYTES:
                async with asyncio.timeout(LINGER_S):
                    await conn.recv_into(self._scratch)
                drained += self._scratch.nbytes

    async def _receive(
        self, conn: ServerConn, header_buf: memoryview, greeted: bool
    ) -> tuple[frames.Header, memoryview]:
        """One request's header and metadata. Before HELLO a peer may make us allocate
        at most ``MAX_HELLO_BYTES``; a frame over its bound is answered, then dropped."""
        await conn.recv_into(header_buf)
        header = frames.unpack_header(header_buf)
        limit = frames.MAX_METADATA_BYTES if greeted else frames.MAX_HELLO_BYTES
        if header.payload_bytes > limit:
            status = Status.INVALID if greeted else Status.DENIED
            message = f"metadata of {header.payload_bytes} bytes; at most {limit} here"
            await reply(conn, header, status, message.encode())
            raise frames.FrameError(message)
        payload = memoryview(bytearray(header.payload_bytes))
        await conn.recv_into(payload)
        return header, payload

    async def _hello(
        self, conn: ServerConn, header: frames.Header, payload: memoryview
    ) -> Caller | None:
        if header.op is not Op.HELLO:
            await reply(conn, header, Status.DENIED, b"say HELLO first")
            return None
        token, _ = frames.unpack_str(payload, 0)
        role = self._access.role_of(token.encode() if token else None)
        if role is None:
            await reply(conn, header, Status.DENIED, b"invalid cluster token")
            return None
        await reply(conn, header, Status.OK, self._greeting())
        return Caller(next(self._owners), role)

    def _greeting(self) -> bytes:
        """Who we are, and the segments a reader on this host may map (with the file's
        inode and device, so the reader can check it maps the very same file)."""
        shared = []
        for segment in self.segments.segments():
            identity = self.segments.file_identity(segment.name)
            if segment.shm_path is None or identity is None:
                continue
            shared.append(
                frames.pack_str(segment.name)
                + frames.pack_str(str(segment.shm_path))
                + b"".join(frames.pack_u64(v) for v in (segment.size, *identity))
            )
        head = frames.pack_str(self.node_id) + frames.pack_str(self.host_id)
        return head + frames.pack_u64(len(shared)) + b"".join(shared)

    # -- requests ---------------------------------------------------------------------

    async def _dispatch(
        self, conn: ServerConn, header: frames.Header, payload: memoryview, caller: Caller
    ) -> None:
        if header.op is Op.HELLO:
            await reply(conn, header, Status.INVALID, b"unexpected op HELLO: already greeted")
            return
        served = self._ops.get(header.op)
        if served is None:
            await reply(conn, header, Status.NOT_FOUND, self._ops.not_served(header.op).encode())
            return
        if caller.role < served.role:  # data may follow: answer, hang up
            needed = f"{header.op.name} needs a {served.role.name.lower()} token"
            await reply(conn, header, Status.DENIED, needed.encode())
            raise _HangUp(f"{header.op.name} refused to a {caller.role.name}")
        start = time.perf_counter()
        try:
            await served.handler(conn, Request(header, payload, caller))
        except frames.FrameError as exc:  # the stream may be out of step: answer, hang up
            await reply(conn, header, Status.INVALID, str(exc).encode())
            raise
        except (KVStoreError, ValueError) as exc:
            await reply(conn, header, status_of(exc), str(exc).encode())
        finally:
            if self._observe is not None:
                self._observe(header.op.name, time.perf_counter() - start)
