"""The router's global view of which prefill instance's store node holds which blocks.

The router learns it from its own decisions: after routing a prompt to an instance, that
instance's node will hold the prompt's full blocks (it reuses or pulls the prefix and
writes back the rest), so the router ``add``s them. It is a hint, not the truth: a node
may have evicted a block since, which costs at most a mispredicted reuse (the prefill
worker then computes that block).

Layout: one insertion-ordered map, block key -> bitmask of instance indexes::

    OrderedDict  oldest ... newest
      key ──▶ 0b0000_0000_0001_0010      (instances 1 and 4 hold this block)

``longest(keys)`` walks the prompt's keys once, ANDing masks: an instance's count is the
position where its bit first drops out, and the walk stops when no bit is left. Cost:
one dict lookup per key reached, about 0.1 us each.

Bound: at most ``max_blocks`` keys. ``add`` touches a prompt's keys from the last to the
first, so the first block of a chain is its most recent and, when the oldest entries are
evicted, a chain loses its tail first (a prefix key is useless without its ancestors).
The approximation: recency is per key for every instance together (evicting a key drops
it for all instances), and ``longest`` does not touch (only routing a prompt does).

Memory: about 160 bytes per indexed block with 16 instances (measured by
``bench/router.py``): the 16-byte key object (49), its mask int (28-32) and the ordered
map's entry and link (~80). The OrderedDict is one container tracked by Python's cyclic
GC, so a full collection walks all its entries (~0.1 s per million); it only holds
bytes and ints, so a router process may ``gc.freeze()`` it once built to keep that pause
off the serving path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from kvstore.types import BlockKey


class PrefixIndex:
    """Block key -> the prefill instances whose node holds it, bounded to ``max_blocks``."""

    def __init__(self, max_blocks: int) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.max_blocks = max_blocks
        self._masks: OrderedDict[BlockKey, int] = OrderedDict()
        self._bits: dict[str, int] = {}  # instance -> its bit's index
        self._names: dict[int, str] = {}  # bit index -> instance

    def __len__(self) -> int:
        return len(self._masks)

    def add(self, instance: str, keys: Sequence[BlockKey]) -> None:
        """Record that ``instance``'s node holds ``keys`` (a prompt's keys, first block
        first); touch them, then evict the oldest entries beyond ``max_blocks``."""
        bit = 1 << self._bit_of(instance)
        masks = self._masks
        for key in reversed(keys):
            mask = masks.get(key)
            if mask is None:
                masks[key] = bit
            else:
                masks[key] = mask | bit
                masks.move_to_end(key)
        excess = len(masks) - self.max_blocks
        for _ in range(max(0, excess)):
            masks.popitem(last=False)

    def forget(self, keys: Iterable[BlockKey]) -> None:
        """Drop ``keys`` for every instance (absent keys are ignored)."""
        for key in keys:
            self._masks.pop(key, None)

    def longest(self, keys: Sequence[BlockKey]) -> dict[str, int]:
        """For every instance holding ``keys[0]``, how many leading ``keys`` it holds
        (instances holding none are absent)."""
        masks = self._masks
        counts: dict[str, int] = {}
        alive = -1  # every bit
        position = 0
        for position, key in enumerate(keys):
            now = alive & masks.get(key, 0)
            if now != alive:
                self._record(alive & ~now, position, counts)
                alive = now
                if not alive:
                    return counts
        if keys and alive:
            self._record(alive, position + 1, counts)
        return counts

    def _record(self, dropped: int, count: int, counts: dict[str, int]) -> None:
        """``counts[instance] = count`` for each instance bit in ``dropped``."""
        if count == 0:
            return
        names = self._names
        while dropped:
            low = dropped & -dropped
            counts[names[low.bit_length() - 1]] = count
            dropped ^= low

    def _bit_of(self, instance: str) -> int:
        index = self._bits.get(instance)
        if index is None:
            index = len(self._bits)
            self._bits[instance] = index
            self._names[index] = instance
        return index
