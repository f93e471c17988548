"""The transfer engine: one object per process that reaches every peer the fastest way.

``connect(addresses)`` greets a peer's data plane and picks its transport:

    same process (same host id and process id)           -> local
    same host, and its shared arena is the very file we can map (inode and device match)
                                                           -> shm
    anything else                                          -> tcp over all its addresses

Batches are asynchronous: a peer's ``transport.read_blocks`` / ``read_ranges`` /
``write_ranges`` return when every byte has landed and been verified. Layer-wise
transfer is one ``write_ranges`` task per layer, started as soon as that layer is
computed (the prefill worker's hand-off), so layer i travels while layer i + 1 computes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvstore.transfer.connection import ConnectionPool, PeerHello, SharedSegmentInfo
from kvstore.transfer.local import LocalTransport
from kvstore.transfer.segments import SegmentRegistry, SharedMappings
from kvstore.transfer.shm import ShmTransport
from kvstore.transfer.tcp import TcpTransport
from kvstore.transfer.transports import Transport, TransportKind

logger = logging.getLogger(__name__)


class Peer:
    def __init__(self, hello: PeerHello, transport: Transport, addresses: Sequence[str]) -> None:
        self.node_id = hello.node_id
        self.host_id = hello.host_id
        self.transport = transport
        self.addresses = list(addresses)

    @property
    def kind(self) -> TransportKind:
        return self.transport.kind


class TransferEngine:
    def __init__(
        self,
        *,
        host_id: str,
        token: str = "",
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        stripes: int = 4,
        threads: int = 8,
        registry: SegmentRegistry | None = None,
        local_node_id: str | None = None,
        allow_shm: bool = True,
    ) -> None:
        self.host_id = host_id
        self.registry = registry or SegmentRegistry()
        self.local_node_id = local_node_id
        self._token = token
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._stripes = stripes
        self._allow_shm = allow_shm
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="strata-transfer")
        self._verifier = ThreadPoolExecutor(
            max(1, stripes // 2), thread_name_prefix="strata-verify"
        )
        self._mappings = SharedMappings()
        self._peers: dict[tuple[str, ...], Peer] = {}
        self._connecting: dict[tuple[str, ...], asyncio.Future[Peer]] = {}
        self.local_arrived: Callable[[int, int], None] | None = None  # set by a local node

    async def connect(self, addresses: Sequence[str]) -> Peer:
        """The peer at ``addresses`` (all its data-plane addresses), greeted once."""
        key = tuple(addresses)
        peer = self._peers.get(key)
        if peer is not None:
            return peer
        pending = self._connecting.get(key)
        if pending is not None:
            return await pending
        future: asyncio.Future[Peer] = asyncio.get_running_loop().create_future()
        self._connecting[key] = future
        try:
            peer = await self._open(list(addresses))
            self._peers[key] = peer
            future.set_result(peer)
            return peer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved
            raise
        finally:
            del self._connecting[key]

    async def forget(self, peer: Peer) -> None:
        """Drop a peer (it died or restarted); the next ``connect`` greets it afresh."""
        self._peers.pop(tuple(peer.addresses), None)
        await peer.transport.close()

    def num_open_connections(self) -> int:
        return sum(
            p.transport.pool.num_open
            for p in self._peers.values()
            if isinstance(p.transport, TcpTransport)
        ) + sum(
            p.transport.tcp.pool.num_open
            for p in self._peers.values()
            if isinstance(p.transport, ShmTransport)
        )

    async def close(self) -> None:
        """Let in-flight calls (lease releases too) finish, then close every connection.
        Each call is bounded by the timeout, so this is too."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self._verifier.shutdown()
        for peer in list(self._peers.values()):
            await peer.transport.close()
        self._peers.clear()
        self._mappings.close()

    async def _open(self, addresses: list[str]) -> Peer:
        pool = ConnectionPool(
            addresses, token=self._token, timeout_s=self._timeout_s, ssl_context=self._ssl
        )
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(self._executor, pool.take)
        hello = conn.hello
        pool.give(conn)
        tcp = TcpTransport(pool, self._executor, self._verifier, stripes=self._stripes)
        transport: Transport = tcp
        if (
            hello.host_id == self.host_id
            and hello.node_id == self.local_node_id
            and self.local_arrived
        ):
            transport = LocalTransport(self.registry, self.local_arrived, tcp)
        elif self._allow_shm and hello.host_id == self.host_id:
            mappable = [s for s in hello.shared if _same_file(s)]
            if mappable:
                transport = ShmTransport(tcp, mappable, self._mappings)
        logger.info("peer %s at %s: %s", hello.node_id, ",".join(addresses), transport.kind.value)
        return Peer(hello, transport, addresses)


def _same_file(shared: SharedSegmentInfo) -> bool:
    try:
        st = Path(shared.path).stat()
    except OSError:
        return False
    return st.st_ino == shared.inode and st.st_dev == shared.device
