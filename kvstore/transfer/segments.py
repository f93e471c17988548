"""Segments: named memory regions a peer can address by (segment, offset, length).

A process registers the regions it lets others read or write: a store node's DRAM arena
(backed by a file in ``/dev/shm``, so processes on the same host can map it), an
engine's paged KV buffer, an HBM pool. Names are unique per process; a peer addresses a
range as ``(node, segment name, offset, length)``. Ranges are bounds-checked on every
access, so a malformed request can never read or write outside a segment.

``SharedMappings`` is the reader's side of ``shm``: it maps a peer's segment file once,
read-only, and keeps the mapping for later transfers.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from kvstore.errors import InvalidArgument, NotFound, TransferFailed


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    view: memoryview  # writable, byte-addressed
    shm_path: Path | None = None  # set when other processes on the host can map it

    @property
    def size(self) -> int:
        return self.view.nbytes

    def slice(self, offset: int, length: int) -> memoryview:
        if offset < 0 or length < 0 or offset + length > self.view.nbytes:
            raise InvalidArgument(
                f"range [{offset}, {offset + length}) is outside segment {self.name!r}"
                f" of {self.view.nbytes} bytes"
            )
        return self.view[offset : offset + length]


class SegmentRegistry:
    """This process's registered segments, by name."""

    def __init__(self) -> None:
        self._segments: dict[str, Segment] = {}
        self._files: dict[str, tuple[int, int]] = {}

    def register(self, segment: Segment) -> None:
        """Register a segment; a shared one's file identity (inode, device) is taken now,
        so readers can tell the file we map from another one at the same path later."""
        if segment.name in self._segments:
            raise InvalidArgument(f"segment {segment.name!r} is already registered")
        self._segments[segment.name] = segment
        if segment.shm_path is not None:
            st = os.stat(segment.shm_path)
            self._files[segment.name] = (st.st_ino, st.st_dev)

    def file_identity(self, name: str) -> tuple[int, int] | None:
        """(inode, device) of a shared segment's file at registration, else None."""
        return self._files.get(name)

    def unregister(self, name: str) -> None:
        self._segments.pop(name, None)
        self._files.pop(name, None)

    def get(self, name: str) -> Segment:
        try:
            return self._segments[name]
        except KeyError:
            raise NotFound(f"no segment named {name!r}") from None

    def segments(self) -> list[Segment]:
        return list(self._segments.values())


class SharedMappings:
    """Read-only mappings of other processes' shared-memory segments, kept open."""

    def __init__(self) -> None:
        self._maps: dict[Path, memoryview] = {}
        self._lock = threading.Lock()

    def view(self, path: Path) -> memoryview:
        with self._lock:
            view = self._maps.get(path)
            if view is None:
                view = self._maps[path] = _map_read_only(path)
            return view

    def forget(self, path: Path) -> None:
        """Drop a mapping (its owner restarted: the file is a new arena)."""
        with self._lock:
            view = self._maps.pop(path, None)
        if view is not None:
            view.release()

    def close(self) -> None:
        with self._lock:
            views, self._maps = list(self._maps.values()), {}
        for view in views:
            view.release()


def _map_read_only(path: Path) -> memoryview:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise TransferFailed(f"cannot map segment file {path}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
    finally:
        os.close(fd)
