"""The store's writes on a node's data plane: whole blocks (PUT_KEYS), and layer-wise
writes into reserved arena slots (RESERVE, WRITE_RANGES, then COMMIT or ABORT).

* PUT_KEYS receives blocks straight into reserved slots (staging for a disk tier) and
  commits them;
* RESERVE takes slots for blocks a writer fills with WRITE_RANGES of the arena (layer by
  layer if it likes), within the caller's share of the arena (``ByteQuota``), so open
  reservations never hold the whole arena; COMMIT makes them visible, ABORT frees them.
  Writes into the arena may only fill slots of open reservations (``check_reserved``,
  the arena segment's write guard).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.access import Role
from kvstore.errors import CapacityExceeded, InvalidArgument, KVStoreError, NotFound
from kvstore.reservations import Reservation, ReservationState
from kvstore.server.quotas import ByteQuota
from kvstore.store import NodeStore
from kvstore.transfer import frames
from kvstore.transfer.conn import ServerConn
from kvstore.transfer.frames import Op, Status
from kvstore.transfer.ops import Request, capability_id
from kvstore.transfer.replies import discard, reply, reply_ok
from kvstore.transfer.server import SegmentServer
from kvstore.types import BlockKey

SCRATCH_BYTES = 256 << 10


@dataclass
class _Write:
    reservation: Reservation
    owner: int
    num_bytes: int


class StoreWrites:
    def __init__(
        self,
        store: NodeStore,
        *,
        quota_fraction: float,
        sweep_interval_s: float,
    ) -> None:
        """``quota_fraction``: the share of the arena's bytes all open RESERVEs together
        may hold (one connection: half of that). Every ``sweep_interval_s``, reservations
        the store reclaimed are forgotten."""
        self.store = store
        self._sweep_interval_s = sweep_interval_s
        self._writes: dict[int, _Write] = {}  # open RESERVEs, by id
        self._writable: dict[int, Reservation] = {}  # arena offset of a slot -> its writer
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))
        arena = store.shared_arena()
        self._quota = ByteQuota.of_arena(
            arena.capacity_bytes if arena is not None else 0, quota_fraction
        )

    def add_to(self, server: SegmentServer) -> None:
        server.register(Op.PUT_KEYS, self.put_keys, role=Role.WRITER)
        server.register(Op.RESERVE, self.reserve, role=Role.WRITER)
        server.register(Op.COMMIT, self.finish, role=Role.WRITER)
        server.register(Op.ABORT, self.finish, role=Role.WRITER)
        server.attach(self)

    async def put_keys(self, conn: ServerConn, request: Request) -> None:
        """Receive blocks straight into reserved slots (staging for a disk tier), commit."""
        ns_id, keys, parent = frames.unpack_put(request.payload)
        try:
            namespace = self.store.namespace(ns_id)
        except NotFound:
            raise ConnectionError("put for an unknown namespace") from None
        size = namespace.block_bytes
        try:
            reservation = await self.store.reserve(ns_id, keys, _parents(keys, parent))
        except KVStoreError:
            await discard(conn, len(keys) * size, self._scratch)
            raise
        try:
            dsts: list[memoryview | None] = [None] * len(keys)
            for block in reservation.blocks:
                dsts[block.position] = block.buffer
            for dst in dsts:
                if dst is None:
                    await discard(conn, size, self._scratch)
                else:
                    await conn.recv_into(dst[:size])
            result = await self.store.commit(reservation)
        except BaseException:
            await self.store.abort(reservation)
            raise
        await reply_ok(conn, request.header, frames.pack_put_result(*result))

    async def reserve(self, conn: ServerConn, request: Request) -> None:
        ns_id, keys, parent = frames.unpack_put(request.payload)
        owner = request.caller.owner
        if self.store.shared_arena() is None:
            raise InvalidArgument("layer-wise writes need the store's DRAM tier on top")
        wanted = len(keys) * self.store.namespace(ns_id).block_bytes
        if not self._quota.can_take(owner, wanted):
            raise CapacityExceeded(
                f"{len(keys)} blocks ({wanted} bytes) would exceed this client's share of"
                f" reserved arena bytes ({self._quota.available(owner)} left)"
            )
        reservation = await self.store.reserve(ns_id, keys, _parents(keys, parent), in_memory=True)
        if reservation.staged:
            await self.store.abort(reservation)
            raise InvalidArgument("layer-wise writes need the store's DRAM tier on top")
        reserved = len(reservation.blocks) * reservation.namespace.block_bytes
        if not self._quota.can_take(owner, reserved):
            await self.store.abort(reservation)  # others reserved meanwhile
            raise CapacityExceeded("this client's share of reserved arena bytes is taken")
        self._quota.take(owner, reserved)
        reservation_id = capability_id()
        slots = [(b.position, int(b.slot)) for b in reservation.blocks]
        self._writes[reservation_id] = _Write(reservation, owner, reserved)
        for _, offset in slots:
            self._writable[offset] = reservation
        await reply_ok(conn, request.header, frames.pack_reservation(reservation_id, slots))

    async def finish(self, conn: ServerConn, request: Request) -> None:
        """COMMIT or ABORT an open RESERVE."""
        reservation_id = frames.unpack_u64(request.payload)
        write = self._writes.get(reservation_id)
        if write is None:
            raise NotFound(f"no open reservation {reservation_id}")
        if request.header.op is Op.ABORT:
            await self._drop(reservation_id, abort=True)
            await reply(conn, request.header, Status.OK, b"")
            return
        await self._drop(reservation_id, abort=False)
        result = await self.store.commit(write.reservation)
        await reply_ok(conn, request.header, frames.pack_put_result(*result))

    def check_reserved(self, ranges: Sequence[frames.WriteRange]) -> None:
        """Writes into the arena may only fill slots of open reservations: never a
        resident block, never past a block's end."""
        arena = self.store.shared_arena()
        for r in ranges:
            start = arena.slots.slot_containing(r.offset) if arena is not None else None
            writer = self._writable.get(start) if start is not None else None
            if (
                start is None
                or writer is None
                or writer.state is not ReservationState.OPEN
                or r.offset + r.length > start + writer.namespace.block_bytes
            ):
                raise InvalidArgument(
                    f"arena range [{r.offset}, {r.offset + r.length}) is not in a reserved slot"
                )

    async def run(self) -> None:
        """Forget reservations the store reclaimed (their writer went quiet too long)."""
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            for reservation_id, write in list(self._writes.items()):
                if write.reservation.state is not ReservationState.OPEN:
                    await self._drop(reservation_id, abort=False)

    async def close(self) -> None:
        for reservation_id in list(self._writes):
            await self._drop(reservation_id, abort=True)

    async def _drop(self, reservation_id: int, *, abort: bool) -> None:
        """Forget an open RESERVE (and give its bytes back to the quota); abort it too."""
        write = self._writes.pop(reservation_id)
        for block in write.reservation.blocks:
            self._writable.pop(block.slot, None)
        self._quota.give_back(write.owner, write.num_bytes)
        if abort:
            await self.store.abort(write.reservation)


def _parents(keys: Sequence[BlockKey], parent: BlockKey | None) -> list[BlockKey | None]:
    """Each key's parent: ``parent`` for the first, then the key before."""
    return [parent, *keys[:-1]] if keys else []
