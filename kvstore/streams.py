"""Block bytes on the wire: split into data messages, reassembled into buffers.

Blocks travel concatenated in key order, as data messages of at most ``chunk_bytes``;
a chunk never spans two blocks, so each is a slice of one block's buffer (no joining
copy on the sender) and lands in one destination buffer on the receiver.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from kvstore.errors import InvalidArgument


def chunks(blocks: Sequence[memoryview], chunk_bytes: int) -> Iterator[memoryview]:
    """Slices of at most ``chunk_bytes`` covering ``blocks`` in order."""
    for block in blocks:
        for start in range(0, block.nbytes, chunk_bytes):
            yield block[start : start + chunk_bytes]


class BlockAssembler:
    """Copies a stream of chunks into per-block buffers.

    ``dsts[i]`` receives block i's bytes, or None to skip them (a block the receiver
    already has). Raises InvalidArgument if more bytes arrive than the blocks hold.
    """

    def __init__(self, dsts: Sequence[memoryview | None], block_bytes: int) -> None:
        self._dsts = dsts
        self._block_bytes = block_bytes
        self.expected_bytes = len(dsts) * block_bytes
        self.received_bytes = 0

    @property
    def complete(self) -> bool:
        return self.received_bytes == self.expected_bytes

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self.received_bytes + view.nbytes > self.expected_bytes:
            raise InvalidArgument(
                f"data: {self.received_bytes + view.nbytes} bytes sent for blocks holding"
                f" {self.expected_bytes}"
            )
        while view.nbytes:
            block, offset = divmod(self.received_bytes, self._block_bytes)
            take = min(view.nbytes, self._block_bytes - offset)
            dst = self._dsts[block]
            if dst is not None:
                dst[offset : offset + take] = view[:take]
            view = view[take:]
            self.received_bytes += take

    def check_complete(self) -> None:
        if not self.complete:
            raise InvalidArgument(
                f"data: expected {self.expected_bytes} bytes for {len(self._dsts)} blocks,"
                f" got {self.received_bytes}"
            )
