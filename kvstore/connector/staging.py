"""Host bytes of a request's pages: what sockets and the store's arena read and write.

Where the layout gives a page as host memory in block layout (a CPU cache of whole
pages), the blocks are zero-copy views and nothing is ever staged. Otherwise the request
gets a pinned (on CUDA) staging buffer of its pages in block layout, and each layer
crosses on its own: ``to_host`` before that layer is sent, ``to_device`` after it has
landed, so layer-wise transfers still overlap the compute of the next layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstore.connector.layouts import KVLayout


class HostBlocks:
    def __init__(self, layout: KVLayout, pages: Sequence[int]) -> None:
        self.layout = layout
        self.pages = list(pages)
        self._staging: torch.Tensor | None = None
        views = [layout.host_block(p) for p in self.pages]
        if all(v is not None for v in views):
            self.blocks: list[memoryview] = views  # type: ignore[assignment]
            return
        spec = layout.spec
        pinned = layout.device.type == "cuda"
        self._staging = torch.empty(
            (len(self.pages), *spec.shape), dtype=spec.dtype.torch_dtype(), pin_memory=pinned
        )
        raw = self._staging.view(torch.uint8).reshape(len(self.pages), -1)
        self.blocks = [raw[i].numpy().data.cast("B") for i in range(len(self.pages))]

    @property
    def staged(self) -> bool:
        """Layers cross between the cache and host memory by copies."""
        return self._staging is not None

    def to_host(self, layer: int, indices: Sequence[int]) -> None:
        """Copy layer ``layer`` of the pages at ``indices`` (of this set) to host memory."""
        if self._staging is not None and indices:
            src = self.layout.read_layer(layer, [self.pages[i] for i in indices])
            self._staging[torch.as_tensor(list(indices)), layer] = src.cpu()

    def to_device(self, layer: int, indices: Sequence[int]) -> None:
        """Copy layer ``layer`` of the pages at ``indices`` from host memory to the cache."""
        if self._staging is not None and indices:
            src = self._staging[torch.as_tensor(list(indices)), layer]
            self.layout.write_layer(layer, [self.pages[i] for i in indices], src)
