"""A store node: the node store plus its place in the cluster.

It owns the ``NodeStore``, the metadata service (embedded or Redis), the publisher that
keeps this node's entries in the global index, and clients of its peers. Servicers call
it; it never calls them.

Cluster reads: when a client asks this node for a key list and the local run ends
early, the node asks the metadata service which live node holds the longest run of the
rest, reads it from that peer (``local_only``, so requests never bounce), verifies the
checksums, and (``server.cache_peer_reads``) keeps a copy. Peers use the same token and
TLS trust as the node's own clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore.client.calls import CallOptions
from kvstore.client.store_client import StoreClient
from kvstore.config import Config
from kvstore.errors import CapacityExceeded, KVStoreError
from kvstore.hashing import Namespace
from kvstore.metadata.base import MetadataService, MetadataUnavailable, NodeInfo, TierCapacity
from kvstore.metadata.publisher import IndexPublisher
from kvstore.server.dataplane import NodeDataPlane, host_id_of
from kvstore.store import NodeStore
from kvstore.types import BlockKey, NamespaceId, TierKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrefixHolder:
    node_id: str
    address: str
    num_blocks: int
    tiers: list[TierKind]
    data_addresses: tuple[str, ...] = ()


@dataclass(slots=True)
class PeerRun:
    """Blocks of a key list read from a peer, checksums verified."""

    node_id: str
    blocks: list[memoryview]
    tiers: list[TierKind]


class StoreNode:
    def __init__(
        self,
        config: Config,
        store: NodeStore,
        metadata: MetadataService,
        *,
        address: str,
        observe_dataplane: Callable[[str, float], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metadata = metadata
        self.address = address
        self.node_id = config.store.node_id
        self.data_plane = (
            NodeDataPlane(config, store, observe_dataplane) if config.transfer.enabled else None
        )
        self.host_id = host_id_of(config)
        self.started_s = time.time()
        self.num_peer_blocks = 0
        self.publisher = IndexPublisher(
            store,
            metadata,
            self.describe,
            node_ttl_s=config.metadata.node_ttl_s,
            heartbeat_interval_s=config.metadata.heartbeat_interval_s,
            publish_interval_s=config.metadata.publish_interval_s,
        )
        self._peer_options = CallOptions(
            token=config.auth.admin_token or config.auth.token,
            tls_ca_file=(config.tls.ca_file or config.tls.cert_file)
            if config.tls.enabled
            else None,
            timeout_s=config.server.peer_timeout_s,
            retries=1,
            chunk_bytes=config.server.chunk_bytes,
            data_plane=False,  # peers' blocks come through this node's own engine
        )
        self._peers: dict[str, StoreClient] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._peer_namespaces: set[tuple[str, NamespaceId]] = set()

    @property
    def degraded(self) -> bool:
        return self.publisher.degraded

    def describe(self, degraded: bool) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            address=self.address,
            host_id=self.host_id,
            tiers=tuple(
                TierCapacity(u.tier, u.capacity_bytes, u.used_bytes)
                for u in self.store.stats().tiers
            ),
            started_s=self.started_s,
            heartbeat_s=time.time(),
            degraded=degraded,
            data_addresses=tuple(self.data_plane.addresses) if self.data_plane else (),
            links=tuple(self.data_plane.links.values()) if self.data_plane else (),
        )

    async def start(self) -> None:
        if self.data_plane is not None:
            await self.data_plane.start()
        await self.publisher.start()
        if self.data_plane is not None:
            self.data_plane.start_probing(self.nodes)
        self._maintenance = asyncio.create_task(self._maintain(), name="strata-maintenance")

    async def _maintain(self) -> None:
        """Reclaim abandoned reservations even when no new put comes to do it."""
        period_s = max(0.05, min(1.0, self.config.store.reservation_timeout_s / 2))
        while True:
            await asyncio.sleep(period_s)
            reclaimed = self.store.reclaim_expired()
            if reclaimed:
                logger.info("reclaimed %d abandoned reservations", reclaimed)

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.publisher.stop()
        if self.data_plane is not None:
            await self.data_plane.close()
        for peer in self._peers.values():
            await peer.close()
        await self.metadata.close()
        await self.store.close()

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes; just this one (marked degraded) when metadata is unreachable."""
        try:
            return await self.metadata.nodes()
        except MetadataUnavailable:
            return [self.describe(True)]

    async def prefix_holders(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], *, cluster: bool
    ) -> list[PrefixHolder]:
        """Nodes holding a leading run of ``keys``, longest first (this node's from its
        own store, the others' from the global index)."""
        local = self.store.lookup(ns_id, keys)
        holders = [PrefixHolder(self.node_id, self.address, local.num_blocks, local.tiers)]
        if cluster:
            holders += await self._remote_holders(keys)
        return sorted(
            (h for h in holders if h.num_blocks), key=lambda h: (-h.num_blocks, h.node_id)
        )

    async def fetch_from_peers(
        self, namespace: Namespace, keys: Sequence[BlockKey], start: int
    ) -> PeerRun | None:
        """Read the longest run of ``keys[start:]`` that a peer holds (None if none)."""
        if not self.config.server.peer_fetch or start >= len(keys):
            return None
        holders = await self._remote_holders(keys[start:])
        if not holders:
            return None
        best = max(holders, key=lambda h: h.num_blocks)
        wanted = keys[start : start + best.num_blocks]
        try:
            peer = await self._peer(best.address, namespace)
            run = await self._read_from(best, peer, namespace, wanted)
        except KVStoreError as exc:
            logger.warning(
                "reading %d blocks from peer %s failed: %s", len(wanted), best.node_id, exc
            )
            return None
        if run is None:
            return None
        self.num_peer_blocks += len(run.blocks)
        if self.config.server.cache_peer_reads:
            await self._cache(namespace, keys, start, run)
        return run

    async def _read_from(
        self,
        holder: PrefixHolder,
        peer: StoreClient,
        namespace: Namespace,
        keys: Sequence[BlockKey],
    ) -> PeerRun | None:
        """Blocks from a peer: over the data plane when both have one, else gRPC."""
        if self.data_plane is not None and holder.data_addresses:
            transfer_peer = await self.data_plane.engine.connect(list(holder.data_addresses))
            arena = memoryview(bytearray(len(keys) * namespace.block_bytes))
            size = namespace.block_bytes
            dsts = [arena[i * size : (i + 1) * size] for i in range(len(keys))]
            read = await transfer_peer.transport.read_blocks(namespace.id, keys, dsts)
            return (
                PeerRun(holder.node_id, dsts[: read.num_hits], read.tiers)
                if read.num_hits
                else None
            )
        result = await peer.get(namespace.id, keys, local_only=True)
        return PeerRun(holder.node_id, result.blocks, result.tiers) if result.num_hits else None

    async def _remote_holders(self, keys: Sequence[BlockKey]) -> list[PrefixHolder]:
        try:
            located = await self.metadata.locate(keys)
            live = {n.node_id: n for n in await self.metadata.nodes()}
        except MetadataUnavailable:
            return []
        runs: dict[str, list[TierKind]] = {}
        open_runs = {n for n in live if n != self.node_id}
        for holders in located:
            open_runs &= holders.keys()
            if not open_runs:
                break
            for node_id in open_runs:
                runs.setdefault(node_id, []).append(holders[node_id])
        return [
            PrefixHolder(
                node_id, live[node_id].address, len(tiers), tiers, live[node_id].data_addresses
            )
            for node_id, tiers in runs.items()
        ]

    async def _peer(self, address: str, namespace: Namespace) -> StoreClient:
        peer = self._peers.get(address)
        if peer is None:
            peer = self._peers[address] = StoreClient(address, self._peer_options)
        if (address, namespace.id) not in self._peer_namespaces:
            await peer.register_namespace(namespace)
            self._peer_namespaces.add((address, namespace.id))
        return peer

    async def _cache(
        self, namespace: Namespace, keys: Sequence[BlockKey], start: int, run: PeerRun
    ) -> None:
        parent = keys[start - 1] if start else None
        try:
            await self.store.put(
                namespace.id, keys[start : start + len(run.blocks)], run.blocks, parent
            )
        except (CapacityExceeded, KVStoreError) as exc:
            logger.debug("not caching %d peer blocks: %s", len(run.blocks), exc)
