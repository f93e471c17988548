"""HBM tier: a pool in device memory, through torch, carved by size class.

One ``uint8`` tensor of ``capacity_bytes`` on the configured CUDA device; a slot is a
slice of it at its offset (see ``slots``). Copies between host buffers and the pool run
on a dedicated CUDA stream from the tier's own thread, so the event loop never waits on
the device.
On a host without CUDA, enabling this tier is a configuration error (not a silent
fallback): the operator asked for device memory that is not there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from kvstore.errors import ConfigError
from kvstore.tiers.base import ReadItem, VolatileTier, WriteItem
from kvstore.tiers.slots import SlabAllocator
from kvstore.types import SlotId, TierKind


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class HbmTier(VolatileTier):
    kind = TierKind.HBM

    def __init__(self, capacity_bytes: int, page_bytes: int, *, device: str) -> None:
        import torch

        if not cuda_available():
            raise ConfigError(
                "tiers.hbm.enabled",
                "the HBM tier needs a CUDA device and this host has none; set it to false",
            )
        self.slots = SlabAllocator(capacity_bytes, page_bytes)
        self.device = torch.device(device)
        size = self.slots.capacity_bytes
        self._pool = torch.empty(size, dtype=torch.uint8, device=self.device)
        self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="strata-hbm-copy")

    @property
    def capacity_bytes(self) -> int:
        return self.slots.capacity_bytes

    def view(self, slot: SlotId) -> None:
        return None

    def tensor(self, slot: SlotId):  # type: ignore[no-untyped-def]
        """The slot as a uint8 device tensor (a view into the pool)."""
        return self._pool[slot : slot + self.slots.size_of(slot)]

    async def write(self, items: Sequence[WriteItem]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write, items)

    async def read(self, items: Sequence[ReadItem]) -> list[bool]:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._read, items)
        return [True] * len(items)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        del self._pool

    def _write(self, items: Sequence[WriteItem]) -> None:
        import torch

        with torch.cuda.stream(self._stream):
            for record, data in items:
                src = torch.frombuffer(data, dtype=torch.uint8)
                self.tensor(record.slot)[: record.length_bytes].copy_(src)
        self._stream.synchronize()

    def _read(self, items: Sequence[ReadItem]) -> None:
        import torch

        with torch.cuda.stream(self._stream):
            for slot, length, _checksum, dst in items:
                out = torch.frombuffer(dst, dtype=torch.uint8)[:length]
                out.copy_(self.tensor(slot)[:length])
        self._stream.synchronize()
