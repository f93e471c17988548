"""A continuous-batching instance: decode steps, and (colocated) chunked prefill.

Each iteration (a *step*) every running sequence produces one token; a colocated
instance also computes up to ``chunk_tokens`` prompt tokens of the sequences waiting for
their first token, oldest first (vLLM's chunked prefill). The step lasts::

    decode part:   tbt_s(running, their context tokens)                   (0 if none run)
    prefill part:  sum over chunks of prefill_s(chunk, tokens before it) + load time
    one forward:   minus one fixed cost when both parts run (min of the two bases), and
                   one prefill base per extra chunk

So prefill chunks lengthen the decode steps they share (the interference that
disaggregation removes). Admission reserves a sequence's prompt plus all its output
tokens of ``kv_capacity_tokens`` (the production rule: a running sequence never waits
for pages) and needs ``running < max_batch``; otherwise it waits, first come first served.

Per sequence the token intervals are the step durations it took part in; they are kept
once per instance (``durations``) and sliced when the sequence finishes. For the ITL
distribution over every interval of every sequence (``intervals``), each step counts
once per sequence that took a non-first token from it (a difference array over the
steps, O(1) per finish) and each sequence's first interval (hand-off, then its first
step) once.

On a shared ``Host`` (``engine.sim.host``) a step's cost is its work: its wall duration
stretches while other instances' work shares the host's cores; every step is then its
own event (no runs), since the sharing can change between any two steps.

Speed: while no prefill is pending and nothing arrives, the steps until the next
sequence finishes are planned as one *run* (one event; each step's duration still
computed, the context growing by the batch each step); an arrival cuts the run at the
next step boundary. So events scale with arrivals and finishes, not with tokens.

Invariants: ``reserved_tokens <= kv_capacity_tokens`` (a sequence larger than the whole
capacity is admitted alone); a sequence joins at a step boundary; at most one step or
run is in flight. Cost: O(log batch) per finish, O(1) per step, O(chunks) per mixed step.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.router.costs import CostModel
from engine.sim.events import EventQueue
from engine.sim.host import Host

SLOWEST_SHARE = 0.1  # TBT: the mean of the slowest 10% of a request's token intervals


@dataclass(slots=True, eq=False)
class Sequence:
    """One request on a batching instance."""

    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0  # colocated: loaded, not computed
    load_s: float = 0.0  # colocated: added to the first chunk's step
    on_first_token: Callable[[float], None] | None = None  # colocated: TTFT
    on_done: Callable[[float, float], None] | None = None  # (finish time, TBT)
    first_token_s: float = 0.0
    computed: int = 0  # prompt tokens done (cached ones count as done)
    start_step: int = 0
    intervals: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Run:
    """Decode-only steps planned from ``start_s``: each step's duration and the
    cumulative ends."""

    start_s: float
    durations: list[float]
    ends: list[float]


class BatchInstance:
    def __init__(
        self,
        name: str,
        events: EventQueue,
        costs: CostModel,
        *,
        max_batch: int,
        kv_capacity_tokens: int,
        chunk_tokens: int,
        host: Host | None = None,
        side_share: float = 0.0,
    ) -> None:
        self.name = name
        self.host = host
        self.side_share = side_share  # on a host: other processes' work per second of a step
        self.events = events
        self.costs = costs
        self.max_batch = max_batch
        self.kv_capacity_tokens = kv_capacity_tokens
        self.chunk_tokens = chunk_tokens
        self.durations: list[float] = []
        self.first_intervals: list[float] = []  # of every finished sequence with two tokens+
        self._covers = [0]  # difference array: sequences taking a later token from step i
        self.busy_s = 0.0
        self.batched_sequences = 0  # sum over steps of the sequences each fed
        self.reserved_tokens = 0
        self.context_tokens = 0  # of the running sequences
        self._running: list[tuple[int, int, Sequence]] = []  # (finish step, seq no, seq)
        self._prefilling: deque[Sequence] = deque()
        self._waiting: deque[Sequence] = deque()
        self._seq = 0
        self._stepping = False
        self._epoch = 0  # the step or run in flight; a cut run's old end is ignored
        self._run: _Run | None = None  # the decode-only run in flight, if any

    @property
    def num_running(self) -> int:
        return len(self._running) + len(self._prefilling)

    @property
    def num_queued(self) -> int:
        return len(self._waiting)

    def queued_prefill_tokens(self) -> int:
        """Prompt tokens admitted or waiting but not yet computed."""
        waiting = sum(s.prompt_tokens - s.cached_tokens for s in self._waiting)
        return waiting + sum(s.prompt_tokens - s.computed for s in self._prefilling)

    def submit(self, seq: Sequence, *, prefilled: bool) -> None:
        """Add a sequence: ``prefilled`` (a hand-off; its first token exists) or to prefill."""
        if prefilled:
            seq.computed = seq.prompt_tokens
        else:
            seq.computed = seq.cached_tokens
        self._waiting.append(seq)
        if not self._stepping:
            self._admit()
            self._step()
        elif self._run is not None:
            self._cut_run()

    def _admit(self) -> None:
        while self._waiting:
            seq = self._waiting[0]
            need = seq.prompt_tokens + seq.output_tokens
            room = self.reserved_tokens + need <= self.kv_capacity_tokens
            if self.num_running >= self.max_batch or not (room or self.num_running == 0):
                return
            self._waiting.popleft()
            self.reserved_tokens += need
            if seq.computed >= seq.prompt_tokens:
                self._join(seq)
            else:
                self._prefilling.append(seq)

    def _join(self, seq: Sequence) -> None:
        """Start decoding ``seq`` (its first token exists) at the next step."""
        steps = len(self.durations)
        seq.start_step = steps
        seq.intervals.append(self.events.now - seq.first_token_s)  # until the next step starts
        if seq.output_tokens <= 1:
            self._finish(seq)
            return
        self._seq += 1
        finish = steps + seq.output_tokens - 1
        heapq.heappush(self._running, (finish, self._seq, seq))
        self.context_tokens += seq.prompt_tokens + 1

    def _step(self) -> None:
        """Start the next step, or a run of decode-only steps up to the next finish."""
        if not self._running and not self._prefilling:
            self._stepping = False
            return
        self._stepping = True
        self._epoch += 1
        epoch = self._epoch
        if self.host is not None:
            self._hosted_step(self.host, epoch)
            return
        if self._prefilling:
            chunks = self._chunks()
            durations = [self._step_s(chunks)]
            self._run = None
            self.events.after(durations[0], lambda: self._end_steps(epoch, durations, chunks))
            return
        batch, context = len(self._running), self.context_tokens
        num_steps = self._running[0][0] - len(self.durations)
        tbt_s = self.costs.tbt_s
        durations = [tbt_s(batch, context + j * batch) for j in range(num_steps)]
        ends = list(itertools.accumulate(durations))
        self._run = _Run(self.events.now, durations, ends)
        self.events.after(ends[-1], lambda: self._end_steps(epoch, durations, []))

    def _hosted_step(self, host: Host, epoch: int) -> None:
        """One step as work on the shared host; its wall duration is what it took."""
        chunks = self._chunks() if self._prefilling else []

        def end(wall_s: float) -> None:
            self._end_steps(epoch, [wall_s], chunks)

        work_s = self._step_s(chunks)
        host.run(work_s, end, side_s=work_s * self.side_share)

    def _cut_run(self) -> None:
        """A sequence arrived during a decode-only run: end the run at the next step
        boundary (the step in flight completes), so it joins there."""
        run = self._run
        assert run is not None
        done = bisect.bisect_left(run.ends, self.events.now - run.start_s)
        keep = done + 1
        if keep >= len(run.durations):
            return  # the run ends at that boundary anyway
        self._epoch += 1
        epoch = self._epoch
        durations = run.durations[:keep]
        self._run = _Run(run.start_s, durations, run.ends[:keep])
        end_s = run.start_s + run.ends[keep - 1]
        self.events.at(end_s, lambda: self._end_steps(epoch, durations, []))

    def _chunks(self) -> list[tuple[Sequence, int]]:
        budget = self.chunk_tokens
        chunks = []
        for seq in self._prefilling:
            if budget <= 0:
                break
            take = min(budget, seq.prompt_tokens - seq.computed)
            chunks.append((seq, take))
            budget -= take
        return chunks

    def _step_s(self, chunks: list[tuple[Sequence, int]]) -> float:
        costs = self.costs
        seconds = costs.tbt_s(len(self._running), self.context_tokens) if self._running else 0.0
        for seq, take in chunks:
            seconds += costs.prefill_s(take, seq.computed)
            if seq.computed == seq.cached_tokens:
                seconds += seq.load_s  # the first chunk waits for the loaded prefix
        if chunks:
            seconds -= costs.prefill_base_s * (len(chunks) - 1)
            if self._running:
                seconds -= min(costs.prefill_base_s, costs.decode_base_s)
        return seconds

    def _end_steps(
        self, epoch: int, durations: list[float], chunks: list[tuple[Sequence, int]]
    ) -> None:
        if epoch != self._epoch:
            return  # a run cut short since; its new end is scheduled
        self._run = None
        self.durations.extend(durations)
        self._covers.extend([0] * len(durations))
        self.busy_s += sum(durations)
        self.batched_sequences += len(self._running) * len(durations)
        steps = len(self.durations)
        self.context_tokens += len(self._running) * len(durations)
        while self._running and self._running[0][0] <= steps:
            _, _, seq = heapq.heappop(self._running)
            self.context_tokens -= seq.prompt_tokens + seq.output_tokens
            self._finish(seq)
        now = self.events.now
        for seq, take in chunks:
            seq.computed += take
            if seq.computed >= seq.prompt_tokens:
                self._prefilling.remove(seq)
                seq.first_token_s = now
                if seq.on_first_token is not None:
                    seq.on_first_token(now)
                self._join(seq)
        self._admit()
        self._step()

    def _finish(self, seq: Sequence) -> None:
        intervals = seq.intervals
        if seq.output_tokens > 1:
            first = intervals[0] + self.durations[seq.start_step]
            self.first_intervals.append(first)
            self._covers[seq.start_step + 1] += 1
            self._covers[seq.start_step + seq.output_tokens - 1] -= 1
            intervals = [
                first,
                *self.durations[seq.start_step + 1 : seq.start_step + seq.output_tokens - 1],
            ]
        else:
            intervals = []
        self.reserved_tokens -= seq.prompt_tokens + seq.output_tokens
        if seq.on_done is not None:
            seq.on_done(self.events.now, slowest_mean(intervals))

    def intervals(self) -> tuple[list[float], list[int]]:
        """Every token interval of the finished sequences, as (values, how many times
        each counts): each step's duration weighted by the sequences that took a later
        token from it, then each sequence's first interval once."""
        weights = list(itertools.accumulate(self._covers))[: len(self.durations)]
        values = self.durations + self.first_intervals
        return values, weights + [1] * len(self.first_intervals)


def slowest_mean(intervals: list[float]) -> float:
    """The mean of the slowest ``SLOWEST_SHARE`` of ``intervals`` (at least one; 0 if none)."""
    if not intervals:
        return 0.0
    count = max(1, int(len(intervals) * SLOWEST_SHARE))
    return sum(heapq.nlargest(count, intervals)) / count
