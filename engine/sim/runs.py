"""Running the simulator: one run's figures, and a sweep over arrival rates.

``run_once`` builds a fresh ``Simulator`` (every run starts with empty stores) and
returns the run's figures (``metrics.summarise``) plus the simulator's own cost
(``num_events``). ``sweep`` runs the same requests at several rate multipliers and
derives goodput and effective capacity (``capacity``) for each SLO pair given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from engine.sim.capacity import GOODPUT_ATTAINMENT, RatePoint, highest_rate, slo_throughput
from engine.sim.cluster import ClusterSpec
from engine.sim.metrics import Slo, attainment, summarise
from engine.sim.profiles import Profile
from engine.sim.simulator import SimResult, Simulator
from engine.sim.workload import SimRequest, arrival_rate, at_rate


class Run(NamedTuple):
    figures: dict[str, float]
    result: SimResult


def run_once(
    spec: ClusterSpec,
    profile: Profile,
    requests: Sequence[SimRequest],
    slo: Slo | None,
    seed: int = 0,
) -> Run:
    result = Simulator(spec, profile, seed=seed).run(requests)
    figures = summarise(result.records, result.busy_s, slo, result.intervals)
    figures["events"] = float(result.num_events)
    figures["rate_rps"] = arrival_rate(requests)
    figures["gpus"] = float(spec.num_instances * profile.gpus_per_instance)
    return Run(figures, result)


class Sweep(NamedTuple):
    points: list[dict[str, float]]  # one per rate: the run's figures + attainment per SLO
    capacity: dict[str, float]  # goodput / effective capacity per SLO, and per GPU


def sweep(
    spec: ClusterSpec,
    profile: Profile,
    requests: Sequence[SimRequest],
    scales: Sequence[float],
    slos: Sequence[Slo],
) -> Sweep:
    """Run at each rate multiplier in ``scales``; capacity figures per SLO pair, named
    ``goodput_rps_tbt<ms>`` and ``effective_capacity_rps_tbt<ms>`` (and ``_per_gpu``)."""
    points: list[dict[str, float]] = []
    by_slo: dict[Slo, list[RatePoint]] = {slo: [] for slo in slos}
    for scale in scales:
        scaled = at_rate(requests, scale)
        run = run_once(spec, profile, scaled, None)
        point = dict(run.figures, rate_scale=scale)
        for slo in slos:
            share = attainment(run.result.records, slo)
            point[f"slo_attainment_tbt{_ms(slo)}"] = share
            by_slo[slo].append(RatePoint(point["rate_rps"], share))
        points.append(point)
    gpus = spec.num_instances * profile.gpus_per_instance
    capacity: dict[str, float] = {"gpus": float(gpus)}
    for slo, rate_points in by_slo.items():
        rates = {
            "goodput": highest_rate(rate_points, GOODPUT_ATTAINMENT),
            "effective_capacity": slo_throughput(rate_points),
        }
        for name, rate in rates.items():
            capacity[f"{name}_rps_tbt{_ms(slo)}"] = rate
            capacity[f"{name}_rps_per_gpu_tbt{_ms(slo)}"] = rate / gpus
    return Sweep(points, capacity)


def _ms(slo: Slo) -> str:
    return f"{slo.tbt_s * 1e3:g}"
