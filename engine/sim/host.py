"""A host whose cores the instances placed on it share: processor sharing.

A local cluster runs every instance as a process on one machine: while both prefill
workers compute and the decode worker steps, three threads of work want the host's two
cores. Each instance runs one thread of work at a time (a prefill job, a decode step),
and while ``k`` of them run on ``cores`` cores each progresses at::

    rate(k) = min(1, cores / k)      core-seconds of its work per second

An item's *work* is what it takes alone (the profile's cost, fitted one request at a
time on an idle host); its wall time stretches while more items than cores run.

Approximation: Linux's fair scheduler idealised: equal shares, no switching or cache
cost, no thread uses more than one core (the workers run one torch thread each), and
only the instances' own work competes (the store nodes, the router and anything else on
the host are not modelled: their CPU is outside the profile).

Mechanism: every running item progresses at the same rate, so the one with the least
work left finishes first; one event is scheduled for it and superseded (an epoch number)
whenever an item starts or ends. Invariants: ``work left >= 0`` for every running item;
an item's wall time is at least its work. Cost: O(k) per start or end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.sim.events import EventQueue

_DONE_S = 1e-12  # work left below this is finished (float rounding of the progress)


@dataclass(slots=True, eq=False)
class Work:
    """One running item: its work left (core-seconds) and what to call when done."""

    left_s: float
    started_s: float
    on_done: Callable[[float], None]  # called with the item's wall seconds


class Host:
    """``cores`` cores shared by every item started on it (see the module docstring); a
    fraction counts: what other processes leave of a busy host's cores."""

    def __init__(self, cores: float, events: EventQueue) -> None:
        if cores <= 0:
            raise ValueError(f"a host has cores, got {cores}")
        self.cores = cores
        self.events = events
        self.running: list[Work] = []
        self._since_s = 0.0  # when the running items' work left was last brought up to date
        self._epoch = 0

    def rate(self) -> float:
        """Core-seconds a second each running item gets now."""
        return min(1.0, self.cores / len(self.running)) if self.running else 1.0

    def run(self, work_s: float, on_done: Callable[[float], None]) -> Work:
        """Start ``work_s`` core-seconds of work now; ``on_done(wall_s)`` when it ends."""
        self._advance()
        item = Work(max(0.0, work_s), self.events.now, on_done)
        self.running.append(item)
        self._schedule()
        return item

    def work_left_s(self, item: Work) -> float:
        """What ``item`` still has to do, in core-seconds (0 once it has ended)."""
        self._advance()
        return item.left_s if item in self.running else 0.0

    def _advance(self) -> None:
        now = self.events.now
        progress = (now - self._since_s) * self.rate()
        for item in self.running:
            item.left_s = max(0.0, item.left_s - progress)
        self._since_s = now

    def _schedule(self) -> None:
        self._epoch += 1
        if not self.running:
            return
        epoch = self._epoch
        first_s = min(item.left_s for item in self.running) / self.rate()
        self.events.after(first_s, lambda: self._finish(epoch))

    def _finish(self, epoch: int) -> None:
        if epoch != self._epoch:
            return  # an item started or ended since: a later event replaced this one
        self._advance()
        least = min(item.left_s for item in self.running)
        done = [item for item in self.running if item.left_s <= least + _DONE_S]
        self.running = [item for item in self.running if item not in done]
        self._schedule()
        now = self.events.now
        for item in done:
            item.on_done(now - item.started_s)
