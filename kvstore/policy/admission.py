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

The store applies the policy that ``store.admission_policy`` names
(``make_admission_policy``; ``kvstore.writes`` is the mechanism). ``FullBlocksOnly`` is
not among them: the store sees blocks of a fixed number of bytes and cannot tell whether
their tokens filled them, nor whether a put's last key is its request's last block (a
request may be put in parts). Only the client knows, so it is the client's rule:
Strata's engines key full blocks only.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from kvstore.types import AdmissionPolicyKind, BlockKey


class Admission(enum.Enum):
    FAST = "fast"
    SLOW = "slow"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Offer:
    """One block offered for storage."""

    key: BlockKey
    depth: int  # blocks before it in the request (the store: in the put)
    is_last: bool  # the request's last block (the store: the put's last key)
    is_full: bool  # holds a whole block of tokens (the store cannot tell: always True)


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


def make_admission_policy(kind: AdmissionPolicyKind, window_blocks: int) -> AdmissionPolicy | None:
    """A fresh policy of ``kind``; None for ``ALL``, which has nothing to decide (the
    write path then offers nothing and every block goes to the fastest tier).

    Args:
        window_blocks: How many recently offered keys the doorkeepers remember.
    """
    if kind is AdmissionPolicyKind.ALL:
        return None
    first_seen = {
        AdmissionPolicyKind.DOORKEEPER: Admission.SLOW,
        AdmissionPolicyKind.DOORKEEPER_SKIP: Admission.SKIP,
    }[kind]
    return FrequencyAdmission(first_seen=first_seen, window_blocks=window_blocks)
