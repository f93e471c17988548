"""The router's Prometheus metrics (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("strata_requests", "Requests by outcome", ["outcome"], registry=r)
        self.rejections = Counter(
            "strata_rejections", "Requests rejected before any work (429)", registry=r
        )
        self.ttft = Histogram(
            "strata_ttft_seconds", "Time to first token", buckets=_SECONDS, registry=r
        )
        self.itl = Histogram(
            "strata_itl_seconds", "Time between tokens", buckets=_SECONDS, registry=r
        )
        self.queue = Histogram(
            "strata_queue_seconds",
            "Predicted prefill queue of the chosen worker at admission",
            buckets=_SECONDS,
            registry=r,
        )
        self.decision = Histogram(
            "strata_decision_seconds",
            "Routing decision time (lookups and policy)",
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05),
            registry=r,
        )
        self.prompt_tokens = Counter("strata_prompt_tokens", "Prompt tokens", registry=r)
        self.cached_tokens = Counter(
            "strata_cached_prompt_tokens", "Prompt tokens reused from a cache", registry=r
        )
        self.generated_tokens = Counter("strata_generated_tokens", "Tokens generated", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
