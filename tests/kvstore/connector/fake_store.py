"""A store, as the connector sees it, in memory: what ``KVConnector`` calls on its
``store`` and nothing else, with every transfer under the test's control.

- ``load`` gives a ``FakeGet`` whose layer ``i`` lands in the request's buffers only when
  the test says so (``land``), or fails (``fail``); blocks listed in ``bad`` fail their
  checksum.
- ``save`` gives a ``FakePut`` that keeps the bytes of each layer as they were when the
  connector wrote it; the store holds them only at ``commit``.

Its coroutines run on the connector's event loop; tests read its state once the loop
has run what the connector handed it (``LoopThread.flush``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.client.layered import layer_slice
from kvstore.connector.backend import ConnectorStats
from kvstore.errors import InvalidArgument
from kvstore.types import BlockKey, TierKind


class FakeGet:
    def __init__(
        self,
        blocks: Sequence[bytes],
        dsts: Sequence[memoryview],
        node_ids: Sequence[str],
        num_layers: int,
        num_good: int,
    ) -> None:
        self.num_hits = len(blocks)
        self.tiers = [TierKind.DRAM] * self.num_hits
        self.node_ids = list(node_ids)
        self.load_s = 0.25  # as if every load took this long
        self.awaited: list[int] = []  # layers the connector waited for, in order
        self._blocks = blocks
        self._dsts = dsts
        self._num_layers = num_layers
        self._num_good = num_good
        self._landed = [asyncio.Event() for _ in range(num_layers)]
        self._error: Exception | None = None

    def land(self, layer: int) -> None:
        """Layer ``layer`` of every hit arrives (on the loop)."""
        for block, dst in zip(self._blocks, self._dsts, strict=True):
            dst_layer = layer_slice(dst, layer, self._num_layers)
            dst_layer[:] = layer_slice(memoryview(block), layer, self._num_layers)
        self._landed[layer].set()

    def fail(self, exc: Exception) -> None:
        """The transfer breaks: layers not landed yet never will (on the loop)."""
        self._error = exc
        for event in self._landed:
            event.set()

    async def layer(self, layer: int) -> None:
        self.awaited.append(layer)
        await self._landed[layer].wait()
        if self._error is not None:
            raise self._error

    async def verified(self) -> int:
        for event in self._landed:
            await event.wait()
        if self._error is not None:
            raise self._error
        return self._num_good


@dataclass
class FakePut:
    keys: list[BlockKey]
    blocks: Sequence[memoryview]
    parent: BlockKey | None
    num_layers: int
    sent: list[list[bytes]] = field(default_factory=list)  # per layer written, per block
    aborted: bool = False

    def write_layer(self, layer: int) -> None:
        if layer != len(self.sent):
            raise InvalidArgument(f"layer {layer} written out of order")
        self.sent.append([bytes(layer_slice(b, layer, self.num_layers)) for b in self.blocks])

    async def abort(self) -> None:
        self.aborted = True


@dataclass
class Put:
    """A whole-block put, as the store received it."""

    keys: list[BlockKey]
    parent: BlockKey | None


class FakeStore:
    def __init__(self, num_layers: int, node_id: str = "node-a") -> None:
        self.num_layers = num_layers
        self.node_id = node_id
        self.stats = ConnectorStats()
        self.blocks: dict[BlockKey, bytes] = {}  # visible to readers
        self.holders: dict[BlockKey, str] = {}  # the node that serves a block (else ours)
        self.bad: set[BlockKey] = set()  # blocks that fail their checksum when loaded
        self.gets: list[FakeGet] = []
        self.saves: list[FakePut] = []
        self.committed: list[FakePut] = []
        self.puts: list[Put] = []
        self.failures: list[BaseException] = []
        self.lookups = 0
        self.available = True  # False: the store is left alone (``StoreBackend``'s back-off)
        self.reserving: dict[BlockKey, asyncio.Event] = {}  # a save of this first key waits

    def leading(self, keys: Sequence[BlockKey]) -> int:
        return next((i for i, k in enumerate(keys) if k not in self.blocks), len(keys))

    async def lookup(self, keys: Sequence[BlockKey]) -> int:
        self.lookups += 1
        return self.leading(keys)

    async def load(self, keys: Sequence[BlockKey], dsts: Sequence[memoryview]) -> FakeGet | None:
        hits = list(keys[: self.leading(keys)])
        good = next((i for i, k in enumerate(hits) if k in self.bad), len(hits))
        get = FakeGet(
            [self.blocks[k] for k in hits],
            dsts[: len(hits)],
            [self.holders.get(k, self.node_id) for k in hits],
            self.num_layers,
            good,
        )
        self.gets.append(get)
        return get

    async def save(
        self, keys: Sequence[BlockKey], blocks: Sequence[memoryview], parent: BlockKey | None
    ) -> FakePut | None:
        if keys[0] in self.reserving:  # a slow reservation
            await self.reserving[keys[0]].wait()
        put = FakePut(list(keys), blocks, parent, self.num_layers)
        self.saves.append(put)
        return put

    async def commit(self, put: FakePut) -> None:
        if put.aborted or len(put.sent) != self.num_layers:
            raise AssertionError(f"commit of a put with {len(put.sent)} layers sent")
        for i, key in enumerate(put.keys):
            self.blocks[key] = b"".join(layer[i] for layer in put.sent)
        self.stats.saved_blocks += len(put.keys)
        self.committed.append(put)

    async def put(
        self, keys: Sequence[BlockKey], blocks: Sequence[memoryview], parent: BlockKey | None
    ) -> int:
        self.puts.append(Put(list(keys), parent))
        new = [k for k in keys if k not in self.blocks]
        for key, block in zip(keys, blocks, strict=True):
            self.blocks.setdefault(key, bytes(block))
        self.stats.saved_blocks += len(new)
        return len(new)

    def failed(self, exc: BaseException) -> None:
        self.failures.append(exc)
