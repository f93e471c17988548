"""A disaggregated prefill instance: prompts in arrival order, computed in passes.

Two ways to schedule, as the described cluster says:

* one prompt at a time (``max_batch_tokens`` 0): each pass is one whole prompt, taking
  ``max(load_s, prefill_s(computed, cached))``; FIFO;
* batched, as the bundled prefill worker (``engine.workers.prefill_scheduler``): waiting
  prompts join in arrival order while the running ones have fewer than
  ``max_batch_tokens`` tokens left to compute (one always joins an idle instance); each
  pass computes up to ``chunk_tokens`` of each running prompt, in order, within
  ``max_batch_tokens``; a pass costs one ``prefill_base_s`` however many prompts it
  holds (one forward), so a burst shares it, and every prompt whose last chunk ran
  finishes at the end of the pass (a burst's prompts finish together). A prompt's first
  chunk waits for its loaded prefix (the pass lasts at least that load).

What a prompt loads and computes is decided when it joins (``begin``), because what the
node holds then, not at routing time, decides it. The router sees ``queued_s``: the
predicted work of the waiting prompts plus what is left of the running ones (the
production router accounts the same from its own predictions).

On its own hardware (no ``host``) a pass takes its duration. On a shared ``Host`` the
duration is the pass's work, and it takes longer while other instances' work runs on
the host's cores too (processor sharing, ``engine.sim.host``).

Invariants: prompts join in submission order; at most one pass runs; a prompt finishes
at the end of the pass that ran its last chunk; ``busy_s`` sums the wall seconds of
finished passes. Cost: O(running prompts) a pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.router.costs import CostModel
from engine.sim.events import EventQueue
from engine.sim.host import Host, Work


@dataclass(frozen=True, slots=True)
class PrefillWork:
    """What a prompt does once it joins: compute ``computed_tokens`` after
    ``cached_tokens`` loaded ones, whose load takes ``load_s`` (overlapping compute)."""

    computed_tokens: int
    cached_tokens: int
    load_s: float


@dataclass(slots=True)
class PrefillJob:
    predicted_s: float
    begin: Callable[[], PrefillWork]  # called when it joins the running prompts
    end: Callable[[], None]  # called when its last chunk has run


@dataclass(slots=True, eq=False)
class _Prompt:
    job: PrefillJob
    left: int  # tokens still to compute
    position: int  # tokens in its KV so far (loaded or computed)
    load_s: float
    started: bool = False  # a chunk of it has run


class PrefillInstance:
    def __init__(
        self,
        name: str,
        events: EventQueue,
        costs: CostModel,
        *,
        chunk_tokens: int = 0,
        max_batch_tokens: int = 0,
        host: Host | None = None,
        core: int | None = None,
        side_share: float = 0.0,
    ) -> None:
        if max_batch_tokens and chunk_tokens < 1:
            raise ValueError("batched prefill needs chunk_tokens >= 1")
        self.name = name
        self.events = events
        self.costs = costs
        self.chunk_tokens = chunk_tokens
        self.max_batch_tokens = max_batch_tokens
        self.host = host
        self.core = core  # the host's core it is pinned to, if any
        self.side_share = side_share  # on a host: other processes' work per second of a pass
        self.queue: deque[PrefillJob] = deque()
        self.running: list[_Prompt] = []
        self.busy_s = 0.0
        self._queued_predicted_s = 0.0
        self._after_pass_s = 0.0  # predicted work of the running prompts after this pass
        self._pass_until = 0.0
        self._work: Work | None = None  # on a shared host: the running pass's work
        self._passing = False

    def queued_s(self) -> float:
        """Predicted seconds of work ahead of a job submitted now."""
        if not self._passing:
            left = 0.0
        elif self._work is not None and self.host is not None:
            left = self.host.work_left_s(self._work)
        else:
            left = max(0.0, self._pass_until - self.events.now)
        return left + self._after_pass_s + self._queued_predicted_s

    def submit(self, job: PrefillJob) -> None:
        self.queue.append(job)
        self._queued_predicted_s += job.predicted_s
        if not self._passing:
            self._next_pass()

    def _next_pass(self) -> None:
        self._admit()
        if not self.running:
            self._passing = False
            return
        self._passing = True
        chunks = self._chunks()
        seconds = self._pass_s(chunks)
        self._after_pass_s = sum(
            self.costs.prefill_s(p.left - take, p.position + take) for p, take in chunks
        )
        if self.host is not None:
            self._work = self.host.run(
                seconds,
                lambda wall_s: self._end_pass(chunks, wall_s),
                self.core,
                side_s=seconds * self.side_share,
            )
            return
        self._pass_until = self.events.now + seconds
        self.events.after(seconds, lambda: self._end_pass(chunks, seconds))

    def _admit(self) -> None:
        while self.queue:
            if self.running and (
                not self.max_batch_tokens
                or sum(p.left for p in self.running) >= self.max_batch_tokens
            ):
                return
            job = self.queue.popleft()
            self._queued_predicted_s = max(0.0, self._queued_predicted_s - job.predicted_s)
            work = job.begin()
            self.running.append(_Prompt(job, work.computed_tokens, work.cached_tokens, work.load_s))

    def _chunks(self) -> list[tuple[_Prompt, int]]:
        if not self.max_batch_tokens:
            first = self.running[0]
            return [(first, first.left)]
        budget = self.max_batch_tokens
        chunks = []
        for prompt in self.running:
            take = min(self.chunk_tokens, prompt.left, budget)
            if take <= 0:
                break
            chunks.append((prompt, take))
            budget -= take
        return chunks

    def _pass_s(self, chunks: list[tuple[_Prompt, int]]) -> float:
        """One forward over the chunks (one base cost), at least each new prompt's load."""
        costs = self.costs
        compute = sum(costs.prefill_s(take, p.position) for p, take in chunks)
        compute -= costs.prefill_base_s * (len(chunks) - 1)
        loads = [p.load_s for p, _ in chunks if not p.started]
        return max(compute, *loads) if loads else compute

    def _end_pass(self, chunks: list[tuple[_Prompt, int]], wall_s: float) -> None:
        self.busy_s += wall_s
        self._work = None
        self._after_pass_s = 0.0
        for prompt, take in chunks:
            prompt.left -= take
            prompt.position += take
            prompt.started = True
        done = [p for p in self.running if p.left <= 0]
        self.running = [p for p in self.running if p.left > 0]
        for prompt in done:
            prompt.job.end()
        self._next_pass()
