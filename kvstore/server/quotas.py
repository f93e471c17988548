"""Quotas: how many arena bytes data-plane clients may hold pinned or reserved.

Leases (ACQUIRE) pin blocks and reservations (RESERVE) hold free slots until their
holder lets go or a deadline passes, so without a bound a few requests take the whole
arena and every other put fails until the deadlines pass. One ``ByteQuota`` per kind
bounds what all data-plane clients together may hold (``total_fraction`` of the arena's
bytes), and what one connection may hold (``per_owner_fraction``), so the rest of the
arena stays for other writers and readers. Bytes, not slots: an arena holds blocks of
many sizes (size classes). Pure bookkeeping: no I/O, no clock.

Invariants: ``held`` is the sum of ``by_owner``; neither exceeds its bound; an owner
with nothing held has no entry.
"""

from __future__ import annotations

from collections import Counter


class ByteQuota:
    def __init__(self, num_bytes: int, total_fraction: float, per_owner_fraction: float) -> None:
        self.limit = max(1, int(num_bytes * total_fraction))
        self.per_owner_limit = max(1, int(num_bytes * per_owner_fraction))
        self.held = 0
        self.by_owner: Counter[int] = Counter()

    @classmethod
    def of_arena(cls, arena_bytes: int, fraction: float) -> ByteQuota:
        """``fraction`` of the arena for all data-plane clients, half of that for one
        connection."""
        return cls(arena_bytes, fraction, fraction / 2)

    def available(self, owner: int) -> int:
        """How many more bytes ``owner`` may take now."""
        return max(0, min(self.limit - self.held, self.per_owner_limit - self.by_owner[owner]))

    def can_take(self, owner: int, num_bytes: int) -> bool:
        return num_bytes <= self.available(owner)

    def take(self, owner: int, num_bytes: int) -> None:
        assert self.can_take(owner, num_bytes), "take() without can_take()"
        if num_bytes:
            self.held += num_bytes
            self.by_owner[owner] += num_bytes

    def give_back(self, owner: int, num_bytes: int) -> None:
        if not num_bytes:
            return
        assert 0 < num_bytes <= self.by_owner[owner], "giving back more than was taken"
        self.held -= num_bytes
        self.by_owner[owner] -= num_bytes
        if not self.by_owner[owner]:
            del self.by_owner[owner]
