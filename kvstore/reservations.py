"""Reservations: the first phase of a two-phase put.

A reservation holds slots for the blocks a caller is about to write: in the tier the
admission policy chose for each (the fastest, or the slowest), skipping those it
refused. Its blocks are invisible to readers until ``commit``; an abandoned reservation
is reclaimed after its deadline and its slots return to the pool. Lifecycle::

    OPEN --commit--> COMMITTING --> DONE
      |                  (never reclaimed while committing)
      +--abort / deadline--> RECLAIMED
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

from kvstore.errors import LeaseExpired, NotFound
from kvstore.hashing import Namespace
from kvstore.types import BlockKey, SlotId, TierKind


class ReservationState(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    DONE = "done"
    RECLAIMED = "reclaimed"


class ReservedBlock(NamedTuple):
    position: int  # of the block in the caller's key list
    key: BlockKey
    parent: BlockKey | None
    slot: SlotId
    buffer: memoryview  # write exactly namespace.block_bytes bytes here
    tier: TierKind  # the slot's tier
    staged: bool  # the buffer is not the slot: the tier is written at commit
    sink: bool  # admitted to the slowest tier but written in the fastest: moved at commit


@dataclass(slots=True)
class Reservation:
    id: int
    namespace: Namespace
    blocks: list[ReservedBlock]
    deadline_s: float
    num_present: int  # keys already stored: nothing to write
    num_in_flight: int  # keys another reservation is writing
    num_skipped: int  # keys the admission policy refused (that one and every later one)
    staging: list[memoryview] = field(default_factory=list)  # pooled buffers to give back
    state: ReservationState = ReservationState.OPEN

    @property
    def staged(self) -> bool:
        """Some buffers are not slots (the caller cannot write into the tiers itself)."""
        return any(block.staged for block in self.blocks)


class PutResult(NamedTuple):
    """What became of a put's keys; the four counts add up to the number of keys."""

    num_stored: int
    num_present: int  # already stored: nothing written
    num_in_flight: int  # being written by another put
    num_skipped: int  # refused by the admission policy: not stored, never served


class ReservationTable:
    """Open reservations by id, and which keys they are writing."""

    def __init__(self) -> None:
        self._by_id: dict[int, Reservation] = {}
        self._keys: set[BlockKey] = set()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_id)

    def next_id(self) -> int:
        return next(self._ids)

    def is_writing(self, key: BlockKey) -> bool:
        return key in self._keys

    def claim(self, keys: list[BlockKey]) -> None:
        """Mark keys as being written before awaiting their slots, so that a concurrent
        reservation of the same keys sees them in flight (instead of writing them twice)."""
        self._keys.update(keys)

    def unclaim(self, keys: list[BlockKey]) -> None:
        self._keys.difference_update(keys)

    def add(self, reservation: Reservation) -> None:
        """Open a reservation whose keys were claimed."""
        self._by_id[reservation.id] = reservation

    def begin_commit(self, reservation: Reservation, now_s: float) -> None:
        """Check a reservation is still live and stop it from being reclaimed."""
        if reservation.state is ReservationState.RECLAIMED:
            raise LeaseExpired(f"reservation {reservation.id} was reclaimed before commit")
        if self._by_id.get(reservation.id) is not reservation:
            raise NotFound(f"reservation {reservation.id} is not open")
        if now_s > reservation.deadline_s:
            raise LeaseExpired(f"reservation {reservation.id} expired before commit")
        reservation.state = ReservationState.COMMITTING

    def finish(self, reservation: Reservation, state: ReservationState) -> None:
        reservation.state = state
        self._by_id.pop(reservation.id, None)
        self._keys.difference_update(block.key for block in reservation.blocks)

    def expired(self, now_s: float) -> list[Reservation]:
        return [
            r
            for r in self._by_id.values()
            if r.state is ReservationState.OPEN and now_s > r.deadline_s
        ]
