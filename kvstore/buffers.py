"""Page-aligned host buffers.

``O_DIRECT`` I/O needs 4 KiB-aligned buffers and lengths, and DMA engines prefer page
alignment too. An anonymous ``mmap`` is always page-aligned, unlike ``bytearray`` or a
numpy allocation, so staging and benchmark buffers come from here.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE_BYTES = mmap.PAGESIZE


def aligned_buffer(nbytes: int) -> memoryview:
    """A zeroed, writable, page-aligned buffer of ``nbytes`` bytes."""
    if nbytes <= 0:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    return memoryview(mmap.mmap(-1, nbytes))


def aligned_blocks(num_blocks: int, block_bytes: int) -> list[memoryview]:
    """``num_blocks`` page-aligned buffers of ``block_bytes`` each, carved from one mapping."""
    stride = -(-block_bytes // PAGE_BYTES) * PAGE_BYTES
    arena = aligned_buffer(max(1, num_blocks) * stride)
    return [arena[i * stride : i * stride + block_bytes] for i in range(num_blocks)]


class StagingPool:
    """Reusable page-aligned buffers of one size, for bytes on their way to or from a
    tier that has no host view (NVMe, HBM).

    Fresh anonymous pages fault on first touch (a copy into them runs at about a tenth of
    memcpy speed) and unmapping them costs as much again, so buffers are pre-touched once
    and kept. At most ``max_bytes`` are kept; more can be taken, the excess is unmapped
    when given back. Event-loop thread only.
    """

    def __init__(self, buffer_bytes: int, max_bytes: int) -> None:
        self.buffer_bytes = -(-buffer_bytes // PAGE_BYTES) * PAGE_BYTES
        self._max_buffers = max(1, max_bytes // self.buffer_bytes)
        self._free: list[memoryview] = []

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take(self, count: int) -> list[memoryview]:
        """``count`` buffers of ``buffer_bytes`` each (contents unspecified)."""
        missing = count - len(self._free)
        if missing > 0:
            fresh = aligned_buffer(missing * self.buffer_bytes)
            np.frombuffer(fresh, dtype=np.uint8)[::PAGE_BYTES] = 0  # fault pages in now
            step = self.buffer_bytes
            self._free.extend(fresh[i * step : (i + 1) * step] for i in range(missing))
        split = len(self._free) - count
        taken = self._free[split:]
        del self._free[split:]
        return taken

    def give(self, buffers: list[memoryview]) -> None:
        room = self._max_buffers - len(self._free)
        self._free.extend(buffers[:room])
