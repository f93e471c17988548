"""Which way a client's bytes go: the one place that chooses data plane or gRPC.

    call          over the node's data plane                  over gRPC
    put           the blocks, straight into reserved slots    a Put stream
    get           the node's run; the rest (peer fetch) by    a Get stream (the node
                  a gRPC Get, which reads the node's peers    reads its peers)
    layered put   arena slots reserved at once, each layer    the whole put at commit
                  written as ranges when it is final
    layered get   the host-memory run leased, each layer      the whole get at once
                  read as ranges; the rest by ``get``

The data plane is used when the client allows it, the node announces one, and the
namespace was registered with this client (its block size is known). When a data-plane
call fails (``TransferFailed``, ``ServiceUnavailable``) the link is dropped: that call
and every later one go over gRPC. A reservation or lease the node refuses (a top tier
that is not DRAM, a transport that cannot lease, a quota) only sends that call's bytes
whole.

Counting: a data-plane read that may go on at the node's peers counts hits only; the
gRPC Get that goes on counts what stays missing, so each requested block counts once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple

from kvstore._proto.strata.v1 import store_pb2
from kvstore.client.calls import CallOptions
from kvstore.client.fast_path import DataPlaneLink
from kvstore.client.results import GetResult
from kvstore.errors import InvalidArgument, KVStoreError, ServiceUnavailable, TransferFailed
from kvstore.hashing import check_key
from kvstore.reservations import PutResult
from kvstore.transfer.transports import Lease, Transport, WriteSlots
from kvstore.types import BlockKey, Buffer, NamespaceId
from kvstore.validation import readable, writable

logger = logging.getLogger(__name__)

Describe = Callable[[], Awaitable[store_pb2.DataPlaneResponse]]
GrpcPut = Callable[
    [NamespaceId, Sequence[BlockKey], Sequence[Buffer], BlockKey | None], Awaitable[PutResult]
]
GrpcGet = Callable[
    [NamespaceId, Sequence[BlockKey], Sequence[Buffer] | None, bool], Awaitable[GetResult]
]


class Reserved(NamedTuple):
    transport: Transport  # where the layers go
    slots: WriteSlots


class Leased(NamedTuple):
    transport: Transport  # where the layers come from; ends the lease
    lease: Lease
    node_id: str  # the node holding the leased blocks


class Route:
    def __init__(
        self,
        address: str,
        options: CallOptions,
        *,
        block_bytes: Mapping[NamespaceId, int],
        describe: Describe,
        grpc_put: GrpcPut,
        grpc_get: GrpcGet,
    ) -> None:
        """``block_bytes``: the namespaces registered with the client; ``describe`` asks
        the node where its data plane listens; ``grpc_put``/``grpc_get`` are the client's
        gRPC calls."""
        self.address = address
        self._options = options
        self._block_bytes = block_bytes
        self._describe = describe
        self._grpc_put = grpc_put
        self._grpc_get = grpc_get
        self._link: DataPlaneLink | None = None
        self._checked = False

    async def data_plane(self) -> DataPlaneLink | None:
        """The node's data plane as this client reaches it (None: gRPC only)."""
        if self._checked or not self._options.data_plane:
            return self._link
        self._checked = True
        try:
            info = await self._describe()
            if info.addresses:
                self._link = await DataPlaneLink.open(info, self._options)
        except KVStoreError as exc:
            logger.warning("data plane of %s unusable (%s); using gRPC", self.address, exc)
        return self._link

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def put(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[Buffer],
        parent: BlockKey | None,
    ) -> PutResult:
        link = await self.data_plane()
        block_bytes = self._block_bytes.get(ns_id)
        if link is not None and block_bytes is not None:
            views = [readable(b, block_bytes, i) for i, b in enumerate(blocks)]
            if len(views) != len(keys):
                raise InvalidArgument(f"{len(keys)} keys but {len(views)} blocks")
            try:
                return await link.transport.write_blocks(ns_id, keys, views, parent)
            except (TransferFailed, ServiceUnavailable) as exc:
                await self._fall_back(exc)
        return await self._grpc_put(ns_id, keys, blocks, parent)

    async def get(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        buffers: Sequence[Buffer] | None = None,
        *,
        local_only: bool = False,
    ) -> GetResult:
        for i, key in enumerate(keys):  # the same message on every path
            check_key(key, f"keys[{i}]:")
        link = await self.data_plane()
        block_bytes = self._block_bytes.get(ns_id)
        if link is not None and block_bytes is not None:
            dsts = _destinations(keys, buffers, block_bytes)
            try:
                return await self._get_fast(link, ns_id, keys, dsts, local_only)
            except (TransferFailed, ServiceUnavailable) as exc:
                await self._fall_back(exc)
        return await self._grpc_get(ns_id, keys, buffers, local_only)

    async def reserve(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], parent: BlockKey | None
    ) -> Reserved | None:
        """Arena slots for a layer-wise put (None: send the blocks whole with ``put``)."""
        link = await self.data_plane() if keys else None
        if link is None:
            return None
        try:
            return Reserved(link.transport, await link.transport.reserve(ns_id, keys, parent))
        except KVStoreError as exc:  # e.g. the top tier is not DRAM
            logger.debug("layer-wise put unavailable (%s); sending whole blocks", exc)
            return None

    async def lease(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> Leased | None:
        """The node's host-memory run of ``keys`` leased for a layer-wise get (None:
        nothing leased; read with ``get``). The node counts the leased blocks as hits."""
        link = await self.data_plane() if keys else None
        if link is None:
            return None
        try:
            lease = await link.transport.acquire(ns_id, keys)
        except KVStoreError as exc:
            logger.debug("leasing blocks failed (%s); reading whole blocks", exc)
            return None
        return Leased(link.transport, lease, link.node_id) if lease.blocks else None

    async def _get_fast(
        self,
        link: DataPlaneLink,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: list[memoryview],
        local_only: bool,
    ) -> GetResult:
        # with peer fetch, a short run goes on over gRPC, which counts what stays missing
        goes_on = link.peer_fetch and not local_only
        read = await link.transport.read_blocks(ns_id, keys, dsts, count_misses=not goes_on)
        result = GetResult(
            read.num_hits,
            dsts[: read.num_hits],
            read.tiers,
            [link.node_id] * read.num_hits,
            read.miss_reason,
        )
        if read.num_hits == len(keys) or not goes_on:
            return result
        rest = await self._grpc_get(ns_id, keys[read.num_hits :], dsts[read.num_hits :], False)
        return GetResult(
            result.num_hits + rest.num_hits,
            result.blocks + rest.blocks,
            result.tiers + rest.tiers,
            result.node_ids + rest.node_ids,
            rest.miss_reason,
        )

    async def _fall_back(self, exc: KVStoreError) -> None:
        logger.warning("data plane of %s failed (%s); using gRPC", self.address, exc)
        await self.close()


def _destinations(
    keys: Sequence[BlockKey], buffers: Sequence[Buffer] | None, block_bytes: int
) -> list[memoryview]:
    """One writable block-sized view per key: the caller's buffers, or fresh memory."""
    if buffers is None:
        arena = memoryview(bytearray(block_bytes * len(keys)))
        return [arena[i * block_bytes : (i + 1) * block_bytes] for i in range(len(keys))]
    if len(buffers) < len(keys):
        raise InvalidArgument(f"{len(keys)} keys but only {len(buffers)} buffers")
    return [writable(b, block_bytes, i)[:block_bytes] for i, b in enumerate(buffers[: len(keys)])]
