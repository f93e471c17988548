"""The vLLM connector's counters in vLLM's own statistics: ``StrataStats`` is what each
worker and the scheduler report (``KVConnectorStats``), ``StrataPromMetrics`` what vLLM's
Prometheus logger feeds them to (``KVConnectorPromMetrics``), so that the OpenAI server's
``/metrics`` carries ``vllm:strata_*_total``. The arithmetic is ``vllm_counters``'s.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from vllm.config import VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
    PromMetric,
    PromMetricT,
)

from kvstore.integrations import vllm_counters
from kvstore.integrations.vllm_counters import COUNTERS, counters, delta

__all__ = ["StrataPromMetrics", "StrataStats", "counters", "delta"]


class StrataStats(KVConnectorStats):
    def reset(self) -> None:
        self.data: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def aggregate(self, other: KVConnectorStats) -> StrataStats:
        vllm_counters.add(self.data, other.data)
        return self

    def reduce(self) -> dict[str, int | float]:
        return vllm_counters.reduce(self.data)

    def is_empty(self) -> bool:
        return vllm_counters.is_empty(self.data)


class StrataPromMetrics(KVConnectorPromMetrics):
    """One vLLM counter per ``vllm_counters.PROMETHEUS`` entry, labelled by engine (and
    by reason where the entry has one); each report adds its amounts."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        metric_types: dict[type[PromMetric], type[PromMetricT]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters: dict[str, Counter] = {}
        for metric in vllm_counters.PROMETHEUS:
            names = [*labelnames, metric.label] if metric.label else list(labelnames)
            self._counters[metric.name] = self._counter_cls(
                name=metric.name, documentation=metric.documentation, labelnames=names
            )

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        labels = self.per_engine_labelvalues[engine_idx]
        for metric, value, amount in vllm_counters.increments(transfer_stats_data):
            extra = [value] if metric.label else []
            self._counters[metric.name].labels(*labels, *extra).inc(amount)
