"""The Tier protocol: a tier's bytes, allocated by size class (``slots.SlabAllocator``).

The store owns placement (which block lives in which slot, the index, eviction); a tier
only moves bytes in and out of its slots and, when persistent, remembers which block each
committed slot holds. A ``SlotId`` is the slot's byte offset in the tier; its size comes
from the allocator (the size class of the page it is in). Slots are allocated and freed
on the event-loop thread only; byte I/O may run on the tier's own executor threads.

Checksums: persistent tiers verify a block's xxh3-64 on every read and report failures;
memory tiers trust RAM, and the store verifies bytes when they leave memory for disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from kvstore.hashing import Namespace
from kvstore.tiers.slots import SlabAllocator
from kvstore.types import BlockKey, Buffer, NamespaceId, SlotId, TierKind


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """What a persistent tier stores beside a block's bytes, enough to rebuild the index."""

    key: BlockKey
    namespace_id: NamespaceId
    parent: BlockKey | None
    slot: SlotId
    length_bytes: int
    checksum: int
    created_s: float
    last_access_s: float


class WriteItem(NamedTuple):
    record: BlockRecord
    data: Buffer  # exactly record.length_bytes bytes


class ReadItem(NamedTuple):
    slot: SlotId
    length_bytes: int
    checksum: int
    dst: memoryview  # writable, at least length_bytes


class SlotRef(NamedTuple):
    slot: SlotId
    key: BlockKey


class Recovered(NamedTuple):
    records: list[BlockRecord]
    namespaces: list[Namespace]
    num_torn_writes: int = 0  # writes interrupted before their commit (discarded)


class Tier(Protocol):
    kind: TierKind
    slots: SlabAllocator

    def view(self, slot: SlotId) -> memoryview | None:
        """The slot's bytes, writable and in host memory, or None if not host-addressable."""
        ...

    async def write(self, items: Sequence[WriteItem]) -> None:
        """Store each item's bytes in its slot. When this returns, the blocks are committed:
        a persistent tier finds them again after a restart or a kill -9."""
        ...

    async def read(self, items: Sequence[ReadItem]) -> list[bool]:
        """Copy each slot's bytes into ``dst``; False where a checksum did not match."""
        ...

    async def free(self, refs: Sequence[SlotRef]) -> None:
        """Forget the blocks in these slots and return the slots to the pool."""
        ...

    def recover(self) -> Recovered:
        """Blocks and namespaces that survived from an earlier process (persistent tiers)."""
        ...

    def save_namespace(self, namespace: Namespace) -> None:
        """Remember a namespace so its blocks can be recovered (persistent tiers)."""
        ...

    def forget_namespace(self, ns_id: NamespaceId) -> None:
        """Forget a namespace and its blocks' records for good (persistent tiers); the
        slots still go back through ``free``."""
        ...

    async def close(self) -> None: ...


class VolatileTier:
    """What memory tiers share: nothing survives the process, and freeing a slot is
    only returning it to the pool."""

    slots: SlabAllocator

    async def free(self, refs: Sequence[SlotRef]) -> None:
        for ref in refs:
            self.slots.free(ref.slot)

    def recover(self) -> Recovered:
        return Recovered([], [])

    def save_namespace(self, namespace: Namespace) -> None:
        return None

    def forget_namespace(self, ns_id: NamespaceId) -> None:
        return None
