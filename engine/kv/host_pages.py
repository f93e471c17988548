"""Host bytes of some of a cache's pages, for the store and for transfers.

Sockets and the store's arena speak host memory. A CPU cache's pages already are host
memory, so this is a set of zero-copy views. A GPU cache gets a pinned staging buffer of
the same pages instead, and each layer is copied across on its own (``to_host`` before
that layer is sent, ``to_device`` after it has landed), so layer-wise transfers still
overlap the compute of the next layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.kv.cache import PagedKVCache


class HostPages:
    def __init__(self, cache: PagedKVCache, pages: Sequence[int]) -> None:
        self.cache = cache
        self.pages = list(pages)
        self._staging: torch.Tensor | None = None
        if cache.pages.device.type == "cpu":
            self.blocks = [cache.page_memory(p) for p in self.pages]
            return
        shape = (len(self.pages), *cache.pages.shape[1:])
        self._staging = torch.empty(shape, dtype=cache.dtype, pin_memory=True)
        raw = self._staging.view(torch.uint8).reshape(len(self.pages), -1)
        self.blocks = [raw[i].numpy().data.cast("B") for i in range(len(self.pages))]

    def to_host(self, layer: int, indices: Sequence[int]) -> None:
        """Copy layer ``layer`` of the pages at ``indices`` (of this set) to host memory."""
        if self._staging is not None and indices:
            idx = torch.as_tensor(indices)
            src = self.cache.pages[torch.as_tensor([self.pages[i] for i in indices]), layer]
            self._staging[idx, layer] = src.cpu()

    def to_device(self, layer: int, indices: Sequence[int]) -> None:
        """Copy layer ``layer`` of the pages at ``indices`` from host memory to the cache."""
        if self._staging is not None and indices:
            dst = torch.as_tensor([self.pages[i] for i in indices])
            device = self.cache.pages.device
            self.cache.pages[dst.to(device), layer] = self._staging[
                torch.as_tensor(indices), layer
            ].to(device, non_blocking=True)
