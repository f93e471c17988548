"""A private, throwaway ``redis-server`` for tests.

Invariants:
    * Tests never touch a shared Redis: each ``RedisServer`` listens on 127.0.0.1 on a
      port of its own, keeps no data on disk (``--save "" --appendonly no``) and works in a
      temporary directory that ``stop`` removes.
    * No process outlives its owner: ``stop`` terminates, waits, then kills; the context
      manager and fixtures call it in ``finally``; and on Linux the server is started with
      a parent-death signal, so even a test process killed outright takes it along.
    * ``start`` after ``stop`` listens on the same port again (a "Redis came back" test),
      with an empty data set.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from bench.procs import answers_ping, free_port


def _die_with_parent() -> list[str]:
    """A command prefix that SIGTERMs the child when its parent dies (Linux only).

    ``setpriv`` sets the parent-death signal, then execs the server, which keeps it.
    (``preexec_fn`` could do the same but is unsafe in a process with threads.)
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class RedisServer:
    """A ``redis-server`` child process on a free (or given) port of 127.0.0.1."""

    def __init__(self, port: int | None = None, startup_timeout_s: float = 5.0) -> None:
        self.port = port if port is not None else free_port()
        self._startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (on ``self.port``) and wait until it answers PING."""
        if self.running:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="strata-redis-"))
        log = self._dir / "redis.log"
        args = [
            *_die_with_parent(),
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(log),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_ready(log)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, log: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while not answers_ping(self.port):
            if self._proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"redis-server exited on port {self.port}:\n{text[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5.0)
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
