"""What a trace says about conversations: how often a chain is extended, and when.

A request *extends* an earlier one when its leading run of already-seen blocks (at least
two, so a shared first block alone does not count) ends inside the blocks that request
added. Per turn number (1 = a request that extends nothing), the share of requests that
are extended later, and the gaps between a request and its first extension. These are
the signals an online policy could use to predict reuse; the benchmark reports them
beside the hit rates to show how far such a predictor can separate the blocks that will
be reused from those that will not.
"""

from __future__ import annotations

import statistics
from collections import Counter

from bench.traces import Trace

MAX_TURN = 6  # turns past this are counted as this


def extension_figures(trace: Trace) -> dict[str, float]:
    """``p_extend_turn_<k>``, ``share_turn_<k>``, and ``gap_p10/p50/p90_s``."""
    owner: dict[int, int] = {}
    turn = [0] * trace.num_requests
    first_child_s: dict[int, float] = {}
    for i, request in enumerate(trace.requests):
        k = 0
        while k < len(request) and request[k] in owner:
            k += 1
        parent = owner[request[k - 1]] if k >= 2 else None
        turn[i] = 1 if parent is None else turn[parent] + 1
        if parent is not None and parent not in first_child_s:
            first_child_s[parent] = trace.arrivals_s[i] - trace.arrivals_s[parent]
        for h in request[k:]:
            owner[h] = i
    counts = Counter(min(t, MAX_TURN) for t in turn)
    extended = Counter(min(turn[i], MAX_TURN) for i in first_child_s)
    out: dict[str, float] = {}
    for t in range(1, MAX_TURN + 1):
        out[f"share_turn_{t}"] = counts[t] / max(1, trace.num_requests)
        out[f"p_extend_turn_{t}"] = extended[t] / max(1, counts[t])
    gaps = sorted(first_child_s.values()) or [0.0]
    cuts = statistics.quantiles(gaps, n=10) if len(gaps) > 1 else [gaps[0]] * 9
    out.update(gap_p10_s=cuts[0], gap_p50_s=cuts[4], gap_p90_s=cuts[8])
    return out
