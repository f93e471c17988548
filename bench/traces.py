"""Request traces for the hit-rate benchmark, and the two oracles computed from a trace alone.

A trace is a list of requests; a request is the list of its block hash ids, in order. The
format is Mooncake's (FAST'25, ``kvcache-ai/Mooncake``, ``FAST25-release/traces/``): JSONL,
one request per line::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}

Mooncake's hash ids are prefix hashes: equal ids imply equal prefixes, so the parent of
``hash_ids[i]`` is ``hash_ids[i-1]`` (the first block has none), as with Strata's chained
keys. ``block_key`` maps an id to a 16-byte ``BlockKey`` one to one.

Oracles (no store involved; both use the "look up the longest cached leading run, then
insert the request's missing blocks" model of ``bench.hitrate``):

* ``unbounded_hit_rate``: every block ever seen stays cached.
* ``oracle_admission_hit_rate``: LRU that stores only blocks with a next use (knows
  *whether*, not *when*: the most an admission or extension predictor could give LRU).
* ``belady_hit_rate``: the offline optimum at a capacity in blocks: on overflow, evict the
  block whose next use is farthest away (never-used-again first). A parent is always next
  used before its child (it precedes the child in the child's next request), so the cache
  stays prefix-closed for blocks that are used again, and per-block optimality carries
  over to leading-run hits: no online policy at the same capacity can beat it.
  Cost: O(log n) per access (a max-heap keyed by next use, invalidated lazily).
"""

from __future__ import annotations

import heapq
import json
import random
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.types import BlockKey

NEVER = 1 << 62  # "next use" of a block that is not used again
MOONCAKE_BLOCK_TOKENS = 512  # tokens per hash id in Mooncake's traces
SYNTHETIC_RATE_PER_S = 3.4


@dataclass(frozen=True, slots=True)
class Trace:
    """A named list of requests; each request is its block hash ids, parent first.

    ``arrivals_s`` is each request's arrival time (seconds from the trace's start; the
    request's index when the trace has no timestamps). ``last_full`` says whether a
    request's last block holds a whole block of tokens (True when the trace does not say).
    """

    name: str
    requests: list[list[int]]
    arrivals_s: list[float] = field(default_factory=list)
    last_full: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.arrivals_s:
            self.arrivals_s.extend(float(i) for i in range(len(self.requests)))
        if not self.last_full:
            self.last_full.extend(True for _ in self.requests)

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    @property
    def num_blocks(self) -> int:
        return sum(len(r) for r in self.requests)

    @property
    def num_unique_blocks(self) -> int:
        return len({h for r in self.requests for h in r})

    def head(self, num_requests: int | None) -> Trace:
        """The first ``num_requests`` requests (all when None)."""
        if num_requests is None or num_requests >= self.num_requests:
            return self
        return Trace(
            f"{self.name}[:{num_requests}]",
            self.requests[:num_requests],
            self.arrivals_s[:num_requests],
            self.last_full[:num_requests],
        )


def block_key(hash_id: int) -> BlockKey:
    """The 16-byte key of a trace block: its id as a little-endian 128-bit integer."""
    return BlockKey(hash_id.to_bytes(16, "little"))


def load_trace(path: Path, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> Trace:
    """Read a Mooncake-format JSONL trace (blank lines are skipped).

    ``timestamp`` (ms) and ``input_length`` (tokens) are optional; without them requests
    arrive one a second and every last block counts as full.
    """
    requests: list[list[int]] = []
    arrivals_s: list[float] = []
    last_full: list[bool] = []
    with path.open() as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                requests.append([int(h) for h in record["hash_ids"]])
                arrivals_s.append(record.get("timestamp", len(requests) * 1000.0) / 1000.0)
                last_full.append(record.get("input_length", 0) % block_tokens == 0)
    return Trace(path.name, requests, arrivals_s, last_full)


def synthetic_trace(num_requests: int, seed: int) -> Trace:
    """A seeded trace shaped like Mooncake's conversation trace.

    Shape (parameters fitted by eye to the FAST'25 conversation trace, whose unbounded
    hit rate is about 0.37): every request starts with the shared block 0; most then add
    one of a few system prompts (1-8 blocks, skewed popularity) and a fresh user prompt
    (lognormal, median about 11 blocks). With probability 0.38 a conversation gets another
    turn, a few hundred requests later, that extends the previous turn's blocks minus
    its (partial) last block by a few new ones. A few one-off requests share nothing.
    Requests arrive at ``SYNTHETIC_RATE_PER_S`` (the real trace's 3.4 a second); every
    last block is partial. Its system prompts (up to 9 blocks) are longer than the real
    trace's single shared block, so small capacities hit more often here (LRU at 1,000
    blocks: ~0.12 vs ~0.04).
    """
    rng = random.Random(seed)
    next_id = 1
    prompts: list[list[int]] = []
    for length in (1, 2, 4, 8):
        prompts.append([0, *range(next_id, next_id + length)])
        next_id += length
    requests: list[list[int]] = []
    arrivals_s: list[float] = []
    followups: list[tuple[int, int, list[int]]] = []  # (due request index, tiebreak, base)
    for i in range(num_requests):
        if followups and followups[0][0] <= i:
            base = heapq.heappop(followups)[2][:-1]
            num_new = 1 + int(rng.expovariate(1 / 6))
        elif rng.random() < 0.04:
            base, num_new = [], _prompt_blocks(rng)  # one-off: no shared prefix at all
        else:
            base = [0] if rng.random() < 0.5 else rng.choices(prompts, (8, 4, 2, 1))[0]
            num_new = _prompt_blocks(rng)
        request = [*base, *range(next_id, next_id + num_new)]
        next_id += num_new
        requests.append(request)
        arrivals_s.append(i / SYNTHETIC_RATE_PER_S)
        if base and rng.random() < 0.38:
            due = i + 1 + int(rng.expovariate(1 / 600))
            heapq.heappush(followups, (due, i, request))
    # A next turn re-hashes the previous turn's partial last block: last blocks are partial.
    return Trace(f"synthetic(seed={seed})", requests, arrivals_s, [False] * len(requests))


def _prompt_blocks(rng: random.Random) -> int:
    return max(1, min(240, round(rng.lognormvariate(2.4, 0.9))))


def leading_run(request: Sequence[int], cached: Collection[int]) -> int:
    """How many leading blocks of ``request`` are in ``cached``."""
    n = 0
    for h in request:
        if h not in cached:
            break
        n += 1
    return n


def unbounded_hit_rate(trace: Trace) -> float:
    """Leading-run hit rate with unlimited capacity (the bound for every policy)."""
    seen: set[int] = set()
    hits = 0
    for request in trace.requests:
        hits += leading_run(request, seen)
        seen.update(request)
    return hits / max(1, trace.num_blocks)


def next_uses(trace: Trace) -> list[int]:
    """For each access (requests flattened in order), the position of that id's next access,
    or ``NEVER``."""
    flat = [h for r in trace.requests for h in r]
    out = [NEVER] * len(flat)
    last: dict[int, int] = {}
    for pos in range(len(flat) - 1, -1, -1):
        out[pos] = last.get(flat[pos], NEVER)
        last[flat[pos]] = pos
    return out


def belady_hit_rate(trace: Trace, capacity_blocks: int, nexts: list[int] | None = None) -> float:
    """Leading-run hit rate of the offline optimum (Belady's MIN) at ``capacity_blocks``.

    Args:
        nexts: ``next_uses(trace)``, to share across capacities.
    """
    nexts = next_uses(trace) if nexts is None else nexts
    cached: dict[int, int] = {}  # id -> its next use; the heap item with that use is live
    heap: list[tuple[int, int]] = []  # (-next use, id)
    hits = pos = 0
    for request in trace.requests:
        hits += leading_run(request, cached)
        for h in request:
            nxt = nexts[pos]
            pos += 1
            cached[h] = nxt
            heapq.heappush(heap, (-nxt, h))
            while len(cached) > capacity_blocks:
                neg, victim = heapq.heappop(heap)
                if cached.get(victim) == -neg:
                    del cached[victim]
    return hits / max(1, trace.num_blocks)


def oracle_admission_hit_rate(
    trace: Trace, capacity_blocks: int, nexts: list[int] | None = None
) -> float:
    """Prefix hit rate of LRU that stores only blocks that will be read again.

    Not an online policy: it knows *whether* each block is reused (not *when*), which is
    what an admission or extension predictor would have to learn. Flat LRU over ids in
    the same lookup-then-insert model; a block with no next use is not stored.
    """
    nexts = next_uses(trace) if nexts is None else nexts
    cached: OrderedDict[int, None] = OrderedDict()
    hits = pos = 0
    for request in trace.requests:
        hits += leading_run(request, cached)
        for h in request:
            nxt = nexts[pos]
            pos += 1
            if h in cached:
                cached.move_to_end(h)
            elif nxt != NEVER:
                cached[h] = None
                if len(cached) > capacity_blocks:
                    cached.popitem(last=False)
    return hits / max(1, trace.num_blocks)
