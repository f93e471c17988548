"""Capacity figures from a sweep over arrival rates: goodput and effective capacity.

* **Goodput** (DistServe, OSDI'24): the highest arrival rate at which at least 90% of
  requests meet both the TTFT and the TBT SLO; per GPU it is divided by the GPUs used.
* **Effective request capacity** (Mooncake, FAST'25, which compares systems by how many
  requests they serve within the SLOs on a trace): here, the highest arrival rate at
  which at least 99% of requests meet both SLOs. The 99% is this project's reading of
  "within the SLOs"; the paper gives no percentage.

Both come from the same sweep: a run per rate (the trace's arrivals compressed or
stretched), each run's SLO attainment, then ``highest_rate``: the highest rate such that
it and every lower swept rate meet the target, interpolated linearly up to the first
rate that misses (so the answer is not pinned to the grid). If the lowest rate misses,
the figure is 0: the sweep must start lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

GOODPUT_ATTAINMENT = 0.9
EFFECTIVE_ATTAINMENT = 0.99


class RatePoint(NamedTuple):
    rate_rps: float
    attainment: float


def highest_rate(points: Sequence[RatePoint], target: float) -> float:
    """The highest rate meeting ``target`` (see the module docstring); 0 if none does."""
    ordered = sorted(points)
    best = 0.0
    for i, point in enumerate(ordered):
        if point.attainment < target:
            if i == 0:
                return 0.0
            previous = ordered[i - 1]
            drop = previous.attainment - point.attainment
            share = (previous.attainment - target) / drop if drop > 0 else 0.0
            return previous.rate_rps + share * (point.rate_rps - previous.rate_rps)
        best = point.rate_rps
    return best


def geometric_scales(low: float, high: float, num: int) -> list[float]:
    """``num`` rate multipliers from ``low`` to ``high``, evenly spaced in log."""
    if num < 2 or low <= 0 or high <= low:
        raise ValueError(f"need num >= 2 and 0 < low < high, got {num}, {low}, {high}")
    ratio = (high / low) ** (1 / (num - 1))
    return [low * ratio**i for i in range(num)]
