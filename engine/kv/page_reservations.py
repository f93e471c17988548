"""Pages of a decode worker's cache held for prefills that run in other processes.

- ``allocate`` reserves pages for a request, waiting up to ``wait_s`` for room: each
  release of pages wakes it (no polling), and past the deadline it raises ``NoRoom`` (the
  worker is busy, not broken).
- ``quarantine`` holds pages a peer might still be writing (its prefill failed or timed
  out, so nobody knows when its last layer lands) for ``quarantine_s`` before they are
  freed; a quarantined page is never handed out early.

Time comes from ``clock`` (injected: tests drive a fake one). Runs on the worker's event
loop; releases may come from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from engine.errors import EngineError
from engine.kv.cache import CacheFull, PagedKVCache


class NoRoom(EngineError):
    """The decode worker's KV cache had no room for the request in time: retry later."""


class PageReservations:
    def __init__(
        self,
        cache: PagedKVCache,
        *,
        quarantine_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.quarantine_s = quarantine_s
        self._clock = clock
        self._held: deque[tuple[float, list[int]]] = deque()  # (free at, pages), in order
        self.quarantined_pages = 0  # ever quarantined
        self._room = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        cache.on_release(self._released)

    @property
    def held_pages(self) -> int:
        """Pages in quarantine now."""
        return sum(len(pages) for _, pages in self._held)

    async def allocate(self, count: int, wait_s: float) -> list[int]:
        """``count`` fresh pages, waiting up to ``wait_s`` for them.

        Raises:
            NoRoom: the cache had no room for them in time.
        """
        self._loop = asyncio.get_running_loop()
        deadline = self._clock() + wait_s
        while True:
            self._room.clear()  # before trying: a release from now on wakes the wait
            self.expire()
            try:
                return self.cache.allocate(count)
            except CacheFull:
                pass
            now = self._clock()
            if now >= deadline:
                raise NoRoom(
                    f"the decode worker's KV cache had no room for {count} pages"
                    f" within {wait_s:g} s"
                )
            wake = deadline - now
            if self._held:
                wake = min(wake, max(0.0, self._held[0][0] - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), timeout=wake)

    def quarantine(self, pages: list[int]) -> None:
        """Free ``pages`` only after ``quarantine_s``."""
        self.quarantined_pages += len(pages)
        self._held.append((self._clock() + self.quarantine_s, pages))
        loop = asyncio.get_running_loop()
        loop.call_later(self.quarantine_s, self.expire)

    def expire(self) -> int:
        """Free the pages whose quarantine is over; how many."""
        now, freed = self._clock(), 0
        while self._held and self._held[0][0] <= now:
            _, pages = self._held.popleft()
            self.cache.release(pages)
            freed += len(pages)
        return freed

    def _released(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._room.set)
