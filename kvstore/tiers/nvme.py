"""NVMe tier: slots by size class in preallocated slab files, indexed by LMDB.

::

    <data dir>/LOCK                the owner's pid; flock'ed while a node has the tier open
    <data dir>/FORMAT              {"version": 2, "page_bytes": P, "slab_pages": K}
    <data dir>/index/              LMDB (see nvme_index): key -> record, write intents
    <data dir>/slab-00000.dat      pages 0 .. K-1      (K * P bytes, fallocate'd)
    <data dir>/slab-00001.dat      pages K .. 2K-1     created when first needed; the
                                                       last one only as long as the
                                                       capacity left, so the files never
                                                       add up to more than capacity_bytes

A slot's id is its byte offset in the concatenated slab files; its size class comes from
its page (``slots``), which a restart rebuilds from the records' offsets and lengths.

Bytes move with ``os.preadv`` / ``os.pwritev`` on a dedicated, named thread pool, never on
the event loop; a batch is split across the pool's threads. Where the filesystem supports
it, files are opened with ``O_DIRECT`` (no page-cache copy, no cache pollution); the
buffer and length must then be 4 KiB aligned, which DRAM arena slots are, and anything
else goes through a per-thread aligned bounce buffer. Every read verifies the block's
xxh3-64 checksum; a mismatch is reported to the store, which never serves the block.

Durability is described in ``nvme_index``: committed blocks survive a kill -9 always, and
a power loss when ``fsync`` is on.

One node per directory: the tier holds an exclusive ``flock`` on ``LOCK`` from open to
close (the kernel drops it when the process dies, even by SIGKILL), so a second node on
the same directory fails at start naming the holder's pid instead of corrupting blocks.

Disk faults (a full disk, a full LMDB map, EIO) surface as ``TierUnavailable``, never as
raw ``lmdb`` or ``OS`` errors. A free whose index delete fails keeps its slots out of the
pool (they still hold a record) and is retried with the next free or write, so no slot
leaks and no slot is handed out while a record still names it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import mmap
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np

from kvstore.buffers import ALIGN, align_up
from kvstore.errors import ConfigError, TierUnavailable
from kvstore.hashing import Namespace, checksum
from kvstore.tiers.base import ReadItem, Recovered, SlotRef, WriteItem
from kvstore.tiers.nvme_index import NvmeIndex, private_directory
from kvstore.tiers.slots import SlabAllocator
from kvstore.types import NamespaceId, SlotId, TierKind

logger = logging.getLogger(__name__)

R = TypeVar("R")
Item = TypeVar("Item")

FORMAT_VERSION = 2


class NvmeTier:
    kind = TierKind.NVME

    def __init__(
        self,
        path: Path,
        capacity_bytes: int,
        page_bytes: int,
        *,
        slab_bytes: int,
        direct_io: bool | None,
        fsync: bool,
        io_threads: int,
    ) -> None:
        self.path = path
        self.fsync = fsync
        _prepare_directory(path, capacity_bytes)
        self._lock_fd = lock_directory(path)
        try:
            self._open(capacity_bytes, page_bytes, slab_bytes, direct_io, io_threads)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(
        self,
        capacity_bytes: int,
        page_bytes: int,
        slab_bytes: int,
        direct_io: bool | None,
        io_threads: int,
    ) -> None:
        path = self.path
        page_bytes, slab_pages = _layout(path, capacity_bytes, page_bytes, slab_bytes)
        self.slots = SlabAllocator(capacity_bytes, page_bytes)
        self.slab_bytes = slab_pages * page_bytes
        self.direct_io = _probe_direct_io(path) if direct_io is None else direct_io
        max_blocks = self.slots.capacity_bytes // ALIGN
        self._index = NvmeIndex(path / "index", num_slots=max_blocks, fsync=self.fsync)
        records, self.num_torn_writes = self._index.recover()
        kept = self.slots.restore([(r.slot, r.length_bytes, r.key) for r in records])
        self._records = [r for r, ok in zip(records, kept, strict=True) if ok]
        dropped = [r for r, ok in zip(records, kept, strict=True) if not ok]
        if dropped:
            logger.warning("dropping %d NVMe blocks that do not fit the capacity", len(dropped))
            self._index.delete((r.key, r.slot) for r in dropped)
        self._fds: dict[int, int] = {}
        self._fd_lock = threading.Lock()
        self._scratch = threading.local()
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="strata-nvme-io")
        self._io_threads = io_threads
        self._unforgotten: list[SlotRef] = []  # freed, but their records could not be deleted
        if self.num_torn_writes:
            logger.warning("%s: %d torn writes found and discarded", path, self.num_torn_writes)

    @property
    def capacity_bytes(self) -> int:
        return self.slots.capacity_bytes

    def view(self, slot: SlotId) -> None:
        return None

    def recover(self) -> Recovered:
        records, self._records = self._records, []
        return Recovered(records, self._index.namespaces(), self.num_torn_writes)

    def save_namespace(self, namespace: Namespace) -> None:
        try:
            self._index.save_namespace(namespace)
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc

    def forget_namespace(self, ns_id: NamespaceId) -> None:
        self._index.forget_namespace(ns_id)

    async def write(self, items: Sequence[WriteItem]) -> None:
        if self._unforgotten:
            await self.free([])
        records = [item.record for item in items]
        try:
            await self._run(self._index.begin, records)
            await self._gather(self._write_chunk, items)
            if self.fsync:
                await self._run(self._sync_files, {self._slab_of(r.slot) for r in records})
            await self._run(self._index.commit, records)
        except (lmdb.Error, OSError) as exc:
            # Intents left behind are counted as torn writes at the next open; the
            # caller returns the slots to the pool.
            raise self._unavailable(exc) from exc

    async def read(self, items: Sequence[ReadItem]) -> list[bool]:
        results = await self._gather(self._read_chunk, items)
        return [ok for chunk in results for ok in chunk]

    async def free(self, refs: Sequence[SlotRef]) -> None:
        """Forget the blocks and return their slots; never fails. When the index cannot
        take the delete (a full disk), the slots stay out of the pool until it can."""
        pending, self._unforgotten = [*self._unforgotten, *refs], []
        if not pending:
            return
        try:
            await self._run(self._index.delete, [(ref.key, ref.slot) for ref in pending])
        except lmdb.Error as exc:
            if len(pending) == len(refs):  # the first failure of an episode
                logger.warning(
                    "%s: cannot delete records (%s); slots kept until it can", self.path, exc
                )
            self._unforgotten.extend(pending)
            return
        if len(pending) > len(refs):
            logger.info("%s: %d deferred frees done", self.path, len(pending) - len(refs))
        for ref in pending:
            self.slots.free(ref.slot)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._index.close()
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        os.close(self._lock_fd)

    def _unavailable(self, exc: BaseException) -> TierUnavailable:
        return TierUnavailable(f"NVMe tier at {self.path} failed: {exc}")

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
                bounce = self._bounce(length)
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
            target = dst if not self.direct_io or _aligned(dst, span) else self._bounce(span)
            if _pread_all(fd, target[:span], offset) < length:
                results.append(False)
                continue
            if target is not dst:
                dst[:length] = target[:length]
            results.append(checksum(dst[:length]) == expected)
        return results

    def _bounce(self, nbytes: int) -> memoryview:
        """This thread's aligned bounce buffer, of at least ``nbytes``."""
        buf: memoryview | None = getattr(self._scratch, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = self._scratch.buf = memoryview(mmap.mmap(-1, align_up(nbytes)))
        return buf

    def _locate(self, slot: SlotId) -> tuple[int, int]:
        slab, offset = divmod(slot, self.slab_bytes)
        fd = self._fds.get(slab)
        if fd is None:
            fd = self._open_slab(slab)
        return fd, offset

    def _slab_of(self, slot: SlotId) -> int:
        return slot // self.slab_bytes

    def _open_slab(self, slab: int) -> int:
        with self._fd_lock:
            if slab in self._fds:
                return self._fds[slab]
            flags = os.O_RDWR | os.O_CREAT | (os.O_DIRECT if self.direct_io else 0)
            fd = os.open(self.path / f"slab-{slab:05d}.dat", flags, 0o600)
            try:
                size = min(self.slab_bytes, self.capacity_bytes - slab * self.slab_bytes)
                os.posix_fallocate(fd, 0, size)
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
        private_directory(path)
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


def lock_directory(path: Path) -> int:
    """Take the directory's exclusive lock and record this pid in it; returns the lock's fd.

    Raises:
        ConfigError: another live process holds the directory.
    """
    fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            "tiers.nvme.path",
            f"{path} is in use by another store node (pid {holder}); give each node its own"
            " directory",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _layout(path: Path, capacity_bytes: int, page_bytes: int, slab_bytes: int) -> tuple[int, int]:
    """(page_bytes, pages per slab file) of the directory: what its FORMAT file says, or,
    for a new directory, the configured ones (a page no larger than the capacity), which
    are then written down. Slot offsets depend on both, so a directory keeps its own."""
    fmt = path / "FORMAT"
    if fmt.exists():
        found = _read_format(fmt)
        if found.get("version") != FORMAT_VERSION:
            raise ConfigError(
                "tiers.nvme.path",
                f"{path} holds blocks of an older layout ({found}); this store reads layout"
                f" version {FORMAT_VERSION}: use another directory or empty this one",
            )
        try:
            page_bytes, slab_pages = int(found["page_bytes"]), int(found["slab_pages"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(fmt, f"no valid {exc}") from None
        if page_bytes > capacity_bytes:
            raise ConfigError(
                "tiers.nvme.capacity_bytes",
                f"{capacity_bytes} is smaller than one page ({page_bytes} bytes) of the blocks"
                f" already in {path}: raise it, or use another directory",
            )
        return page_bytes, slab_pages
    page_bytes = min(align_up(page_bytes), capacity_bytes // ALIGN * ALIGN)
    slab_pages = max(1, slab_bytes // page_bytes)
    layout = {"version": FORMAT_VERSION, "page_bytes": page_bytes, "slab_pages": slab_pages}
    fmt.write_text(json.dumps(layout))
    fmt.chmod(0o600)
    return page_bytes, slab_pages


def _read_format(fmt: Path) -> dict[str, Any]:
    """The FORMAT file's JSON object (ConfigError naming the file when it is not one)."""
    try:
        found = json.loads(fmt.read_bytes())
    except (ValueError, OSError) as exc:  # torn, truncated or not ours
        raise _corrupt(fmt, str(exc)) from None
    if not isinstance(found, dict):
        raise _corrupt(fmt, "not a JSON object")
    return found


def _corrupt(fmt: Path, why: str) -> ConfigError:
    return ConfigError(
        "tiers.nvme.path",
        f"{fmt} is unreadable or corrupt ({why}); it records the layout of the blocks"
        " there: restore it, or point tiers.nvme.path at an empty directory",
    )


def _probe_direct_io(path: Path) -> bool:
    probe = path / ".direct-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True
