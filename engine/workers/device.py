"""One compute device shared by the workers of one process.

Prefill and decode workers in one process (the colocated arrangement) compute on the
same device: on a GPU their kernels run one after another, so a decode step waits for the
prefill chunk in front of it. ``Device`` makes that explicit and the same on a CPU: a
forward pass holds the device, and waiting passes get it in arrival order (a plain lock
would let one worker take it back again and again and starve the other).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class Device:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: deque[threading.Event] = deque()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the device for one forward pass."""
        with self._lock:
            if not self._busy:
                self._busy = True
                ticket = None
            else:
                ticket = threading.Event()
                self._waiting.append(ticket)
        if ticket is not None:
            ticket.wait()  # handed over by the previous holder
        try:
            yield
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting.popleft().set()  # stays busy: the next holder has it
                else:
                    self._busy = False
