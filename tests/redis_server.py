"""A private, throwaway ``redis-server`` for tests.

Invariants:
    * Tests never touch a shared Redis: each ``RedisServer`` listens on 127.0.0.1 on a
      port of its own, keeps no data on disk (``--save "" --appendonly no``) and works in a
      temporary directory that ``stop`` removes.
    * No process outlives its owner: the server is an ``engine.launch.Child`` (``stop``
      terminates, waits, then kills; a parent-death signal takes it along even when the
      test process is killed outright); the context manager and fixtures call ``stop``
      in ``finally``.
    * ``start`` after ``stop`` listens on the same port again (a "Redis came back" test),
      with an empty data set.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from bench.procs import answers_ping
from engine.launch import Child, free_port


class RedisServer:
    """A ``redis-server`` child process on a free (or given) port of 127.0.0.1."""

    def __init__(self, port: int | None = None, startup_timeout_s: float = 5.0) -> None:
        self.port = port if port is not None else free_port()
        self._startup_timeout_s = startup_timeout_s
        self._child: Child | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def start(self) -> None:
        """Start the server (on ``self.port``) and wait until it answers PING."""
        if self.running:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="strata-redis-"))
        args = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
        ]  # fmt: skip
        try:
            self._child = Child(f"redis-server on port {self.port}", args)
            self._child.wait_until(
                lambda: answers_ping(self.port),
                self._startup_timeout_s,
                what="answering PING",
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        child, self._child = self._child, None
        try:
            if child is not None:
                child.stop(grace_s=5.0)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers a byte."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]
