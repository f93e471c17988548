"""Page rebalancing between size classes: which class gives up a page to another.

A tier's pages are carved into slots of one size class each (``kvstore.tiers.slots``).
When a class needs a slot and the tier has neither a free slot of that class nor a free
page, the store either evicts blocks of that same class, or empties a whole page of
another class and re-carves it. This policy decides which (max-min fair share):

* The *fair share* is ``num_pages // active classes`` (at least 1), counting the class
  that asks. A class holding fewer pages than that takes one from the class holding the
  most pages, provided that class holds more than the one asking (ties: the larger block
  size gives first, so the choice is deterministic).
* Otherwise the class evicts its own blocks (LRU among them, per the eviction policy).

So a class alone uses the whole tier; k active classes converge to about 1/k each when
all of them keep writing, and a class that stops writing keeps its pages until another
needs them. The approximation against a global LRU: a class at its share evicts its own
least recent block even when another class holds older ones, by at most one share of
the tier. Emptying a page evicts its blocks whatever their recency (memcached's slab
reassignment does the same); the mechanism picks the donor's page with fewest blocks.
Cost: O(classes) per decision. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FairSharePages:
    def donor(self, requester: int, pages: Mapping[int, int], num_pages: int) -> int | None:
        """The block length of the class that gives a page to ``requester``'s class, or
        None: ``requester`` evicts its own blocks.

        Args:
            requester: block length of the class that needs room.
            pages: block length -> pages held, for every class holding some.
            num_pages: pages in the tier.
        """
        held = pages.get(requester, 0)
        active = len(set(pages) | {requester})
        share = max(1, num_pages // active)
        if held >= share:
            return None
        candidates = [(n, length) for length, n in pages.items() if length != requester]
        if not candidates:
            return None
        most, length = max(candidates)
        return length if most > held else None
