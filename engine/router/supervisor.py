"""Keeping ``kvengine up``'s children alive: restart a dead child, with back-off.

A ``Supervisor`` watches named child processes from one thread. When one exits it logs
the exit code and starts it again with the same arguments plus its *sticky* ones (the
ports the first instance got, so the router, the decode worker and clients find the new
one at the old address). Restarts back off exponentially (``RestartBackOff``: 0.5 s,
doubling up to 30 s); a child that stays up for ``stable_s`` earns a fresh start.

Invariants: at most one instance of each child runs; after ``stop`` nothing is restarted
and a start under way is abandoned (its process is stopped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RestartBackOff:
    """Delay before the next restart: ``initial_s * 2**n`` capped at ``max_s``, where
    ``n`` counts restarts since the child last ran ``stable_s`` seconds. Pure."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0
    num_restarts: int = 0

    def next_delay_s(self, ran_s: float) -> float:
        if ran_s >= self.stable_s:
            self.num_restarts = 0
        delay = min(self.max_s, self.initial_s * 2.0**self.num_restarts)
        self.num_restarts += 1
        return delay


class Process(Protocol):
    """What the supervisor needs of a child: its exit code (None while it runs) and a
    way to stop it."""

    def poll(self) -> int | None: ...

    def stop(self) -> object: ...


@dataclass(slots=True)
class Watched:
    name: str
    child: Process
    start: Callable[[threading.Event], Process]  # starts a fresh instance (blocking)
    started_s: float
    back_off: RestartBackOff
    num_restarts: int = 0


class Supervisor:
    def __init__(self, interval_s: float = 0.2) -> None:
        self._interval_s = interval_s
        self._watched: list[Watched] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def watch(
        self,
        name: str,
        child: Process,
        start: Callable[[threading.Event], Process],
        back_off: RestartBackOff | None = None,
    ) -> None:
        """Watch ``child``; ``start(stopping)`` must start a replacement and return it
        once it is up (or raise), giving up when ``stopping`` is set."""
        with self._lock:
            self._watched.append(
                Watched(name, child, start, time.monotonic(), back_off or RestartBackOff())
            )

    def begin(self) -> None:
        self._thread.start()

    def restarts(self) -> dict[str, int]:
        with self._lock:
            return {w.name: w.num_restarts for w in self._watched}

    def stop(self) -> list[Process]:
        """Stop watching (and restarting); returns the children, newest state, to stop."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            return [w.child for w in self._watched]

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            with self._lock:
                dead = [w for w in self._watched if w.child.poll() is not None]
            for watched in dead:
                self._restart(watched)

    def _restart(self, watched: Watched) -> None:
        code = watched.child.poll()
        delay_s = watched.back_off.next_delay_s(time.monotonic() - watched.started_s)
        logger.warning(
            "%s exited with code %s; restarting it in %.1f s", watched.name, code, delay_s
        )
        while not self._stopping.wait(delay_s):
            try:
                child = watched.start(self._stopping)
            except RuntimeError as exc:
                delay_s = watched.back_off.next_delay_s(0.0)
                logger.warning(
                    "%s did not restart (%s); next try in %.1f s",
                    watched.name,
                    str(exc).splitlines()[0],
                    delay_s,
                )
                continue
            with self._lock:
                watched.child, watched.started_s = child, time.monotonic()
                watched.num_restarts += 1
            logger.warning("%s restarted (%d restarts so far)", watched.name, watched.num_restarts)
            return
