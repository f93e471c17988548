"""Capacity figures from a sweep over arrival rates: goodput and effective capacity.

* **Goodput** (DistServe, OSDI'24): the highest arrival rate at which at least 90% of
  requests meet both the TTFT and the TBT SLO; per GPU it is divided by the GPUs used.
* **Effective request capacity** (Mooncake, FAST'25, which compares systems by the
  requests they serve within the SLOs on a replayed trace): here, the most requests per
  second that finish within both SLOs, over the swept rates: ``max(rate x attainment)``
  (``slo_throughput``). It is this project's reading of the paper's figure; unlike
  goodput it still counts a system that serves most requests well while a few (on the
  conversation trace: prompts of 60k-120k tokens whose prefill alone exceeds the TTFT
  SLO) never can be.

Both come from the same sweep: a run per rate (the trace's arrivals compressed or
stretched) and each run's SLO attainment. ``highest_rate`` is the highest rate such
that it and every lower swept rate meet the target, interpolated linearly up to the
first rate that misses (so the answer is not pinned to the grid). If the lowest rate
misses, the figure is 0: the sweep must start lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

GOODPUT_ATTAINMENT = 0.9


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


def slo_throughput(points: Sequence[RatePoint]) -> float:
    """The most requests per second served within the SLOs: ``max(rate x attainment)``."""
    return max((p.rate_rps * p.attainment for p in points), default=0.0)


def geometric_scales(low: float, high: float, num: int) -> list[float]:
    """``num`` rate multipliers from ``low`` to ``high``, evenly spaced in log."""
    if num < 2 or low <= 0 or high <= low:
        raise ValueError(f"need num >= 2 and 0 < low < high, got {num}, {low}, {high}")
    ratio = (high / low) ** (1 / (num - 1))
    return [low * ratio**i for i in range(num)]
