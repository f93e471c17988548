"""A host whose cores the instances placed on it share: processor sharing.

A local cluster runs every instance as a process on one machine: while both prefill
workers compute and the decode worker steps, three threads of work want the host's two
cores. Each instance runs one thread of work at a time (a prefill job, a decode step),
and while ``k`` of them run on ``cores`` cores each progresses at::

    rate(k) = min(1, cores / k)      core-seconds of its work per second

An item's *work* is what it takes alone (the profile's cost, fitted one request at a
time on an idle host); its wall time stretches while more items than cores run.

Pinned instances (``Host(..., per_core=n)``: ``n`` cores, each with an equal part of
the capacity): each core shares itself among the items on it, ``rate = min(1, capacity
/ k_core)``. An item started with a ``core`` runs on that core (modulo the cores); one
without runs on the core with the fewest items when it starts, the lowest on a tie, and
stays there. That is Linux's fair scheduler with pinned threads: a thread that wakes
takes an idle core if there is one, and a running thread is not migrated while the
cores differ by a single thread. So an unpinned decode worker beside two pinned prefill
workers that both compute gets half a core, not two thirds.

Side work (``run(..., side_s=...)``): the other processes of a local cluster work
*because* the instances do (a prefill pass's layers are written to its store node, a
finished prompt's KV is handed to the decode worker, tokens are streamed through the
router). An item may bring such work as a second, unpinned item started with it (on the
core with the fewest items); the item does not wait for it. On an idle host the side
item takes the other core, so it costs the item nothing, which is how the profile
measured it; on a crowded one it shares a core with someone's work. The instances size
it as a share of their work, measured per kind of work (``bench.cluster_costs.side_work``:
the other processes' CPU per CPU second of prefill, and of decode steps, on an idle
cluster), not fitted to a replay.

Approximation: Linux's fair scheduler idealised: equal shares, no switching or cache
cost, no thread uses more than one core (the workers run one torch thread each), and
side work is the only other work that competes (anything else on the host is
``host_busy_share``, taken off the cores' capacity).

Mechanism: within a pool of cores (the whole host, or one core) every running item
progresses at the same rate, so the one with the least work left finishes first; one
event per pool is scheduled for it and superseded (an epoch number) whenever an item of
that pool starts or ends. Invariants: ``work left >= 0`` for every running item; an
item's wall time is at least its work. Cost: O(k) per start or end, k the items of its pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.sim.events import EventQueue

_DONE_S = 1e-12  # work left below this is finished (float rounding of the progress)


@dataclass(slots=True, eq=False)
class Work:
    """One running item: its work left (core-seconds) and what to call when done."""

    left_s: float
    started_s: float
    on_done: Callable[[float], None]  # called with the item's wall seconds
    pool: _Pool


@dataclass(slots=True, eq=False)
class _Pool:
    """Cores whose capacity the items on them share equally."""

    capacity: float  # core-seconds a second
    running: list[Work] = field(default_factory=list)
    since_s: float = 0.0  # when the running items' work left was last brought up to date
    epoch: int = 0

    def rate(self) -> float:
        """Core-seconds a second each running item gets now."""
        return min(1.0, self.capacity / len(self.running)) if self.running else 1.0


class Host:
    """``cores`` cores shared by every item started on it (see the module docstring); a
    fraction counts: what other processes leave of a busy host's cores. ``per_core``
    (> 0): that many cores, each with an equal part of ``cores``, each shared only by the
    items on it."""

    def __init__(self, cores: float, events: EventQueue, *, per_core: int = 0) -> None:
        if cores <= 0:
            raise ValueError(f"a host has cores, got {cores}")
        self.cores = cores
        self.events = events
        count = max(1, per_core)
        self._pools = [_Pool(cores / count) for _ in range(count)]

    def run(
        self,
        work_s: float,
        on_done: Callable[[float], None],
        core: int | None = None,
        *,
        side_s: float = 0.0,
    ) -> Work:
        """Start ``work_s`` core-seconds of work now, on ``core`` if pinned (per-core
        hosts); ``on_done(wall_s)`` when it ends. ``side_s`` core-seconds of side work
        start with it, on any core, and nothing waits for them."""
        item = self._start(work_s, on_done, core)
        if side_s > 0:
            self._start(side_s, _ignore, None)
        return item

    def _start(self, work_s: float, on_done: Callable[[float], None], core: int | None) -> Work:
        if core is not None:
            pool = self._pools[core % len(self._pools)]
        else:
            pool = min(self._pools, key=lambda p: len(p.running))  # first on a tie
        self._advance(pool)
        item = Work(max(0.0, work_s), self.events.now, on_done, pool)
        pool.running.append(item)
        self._schedule(pool)
        return item

    def work_left_s(self, item: Work) -> float:
        """What ``item`` still has to do, in core-seconds (0 once it has ended)."""
        self._advance(item.pool)
        return item.left_s if item in item.pool.running else 0.0

    def _advance(self, pool: _Pool) -> None:
        now = self.events.now
        progress = (now - pool.since_s) * pool.rate()
        for item in pool.running:
            item.left_s = max(0.0, item.left_s - progress)
        pool.since_s = now

    def _schedule(self, pool: _Pool) -> None:
        pool.epoch += 1
        if not pool.running:
            return
        epoch = pool.epoch
        first_s = min(item.left_s for item in pool.running) / pool.rate()
        self.events.after(first_s, lambda: self._finish(pool, epoch))

    def _finish(self, pool: _Pool, epoch: int) -> None:
        if epoch != pool.epoch:
            return  # an item started or ended since: a later event replaced this one
        self._advance(pool)
        least = min(item.left_s for item in pool.running)
        done = [item for item in pool.running if item.left_s <= least + _DONE_S]
        pool.running = [item for item in pool.running if item not in done]
        self._schedule(pool)
        now = self.events.now
        for item in done:
            item.on_done(now - item.started_s)


def _ignore(_wall_s: float) -> None:
    """Side work's end: nothing waits for it."""
