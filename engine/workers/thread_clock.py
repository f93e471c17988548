"""The calling thread's clocks: wall time, time on a core, and time waiting for one.

A worker thread that is not on a core is either blocked (waiting for I/O, a lock, a
peer) or runnable and waiting on a run queue because other threads hold the cores. The
two call for different fixes (a faster store, or fewer processes per core), so the
workers count them apart. The run-queue wait comes from Linux's per-thread scheduler
statistics (``/proc/thread-self/schedstat``: nanoseconds on a core, nanoseconds
runnable but waiting, time slices); where the kernel does not provide them it reads 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

_SCHEDSTAT = "/proc/thread-self/schedstat"


@dataclass(frozen=True, slots=True)
class ThreadClock:
    """Seconds since an arbitrary start, per clock; subtract two to time an interval."""

    wall_s: float
    cpu_s: float  # the thread was on a core
    wait_s: float  # runnable, waiting on a run queue for a core

    @classmethod
    def now(cls) -> ThreadClock:
        return cls(time.perf_counter(), time.thread_time(), _run_queue_wait_s())

    def __sub__(self, other: ThreadClock) -> ThreadClock:
        return ThreadClock(
            self.wall_s - other.wall_s, self.cpu_s - other.cpu_s, self.wait_s - other.wait_s
        )


def _run_queue_wait_s() -> float:
    try:
        with open(_SCHEDSTAT, "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0
