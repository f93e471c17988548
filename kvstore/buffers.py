"""Page-aligned host buffers.

``O_DIRECT`` I/O needs 4 KiB-aligned buffers and lengths, and DMA engines prefer page
alignment too. An anonymous ``mmap`` is always page-aligned, unlike ``bytearray`` or a
numpy allocation, so staging and benchmark buffers come from here.
"""

from __future__ import annotations

import mmap

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
