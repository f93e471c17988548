"""A worker's own prefix cache: full pages by block key, kept after their requests end.

A new request whose prompt starts with blocks this worker computed or loaded before
shares their pages (no store round trip, no copy). Each cached page holds one reference
on the page; when the paged cache runs out, the least recently used pages that no running
request shares are dropped. Chains are touched from their last block to their first, so
a chain loses its tail before its head (a head without its tail still serves; a tail
without its head never would).

Used from one thread (the prefill worker's); the page bookkeeping below it is shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from engine.kv.cache import CacheFull, PagedKVCache
from kvstore.types import BlockKey


class PrefixCache:
    def __init__(self, cache: PagedKVCache, *, enabled: bool = True) -> None:
        self.cache = cache
        self.enabled = enabled
        self._pages: OrderedDict[BlockKey, int] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._pages)

    def match(self, keys: Sequence[BlockKey]) -> list[int]:
        """Pages of the longest cached leading run of ``keys``, shared with the caller
        (release them when done)."""
        pages: list[int] = []
        for key in keys:
            page = self._pages.get(key)
            if page is None:
                break
            pages.append(page)
        self._touch(keys[: len(pages)])
        self.cache.share(pages)
        return pages

    def insert(self, keys: Sequence[BlockKey], pages: Sequence[int]) -> None:
        """Remember full pages (the caller keeps its own references)."""
        if not self.enabled:
            return
        for key, page in zip(keys, pages, strict=True):
            if key not in self._pages:
                self.cache.share([page])
                self._pages[key] = page
        self._touch(keys)

    def allocate(self, count: int) -> list[int]:
        """Fresh pages, dropping unshared cached pages to make room if needed."""
        try:
            return self.cache.allocate(count)
        except CacheFull:
            self.evict(count - self.cache.num_free)
            return self.cache.allocate(count)

    def evict(self, count: int) -> int:
        """Drop up to ``count`` least recently used pages no request shares."""
        dropped = [key for key, page in self._pages.items() if self.cache.refs(page) == 1][:count]
        self.cache.release([self._pages.pop(key) for key in dropped])
        return len(dropped)

    def clear(self) -> None:
        self.cache.release(list(self._pages.values()))
        self._pages.clear()

    def _touch(self, keys: Sequence[BlockKey]) -> None:
        for key in reversed(keys):
            if key in self._pages:
                self._pages.move_to_end(key)
