"""Host bytes of a request's pages: what sockets and the store's arena read and write.

Where the layout gives a page as host memory in block layout (a CPU cache of whole
pages), the blocks are zero-copy views and nothing is ever staged. Otherwise a page is
staged in a pinned (on CUDA) buffer in block layout, and each layer crosses on its own:
``to_host`` before that layer is sent, ``to_device`` after it has landed, so layer-wise
transfers still overlap the compute of the next layer.

Only the pages a transfer touches are staged, when it first touches them: a request
whose pass loads or saves a few blocks of a long prompt stages those blocks, not the
whole prompt (an engine that opens a request's pages anew each pass, as vLLM's
connector does, would otherwise stage every page so far in every pass: quadratic bytes
over a chunked prefill). Each first touch allocates one buffer for the pages it adds::

    pages    [ p0 | p1 | p2 | p3 | p4 | p5 ]        (position order)
    views(range(0, 2))   -> buffer 0: rows p0 p1    (a load of blocks 0-1)
    views(range(2, 5))   -> buffer 1: rows p2 p3 p4 (a pass saving blocks 2-4)
    to_host(layer, [1, 2]): one copy per buffer it spans

Not thread-safe: one compute thread stages and copies (the event loop only reads and
writes the bytes of views it was given).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstore.connector.layouts import KVLayout


class HostBlocks:
    def __init__(self, layout: KVLayout, pages: Sequence[int]) -> None:
        self.layout = layout
        self.pages = list(pages)
        self.staged_bytes = 0  # staging allocated so far
        self._views: dict[int, memoryview] = {}  # page index -> its block's host bytes
        self._buffers: list[torch.Tensor] = []  # [rows, *block shape] each
        self._rows: dict[int, tuple[int, int]] = {}  # staged page index -> (buffer, row)

    @property
    def staged(self) -> bool:
        """Some page crosses between the cache and host memory by copies."""
        return bool(self._buffers)

    def views(self, indices: Sequence[int]) -> list[memoryview]:
        """The host bytes of the pages at ``indices`` (of this set), each a whole block in
        the store's layout; pages not touched before are staged now."""
        self._touch(indices)
        return [self._views[i] for i in indices]

    def to_host(self, layer: int, indices: Sequence[int]) -> None:
        """Copy layer ``layer`` of the pages at ``indices`` (of this set) to host memory."""
        for buffer, rows, chosen in self._staged_rows(indices):
            src = self.layout.read_layer(layer, [self.pages[i] for i in chosen])
            if rows is None:
                buffer[:, layer].copy_(src)
            else:
                buffer[:, layer].index_copy_(0, rows, src.cpu())

    def to_device(self, layer: int, indices: Sequence[int]) -> None:
        """Copy layer ``layer`` of the pages at ``indices`` from host memory to the cache."""
        for buffer, rows, chosen in self._staged_rows(indices):
            src = buffer[:, layer] if rows is None else buffer[:, layer].index_select(0, rows)
            self.layout.write_layer(layer, [self.pages[i] for i in chosen], src)

    def _touch(self, indices: Sequence[int]) -> None:
        """Give every page at ``indices`` its host bytes: a zero-copy view of the page
        where the layout has one, else a row of one new staging buffer."""
        new = [i for i in dict.fromkeys(indices) if i not in self._views]
        if not new:
            return
        direct = [self.layout.host_block(self.pages[i]) for i in new]
        if all(v is not None for v in direct):
            self._views.update(zip(new, direct, strict=True))  # type: ignore[arg-type]
            return
        spec = self.layout.spec
        pinned = self.layout.device.type == "cuda"
        buffer = torch.empty(
            (len(new), *spec.shape), dtype=spec.dtype.torch_dtype(), pin_memory=pinned
        )
        raw = buffer.view(torch.uint8).reshape(len(new), -1)
        for row, i in enumerate(new):
            self._views[i] = raw[row].numpy().data.cast("B")
            self._rows[i] = (len(self._buffers), row)
        self._buffers.append(buffer)
        self.staged_bytes += buffer.nbytes

    def _staged_rows(
        self, indices: Sequence[int]
    ) -> list[tuple[torch.Tensor, torch.Tensor | None, list[int]]]:
        """Per staging buffer that ``indices`` span: (buffer, its rows, or None for all
        of them in order, those indices)."""
        self._touch(indices)
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for i in indices:
            if i in self._rows:
                buffer, row = self._rows[i]
                rows, chosen = groups.setdefault(buffer, ([], []))
                rows.append(row)
                chosen.append(i)
        return [
            (self._buffers[b], _rows(r, len(self._buffers[b])), c) for b, (r, c) in groups.items()
        ]


def _rows(rows: list[int], num_rows: int) -> torch.Tensor | None:
    """The rows as an index, or None when they are the whole buffer in order (a slice
    then: no gather)."""
    return None if rows == list(range(num_rows)) else torch.as_tensor(rows)
