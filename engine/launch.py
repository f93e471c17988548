"""Child processes: start one, see it become ready, stop it, leave nothing behind.

Every process that ``kvengine up``, the benchmarks and the tests start is a ``Child``:
a store node, an engine worker, Redis, a whole ``kvengine up``.

Invariants:

* Children run the code this process runs: the folder holding this package goes first
  on the child's ``PYTHONPATH``, and what the caller had there stays after it.
* A child never blocks on a full pipe: a thread reads its output (stdout and stderr
  together) as it comes, keeps the last ``MAX_LINES`` lines and, once asked to
  (``pass_on``), hands each new line on.
* Readiness is observed, never slept for: a line the child prints (``wait_for_line``)
  or any check (``wait_until``: a port answers). A child that exits, misses its
  deadline or is cancelled while starting is stopped, and the error names the cause
  (its last words when it exited).
* No child outlives its owner: ``stop`` sends SIGTERM (or the signal given), waits a
  grace period, then SIGKILLs and reaps; owners call it in ``finally`` (``with``
  blocks). On Linux each child also runs under ``setpriv --pdeathsig TERM``, so the
  kernel ends it if its owner is killed outright. (The signal follows the *thread* that
  started the child: start long-lived children from a thread that outlives them.)
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from signal import SIGKILL, SIGTERM
from types import TracebackType

GRACE_S = 10.0
MAX_LINES = 100_000
_POLL_S = 0.02
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on (at the time of the call)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, unbuffered, with this package's folder first on
    ``PYTHONPATH`` (what was there stays after it), then ``extra``."""
    paths = [str(PACKAGE_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    unique = [p for i, p in enumerate(paths) if p and p not in paths[:i]]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(unique), "PYTHONUNBUFFERED": "1", **extra}


def _die_with_parent() -> list[str]:
    """A command prefix that SIGTERMs the child when its parent dies (Linux only).

    ``setpriv`` sets the parent-death signal, then execs the command, which keeps it
    (``preexec_fn`` could do the same but is unsafe in a process with threads).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class Child:
    """A running child process and its output.

    Args:
        name: how errors and passed-on lines name it ("store node").
        args: the command line.
        env: more environment variables (on top of ``child_env()``).
        cwd: its working directory (default: this process's).
        port: the port the caller started it on, kept for the caller (0: none).
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        port: int = 0,
    ) -> None:
        self.name, self.args, self.port = name, list(args), port
        self._lines: collections.deque[str] = collections.deque(maxlen=MAX_LINES)
        self._new_line = threading.Condition()
        self._pass_on: Callable[[str], object] | None = None
        self.proc = subprocess.Popen(
            [*_die_with_parent(), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=child_env(**(env or {})),
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name} output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        with out:
            for line in out:
                with self._new_line:
                    self._lines.append(line)
                    forward = self._pass_on
                    self._new_line.notify_all()
                if forward is not None:
                    forward(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """Its exit status, None while it runs."""
        return self.proc.poll()

    def lines(self) -> list[str]:
        """What it has printed so far (the last ``MAX_LINES`` lines, newlines kept)."""
        with self._new_line:
            return list(self._lines)

    def output(self) -> str:
        return "".join(self.lines())

    def pass_on(self, write: Callable[[str], object]) -> None:
        """Hand each line it prints from now on to ``write`` (on the reader thread)."""
        with self._new_line:
            self._pass_on = write

    def wait_for_line(
        self, text: str, timeout_s: float, cancel: threading.Event | None = None
    ) -> str:
        """The first line that contains ``text``, once the child has printed it.

        Raises:
            RuntimeError: the child exited first, ``timeout_s`` passed or ``cancel`` was
                set; the child is stopped by then.
        """
        found: list[str] = []

        def printed() -> bool:
            found.extend(line for line in self.lines() if text in line)
            return bool(found)

        self.wait_until(printed, timeout_s, cancel, what=repr(text.strip()))
        return found[0]

    def wait_until(
        self,
        ready: Callable[[], bool],
        timeout_s: float,
        cancel: threading.Event | None = None,
        *,
        what: str = "ready",
    ) -> None:
        """Poll ``ready()`` (and wake on each new line) until it is true.

        Raises:
            RuntimeError: as ``wait_for_line``; ``what`` names the awaited state.
        """
        deadline = time.monotonic() + timeout_s
        while not ready():
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline or (cancel and cancel.is_set()):
                self.stop()  # also waits for the last words
                raise RuntimeError(self._failure(exited, what, timeout_s))
            with self._new_line:
                self._new_line.wait(_POLL_S)

    def _failure(self, exited: bool, what: str, timeout_s: float) -> str:
        """One line naming the cause (the child's last words: its error), then its output."""
        lines = [line.rstrip() for line in self.lines() if line.strip()]
        if exited:
            reason = lines[-1] if lines else f"exited with status {self.proc.returncode}"
            tail = lines[-30:-1]
        else:
            reason, tail = f"not {what} within {timeout_s:g} s", lines[-30:]
        return f"{self.name} did not start: {reason}" + "".join(f"\n{t}" for t in tail)

    def signal(self, sig: int) -> None:
        """Send ``sig`` if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float | None = None) -> int:
        """Its exit status once it exits (``subprocess.TimeoutExpired`` after ``timeout_s``)."""
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> int:
        """SIGKILL now (a crash, as far as the child can tell); its exit status."""
        return self.stop(SIGKILL, grace_s=0.0)

    def stop(self, sig: int = SIGTERM, grace_s: float = GRACE_S) -> int:
        """End it: ``sig``, then SIGKILL after ``grace_s``; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        self._reader.join(timeout=1.0)  # a grandchild may still hold the pipe
        return code

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: TracebackType | None
    ) -> None:
        self.stop()
