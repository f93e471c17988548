"""A disaggregated prefill instance: one prompt at a time, in arrival order (FIFO).

Each job's duration is decided when it starts (``begin`` returns it), because what the
node holds then, not at routing time, decides what is loaded and what is computed. The
router sees ``queued_s``: the predicted work of the queued jobs plus what is left of the
running one (the production router accounts the same from its own predictions).

On its own hardware (no ``host``) a job takes its duration. On a shared ``Host`` the
duration is the job's work, and it takes longer while other instances' work runs on
the host's cores too (processor sharing, ``engine.sim.host``).

Invariants: at most one job runs; jobs start in submission order; ``busy_s`` sums the
wall seconds of finished jobs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.sim.events import EventQueue
from engine.sim.host import Host, Work


@dataclass(slots=True)
class PrefillJob:
    predicted_s: float
    begin: Callable[[], float]  # called at start: the job's duration
    end: Callable[[], None]  # called when it finishes


class PrefillInstance:
    def __init__(self, name: str, events: EventQueue, host: Host | None = None) -> None:
        self.name = name
        self.events = events
        self.host = host
        self.queue: deque[PrefillJob] = deque()
        self.busy_s = 0.0
        self._queued_predicted_s = 0.0
        self._running_until = 0.0
        self._running = False
        self._work: Work | None = None  # on a shared host: the running job's work

    def queued_s(self) -> float:
        """Predicted seconds of work ahead of a job submitted now."""
        if not self._running:
            left = 0.0
        elif self.host is not None and self._work is not None:
            left = self.host.work_left_s(self._work)
        else:
            left = max(0.0, self._running_until - self.events.now)
        return left + self._queued_predicted_s

    def submit(self, job: PrefillJob) -> None:
        self.queue.append(job)
        self._queued_predicted_s += job.predicted_s
        if not self._running:
            self._start_next()

    def _start_next(self) -> None:
        if not self.queue:
            self._running = False
            return
        job = self.queue.popleft()
        self._queued_predicted_s = max(0.0, self._queued_predicted_s - job.predicted_s)
        duration = job.begin()
        self._running = True
        if self.host is not None:
            self._work = self.host.run(duration, lambda wall_s: self._finish(job, wall_s))
            return
        self._running_until = self.events.now + duration
        self.events.after(duration, lambda: self._finish(job, duration))

    def _finish(self, job: PrefillJob, wall_s: float) -> None:
        self.busy_s += wall_s
        self._work = None
        job.end()
        self._start_next()
