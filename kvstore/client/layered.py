"""Layer-wise puts and gets: KV moves one layer at a time, overlapping a model's compute.

A prefill engine computes layer i of its new blocks, then layer i + 1. With a
``LayeredPut`` layer i travels to the store while layer i + 1 computes::

    put = await client.put_layered(ns, keys, blocks, num_layers, parent=parent)
    put.write_layer(i)          # on the loop, once layer i of every block is final
    result = await put.commit() # waits for the layers, then stores the blocks
    put.save_s                  # seconds from the reservation to the commit

and a ``LayeredGet`` loads a cached prefix the same way, layer i landing while the model
computes layer i - 1::

    get = await client.get_layered(ns, keys, dsts, num_layers)
    get.num_hits                # how many leading keys are coming
    await get.layer(i)          # layer i of every hit has landed
    await get.verified()        # leading hits whose whole block matched its checksum
    get.load_s                  # seconds from the start to every hit landed and checked

Both times overlap the model's compute (that is the point), so bytes over seconds is a
lower bound of the transfer's bandwidth, not its measure.

A block's layer ``i`` is the byte range ``[i, i + 1) * block_bytes / num_layers`` (the
store's block layout puts layers outermost).

Over the data plane, bytes go straight into reserved slots of the store's DRAM arena and
come straight out of leased ones. Without it (gRPC only, or a store whose top tier is not
DRAM) the put is sent whole at commit and the get arrives whole: the same results,
without the overlap. Which way is the ``Route``'s choice (``kvstore.client.route``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from kvstore.client.route import Leased, Reserved, Route
from kvstore.errors import InvalidArgument, KVStoreError
from kvstore.hashing import checksum
from kvstore.reservations import PutResult
from kvstore.transfer.transports import RangeRead, RangeWrite
from kvstore.types import BlockKey, NamespaceId, TierKind

logger = logging.getLogger(__name__)

ARENA = "dram"  # the data plane's name for the store's DRAM arena


def layer_slice(block: memoryview, layer: int, num_layers: int) -> memoryview:
    size = block.nbytes // num_layers
    return block[layer * size : (layer + 1) * size]


class LayeredPut:
    def __init__(
        self,
        route: Route,
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
        self._route = route
        self._ns_id = ns_id
        self.keys = list(keys)
        self._blocks = list(blocks)
        self._num_layers = num_layers
        self._parent = parent
        self._reserved: Reserved | None = None
        self._layers: list[asyncio.Future[None]] = []  # one per layer written
        self._started_s = time.perf_counter()
        self.save_s = 0.0  # from the reservation to the commit (overlaps the compute)

    @property
    def layer_wise(self) -> bool:
        """Layers go out as they are written (else the blocks go whole at commit)."""
        return self._reserved is not None

    async def open(self) -> LayeredPut:
        self._reserved = await self._route.reserve(self._ns_id, self.keys, self._parent)
        return self

    def write_layer(self, layer: int) -> None:
        """Start sending layer ``layer`` of every block (call on the client's loop)."""
        if not 0 <= layer < self._num_layers or layer != len(self._layers):
            raise InvalidArgument(f"layer {layer} written out of order")
        reserved = self._reserved
        if reserved is None or not reserved.slots.slots:
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
            for position, offset in reserved.slots.slots
        ]
        self._layers.append(asyncio.create_task(reserved.transport.write_ranges(0, layer, writes)))

    async def commit(self) -> PutResult:
        """Wait for every layer, then store the blocks (all written layers are final)."""
        if not self.keys:
            return PutResult(0, 0, 0, 0)
        reserved = self._reserved
        if reserved is None:
            result = await self._route.put(self._ns_id, self.keys, self._blocks, self._parent)
            self.save_s = time.perf_counter() - self._started_s
            return result
        try:
            if len(self._layers) != self._num_layers:
                raise InvalidArgument(
                    f"commit after {len(self._layers)} of {self._num_layers} layers"
                )
            await asyncio.gather(*self._layers)
            result = await reserved.transport.finish(reserved.slots.reservation_id, commit=True)
        except BaseException:
            await self.abort()
            raise
        self.save_s = time.perf_counter() - self._started_s
        return result

    async def abort(self) -> None:
        """Give the reserved slots back (best effort: the store reclaims them anyway)."""
        for task in self._layers:
            task.cancel()
        await asyncio.gather(*self._layers, return_exceptions=True)
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            with contextlib.suppress(KVStoreError, ConnectionError):
                await reserved.transport.finish(reserved.slots.reservation_id, commit=False)


class LayeredGet:
    def __init__(self, num_layers: int) -> None:
        self.num_hits = 0
        self.tiers: list[TierKind] = []  # where each hit was
        self.node_ids: list[str] = []  # the node that held each hit
        self.load_s = 0.0  # from the start to every hit landed and checked (once verified)
        self._started_s = time.perf_counter()
        self._num_layers = num_layers
        self._loading: asyncio.Future[int] | None = None  # resolves to the verified count
        self._layer_events = [asyncio.Event() for _ in range(num_layers)]

    @classmethod
    async def start(
        cls,
        route: Route,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        num_layers: int,
    ) -> LayeredGet:
        if len(dsts) < len(keys):
            raise InvalidArgument(f"{len(keys)} keys but only {len(dsts)} buffers")
        get = cls(num_layers)
        leased = await route.lease(ns_id, keys)
        blocks = leased.lease.blocks if leased is not None else []
        get.num_hits = len(blocks)
        get.tiers = [b.tier for b in blocks]
        get.node_ids = [leased.node_id] * len(blocks) if leased is not None else []
        # the rest of the run (a slower tier, another node) arrives whole
        if len(blocks) < len(keys):
            try:
                rest = await route.get(ns_id, keys[len(blocks) :], dsts[len(blocks) : len(keys)])
            except BaseException:
                if leased is not None:
                    leased.transport.release(leased.lease)
                raise
            get.num_hits += rest.num_hits
            get.tiers += rest.tiers
            get.node_ids += rest.node_ids
        if leased is None:
            for event in get._layer_events:
                event.set()
            get.load_s = time.perf_counter() - get._started_s
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            done.set_result(get.num_hits)
            get._loading = done
            return get
        get._loading = asyncio.ensure_future(get._load(leased, dsts))
        return get

    async def _load(self, leased: Leased, dsts: Sequence[memoryview]) -> int:
        blocks, lease_id = leased.lease.blocks, leased.lease.lease_id
        try:
            for layer in range(self._num_layers):
                reads = [
                    RangeRead(
                        b.segment,
                        b.offset + layer * (b.length // self._num_layers),
                        layer_slice(dst[: b.length], layer, self._num_layers),
                        lease_id,
                    )
                    for b, dst in zip(blocks, dsts, strict=False)
                ]
                await leased.transport.read_ranges(reads)
                self._layer_events[layer].set()
            sums = await asyncio.to_thread(
                lambda: [checksum(dst[: b.length]) for b, dst in zip(blocks, dsts, strict=False)]
            )
        finally:
            leased.transport.release(leased.lease)
            for event in self._layer_events:  # a failure wakes waiters; layer() then raises
                event.set()
        self.load_s = time.perf_counter() - self._started_s
        good = next((i for i, b in enumerate(blocks) if sums[i] != b.checksum), len(blocks))
        if good < len(blocks):
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
