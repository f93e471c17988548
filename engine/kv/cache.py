"""The paged KV cache: pages that are, byte for byte, the store's blocks.

One tensor holds every page::

    pages[page, layer, k|v, token, kv_head, head_dim]

so a page is a contiguous run of bytes laid out exactly like a store block of
``BlockSpec(num_layers, kv_heads, head_dim, dtype, page_tokens)``, and one layer of a
page is a contiguous sub-range (the block's layer range). Blocks move between the store
and the cache without reshaping: a get lands in a page, a put reads one, and layer-wise
transfers move layer ranges. A sequence owns a page table (page ids in position order);
token ``t`` lives at ``(page_table[t // page_tokens], t % page_tokens)``.

Pages are allocated from a free list with reference counts, so sequences sharing a cached
prefix share its pages (a page is freed when its last user lets go). Page bookkeeping is
thread-safe: prefill and decode workers in one process share a cache.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from engine.errors import EngineError
from kvstore.layout import BlockSpec, KVDtype


class CacheFull(EngineError):
    """No free page is left for a sequence's tokens."""


class PagedKVCache:
    def __init__(
        self,
        *,
        num_pages: int,
        page_tokens: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.page_tokens = page_tokens
        self.num_layers = num_layers
        self.dtype = dtype
        self.pages = torch.zeros(
            (num_pages, num_layers, 2, page_tokens, num_kv_heads, head_dim),
            dtype=dtype,
            device=device,
        )
        self._free = list(range(num_pages - 1, -1, -1))
        self._refs = [0] * num_pages
        self._lock = threading.Lock()
        self._landing: torch.Tensor | None = None  # see landing_memory
        self._listeners: list[Callable[[], None]] = []
        self.spec = BlockSpec(num_layers, num_kv_heads, head_dim, KVDtype.of(dtype), page_tokens)

    @property
    def num_pages(self) -> int:
        return self.pages.shape[0]

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def page_bytes(self) -> int:
        return self.spec.block_bytes

    # -- pages --------------------------------------------------------------------------

    def allocate(self, count: int) -> list[int]:
        """``count`` fresh pages (reference count 1), all or none."""
        with self._lock:
            if count > len(self._free):
                raise CacheFull(f"{count} pages needed, {len(self._free)} free of {self.num_pages}")
            pages = [self._free.pop() for _ in range(count)]
            for page in pages:
                self._refs[page] = 1
            return pages

    def share(self, pages: Sequence[int]) -> None:
        """Another user of these pages (a sequence reusing a cached prefix)."""
        with self._lock:
            for page in pages:
                if self._refs[page] <= 0:
                    raise AssertionError(f"page {page} shared but not allocated")
                self._refs[page] += 1

    def release(self, pages: Sequence[int]) -> None:
        freed = False
        with self._lock:
            for page in pages:
                if self._refs[page] <= 0:
                    raise AssertionError(f"page {page} released more often than taken")
                self._refs[page] -= 1
                if self._refs[page] == 0:
                    self._free.append(page)
                    freed = True
        if freed:
            for listener in self._listeners:
                listener()

    def on_release(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the releasing thread) whenever pages become free: what
        a wait for room waits on."""
        self._listeners.append(listener)

    def refs(self, page: int) -> int:
        return self._refs[page]

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_tokens)

    def pages_to_finish(self, num_tokens: int, max_tokens: int, max_context: int) -> int:
        """Pages a sequence of ``num_tokens`` needs to generate up to ``max_tokens`` more
        within ``max_context`` (what a decode admission reserves), at most the whole cache."""
        longest = min(num_tokens + max_tokens, max_context)
        return min(self.pages_for(longest), self.num_pages)

    # -- bytes --------------------------------------------------------------------------

    def page_tensor(self, page: int) -> torch.Tensor:
        """The page's bytes (a uint8 view, on the cache's device)."""
        return self.pages[page].view(torch.uint8).reshape(-1)

    def page_memory(self, page: int) -> memoryview:
        """The page's bytes as host memory (CPU caches only): a store block, zero-copy."""
        return _host_view(self.page_tensor(page))

    def landing_memory(self) -> memoryview:
        """Host memory that other processes write pages into (a transfer segment), laid
        out like ``pages``: the pages themselves on a CPU cache; on a device cache a
        pinned host mirror of them (as large as the cache), from which ``land`` copies
        pages to the device once they have arrived."""
        if self.pages.device.type == "cpu":
            return _host_view(self.pages.view(torch.uint8).reshape(-1))
        if self._landing is None:
            self._landing = torch.empty(self.pages.shape, dtype=self.dtype, pin_memory=True)
        return _host_view(self._landing.view(torch.uint8).reshape(-1))

    def land(self, pages: Sequence[int]) -> None:
        """Pages written into ``landing_memory`` are complete: make them the cache's
        (a host-to-device copy on a device cache; nothing on a CPU cache)."""
        if self._landing is not None and pages:
            index = torch.as_tensor(list(pages), dtype=torch.long)
            self.pages[index.to(self.pages.device)] = self._landing[index].to(
                self.pages.device, non_blocking=True
            )
            torch.cuda.current_stream(self.pages.device).synchronize()

    # -- what the model reads and writes -----------------------------------------------

    def slots(self, page_table: Sequence[int], start: int, count: int) -> torch.Tensor:
        """Flat token slots (page * page_tokens + offset) of positions [start, start + count)."""
        positions = torch.arange(start, start + count)
        table = torch.as_tensor(page_table, dtype=torch.long)
        return (
            table[positions // self.page_tokens] * self.page_tokens + positions % self.page_tokens
        )

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new K and V (``[tokens, kv_heads, head_dim]``) of ``layer`` at ``slots``."""
        slots = slots.to(self.pages.device)
        page, offset = slots // self.page_tokens, slots % self.page_tokens
        self.pages[page, layer, 0, offset] = k.to(self.dtype)
        self.pages[page, layer, 1, offset] = v.to(self.dtype)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of ``layer`` at ``slots`` (any shape of slots; heads and dims appended)."""
        slots = slots.to(self.pages.device)
        page, offset = slots // self.page_tokens, slots % self.page_tokens
        return self.pages[page, layer, 0, offset], self.pages[page, layer, 1, offset]


def _host_view(tensor: torch.Tensor) -> memoryview:
    if tensor.device.type != "cpu":
        raise ValueError("host memory views need a CPU cache; copy through a staging buffer")
    return tensor.numpy().data.cast("B")
