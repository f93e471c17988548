"""A node's data plane: its segments, its data-plane server serving the store's ops,
its transfer engine and the links it measured to its peers.

Segments: ``dram`` is the store's DRAM arena (a file in ``/dev/shm``, so same-host
readers map it; ranges of it are read only within leases and written only into
reserved slots); ``probe`` is a small private region peers read to measure the link.
The store's ops (``serve_store``: reads by key and leases in ``dataplane_reads.py``,
puts and reservations in ``dataplane_writes.py``) are registered on the generic segment
server of ``kvstore.transfer``.
Every ``transfer.probe_interval_s`` the node measures each live peer (an empty request
for the round trip, a ``probe_bytes`` read for the throughput, per data-plane address
for TCP peers) and publishes the results in its ``NodeInfo.links``; the addresses of a
TCP peer are then used fastest first (all of them, striped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence

from kvstore.config import Config
from kvstore.errors import KVStoreError
from kvstore.metadata.base import LinkInfo, NodeInfo
from kvstore.server.dataplane_reads import StoreReads
from kvstore.server.dataplane_writes import StoreWrites
from kvstore.store import NodeStore
from kvstore.transfer.connection import local_host_id
from kvstore.transfer.engine import Peer, TransferEngine
from kvstore.transfer.segments import Segment, SegmentRegistry
from kvstore.transfer.server import SegmentServer
from kvstore.transfer.shm import ShmTransport
from kvstore.transfer.transports import RangeRead, TransportKind

logger = logging.getLogger(__name__)

ARENA_SEGMENT = "dram"
PROBE_SEGMENT = "probe"
QUOTA_FRACTION = 0.5  # of the arena: what all leases, and all reservations, may hold


def serve_store(
    server: SegmentServer,
    store: NodeStore,
    *,
    lease_ttl_s: float = 10.0,
    quota_fraction: float = QUOTA_FRACTION,
) -> None:
    """Serve ``store`` on ``server``: its reads by key, leases, puts and reservations,
    and (when it has one) its DRAM arena as segment ``dram``, readable only within
    leases and writable only into reserved slots."""
    reads = StoreReads(store, ARENA_SEGMENT, lease_ttl_s=lease_ttl_s, quota_fraction=quota_fraction)
    writes = StoreWrites(
        store, quota_fraction=quota_fraction, sweep_interval_s=max(0.05, lease_ttl_s / 4)
    )
    reads.add_to(server)
    writes.add_to(server)
    arena = store.shared_arena()
    if arena is not None:
        server.guard(ARENA_SEGMENT, read=reads.check_leased, write=writes.check_reserved)
        server.segments.register(Segment(ARENA_SEGMENT, arena.arena, arena.path))


def host_id_of(config: Config) -> str:
    return config.transfer.host_id or local_host_id()


class NodeDataPlane:
    def __init__(
        self,
        config: Config,
        store: NodeStore,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.store.node_id
        self.host_id = host_id_of(config)
        self.registry = SegmentRegistry()
        probe = memoryview(bytearray(config.transfer.probe_bytes))
        self.registry.register(Segment(PROBE_SEGMENT, probe))
        token = config.auth.admin_token or config.auth.token
        self.server = SegmentServer(
            self.node_id,
            self.host_id,
            self.registry,
            access=config.auth.access,
            ssl_context=_server_ssl(config),
            idle_timeout_s=config.transfer.idle_timeout_s,
            max_connections_per_peer=config.transfer.max_connections_per_peer,
            observe=observe,
        )
        serve_store(self.server, store, lease_ttl_s=config.transfer.lease_ttl_s)
        self.engine = TransferEngine(
            host_id=self.host_id,
            token=token,
            ssl_context=client_ssl(config),
            timeout_s=config.transfer.timeout_s,
            stripes=config.transfer.stripes,
            threads=config.transfer.threads,
            registry=self.registry,
            local_node_id=self.node_id,
            allow_shm=config.transfer.shm,
        )
        self.engine.local_arrived = self.server.arrivals.mark
        self.addresses: list[str] = []
        self.links: dict[str, LinkInfo] = {}
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> list[str]:
        hosts = self.config.transfer.host_list or [self.config.server.host]
        self.addresses = await self.server.start(hosts, self.config.transfer.port)
        return self.addresses

    def start_probing(self, live_nodes: object) -> None:
        """Measure links to the nodes ``live_nodes()`` returns, now and periodically."""
        self._probe_task = asyncio.create_task(self._probe_loop(live_nodes), name="strata-probe")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self.engine.close()
        await self.server.close()

    async def peer(self, node: NodeInfo) -> Peer:
        """The engine's peer for ``node``, its addresses fastest first by measurement."""
        return await self.engine.connect(self._ordered(node))

    def _ordered(self, node: NodeInfo) -> list[str]:
        link = self.links.get(node.node_id)
        addresses = list(node.data_addresses)
        if link is not None and link.address in addresses:
            addresses.remove(link.address)
            addresses.insert(0, link.address)
        return addresses

    async def _probe_loop(self, live_nodes: object) -> None:
        while True:
            try:
                nodes = await live_nodes()  # type: ignore[operator]
                for node in nodes:
                    if node.node_id != self.node_id and node.data_addresses:
                        await self._measure(node)
            except (KVStoreError, OSError) as exc:
                logger.debug("link probe round failed: %s", exc)
            await asyncio.sleep(self.config.transfer.probe_interval_s)

    async def _measure(self, node: NodeInfo) -> None:
        best: LinkInfo | None = None
        for address in node.data_addresses:
            try:
                link = await self._measure_one(node.node_id, [address])
            except KVStoreError as exc:
                logger.info("data-plane address %s of %s unusable: %s", address, node.node_id, exc)
                continue
            if best is None or link.gbps > best.gbps:
                best = link
            if link.transport != TransportKind.TCP.value:
                break  # shm and local do not depend on the address
        if best is not None:
            self.links[node.node_id] = best

    async def _measure_one(self, node_id: str, addresses: Sequence[str]) -> LinkInfo:
        peer = await self.engine.connect(addresses)
        segment, size = PROBE_SEGMENT, self.config.transfer.probe_bytes
        if isinstance(peer.transport, ShmTransport):  # measure the shared-memory path itself
            segment, size = ARENA_SEGMENT, min(size, peer.transport.segment_size(ARENA_SEGMENT))
        start = time.perf_counter()
        await peer.transport.read_ranges([RangeRead(PROBE_SEGMENT, 0, memoryview(bytearray(0)))])
        rtt_us = (time.perf_counter() - start) * 1e6
        dst = memoryview(bytearray(size))
        start = time.perf_counter()
        await peer.transport.read_ranges([RangeRead(segment, 0, dst)])
        gbps = size / (time.perf_counter() - start) / 1e9
        return LinkInfo(node_id, peer.kind.value, addresses[0], round(gbps, 3), round(rtt_us, 1))


def _server_ssl(config: Config) -> ssl.SSLContext | None:
    if not config.transfer.tls:
        return None
    assert config.tls.cert_file is not None and config.tls.key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


def client_ssl(config: Config) -> ssl.SSLContext | None:
    if not config.transfer.tls:
        return None
    ca = config.tls.ca_file or config.tls.cert_file
    return ssl.create_default_context(cafile=str(ca))
