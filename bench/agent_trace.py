"""A second synthetic workload, shaped unlike the conversation trace: tool agents and
document QA (Mooncake format, seeded).

It exists so that no policy is tuned to one trace: its reuse comes from different
structures than chat turns minutes apart.

* **Tool agents** (half of the sessions): one of ``NUM_AGENTS`` agent prompts (tool
  schemas, 8-40 blocks, skewed popularity) then a task; each step appends the tool's
  result (1-6 blocks) and comes back after seconds (exponential, mean ``STEP_GAP_S``),
  for a geometric number of steps (mean ``MEAN_STEPS``): deep chains, short gaps.
* **Document QA** (the other half): a question (1-2 blocks) about one of ``NUM_DOCS``
  documents (4-120 blocks, Zipf popularity, s = 0.9) after a shared instruction block;
  a session asks 1-4 questions, each a new request on the same document (a long shared
  prefix, one short fresh suffix), seconds to minutes apart.

Sessions start as a Poisson process of ``SESSION_RATE_PER_S``. Every request's last
block is partial (the next step re-hashes it). Ids are fresh integers; id 0 is the
instruction block shared by all document questions.
"""

from __future__ import annotations

import heapq
import random

from bench.traces import Trace

NUM_AGENTS = 12
NUM_DOCS = 3000
STEP_GAP_S = 8.0
MEAN_STEPS = 6.0
SESSION_RATE_PER_S = 0.9


class _Ids:
    def __init__(self) -> None:
        self.next = 1

    def take(self, n: int) -> list[int]:
        out = list(range(self.next, self.next + n))
        self.next += n
        return out


def agent_trace(num_requests: int, seed: int) -> Trace:
    """``num_requests`` requests of the tool-agent / document-QA mix, in arrival order."""
    rng = random.Random(seed)
    ids = _Ids()
    agents = [ids.take(rng.randint(8, 40)) for _ in range(NUM_AGENTS)]
    docs = [[0, *ids.take(rng.randint(4, 120))] for _ in range(NUM_DOCS)]
    doc_weights = [1 / (k + 1) ** 0.9 for k in range(NUM_DOCS)]
    agent_weights = [1 / (k + 1) for k in range(NUM_AGENTS)]
    # (time, tiebreak, kind, base blocks, steps left); kind 0 = agent step, 1 = question
    due: list[tuple[float, int, int, list[int], int]] = []
    t, tiebreak = 0.0, 0
    requests: list[list[int]] = []
    arrivals_s: list[float] = []
    while len(requests) < num_requests:
        t_new = t + rng.expovariate(SESSION_RATE_PER_S)
        if due and due[0][0] <= t_new:
            t, _, kind, base, left = heapq.heappop(due)
        else:
            t, kind, left = t_new, rng.randrange(2), 0
            if kind == 0:
                base = rng.choices(agents, agent_weights)[0] + ids.take(rng.randint(1, 4))
                left = 1 + int(rng.expovariate(1 / MEAN_STEPS))
            else:
                base = rng.choices(docs, doc_weights)[0]
                left = rng.randint(1, 4)
        request = [*base, *ids.take(rng.randint(1, 6) if kind == 0 else rng.randint(1, 2))]
        requests.append(request)
        arrivals_s.append(t)
        if left > 1:
            tiebreak += 1
            gap = rng.expovariate(1 / STEP_GAP_S) if kind == 0 else rng.uniform(5, 300)
            nxt = request[:-1] if kind == 0 else base  # agents extend; questions branch
            heapq.heappush(due, (t + gap, tiebreak, kind, nxt, left - 1))
    return Trace(f"agent-docqa(seed={seed})", requests, arrivals_s, [False] * len(requests))
