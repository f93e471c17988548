"""Layer-wise puts and gets: KV moves one layer at a time, overlapping a model's compute.

A prefill engine computes layer i of its new blocks, then layer i + 1. With a
``LayeredPut`` layer i travels to the store while layer i + 1 computes::

    put = await client.put_layered(ns, keys, blocks, num_layers, parent=parent)
    put.write_layer(i)          # on the loop, once layer i of every block is final
    result = await put.commit() # waits for the layers, then stores the blocks

and a ``LayeredGet`` loads a cached prefix the same way, layer i landing while the model
computes layer i - 1::

    get = await client.get_layered(ns, keys, dsts, num_layers)
    get.num_hits                # how many leading keys are coming
    await get.layer(i)          # layer i of every hit has landed
    await get.verified()        # leading hits whose whole block matched its checksum

A block's layer ``i`` is the byte range ``[i, i + 1) * block_bytes / num_layers`` (the
store's block layout puts layers outermost).

Over the data plane, bytes go straight into reserved slots of the store's DRAM arena and
come straight out of leased ones. Without it (gRPC only, or a store whose top tier is not
DRAM) the put is sent whole at commit and the get arrives whole: the same results,
without the overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvstore.errors import InvalidArgument, KVStoreError
from kvstore.hashing import checksum
from kvstore.reservations import PutResult
from kvstore.transfer import frames
from kvstore.transfer.tcp import TcpTransport
from kvstore.transfer.transports import (
    RangeRead,
    RangeWrite,
    ShmTransport,
    Transport,
    WriteSlots,
)
from kvstore.types import BlockKey, NamespaceId, TierKind

if TYPE_CHECKING:
    from kvstore.client.store_client import StoreClient

logger = logging.getLogger(__name__)

ARENA = "dram"  # the data plane's name for the store's DRAM arena


def layer_slice(block: memoryview, layer: int, num_layers: int) -> memoryview:
    size = block.nbytes // num_layers
    return block[layer * size : (layer + 1) * size]


class LayeredPut:
    def __init__(
        self,
        client: StoreClient,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[memoryview],
        num_layers: int,
        *,
        parent: BlockKey | None,
    ) -> None:
        if len(keys) != len(blocks):
            raise InvalidArgument(f"{len(keys)} keys but {len(blocks)} blocks")
        if num_layers < 1 or any(b.nbytes % num_layers for b in blocks):
            raise InvalidArgument(f"blocks do not split into {num_layers} equal layers")
        self._client = client
        self._ns_id = ns_id
        self.keys = list(keys)
        self._blocks = list(blocks)
        self._num_layers = num_layers
        self._parent = parent
        self._transport: Transport | None = None
        self._slots: WriteSlots | None = None
        self._layers: list[asyncio.Future[None]] = []  # one per layer written

    @property
    def layer_wise(self) -> bool:
        """Layers go out as they are written (else the blocks go whole at commit)."""
        return self._slots is not None

    async def open(self) -> LayeredPut:
        if not self.keys:
            return self
        route = await self._client.data_plane()
        if route is None:
            return self
        try:
            self._slots = await route.peer.transport.reserve(self._ns_id, self.keys, self._parent)
            self._transport = route.peer.transport
        except KVStoreError as exc:  # e.g. the top tier is not DRAM: send whole blocks
            logger.debug("layer-wise put unavailable (%s); sending whole blocks", exc)
        return self

    def write_layer(self, layer: int) -> None:
        """Start sending layer ``layer`` of every block (call on the client's loop)."""
        if not 0 <= layer < self._num_layers or layer != len(self._layers):
            raise InvalidArgument(f"layer {layer} written out of order")
        if self._slots is None or self._transport is None or not self._slots.slots:
            nothing_to_send: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            nothing_to_send.set_result(None)
            self._layers.append(nothing_to_send)
            return
        size = self._blocks[0].nbytes // self._num_layers
        writes = [
            RangeWrite(
                ARENA,
                offset + layer * size,
                layer_slice(self._blocks[position], layer, self._num_layers),
            )
            for position, offset in self._slots.slots
        ]
        self._layers.append(asyncio.create_task(self._transport.write_ranges(0, layer, writes)))

    async def commit(self) -> PutResult:
        """Wait for every layer, then store the blocks (all written layers are final)."""
        if not self.keys:
            return PutResult(0, 0, 0)
        if self._slots is None or self._transport is None:
            return await self._client.put(self._ns_id, self.keys, self._blocks, self._parent)
        try:
            if len(self._layers) != self._num_layers:
                raise InvalidArgument(
                    f"commit after {len(self._layers)} of {self._num_layers} layers"
                )
            await asyncio.gather(*self._layers)
            result = await self._transport.finish(self._slots.reservation_id, commit=True)
        except BaseException:
            await self.abort()
            raise
        return result

    async def abort(self) -> None:
        """Give the reserved slots back (best effort: the store reclaims them anyway)."""
        for task in self._layers:
            task.cancel()
        await asyncio.gather(*self._layers, return_exceptions=True)
        slots, self._slots = self._slots, None
        if slots is not None and self._transport is not None:
            with contextlib.suppress(KVStoreError, ConnectionError):
                await self._transport.finish(slots.reservation_id, commit=False)


class LayeredGet:
    def __init__(self, num_layers: int) -> None:
        self.num_hits = 0
        self.tiers: list[TierKind] = []  # where each hit was
        self.node_ids: list[str] = []  # the node that held each hit
        self._num_layers = num_layers
        self._loading: asyncio.Future[int] | None = None  # resolves to the verified count
        self._layer_events = [asyncio.Event() for _ in range(num_layers)]

    @classmethod
    async def start(
        cls,
        client: StoreClient,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        num_layers: int,
    ) -> LayeredGet:
        if len(dsts) < len(keys):
            raise InvalidArgument(f"{len(keys)} keys but only {len(dsts)} buffers")
        get = cls(num_layers)
        route = await client.data_plane()
        lessor = _lessor(route.peer.transport) if route is not None else None
        lease_id, leased = 0, list[frames.LeasedBlock]()
        if route is not None and lessor is not None and keys:
            try:
                lease_id, leased, _ = await lessor.acquire(ns_id, keys)
            except KVStoreError as exc:
                logger.debug("leasing blocks failed (%s); reading whole blocks", exc)
        # the rest of the run (a slower tier, another node) arrives whole
        tail = len(leased)
        get.num_hits = tail
        get.tiers = [b.tier for b in leased]
        get.node_ids = [route.node_id] * tail if route is not None else []
        if tail < len(keys):
            try:
                rest = await client.get(ns_id, keys[tail:], dsts[tail : len(keys)])
            except BaseException:
                if leased and lessor is not None:
                    lessor.release(lease_id)
                raise
            get.num_hits += rest.num_hits
            get.tiers += rest.tiers
            get.node_ids += rest.node_ids
        if route is None or lessor is None or not leased:
            for event in get._layer_events:
                event.set()
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            done.set_result(get.num_hits)
            get._loading = done
            return get
        get._loading = asyncio.ensure_future(
            get._load(route.peer.transport, lessor, lease_id, leased, dsts)
        )
        return get

    async def _load(
        self,
        transport: Transport,
        lessor: TcpTransport,
        lease_id: int,
        leased: list[frames.LeasedBlock],
        dsts: Sequence[memoryview],
    ) -> int:
        try:
            for layer in range(self._num_layers):
                reads = [
                    RangeRead(
                        b.segment,
                        b.offset + layer * (b.length // self._num_layers),
                        layer_slice(dst[: b.length], layer, self._num_layers),
                        lease_id,
                    )
                    for b, dst in zip(leased, dsts, strict=False)
                ]
                await transport.read_ranges(reads)
                self._layer_events[layer].set()
            sums = await asyncio.to_thread(
                lambda: [checksum(dst[: b.length]) for b, dst in zip(leased, dsts, strict=False)]
            )
        finally:
            lessor.release(lease_id)
            for event in self._layer_events:  # a failure wakes waiters; layer() then raises
                event.set()
        good = next((i for i, b in enumerate(leased) if sums[i] != b.checksum), len(leased))
        if good < len(leased):
            logger.warning("cached block %d failed its checksum; its run is recomputed", good)
            return good
        return self.num_hits

    async def layer(self, layer: int) -> None:
        """Layer ``layer`` of every hit has landed (raises if the load failed)."""
        await self._layer_events[layer].wait()
        assert self._loading is not None
        if self._loading.done() and not self._loading.cancelled():
            error = self._loading.exception()
            if error is not None:
                raise error

    async def verified(self) -> int:
        """How many leading hits arrived whole and matched their checksums."""
        assert self._loading is not None
        return await self._loading

    async def cancel(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, KVStoreError):
                await self._loading


def _lessor(transport: Transport) -> TcpTransport | None:
    """The transport's lease channel (leases pin blocks in the arena while ranges move)."""
    if isinstance(transport, ShmTransport):
        return transport.tcp
    if isinstance(transport, TcpTransport):
        return transport
    return None
