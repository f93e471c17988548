"""The simulated clock: a queue of timed events, run in time order.

Invariants: ``now`` never decreases; events at the same time run in the order they were
scheduled (a sequence number breaks ties), so a run is deterministic. Policies get
``now`` passed in; nothing in the simulator reads a wall clock.

Cost: O(log n) per event (one ``heapq`` push and pop).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

Handler = Callable[[], None]


class EventQueue:
    """Timed callbacks. ``at(t, fn)`` schedules; ``run()`` drains in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Handler]] = []
        self._seq = 0
        self.now = 0.0
        self.num_events = 0  # events run so far

    def at(self, time_s: float, handler: Handler) -> None:
        """Run ``handler`` at ``time_s`` (not before ``now``: the past is clamped to now)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(time_s, self.now), self._seq, handler))

    def after(self, delay_s: float, handler: Handler) -> None:
        self.at(self.now + delay_s, handler)

    def run(self) -> None:
        """Run every event, including the ones events schedule, until none is left."""
        heap = self._heap
        while heap:
            time_s, _, handler = heapq.heappop(heap)
            self.now = time_s
            self.num_events += 1
            handler()
