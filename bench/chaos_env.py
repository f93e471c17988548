"""The chaos harness's fault tools: what it does to the machine, and undoes.

* ``proc_usage``: a process's resident memory and open file descriptors (``/proc``).
* ``Tmpfs``: a small tmpfs mount (a disk that fills up), unmounted on exit.
* ``SlowDisk``: an ext4 file system on a loop device whose I/O is throttled for the
  processes put in its blkio cgroup (cgroup v1 ``blkio.throttle.*``); torn down on exit.
* ``NetnsPair``: two network namespaces (two "hosts") joined by a veth pair, with
  ``cut`` / ``heal`` of the link; both namespaces are deleted on exit.
* ``capabilities``: which of these the sandbox allows (each is probed, not assumed).

Invariants: every tool is a context manager whose exit removes what it made (mounts,
loop devices, cgroups, namespaces), even after an error; names carry the harness's pid
so two runs never collide. Nothing here touches an existing interface or mount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

BLKIO = Path("/sys/fs/cgroup/blkio")


@dataclass(frozen=True, slots=True)
class Usage:
    rss_bytes: int
    num_fds: int


def proc_usage(pid: int) -> Usage | None:
    """Resident bytes and open fds of ``pid``; None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return Usage(rss_kib * 1024, fds)


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise OSError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


class Tmpfs:
    """A tmpfs of ``size_bytes`` at a fresh directory; ``fill`` takes all its free space."""

    def __init__(self, size_bytes: int) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="strata-chaos-tmpfs-"))
        try:
            _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(self.path))
        except OSError:
            self.path.rmdir()
            raise
        self._filler = self.path / "filler"

    def fill(self) -> None:
        """Write zeros until the file system is full (ENOSPC)."""
        with self._filler.open("wb") as out, contextlib.suppress(OSError):
            chunk = bytes(1 << 20)
            while True:
                out.write(chunk)
                out.flush()

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def __enter__(self) -> Tmpfs:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            _run("umount", "-l", str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)


class SlowDisk:
    """An ext4 file system of ``size_bytes`` on a loop device; processes ``add``-ed get
    at most ``bytes_per_s`` and ``iops`` each way on it while ``throttle`` is on."""

    def __init__(self, size_bytes: int, bytes_per_s: int, iops: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="strata-chaos-disk-"))
        self.image = self.dir / "disk.img"
        self.path = self.dir / "mnt"
        self.path.mkdir()
        self.cgroup = BLKIO / f"strata-chaos-{os.getpid()}"
        self.loop = ""
        self.limits = (bytes_per_s, iops)
        try:
            with self.image.open("wb") as f:
                f.truncate(size_bytes)
            self.loop = _run("losetup", "-f", "--show", str(self.image))
            _run("mkfs.ext4", "-q", "-F", self.loop)
            _run("mount", self.loop, str(self.path))
            self.cgroup.mkdir()
        except BaseException:
            self.__exit__()
            raise
        major, minor = os.major(os.stat(self.loop).st_rdev), os.minor(os.stat(self.loop).st_rdev)
        self._device = f"{major}:{minor}"

    def add(self, pid: int) -> None:
        """Put every thread of ``pid`` in the throttled cgroup."""
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                (self.cgroup / "tasks").write_text(tid)

    def num_ios(self) -> int:
        """I/Os the cgroup did on the disk (proof that the throttle sees them)."""
        stats = (self.cgroup / "blkio.throttle.io_serviced").read_text().splitlines()
        return sum(
            int(line.split()[2])
            for line in stats
            if line.startswith(self._device + " ") and line.split()[1] == "Total"
        )

    def throttle(self, on: bool) -> None:
        bytes_per_s, iops = self.limits
        for name, limit in (("bps", bytes_per_s), ("iops", iops)):
            for way in ("read", "write"):
                value = f"{self._device} {limit if on else 0}"
                (self.cgroup / f"blkio.throttle.{way}_{name}_device").write_text(value)

    def __enter__(self) -> SlowDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cgroup.exists():
            for tid in (self.cgroup / "tasks").read_text().split():
                with contextlib.suppress(OSError):
                    (BLKIO / "tasks").write_text(tid)
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
        with contextlib.suppress(OSError):
            _run("umount", "-l", str(self.path))
        if self.loop:
            with contextlib.suppress(OSError):
                _run("losetup", "-d", self.loop)
        shutil.rmtree(self.dir, ignore_errors=True)


class NetnsPair:
    """Two namespaces, ``a`` (10.77.0.1) and ``b`` (10.77.0.2), joined by one veth link;
    ``prefix(ns)`` runs a command inside one."""

    SUBNET = "10.77.0"

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"strata-a-{tag}", f"strata-b-{tag}"
        self._link = f"sva{tag}"
        try:
            for ns in (self.a, self.b):
                _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", self._link, "netns", self.a, "type", "veth",
                 "peer", "name", f"svb{tag}", "netns", self.b)  # fmt: skip
            for ns, dev, host in ((self.a, self._link, 1), (self.b, f"svb{tag}", 2)):
                _run("ip", "-n", ns, "addr", "add", f"{self.SUBNET}.{host}/24", "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise

    def address(self, ns: str) -> str:
        return f"{self.SUBNET}.{1 if ns == self.a else 2}"

    def prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def cut(self) -> None:
        _run("ip", "-n", self.a, "link", "set", self._link, "down")

    def heal(self) -> None:
        _run("ip", "-n", self.a, "link", "set", self._link, "up")

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        for ns in (self.a, self.b):
            with contextlib.suppress(OSError):
                _run("ip", "netns", "del", ns)


def capabilities() -> dict[str, str]:
    """What the sandbox allows: 'yes', or why not."""
    found: dict[str, str] = {}
    for name, probe in (
        ("tmpfs", lambda: Tmpfs(1 << 20)),
        ("slow_disk", lambda: SlowDisk(32 << 20, 1 << 20, 100)),
        ("netns", NetnsPair),
    ):
        try:
            with probe():
                found[name] = "yes"
        except (OSError, subprocess.SubprocessError) as exc:
            found[name] = f"not available: {exc}"
    return found
