"""The soak: one store node at a fixed fraction of its measured capacity for a long time.

The working set (320 chains of 4 blocks of 64 KiB, 80 MiB) is 1.25 times the node's
64 MiB DRAM tier, so eviction, misses and re-puts run all along: the soak's
"recomputed" counts are cache misses by design, not faults.

Capacity is measured first (closed loop, ``concurrency`` callers, ``calibrate_s``); the
soak then runs open loop at ``fraction`` of it, sampling the node's resident memory and
open fds every ``sample_s``. Growth is read from the first sample after a warm-up tenth
of the run to the last, so start-up allocation does not count as a leak.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.chaos_env import proc_usage
from bench.chaos_load import Outcome, StoreLoad, drive
from bench.chaos_stacks import NAMESPACE, SPEC, StoreStack
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions

MiB = 1 << 20


@dataclass(slots=True)
class SoakResult:
    capacity_ops_s: float
    rate_ops_s: float
    duration_s: float
    counts: dict[str, int]
    wrong: int
    p50_ms: float
    p99_ms: float
    rss_growth_mib: float
    fd_growth: int
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (s, MiB, fds)


async def soak(
    duration_s: float,
    *,
    fraction: float = 0.7,
    concurrency: int = 8,
    calibrate_s: float = 5.0,
    sample_s: float = 2.0,
) -> SoakResult:
    with StoreStack(1, redis=False, dram_bytes=64 * MiB) as stack:
        pid = stack.nodes[0].proc.pid
        async with StoreClient(stack.address(0), CallOptions(timeout_s=5)) as client:
            await client.register_namespace(NAMESPACE)
            load = StoreLoad(
                client,
                NAMESPACE.id,
                block_bytes=SPEC.block_bytes,
                block_tokens=SPEC.block_tokens,
                num_chains=320,  # 80 MiB over a 64 MiB tier: eviction and re-puts too
                chain_blocks=4,
                seed=11,
            )
            end = time.monotonic() + calibrate_s
            await drive(load.one, lambda: time.monotonic() > end, concurrency=concurrency)
            capacity = len(load.tally.events) / calibrate_s
            rate = capacity * fraction
            start = time.monotonic()
            end = start + duration_s
            samples: list[tuple[float, float, int]] = []

            async def sample() -> None:
                while time.monotonic() < end:
                    usage = proc_usage(pid)
                    if usage is not None:
                        samples.append(
                            (time.monotonic() - start, usage.rss_bytes / MiB, usage.num_fds)
                        )
                    await asyncio.sleep(sample_s)

            sampler = asyncio.create_task(sample())
            await drive(
                load.one, lambda: time.monotonic() > end, concurrency=concurrency, rate_per_s=rate
            )
            await sampler
    window = load.tally.window(start)
    steady = [s for s in samples if s[0] >= duration_s / 10] or samples
    return SoakResult(
        capacity_ops_s=capacity,
        rate_ops_s=len(window.events) / duration_s,
        duration_s=duration_s,
        counts=window.counts(),
        wrong=window.wrong,
        p50_ms=window.latency_ms(0.5),
        p99_ms=window.latency_ms(0.99),
        rss_growth_mib=steady[-1][1] - steady[0][1] if steady else 0.0,
        fd_growth=steady[-1][2] - steady[0][2] if steady else 0,
        samples=samples,
    )


def failed_share(result: SoakResult) -> float:
    total = sum(result.counts.values())
    return result.counts[Outcome.FAILED.value] / total if total else 0.0
