"""Page-aligned host buffers.

``O_DIRECT`` I/O needs 4 KiB-aligned buffers and lengths, and DMA engines prefer page
alignment too. An anonymous ``mmap`` is always page-aligned, unlike ``bytearray`` or a
numpy allocation, so staging and benchmark buffers come from here.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE_BYTES = mmap.PAGESIZE
ALIGN = 4096  # O_DIRECT's alignment, and the granule of tier slots


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


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
    """Reusable page-aligned buffers, one free list per size (a block size rounded up to
    whole pages), for bytes on their way to or from a tier that has no host view (NVMe,
    HBM).

    Fresh anonymous pages fault on first touch (a copy into them runs at about a tenth of
    memcpy speed) and unmapping them costs as much again, so buffers are pre-touched once
    and kept. At most ``max_bytes`` are kept over all sizes; more can be taken, the excess
    is unmapped when given back. Event-loop thread only.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._kept_bytes = 0
        self._free: dict[int, list[memoryview]] = {}

    @property
    def num_free(self) -> int:
        return sum(len(buffers) for buffers in self._free.values())

    def take(self, count: int, nbytes: int) -> list[memoryview]:
        """``count`` buffers of at least ``nbytes`` each (contents unspecified)."""
        size = -(-nbytes // PAGE_BYTES) * PAGE_BYTES
        free = self._free.setdefault(size, [])
        missing = count - len(free)
        if missing > 0:
            fresh = aligned_buffer(missing * size)
            np.frombuffer(fresh, dtype=np.uint8)[::PAGE_BYTES] = 0  # fault pages in now
            free.extend(fresh[i * size : (i + 1) * size] for i in range(missing))
            self._kept_bytes += missing * size
        split = len(free) - count
        taken = free[split:]
        del free[split:]
        self._kept_bytes -= count * size
        return taken

    def give(self, buffers: list[memoryview]) -> None:
        for buffer in buffers:
            if self._kept_bytes + buffer.nbytes > self._max_bytes:
                continue
            self._free.setdefault(buffer.nbytes, []).append(buffer)
            self._kept_bytes += buffer.nbytes
