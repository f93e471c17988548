"""The capacity planner: the cheapest disaggregated cluster that meets the SLOs on a trace.

Search (``plan``): for each instance count ``n = 2 .. max_instances`` (fewest GPUs
first), each split into ``p`` prefill and ``n - p`` decode instances, and each per-node
DRAM and NVMe size, simulate the trace at its own rate; a configuration *meets* the
SLOs when at least ``target`` (default 90%, DistServe's goodput rule) of requests meet
both. The answer is the first ``n`` with any configuration that meets them, and among
those the one with the least DRAM, then the least NVMe. "Cheapest" is therefore by GPU
count, then memory, as an operator buys it.

Pruning (an assumption, stated): more memory never lowers attainment, so for each split
the largest memory is tried first; if it misses, the split is skipped, otherwise sizes
are tried from the smallest up until one meets the SLOs. Cost: at most
``sum_n (n - 1) x (1 + sizes)`` simulations; usually far fewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine.sim.cluster import ClusterSpec, Layout
from engine.sim.metrics import Slo, attainment
from engine.sim.profiles import Profile
from engine.sim.simulator import Simulator
from engine.sim.workload import SimRequest
from kvstore.types import TierKind


@dataclass(frozen=True, slots=True)
class Candidate:
    num_prefill: int
    num_decode: int
    dram_bytes: float
    nvme_bytes: float
    gpus: int
    attainment: float

    def meets(self, target: float) -> bool:
        return self.attainment >= target


@dataclass(frozen=True, slots=True)
class Plan:
    best: Candidate | None  # None: nothing within max_instances meets the SLOs
    tried: list[Candidate]


def plan(
    base: ClusterSpec,
    profile: Profile,
    requests: Sequence[SimRequest],
    slo: Slo,
    *,
    max_instances: int,
    dram_options: Sequence[float],
    nvme_options: Sequence[float],
    target: float = 0.9,
) -> Plan:
    """Search as the module docstring says. Raises ``ValueError`` for an empty space."""
    if max_instances < 2 or not dram_options or not nvme_options:
        raise ValueError("need max_instances >= 2 and at least one DRAM and NVMe size")
    sizes = sorted((d, n) for d in dram_options for n in nvme_options)
    tried: list[Candidate] = []

    def evaluate(p: int, d: int, memory: tuple[float, float]) -> Candidate:
        spec = replace(base, layout=Layout.DISAGGREGATED, num_prefill=p, num_decode=d)
        spec = spec.with_tier(TierKind.DRAM, memory[0]).with_tier(TierKind.NVME, memory[1])
        result = Simulator(spec, profile).run(requests)
        share = attainment(result.records, slo)
        gpus = (p + d) * profile.gpus_per_instance
        candidate = Candidate(p, d, memory[0], memory[1], gpus, share)
        tried.append(candidate)
        return candidate

    for n in range(2, max_instances + 1):
        found: list[Candidate] = []
        for p in range(1, n):
            largest = evaluate(p, n - p, sizes[-1])
            if not largest.meets(target):
                continue
            for memory in sizes:
                candidate = evaluate(p, n - p, memory) if memory != sizes[-1] else largest
                if candidate.meets(target):
                    found.append(candidate)
                    break
        if found:
            best = min(found, key=lambda c: (c.dram_bytes, c.nvme_bytes, -c.attainment))
            return Plan(best, tried)
    return Plan(None, tried)
