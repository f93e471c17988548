"""The vLLM connector's counters without vLLM: a report is what changed since the last
one, reports add up, the log line is their sum, and each amount feeds its Prometheus
counter in that counter's unit."""

from __future__ import annotations

from collections import Counter

import pytest

from kvstore.connector.backend import ConnectorStats, MissCause
from kvstore.integrations.vllm_counters import (
    COUNTERS,
    PROMETHEUS,
    add,
    counters,
    delta,
    increments,
    is_empty,
    reduce,
)


def stats(**changes: object) -> ConnectorStats:
    s = ConnectorStats(
        lookup_blocks=10,
        lookup_hit_blocks=6,
        miss_blocks=Counter({MissCause.NOT_CACHED: 3, MissCause.STORE_DOWN: 1}),
        loaded_blocks=Counter({"dram": 4, "nvme": 2}),
        loaded_bytes=6 * 4096,
        load_s=0.0125,
        saved_blocks=5,
        saved_bytes=5 * 4096,
        save_s=0.5,
        corrupted_blocks=1,
    )
    for name, value in changes.items():
        setattr(s, name, value)
    return s


def test_counters_read_the_core_and_times_become_whole_microseconds() -> None:
    got = counters(stats(), load_error_blocks=2)
    assert set(got) == set(COUNTERS)
    assert got["loaded_blocks"] == 6 and got["loaded_bytes"] == 6 * 4096
    assert got["miss_not_cached_blocks"] == 3 and got["miss_store_down_blocks"] == 1
    assert (got["load_us"], got["save_us"]) == (12_500, 500_000)
    assert got["load_error_blocks"] == 2 and got["skipped"] == 0


def test_a_report_is_the_difference_and_reports_add_up_to_the_totals() -> None:
    first = counters(stats(), 0)
    later = counters(stats(saved_blocks=8, save_s=0.75, lookup_blocks=12), 1)
    report = delta(later, first)
    assert report["saved_blocks"] == 3 and report["save_us"] == 250_000
    assert report["lookup_blocks"] == 2 and report["load_error_blocks"] == 1
    assert report["loaded_blocks"] == 0
    assert add(delta(first, {}), report) == later
    assert is_empty(delta(first, first)) and not is_empty(report)


def test_the_log_line_sums_every_worker_and_shows_seconds() -> None:
    one = delta(counters(stats(), 0), {})
    two = delta(counters(stats(), 3), {})
    summed = reduce(add(add({}, one), two))
    assert summed["loaded_blocks"] == 12 and summed["load_error_blocks"] == 3
    assert summed["load_s"] == 0.025 and summed["save_s"] == 1.0
    assert "load_us" not in summed


def test_prometheus_gets_every_non_zero_amount_in_its_unit_and_misses_by_reason() -> None:
    report = delta(counters(stats(), 0), {})
    got = {(m.name, value): amount for m, value, amount in increments(report)}
    assert got[("vllm:strata_loaded_blocks", "")] == 6
    assert got[("vllm:strata_miss_blocks", "not_cached")] == 3
    assert got[("vllm:strata_miss_blocks", "store_down")] == 1
    assert got[("vllm:strata_load_seconds", "")] == pytest.approx(0.0125)
    assert got[("vllm:strata_save_seconds", "")] == pytest.approx(0.5)
    assert ("vllm:strata_skipped", "") not in got  # nothing to add
    fed = {key for m in PROMETHEUS for _, key in m.sources}
    assert fed == set(COUNTERS)  # every counter reaches a metric


def test_a_report_that_went_down_is_refused() -> None:
    with pytest.raises(ValueError, match="saved_blocks went down by 2"):
        increments({"saved_blocks": -2})
