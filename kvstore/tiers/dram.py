"""DRAM tier: one preallocated host arena, backed by shared memory, carved by size class.

::

    /dev/shm/strata-<name>                      one file, mapped MAP_SHARED by the owner
    | page 0 (class A) | page 1 (class B) | ...  and (later) by other processes on the host
      ^ page_bytes each; slots 4 KiB-aligned, a slot's id is its offset (see ``slots``)

The file's pages are reserved up front with ``posix_fallocate``, so a full ``/dev/shm``
is a clean error at start instead of a SIGBUS on first touch. The owner holds an
exclusive ``flock`` on the file for its lifetime; the kernel drops it when the owner dies
(SIGKILL included), which is how the next node start tells a stale arena from a live one
(``factory.remove_stale_arenas``). When CUDA is present the
arena is registered as pinned memory so device copies run at full speed. Reads and
writes are plain memory copies on the caller's thread: memory tiers trust RAM and do not
verify checksums (the store checks them when bytes leave for disk).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kvstore.errors import ConfigError, TierUnavailable
from kvstore.tiers.base import ReadItem, VolatileTier, WriteItem
from kvstore.tiers.slots import SlabAllocator
from kvstore.types import SlotId, TierKind

logger = logging.getLogger(__name__)

SHM_PREFIX = "strata-"


class DramTier(VolatileTier):
    kind = TierKind.DRAM

    def __init__(
        self,
        capacity_bytes: int,
        page_bytes: int,
        *,
        name: str,
        shm_dir: Path = Path("/dev/shm"),
        pin_memory: bool = True,
    ) -> None:
        self.slots = SlabAllocator(capacity_bytes, page_bytes)
        self.path = shm_dir / f"{SHM_PREFIX}{name}"
        self._mmap, self._lock_fd = _map_arena(self.path, self.slots.capacity_bytes)
        self._arena = memoryview(self._mmap)
        self._pinned_addr: int | None = _pin(self._mmap) if pin_memory else None

    @property
    def capacity_bytes(self) -> int:
        return self.slots.capacity_bytes

    @property
    def arena(self) -> memoryview:
        """The whole arena (the transfer engine registers it as a shared segment)."""
        return self._arena

    def view(self, slot: SlotId) -> memoryview:
        return self._arena[slot : slot + self.slots.size_of(slot)]

    def array(self) -> np.ndarray:
        """The whole arena as a uint8 array (for bulk copies and for the transfer engine)."""
        return np.frombuffer(self._mmap, dtype=np.uint8)

    async def write(self, items: Sequence[WriteItem]) -> None:
        for record, data in items:
            src = memoryview(data).cast("B")
            self.view(record.slot)[: src.nbytes] = src

    async def read(self, items: Sequence[ReadItem]) -> list[bool]:
        for slot, length, _checksum, dst in items:
            dst[:length] = self.view(slot)[:length]
        return [True] * len(items)

    async def close(self) -> None:
        if self._pinned_addr is not None:
            _unpin(self._pinned_addr)
            self._pinned_addr = None
        self._arena.release()
        try:
            self._mmap.close()
        except BufferError:
            logger.warning("DRAM arena %s still has views; it is unmapped when they go", self.path)
        self.path.unlink(missing_ok=True)
        os.close(self._lock_fd)


def _map_arena(path: Path, size: int) -> tuple[mmap.mmap, int]:
    """Create the shared-memory file, lock it, reserve its pages and map it; returns the
    map and the file descriptor that holds the lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(
            "tiers.dram.name", f"{path} exists: another store uses this name, or one crashed"
        ) from exc
    except OSError as exc:
        raise TierUnavailable(f"cannot create DRAM arena {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED), fd
    except OSError as exc:
        path.unlink(missing_ok=True)
        os.close(fd)
        raise TierUnavailable(
            f"cannot reserve {size} bytes of shared memory at {path}: {exc.strerror}"
            " (lower tiers.dram.capacity_bytes or free space in its directory)"
        ) from exc


def _pin(arena: mmap.mmap) -> int | None:
    """Register the arena with CUDA as pinned host memory; None when there is no CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    addr = int(np.frombuffer(arena, dtype=np.uint8).ctypes.data)
    cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
    err = cudart.cudaHostRegister(addr, len(arena), 0)
    if int(err) != 0:
        logger.warning("cudaHostRegister of the DRAM arena failed (error %s)", int(err))
        return None
    return addr


def _unpin(addr: int) -> None:
    import torch

    torch.cuda.cudart().cudaHostUnregister(addr)  # type: ignore[no-untyped-call]
