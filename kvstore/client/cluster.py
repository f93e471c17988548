"""A client of a whole cluster, found through the metadata service (Redis).

It discovers live nodes from the registry (refreshed at most every ``refresh_s``), reads
each key list from the node holding its longest cached prefix (that node fetches any
rest from its peers), and places new chains with a placement policy. Namespaces are
registered on each node the first time the client talks to it about them.

While the metadata service is unreachable the client keeps serving (degraded): it uses
the last membership it saw, places chains by rendezvous over those nodes, and answers
lookups by asking each of them for its local run instead of the global index. It tries
the metadata service again at most every ``refresh_s``, so an outage costs one failed
round trip per interval, not one per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import TypeVar

from kvstore.client.calls import CallOptions
from kvstore.client.results import GetResult
from kvstore.client.store_client import NodePrefix, StoreClient
from kvstore.errors import NotFound, ServiceUnavailable
from kvstore.hashing import Namespace
from kvstore.metadata.base import MetadataUnavailable, NodeInfo
from kvstore.metadata.redis import RedisMetadata
from kvstore.policy.placement import RendezvousPlacement
from kvstore.reservations import PutResult
from kvstore.types import BlockKey, Buffer, NamespaceId, TierKind

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClusterClient:
    def __init__(
        self,
        redis_url: str,
        options: CallOptions | None = None,
        *,
        key_prefix: str = "strata",
        placement: RendezvousPlacement | None = None,
        refresh_s: float = 1.0,
    ) -> None:
        self.options = options or CallOptions()
        self.metadata = RedisMetadata(
            redis_url, key_prefix=key_prefix, timeout_s=self.options.timeout_s
        )
        self.placement = placement or RendezvousPlacement()
        self._refresh_s = refresh_s
        self._nodes: dict[str, NodeInfo] = {}
        self._nodes_at = 0.0
        self._clients: dict[str, StoreClient] = {}
        self._namespaces: dict[NamespaceId, Namespace] = {}
        self._registered: set[tuple[str, NamespaceId]] = set()
        self._metadata_down_until: float | None = None  # degraded: no metadata until then

    @property
    def degraded(self) -> bool:
        """True while the metadata service is unreachable (last known nodes are used)."""
        return self._metadata_down_until is not None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        await self.metadata.close()

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def register_namespace(self, namespace: Namespace) -> NamespaceId:
        self._namespaces[namespace.id] = namespace
        return namespace.id

    async def nodes(self, *, refresh: bool = False) -> list[NodeInfo]:
        """Live nodes from the registry, or the last known ones while it is unreachable."""
        if refresh or time.monotonic() - self._nodes_at > self._refresh_s:
            found = await self._metadata_call(self.metadata.nodes())
            if found is not None:
                self._nodes = {n.node_id: n for n in found}
            self._nodes_at = time.monotonic()
        return list(self._nodes.values())

    async def put(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[Buffer],
        parent: BlockKey | None = None,
    ) -> PutResult:
        """Store a chain on the node holding its parent, else where placement says."""
        nodes = await self._live()
        located = await self._metadata_call(self.metadata.locate([parent])) if parent else None
        holders = list(located[0]) if located else []
        node_id = self.placement.choose(
            sorted(nodes), keys[0] if keys else BlockKey(bytes(16)), holders
        )
        client = await self._client(node_id, ns_id)
        return await client.put(ns_id, keys, blocks, parent)

    async def get(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], buffers: Sequence[Buffer] | None = None
    ) -> GetResult:
        """Read from the node with the longest cached prefix of ``keys``."""
        holders = await self.lookup(ns_id, keys)
        nodes = await self._live()
        node_id = holders[0].node_id if holders else self.placement.choose(sorted(nodes), keys[0])
        client = await self._client(node_id, ns_id)
        return await client.get(ns_id, keys, buffers)

    async def lookup(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> list[NodePrefix]:
        """Per live node, its longest cached leading run of ``keys``, longest first."""
        nodes = {n.node_id: n for n in await self.nodes()}
        located = await self._metadata_call(self.metadata.locate(keys))
        if located is None:
            return await self._lookup_each(ns_id, keys, nodes)
        runs: dict[str, list[TierKind]] = {node_id: [] for node_id in nodes}
        open_runs = set(nodes)
        for holders in located:
            open_runs &= holders.keys()
            for node_id in open_runs:
                runs[node_id].append(holders[node_id])
        prefixes = [
            NodePrefix(node_id, nodes[node_id].address, len(tiers), tiers)
            for node_id, tiers in runs.items()
            if tiers
        ]
        return sorted(prefixes, key=lambda p: (-p.num_blocks, p.node_id))

    async def _lookup_each(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], nodes: dict[str, NodeInfo]
    ) -> list[NodePrefix]:
        """Without the global index: ask every known node for its own run (a node that
        does not answer holds nothing, for this call)."""

        async def local_run(node_id: str) -> NodePrefix | None:
            try:
                client = await self._client(node_id, ns_id)
                answers = await client.lookup(ns_id, keys, local=True)
            except (ServiceUnavailable, NotFound):
                return None
            return next((a for a in answers if a.node_id == node_id and a.num_blocks), None)

        found = await asyncio.gather(*(local_run(node_id) for node_id in sorted(nodes)))
        prefixes = [p for p in found if p is not None]
        return sorted(prefixes, key=lambda p: (-p.num_blocks, p.node_id))

    async def _metadata_call(self, call: Coroutine[object, object, T]) -> T | None:
        """``call``'s answer, or None while the metadata service is unreachable."""
        now = time.monotonic()
        if self._metadata_down_until is not None and now < self._metadata_down_until:
            call.close()
            return None
        try:
            result = await call
        except MetadataUnavailable as exc:
            if self._metadata_down_until is None:
                logger.warning(
                    "metadata unreachable (%s); using the %d known nodes", exc, len(self._nodes)
                )
            self._metadata_down_until = time.monotonic() + self._refresh_s
            return None
        if self._metadata_down_until is not None:
            logger.info("metadata reachable again")
            self._metadata_down_until = None
        return result

    async def _live(self) -> dict[str, NodeInfo]:
        nodes = {n.node_id: n for n in await self.nodes()}
        if not nodes:
            raise ServiceUnavailable("no live store node is registered in the metadata service")
        return nodes

    async def _client(self, node_id: str, ns_id: NamespaceId) -> StoreClient:
        node = self._nodes.get(node_id) or (await self._live())[node_id]
        client = self._clients.get(node.address)
        if client is None:
            client = self._clients[node.address] = StoreClient(node.address, self.options)
        if (node.address, ns_id) not in self._registered:
            namespace = self._namespaces.get(ns_id)
            if namespace is None:
                raise NotFound("register the namespace with this client first")
            await client.register_namespace(namespace)
            self._registered.add((node.address, ns_id))
        return client
