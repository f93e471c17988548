"""The vLLM connector's counters as plain numbers: what one report carries, how reports
add up, and which Prometheus counter each number feeds. No vLLM import, so it is checked
without vLLM installed (``vllm_stats`` is the vLLM side).

A report is a flat ``{counter: amount}`` of integers (times in microseconds, so that
differences and sums are exact) of what changed since the previous one: each
worker and the scheduler send theirs, vLLM adds them up (``add``), logs their sum with its
throughput line ("KV Transfer metrics: ...") and feeds each amount to a Prometheus
counter (``increments``), so that ``/metrics`` carries running totals.

The numbers are the connector core's (``ConnectorStats``): the scheduler's lookups and
their misses by cause, the worker's loads and saves in blocks, bytes and seconds (start
to bytes in place: the transfers overlap the forward pass), the time a producer's steps
waited for their saves' commits (that is not overlapped), blocks that failed their
checksum, failed saves, store calls that failed or were skipped while the store was
down; and the blocks reported to vLLM as load errors (it recomputed them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kvstore.connector.backend import ConnectorStats, MissCause

COUNTERS = (
    "lookup_blocks",
    "lookup_hit_blocks",
    *(f"miss_{cause.value}_blocks" for cause in MissCause),
    "loaded_blocks",
    "loaded_bytes",
    "load_us",
    "saved_blocks",
    "saved_bytes",
    "save_us",
    "commit_wait_us",
    "corrupted_blocks",
    "load_error_blocks",
    "save_failures",
    "unreachable",
    "skipped",
)


@dataclass(frozen=True, slots=True)
class PromCounter:
    """One Prometheus counter (``name`` is exposed with ``_total``) fed by report
    counters: one unlabelled, or one per value of ``label``."""

    name: str
    documentation: str
    sources: tuple[tuple[str, str], ...]  # (label value, or "" when unlabelled; counter)
    label: str = ""
    scale: float = 1.0  # counter amount -> the metric's unit


def _one(name: str, documentation: str, counter: str, scale: float = 1.0) -> PromCounter:
    return PromCounter(f"vllm:strata_{name}", documentation, (("", counter),), scale=scale)


PROMETHEUS = (
    _one("lookup_blocks", "Blocks the scheduler looked up in the Strata store.", "lookup_blocks"),
    _one(
        "lookup_hit_blocks",
        "Looked-up blocks the Strata store held (leading runs).",
        "lookup_hit_blocks",
    ),
    PromCounter(
        "vllm:strata_miss_blocks",
        "Looked-up blocks the Strata store did not give, by reason.",
        tuple((cause.value, f"miss_{cause.value}_blocks") for cause in MissCause),
        label="reason",
    ),
    _one("loaded_blocks", "Blocks loaded from the Strata store.", "loaded_blocks"),
    _one("loaded_bytes", "Bytes loaded from the Strata store.", "loaded_bytes"),
    _one("load_seconds", "Seconds loads took, start to landed and checked.", "load_us", 1e-6),
    _one("saved_blocks", "Blocks the Strata store took anew.", "saved_blocks"),
    _one("saved_bytes", "Bytes of the blocks the Strata store took anew.", "saved_bytes"),
    _one("save_seconds", "Seconds saves took, reservation to commit.", "save_us", 1e-6),
    _one(
        "commit_wait_seconds",
        "Seconds steps waited for their saves' commits (a kv_producer's answers wait).",
        "commit_wait_us",
        1e-6,
    ),
    _one(
        "corrupted_blocks",
        "Loaded blocks that failed their checksum (recomputed).",
        "corrupted_blocks",
    ),
    _one(
        "load_error_blocks",
        "Blocks reported to vLLM as load errors (recomputed).",
        "load_error_blocks",
    ),
    _one("save_failures", "Saves the Strata store did not take.", "save_failures"),
    _one("unreachable", "Strata store calls that failed (vLLM recomputed).", "unreachable"),
    _one("skipped", "Strata store calls not tried while the store was down.", "skipped"),
)


def counters(stats: ConnectorStats, load_error_blocks: int) -> dict[str, int]:
    """The running totals of one connector instance."""
    out = {
        "lookup_blocks": stats.lookup_blocks,
        "lookup_hit_blocks": stats.lookup_hit_blocks,
        "loaded_blocks": sum(stats.loaded_blocks.values()),
        "loaded_bytes": stats.loaded_bytes,
        "load_us": round(stats.load_s * 1e6),
        "saved_blocks": stats.saved_blocks,
        "saved_bytes": stats.saved_bytes,
        "save_us": round(stats.save_s * 1e6),
        "commit_wait_us": round(stats.commit_wait_s * 1e6),
        "corrupted_blocks": stats.corrupted_blocks,
        "load_error_blocks": load_error_blocks,
        "save_failures": stats.save_failures,
        "unreachable": stats.unreachable,
        "skipped": stats.skipped,
    }
    for cause in MissCause:
        out[f"miss_{cause.value}_blocks"] = stats.miss_blocks[cause]
    return out


def delta(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """What changed between two readings of ``counters``."""
    return {key: now.get(key, 0) - before.get(key, 0) for key in COUNTERS}


def add(into: dict[str, int], other: Mapping[str, int]) -> dict[str, int]:
    """Add a report to ``into`` (in place; returned)."""
    for key in COUNTERS:
        into[key] = into.get(key, 0) + other.get(key, 0)
    return into


def reduce(data: Mapping[str, int]) -> dict[str, int | float]:
    """A summed report for vLLM's log line: every counter, times in seconds."""
    out: dict[str, int | float] = {}
    for key in COUNTERS:
        if key.endswith("_us"):
            out[key.removesuffix("_us") + "_s"] = round(data.get(key, 0) / 1e6, 3)
        else:
            out[key] = data.get(key, 0)
    return out


def is_empty(data: Mapping[str, int]) -> bool:
    return not any(data.get(key, 0) for key in COUNTERS)


def increments(data: Mapping[str, int]) -> list[tuple[PromCounter, str, float]]:
    """(counter, label value, amount in the metric's unit) for every non-zero amount of
    a report.

    Raises:
        ValueError: a negative amount (counters only go up: a report is a difference).
    """
    out = []
    for metric in PROMETHEUS:
        for value, key in metric.sources:
            amount = data.get(key, 0)
            if amount < 0:
                raise ValueError(f"report counter {key} went down by {-amount}")
            if amount:
                out.append((metric, value, amount * metric.scale))
    return out
