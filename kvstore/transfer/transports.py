"""The transport protocol: how bytes reach a peer, and the types every transport shares.

    local   same process: a memory copy between registered segments (``local.py``)
    shm     same host: map the peer's shared arena and copy out of it; one small
            round trip on the data plane pins the blocks (a lease) (``shm.py``)
    tcp     other hosts: the data plane; ranges striped over several pooled connections
            and over every address of the peer; bytes land with ``recv_into`` (``tcp.py``)

RDMA or NVLink transports would implement the same methods: register the local
segments with the NIC or GPU, and post one-sided reads and writes of (segment, offset,
length) ranges instead of copying through sockets.

A lease pins a leading run of keys in the peer's host memory and says where each block
lies (segment, offset, length, checksum), so the reader moves the bytes itself with
``read_ranges`` (one layer at a time if it likes) and checks them; ``release`` ends it.
A transport with no store behind it raises ``LeaseUnavailable``.

Every block read by key is checked against its checksum on arrival; a block that does
not match ends the run there and is never returned.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from kvstore.reservations import PutResult
from kvstore.transfer.frames import LeasedBlock
from kvstore.types import BlockKey, MissReason, NamespaceId, TierKind


class TransportKind(enum.Enum):
    LOCAL = "local"
    SHM = "shm"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class RangeRead:
    segment: str
    offset: int
    dst: memoryview  # receives dst.nbytes bytes from the peer's segment at offset
    lease_id: int = 0  # the lease covering the range (needed for the peer's arena)


@dataclass(frozen=True, slots=True)
class RangeWrite:
    segment: str
    offset: int
    src: memoryview  # src.nbytes bytes to the peer's segment at offset


class BlockRead(NamedTuple):
    num_hits: int
    tiers: list[TierKind]
    miss_reason: MissReason | None  # why the run ended (None: every key hit)


class WriteSlots(NamedTuple):
    reservation_id: int
    slots: list[tuple[int, int]]  # (position in the key list, arena offset) per block to write


@dataclass(frozen=True, slots=True)
class Lease:
    """A leading run of keys pinned in the peer's host memory until released."""

    lease_id: int
    blocks: list[LeasedBlock]  # where each leased block lies, in key order
    miss_reason: MissReason | None  # why the run ended (None: every key leased)


class Transport(Protocol):
    kind: TransportKind

    async def read_blocks(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        *,
        count_misses: bool = True,
    ) -> BlockRead:
        """The peer's longest cached run of ``keys``, verified, into ``dsts``. The peer
        counts the hits, and the misses unless ``count_misses`` is False (the reader
        looks further, elsewhere, and that later read counts them)."""
        ...

    async def write_blocks(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[memoryview],
        parent: BlockKey | None,
    ) -> PutResult:
        """Store a chain of blocks on the peer's store (a put)."""
        ...

    async def reserve(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], parent: BlockKey | None
    ) -> WriteSlots:
        """Slots in the peer store's arena for the missing blocks of a chain: fill them
        with ``write_ranges`` (segment ``dram``), then ``finish`` to commit or abort."""
        ...

    async def finish(self, reservation_id: int, *, commit: bool) -> PutResult: ...

    async def acquire(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> Lease:
        """Lease the peer's host-memory run of ``keys`` (it counts the hits only: the
        reader reads the rest elsewhere). Raises ``LeaseUnavailable`` if it cannot."""
        ...

    def release(self, lease: Lease) -> None:
        """End a lease without waiting (its deadline ends it if the message is lost)."""
        ...

    async def read_ranges(self, reads: Sequence[RangeRead]) -> None: ...

    async def write_ranges(
        self, transfer_id: int, layer: int, writes: Sequence[RangeWrite]
    ) -> None:
        """Write ranges of the peer's segments; they count as layer ``layer`` of transfer
        ``transfer_id`` on arrival (the peer can wait for that layer alone)."""
        ...

    async def close(self) -> None: ...
