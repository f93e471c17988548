"""Admission: where a new block goes when it is first stored, or whether it is stored.

A put's missing blocks are offered, parent first, to an ``AdmissionPolicy``. It answers
``FAST`` (the fastest tier, the default), ``SLOW`` (straight to the slowest tier, e.g.
NVMe, without displacing anything hot) or ``SKIP`` (not stored). Blocks after a ``SKIP``
are not offered: a block is useful only with its ancestors. With a single tier, ``SLOW``
is the same as ``FAST`` (there is nowhere else to go).

* ``AdmitAll``: everything to the fastest tier.
* ``FrequencyAdmission``: W-TinyLFU's doorkeeper, as in Dynamo's KV block manager, which
  writes to disk only at frequency >= 2: a block seen for the first time goes to
  ``first_seen`` (``SLOW`` or ``SKIP``); seen before (its key is in a bounded FIFO of
  the last ``window_blocks`` keys offered), it goes to the fastest tier. Approximation:
  a FIFO of keys instead of a count-min sketch; exact within the window. Cost: O(1).
* ``FullBlocksOnly``: a request's last block is stored only when it is full. A partial
  last block is re-hashed with more tokens on the next turn, so its key is almost never
  read again (1.8% on the FAST'25 conversation trace); storing it costs a slot.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.types import BlockKey


class Admission(enum.Enum):
    FAST = "fast"
    SLOW = "slow"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Offer:
    """One block offered for storage."""

    key: BlockKey
    depth: int  # blocks before it in the request
    is_last: bool  # the request's last block
    is_full: bool  # holds a whole block of tokens


class AdmissionPolicy(Protocol):
    def admit(self, offer: Offer) -> Admission: ...


@dataclass(frozen=True, slots=True)
class AdmitAll:
    def admit(self, offer: Offer) -> Admission:
        return Admission.FAST


@dataclass(slots=True)
class FrequencyAdmission:
    first_seen: Admission = Admission.SLOW
    window_blocks: int = 1_000_000
    _seen: OrderedDict[BlockKey, None] = field(default_factory=OrderedDict)

    def admit(self, offer: Offer) -> Admission:
        if offer.key in self._seen:
            return Admission.FAST
        self._seen[offer.key] = None
        if len(self._seen) > self.window_blocks:
            self._seen.popitem(last=False)
        return self.first_seen


@dataclass(frozen=True, slots=True)
class FullBlocksOnly:
    def admit(self, offer: Offer) -> Admission:
        return Admission.SKIP if offer.is_last and not offer.is_full else Admission.FAST
