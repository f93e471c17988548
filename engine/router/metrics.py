"""The router's Prometheus metrics (``GET /metrics``).

Every HTTP request to ``/v1/*`` counts once in ``strata_requests_total{outcome}`` when
its response starts, and every 429 in ``strata_rejections_total`` (whichever layer
refused it: the concurrency limit, the policy's SLO check, a full decode worker).

Prompt tokens reused count by source, the same sources the store reports (``kvstore
admin stats``), so the two can be compared:

    strata_cached_prompt_tokens_total{source="worker"}  the prefill worker's own cache
    strata_cached_prompt_tokens_total{source="store"}   loaded from the worker's store node
    strata_cached_prompt_tokens_total{source="peer"}    loaded through it from another node

The store's hit tokens (its tiers plus ``peer``) for the model's namespace equal the
router's ``store`` + ``peer`` tokens, when only the router's requests reach the store.
"""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CacheSource(enum.Enum):
    WORKER = "worker"
    STORE = "store"
    PEER = "peer"


def outcome_of(status: int) -> str:
    """The ``outcome`` label of an HTTP status."""
    if status < 400:
        return "ok"
    return {
        400: "bad_request",
        401: "unauthorized",
        404: "not_found",
        405: "not_found",
        429: "rejected",
    }.get(status, "client_error" if status < 500 else "failed")


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("strata_requests", "Requests by outcome", ["outcome"], registry=r)
        self.rejections = Counter(
            "strata_rejections", "Requests refused with 429 before any work", registry=r
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
            "strata_cached_prompt_tokens",
            "Prompt tokens reused, by source (worker cache, store node, peer node)",
            ["source"],
            registry=r,
        )
        for source in CacheSource:  # every source has a sample, 0 until it serves
            self.cached_tokens.labels(source.value)
        self.generated_tokens = Counter("strata_generated_tokens", "Tokens generated", registry=r)

    def count_response(self, status: int) -> None:
        self.requests.labels(outcome_of(status)).inc()
        if status == 429:
            self.rejections.inc()

    def count_prompt(self, prompt: int, cached: int, store: int, peer: int) -> None:
        """A prompt of ``prompt`` tokens that reused ``cached``: ``store`` of them loaded
        from the store, ``peer`` of those from another node."""
        self.prompt_tokens.inc(prompt)
        self.cached_tokens.labels(CacheSource.WORKER.value).inc(max(0, cached - store))
        self.cached_tokens.labels(CacheSource.STORE.value).inc(max(0, store - peer))
        self.cached_tokens.labels(CacheSource.PEER.value).inc(peer)

    def render(self) -> bytes:
        return generate_latest(self.registry)
