"""The router's logs for operators: one access line per request, a periodic throughput line.

Access lines (logger ``engine.router.access``, INFO) name the method, path, status, the
prompt, cached and generated tokens, the time to first token and the total time. A
generation is logged when it ends (for a stream, when its last event went out), anything
else when its response starts; each request is logged once. The throughput line sums
the router's metrics over the last interval and is written only when requests arrived.
``router.access_log = false`` turns both off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from engine.router.metrics import RouterMetrics

logger = logging.getLogger("engine.router.access")
current_request: ContextVar[RequestLog | None] = ContextVar("current_request", default=None)


@dataclass(slots=True)
class RequestLog:
    """What one request did; filled in as it runs."""

    method: str
    path: str
    start_s: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    first_token_s: float | None = None
    deferred: bool = False  # a stream: logged when it ends, not when its response starts
    logged: bool = False

    def add(self, prompt: int, cached: int, generated: int) -> None:
        self.prompt_tokens, self.cached_tokens, self.generated_tokens = prompt, cached, generated

    def first_token(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter()

    def write(self, status: int) -> None:
        """The access line (once)."""
        if self.logged:
            return
        self.logged = True
        now = time.perf_counter()
        ttft = (
            f"{(self.first_token_s - self.start_s) * 1e3:.0f} ms"
            if self.first_token_s is not None
            else "-"
        )
        logger.info(
            '"%s %s" %d prompt=%d cached=%d generated=%d ttft=%s total=%.0f ms',
            self.method,
            self.path,
            status,
            self.prompt_tokens,
            self.cached_tokens,
            self.generated_tokens,
            ttft,
            (now - self.start_s) * 1e3,
        )


async def log_throughput(metrics: RouterMetrics, interval_s: float) -> None:
    """Every ``interval_s``: requests/s, prompt tokens/s (share reused), generated
    tokens/s, over the interval; silent while idle. Runs until cancelled."""
    before = _totals(metrics)
    while True:
        await asyncio.sleep(interval_s)
        now = _totals(metrics)
        requests, prompt, cached, generated = (b - a for a, b in zip(before, now, strict=True))
        before = now
        if requests:
            logger.info(
                "throughput: %.1f req/s, %.0f prompt tok/s (%.0f%% reused),"
                " %.0f generated tok/s over %.0f s",
                requests / interval_s,
                prompt / interval_s,
                100 * cached / prompt if prompt else 0.0,
                generated / interval_s,
                interval_s,
            )


def _totals(metrics: RouterMetrics) -> tuple[float, float, float, float]:
    def total(name: str) -> float:
        return sum(
            s.value
            for family in metrics.registry.collect()
            for s in family.samples
            if s.name == name
        )

    return (
        total("strata_requests_total"),
        total("strata_prompt_tokens_total"),
        total("strata_cached_prompt_tokens_total"),
        total("strata_generated_tokens_total"),
    )
