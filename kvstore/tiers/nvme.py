"""NVMe tier: fixed-size slots in preallocated slab files, indexed by LMDB.

::

    <data dir>/FORMAT              {"version": 1, "slot_bytes": S, "slab_slots": K}
    <data dir>/index/              LMDB (see nvme_index): key -> record, write intents
    <data dir>/slab-00000.dat      slots 0 .. K-1      (K * S bytes, fallocate'd)
    <data dir>/slab-00001.dat      slots K .. 2K-1     created when first needed

Bytes move with ``os.preadv`` / ``os.pwritev`` on a dedicated, named thread pool, never on
the event loop; a batch is split across the pool's threads. Where the filesystem supports
it, files are opened with ``O_DIRECT`` (no page-cache copy, no cache pollution); the
buffer and length must then be 4 KiB aligned, which DRAM arena slots are, and anything
else goes through a per-thread aligned bounce buffer. Every read verifies the block's
xxh3-64 checksum; a mismatch is reported to the store, which never serves the block.

Durability is described in ``nvme_index``: committed blocks survive a kill -9 always, and
a power loss when ``fsync`` is on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from kvstore.errors import ConfigError, TierUnavailable
from kvstore.hashing import Namespace, checksum
from kvstore.tiers.base import BlockRecord, ReadItem, Recovered, SlotRef, WriteItem
from kvstore.tiers.nvme_index import NvmeIndex
from kvstore.tiers.slots import SlotAllocator
from kvstore.types import NamespaceId, SlotId, TierKind

logger = logging.getLogger(__name__)

R = TypeVar("R")
Item = TypeVar("Item")

ALIGN = 4096
FORMAT_VERSION = 1


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


class NvmeTier:
    kind = TierKind.NVME

    def __init__(
        self,
        path: Path,
        num_slots: int,
        slot_bytes: int,
        *,
        slab_bytes: int,
        direct_io: bool | None,
        fsync: bool,
        io_threads: int,
    ) -> None:
        self.path = path
        self.slot_bytes = align_up(slot_bytes)
        self.slab_slots = max(1, slab_bytes // self.slot_bytes)
        self.fsync = fsync
        _prepare_directory(path, num_slots * self.slot_bytes)
        _check_format(path, self.slot_bytes, self.slab_slots)
        self.direct_io = _probe_direct_io(path) if direct_io is None else direct_io
        self._index = NvmeIndex(path / "index", num_slots=num_slots, fsync=fsync)
        records, self.num_torn_writes = self._index.recover()
        self._records, dropped = _valid_records(records, num_slots)
        self._index.delete((r.key, r.slot) for r in dropped)
        self.slots = SlotAllocator(num_slots, used=(r.slot for r in self._records))
        self._fds: dict[int, int] = {}
        self._fd_lock = threading.Lock()
        self._scratch = threading.local()
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="strata-nvme-io")
        self._io_threads = io_threads
        if self.num_torn_writes:
            logger.warning("%s: %d torn writes found and discarded", path, self.num_torn_writes)

    @property
    def capacity_bytes(self) -> int:
        return self.slots.num_slots * self.slot_bytes

    def view(self, slot: SlotId) -> None:
        return None

    def recover(self) -> Recovered:
        records, self._records = self._records, []
        return Recovered(records, self._index.namespaces(), self.num_torn_writes)

    def save_namespace(self, namespace: Namespace) -> None:
        self._index.save_namespace(namespace)

    def forget_namespace(self, ns_id: NamespaceId) -> None:
        self._index.forget_namespace(ns_id)

    async def write(self, items: Sequence[WriteItem]) -> None:
        records = [item.record for item in items]
        await self._run(self._index.begin, records)
        await self._gather(self._write_chunk, items)
        if self.fsync:
            await self._run(self._sync_files, {self._slab_of(r.slot) for r in records})
        await self._run(self._index.commit, records)

    async def read(self, items: Sequence[ReadItem]) -> list[bool]:
        results = await self._gather(self._read_chunk, items)
        return [ok for chunk in results for ok in chunk]

    async def free(self, refs: Sequence[SlotRef]) -> None:
        await self._run(self._index.delete, [(ref.key, ref.slot) for ref in refs])
        for ref in refs:
            self.slots.free(ref.slot)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._index.close()
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def drop_cache(self) -> None:
        """Evict the slab files from the page cache (benchmarks measure cold reads)."""
        with self._fd_lock:
            for fd in self._fds.values():
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    # -- executor side ------------------------------------------------------------------

    async def _run(self, fn: Callable[..., R], *args: object) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _gather(self, fn: Callable[[Sequence[Item]], R], items: Sequence[Item]) -> list[R]:
        """Split ``items`` into one contiguous chunk per I/O thread and run ``fn`` on each."""
        if not items:
            return []
        num_chunks = min(self._io_threads, len(items))
        size = -(-len(items) // num_chunks)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        return await asyncio.gather(*(self._run(fn, chunk) for chunk in chunks))

    def _write_chunk(self, items: Sequence[WriteItem]) -> None:
        for record, data in items:
            src = memoryview(data).cast("B")
            length = align_up(src.nbytes) if self.direct_io else src.nbytes
            if self.direct_io and not _aligned(src, length):
                bounce = self._bounce()
                bounce[: src.nbytes] = src
                bounce[src.nbytes : length] = bytes(length - src.nbytes)
                src = bounce
            fd, offset = self._locate(record.slot)
            _pwrite_all(fd, src[:length], offset)

    def _read_chunk(self, items: Sequence[ReadItem]) -> list[bool]:
        results = []
        for slot, length, expected, dst in items:
            fd, offset = self._locate(slot)
            span = align_up(length) if self.direct_io else length
            target = dst if not self.direct_io or _aligned(dst, span) else self._bounce()
            if _pread_all(fd, target[:span], offset) < length:
                results.append(False)
                continue
            if target is not dst:
                dst[:length] = target[:length]
            results.append(checksum(dst[:length]) == expected)
        return results

    def _bounce(self) -> memoryview:
        buf = getattr(self._scratch, "buf", None)
        if buf is None:
            buf = self._scratch.buf = memoryview(mmap.mmap(-1, self.slot_bytes))
        return buf

    def _locate(self, slot: SlotId) -> tuple[int, int]:
        slab = self._slab_of(slot)
        fd = self._fds.get(slab)
        if fd is None:
            fd = self._open_slab(slab)
        return fd, (slot % self.slab_slots) * self.slot_bytes

    def _slab_of(self, slot: SlotId) -> int:
        return slot // self.slab_slots

    def _open_slab(self, slab: int) -> int:
        with self._fd_lock:
            if slab in self._fds:
                return self._fds[slab]
            flags = os.O_RDWR | os.O_CREAT | (os.O_DIRECT if self.direct_io else 0)
            fd = os.open(self.path / f"slab-{slab:05d}.dat", flags, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.slab_slots * self.slot_bytes)
            except OSError as exc:
                os.close(fd)
                raise TierUnavailable(f"cannot grow {self.path}: {exc.strerror}") from exc
            self._fds[slab] = fd
            return fd

    def _sync_files(self, slabs: set[int]) -> None:
        for slab in slabs:
            os.fdatasync(self._fds[slab])


def _aligned(buf: memoryview, span: int) -> bool:
    if span > buf.nbytes or span % ALIGN:
        return False
    address = np.frombuffer(buf, dtype=np.uint8).ctypes.data if buf.nbytes else 0
    return address % ALIGN == 0


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:
        written = os.pwritev(fd, [data], offset)
        data, offset = data[written:], offset + written


def _pread_all(fd: int, dst: memoryview, offset: int) -> int:
    total = 0
    while total < dst.nbytes:
        got = os.preadv(fd, [dst[total:]], offset + total)
        if got == 0:
            break
        total += got
    return total


def _prepare_directory(path: Path, capacity_bytes: int) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise ConfigError("tiers.nvme.path", f"{path} is not a writable directory: {exc}") from exc
    used = sum(f.stat().st_size for f in path.glob("slab-*.dat"))
    free = shutil.disk_usage(path).free
    if capacity_bytes - used > free:
        raise ConfigError(
            "tiers.nvme.capacity_bytes",
            f"{capacity_bytes} bytes asked but only {free + used} available under {path}",
        )


def _check_format(path: Path, slot_bytes: int, slab_slots: int) -> None:
    fmt = path / "FORMAT"
    expected = {"version": FORMAT_VERSION, "slot_bytes": slot_bytes, "slab_slots": slab_slots}
    if fmt.exists():
        found = json.loads(fmt.read_text())
        if found != expected:
            raise ConfigError(
                "tiers.nvme.path",
                f"{path} holds blocks of layout {found}, this store uses {expected};"
                " use another directory or the same store.block_bytes and tiers.nvme.slab_bytes",
            )
    else:
        fmt.write_text(json.dumps(expected))


def _probe_direct_io(path: Path) -> bool:
    probe = path / ".direct-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def _valid_records(
    records: list[BlockRecord], num_slots: int
) -> tuple[list[BlockRecord], list[BlockRecord]]:
    """Split records into those that fit this tier's slots (one owner per slot) and the
    rest, which a smaller capacity than before left without a slot."""
    seen: set[int] = set()
    valid, dropped = [], []
    for record in records:
        if record.slot >= num_slots or record.slot in seen:
            dropped.append(record)
            continue
        seen.add(record.slot)
        valid.append(record)
    if dropped:
        logger.warning("dropping %d NVMe blocks beyond the configured capacity", len(dropped))
    return valid, dropped
