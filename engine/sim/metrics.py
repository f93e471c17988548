"""What a simulation measures: per-request records and the summary figures over them.

Definitions (each figure's name says its unit):

* TTFT: arrival -> first token (the prefill's end; queueing and loads included).
* TBT of a request: the mean of the slowest 10% of its token intervals (Mooncake's
  definition); the first interval after the prefill includes the hand-off to decode.
  A request with one output token has no interval (TBT 0).
* ITL: every token interval of every request, pooled (``itl_p50_ms`` ...): what a
  client timing each streamed token sees. Percentiles of a weighted set (a decode step
  counts once per sequence it served), by the inverted CDF: the smallest interval with
  at least q% of the intervals at or below it.
* SLO attainment: the share of *all* requests (rejected ones count as misses) with
  TTFT <= ttft_slo_s and TBT <= tbt_slo_s.
* Hit rate per tier: prompt tokens loaded from that tier of the serving node's store
  (``peer``: from another node over the network) over all prompt tokens; tokens a policy
  chose to recompute although cached count as ``recomputed_cached``.
* Utilisation: busy seconds of an instance over the replay's span (first arrival to last
  completion).

Invariants: loaded + recomputed tokens = prompt tokens of every served request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SOURCES = ("hbm", "dram", "nvme", "peer")  # where a loaded token came from


@dataclass(slots=True)
class RequestRecord:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    instance: str = ""  # the prefill (or colocated) instance
    rejected: bool = False
    ttft_s: float = 0.0
    tbt_s: float = 0.0
    finish_s: float = 0.0
    done: bool = False
    loaded_tokens: dict[str, int] = field(default_factory=dict)  # source -> tokens
    computed_tokens: int = 0
    cached_recomputed_tokens: int = 0  # cached somewhere, recomputed by choice

    def meets(self, ttft_slo_s: float, tbt_slo_s: float) -> bool:
        return self.done and self.ttft_s <= ttft_slo_s and self.tbt_s <= tbt_slo_s


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float
    tbt_s: float

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tbt_s <= 0:
            raise ValueError(f"SLOs must be > 0, got TTFT {self.ttft_s} s, TBT {self.tbt_s} s")


def attainment(records: Sequence[RequestRecord], slo: Slo) -> float:
    """The share of requests meeting both SLOs (rejected and unfinished ones miss)."""
    if not records:
        return 0.0
    return sum(r.meets(slo.ttft_s, slo.tbt_s) for r in records) / len(records)


def summarise(
    records: Sequence[RequestRecord],
    busy_s: Mapping[str, float],
    slo: Slo | None,
    intervals: tuple[Sequence[float], Sequence[int]] = ((), ()),
) -> dict[str, float]:
    """The figures of one run (see the module docstring), flat, units in the names;
    ``intervals``: every token interval as (seconds, how many times each counts)."""
    served = [r for r in records if r.done]
    out: dict[str, float] = {
        "requests": float(len(records)),
        "rejected_share": sum(r.rejected for r in records) / max(1, len(records)),
    }
    out |= _percentiles("ttft", [r.ttft_s for r in served])
    out |= _percentiles("tbt", [r.tbt_s for r in served if r.output_tokens > 1])
    out |= {f"itl_p{q}_ms": weighted_percentile(*intervals, q) * 1e3 for q in (50, 90, 99)}
    prompt = sum(r.prompt_tokens for r in served) or 1
    loaded = {s: sum(r.loaded_tokens.get(s, 0) for r in served) for s in SOURCES}
    for source, tokens in loaded.items():
        out[f"hit_rate_{source}"] = tokens / prompt
    out["hit_rate"] = sum(loaded.values()) / prompt
    out["tokens_loaded"] = float(sum(loaded.values()))
    out["tokens_recomputed"] = float(sum(r.computed_tokens for r in served))
    out["tokens_recomputed_cached"] = float(sum(r.cached_recomputed_tokens for r in served))
    span = _span(records)
    out["span_s"] = span
    out["throughput_rps"] = len(served) / span if span > 0 else 0.0
    utilisation = [b / span for b in busy_s.values()] if span > 0 else [0.0]
    out["utilisation_mean"] = float(np.mean(utilisation)) if utilisation else 0.0
    out["utilisation_max"] = float(np.max(utilisation)) if utilisation else 0.0
    if slo is not None:
        out["slo_attainment"] = attainment(records, slo)
    return out


def utilisation(busy_s: Mapping[str, float], records: Sequence[RequestRecord]) -> dict[str, float]:
    span = _span(records)
    return {name: (b / span if span > 0 else 0.0) for name, b in busy_s.items()}


def _span(records: Iterable[RequestRecord]) -> float:
    records = list(records)
    if not records:
        return 0.0
    first = min(r.arrival_s for r in records)
    last = max((r.finish_s for r in records if r.done), default=first)
    return last - first


def weighted_percentile(values: Sequence[float], weights: Sequence[int], q: float) -> float:
    """The smallest of ``values`` with at least ``q``% of the total weight at or below
    it (the inverted CDF); 0 for an empty or weightless set."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    v, w = v[w > 0], w[w > 0]
    if not v.size:
        return 0.0
    order = np.argsort(v, kind="stable")
    cumulative = np.cumsum(w[order])
    index = int(np.searchsorted(cumulative, q / 100 * cumulative[-1], side="left"))
    return float(v[order][min(index, v.size - 1)])


def _percentiles(name: str, seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {f"{name}_p{q}_ms": 0.0 for q in (50, 90, 99)}
    ms = np.asarray(seconds) * 1e3
    return {f"{name}_p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}
