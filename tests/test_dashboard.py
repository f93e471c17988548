"""The shipped Grafana dashboard queries only metrics that the store and router expose."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from engine.router.metrics import RouterMetrics
from kvstore.server.metrics import NodeMetrics
from kvstore.stats import StatsSnapshot

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "grafana-strata.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exposed(registry: CollectorRegistry) -> set[str]:
    """Names of the series a registry exposes (a counter ``x`` is ``x_total``, ...)."""
    return {f.name + s for f in registry.collect() for s in SUFFIXES.get(f.type, ("",))}


def queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    return {name for e in exprs for name in re.findall(r"\bstrata_[a-z0-9_]+", e)}


def test_every_dashboard_query_names_a_metric_that_exists() -> None:
    empty = StatsSnapshot([], [], {}, {}, {}, {}, 0, 0, 0, 0.0, 0)
    store = NodeMetrics(lambda: empty, lambda: False)
    names = exposed(store.registry) | exposed(RouterMetrics().registry)
    assert queried() - names == set()
    # and the dashboard covers what an operator watches first
    for needed in ("strata_ttft_seconds_bucket", "strata_rejections_total",
                   "strata_cached_prompt_tokens_total", "strata_hit_blocks_total",
                   "strata_tier_used_bytes"):  # fmt: skip
        assert needed in queried()
