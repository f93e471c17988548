"""The simulated cluster: requests flow through the router's policy to the instances.

Disaggregated (``Layout.DISAGGREGATED``)::

    arrival ──▶ policy.choose(RequestView, PrefillViews, DecodeViews, now)   (router's own)
       │          └─ Rejection: the request is rejected early (counts as an SLO miss)
       ▼
    PrefillInstance (FIFO, one prompt or a batch a pass) ── at start: what the node holds
       │   now (its BlockIndex, then peers through the global directory when the store is
       │   shared); ``plan_load`` picks load or recompute per block; a prompt alone takes
       │   max(load, compute)
       │   at end: TTFT; the prompt's blocks are written back to the node (the index's
       │   eviction policy demotes/drops to make room)
       ▼   hand-off: transfer_s(prompt tokens) over the network
    BatchInstance (decode, continuous batching) ── TBT from its step durations

Colocated (``Layout.COLOCATED``): one ``BatchInstance`` per instance does both, with
chunked prefill; its store node is its local prefix cache; the policy picks the
instance (its decode choice is ignored: a colocated request decodes where it prefilled).

With ``host_cores`` every instance runs on one host of that many cores and their work
shares them (``engine.sim.host``: a local cluster's processes on one machine), with the
side work of the other processes (``host_prefill_side_share`` per second of a prefill
pass, ``host_decode_side_share`` per second of a batching step), less the
``host_busy_share`` anything else uses; else each instance has hardware of its own.

The router sees: each instance's leading cached blocks (exact, from the directory),
``queued_s`` (predicted queued prefill work) and, per decode instance, running
sequences, their context and ``max_batch``. Determinism: same inputs, same result (the
event queue breaks ties by scheduling order; the random policy is seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from engine.router.policy import make_policy
from engine.router.views import Decision, DecodeView, PrefillView, Rejection, RequestView
from engine.sim import batching
from engine.sim.batching import BatchInstance
from engine.sim.cluster import ClusterSpec, Layout
from engine.sim.directory import Directory
from engine.sim.events import EventQueue
from engine.sim.host import Host
from engine.sim.loading import LoadPlan, plan_load
from engine.sim.metrics import RequestRecord
from engine.sim.prefill import PrefillInstance, PrefillJob, PrefillWork
from engine.sim.profiles import Profile
from engine.sim.store import NodeStore
from engine.sim.workload import SimRequest
from kvstore.policy.eviction import make_eviction_policy
from kvstore.policy.promotion import PromotionPolicy
from kvstore.types import TIERS_FASTEST_FIRST, TierKind


@dataclass(frozen=True, slots=True)
class SimResult:
    records: list[RequestRecord]
    busy_s: dict[str, float]  # instance -> busy seconds
    num_events: int
    tier_blocks: dict[str, int]  # tier -> blocks held at the end, all nodes
    intervals: tuple[list[float], list[int]]  # every token interval: (seconds, weights)
    steps: dict[str, tuple[int, int]]  # batching instance -> (steps, sequences they fed)


class Simulator:
    """One run of ``requests`` through the cluster ``spec`` with ``profile``'s costs."""

    def __init__(self, spec: ClusterSpec, profile: Profile, *, seed: int = 0) -> None:
        self.spec = spec
        self.profile = profile
        self.events = EventQueue()
        self.costs = profile.costs_for(spec.network_bytes_per_s, spec.network_latency_s)
        self.policy = make_policy(
            spec.policy,
            self.costs,
            ttft_slo_s=spec.ttft_slo_s or None,
            tbt_slo_s=spec.tbt_slo_s or None,
            balance_threshold=spec.balance_threshold,
            seed=seed,
        )
        self.block_tokens = spec.block_tokens
        self.block_bytes = profile.kv_bytes_per_token * spec.block_tokens
        self.directory = Directory()
        self.prefills: dict[str, PrefillInstance] = {}
        self.batches: dict[str, BatchInstance] = {}
        self.stores: dict[str, NodeStore] = {}
        self._build()

    def _build(self) -> None:
        spec = self.spec
        kv = self.profile.kv_bytes_per_token
        capacities = {t: spec.tier_blocks(t, kv) for t in TIERS_FASTEST_FIRST}
        eviction = make_eviction_policy(spec.eviction_policy)
        promotion = PromotionPolicy(spec.promotion_min_hits)
        colocated = spec.layout is Layout.COLOCATED
        free_cores = spec.host_cores * (1 - spec.host_busy_share)
        per_core = spec.host_cores if spec.host_pin_prefills else 0
        host = Host(free_cores, self.events, per_core=per_core) if spec.host_cores else None
        if colocated:
            nodes = [f"colocated-{i}" for i in range(spec.num_colocated)]
        else:
            nodes = [f"prefill-{i}" for i in range(spec.num_prefill)]
        for i, name in enumerate(nodes):
            observer = self.directory.observer(name)
            self.stores[name] = NodeStore(capacities, eviction, promotion, observer)
            if not colocated:
                self.prefills[name] = PrefillInstance(
                    name,
                    self.events,
                    self.costs,
                    chunk_tokens=spec.chunk_tokens,
                    max_batch_tokens=spec.max_batch_tokens,
                    host=host,
                    core=i if spec.host_pin_prefills else None,
                    side_share=spec.host_prefill_side_share,
                )
        batch_names = nodes if colocated else [f"decode-{i}" for i in range(spec.num_decode)]
        for name in batch_names:
            self.batches[name] = BatchInstance(
                name,
                self.events,
                self.costs,
                max_batch=spec.max_batch,
                kv_capacity_tokens=spec.kv_capacity_tokens,
                chunk_tokens=spec.chunk_tokens,
                host=host,
                side_share=spec.host_decode_side_share,
            )

    def run(self, requests: Sequence[SimRequest]) -> SimResult:
        records = []
        for request in requests:
            record = RequestRecord(
                request.request_id, request.arrival_s, request.input_tokens, request.output_tokens
            )
            records.append(record)
            self.events.at(request.arrival_s, partial(self._arrive, request, record))
        self.events.run()
        busy = {n: p.busy_s for n, p in self.prefills.items()}
        busy |= {n: b.busy_s for n, b in self.batches.items()}
        tier_blocks = {
            t.value: sum(s.num_blocks(t) for s in self.stores.values()) for t in TIERS_FASTEST_FIRST
        }
        values: list[float] = []
        weights: list[int] = []
        for batch in self.batches.values():
            v, w = batch.intervals()
            values += v
            weights += w
        steps = {n: (len(b.durations), b.batched_sequences) for n, b in self.batches.items()}
        return SimResult(
            records, busy, self.events.num_events, tier_blocks, (values, weights), steps
        )

    # -- routing ----------------------------------------------------------------------

    def _arrive(self, request: SimRequest, record: RequestRecord) -> None:
        view = RequestView(
            request.input_tokens,
            self.block_tokens,
            self.directory.leading(request.keys) if request.keys else {},
            request.output_tokens,
        )
        prefill_views = self._prefill_views()
        decode_views = [
            DecodeView(n, b.num_running + b.num_queued, b.context_tokens, b.max_batch)
            for n, b in self.batches.items()
        ]
        choice = self.policy.choose(view, prefill_views, decode_views, self.events.now)
        if isinstance(choice, Rejection):
            record.rejected = True
            return
        record.instance = choice.prefill
        if self.spec.layout is Layout.COLOCATED:
            self._colocated(request, record)
            return
        queued = next(v.queued_s for v in prefill_views if v.id == choice.prefill)
        job = PrefillJob(
            max(0.0, choice.predicted_ttft_s - queued),
            partial(self._begin_prefill, request, record),
            partial(self._end_prefill, request, record, choice),
        )
        self.prefills[choice.prefill].submit(job)

    def _prefill_views(self) -> list[PrefillView]:
        if self.spec.layout is Layout.DISAGGREGATED:
            return [PrefillView(n, p.queued_s()) for n, p in self.prefills.items()]
        prefill_s = self.costs.prefill_s
        return [
            PrefillView(n, prefill_s(b.queued_prefill_tokens(), 0)) for n, b in self.batches.items()
        ]

    # -- prefill ----------------------------------------------------------------------

    def _begin_prefill(self, request: SimRequest, record: RequestRecord) -> PrefillWork:
        plan = self._load(request, record)
        cached = plan.loaded_blocks * self.block_tokens
        return PrefillWork(request.input_tokens - cached, cached, plan.load_s)

    def _end_prefill(self, request: SimRequest, record: RequestRecord, choice: Decision) -> None:
        now = self.events.now
        self.stores[record.instance].write(request.keys, now)
        record.ttft_s = now - request.arrival_s
        seq = batching.Sequence(
            request.input_tokens,
            request.output_tokens,
            on_done=partial(_done, record),
            first_token_s=now,
        )
        decode = self.batches[choice.decode]
        handoff_s = self.costs.transfer_s(request.input_tokens)
        self.events.after(handoff_s, partial(decode.submit, seq, prefilled=True))

    def _colocated(self, request: SimRequest, record: RequestRecord) -> None:
        plan = self._load(request, record)
        seq = batching.Sequence(
            request.input_tokens,
            request.output_tokens,
            cached_tokens=plan.loaded_blocks * self.block_tokens,
            load_s=plan.load_s,
            on_first_token=partial(self._first_token, request, record),
            on_done=partial(_done, record),
        )
        self.batches[record.instance].submit(seq, prefilled=False)

    def _first_token(self, request: SimRequest, record: RequestRecord, now: float) -> None:
        self.stores[record.instance].write(request.keys, now)
        record.ttft_s = now - request.arrival_s

    def _load(self, request: SimRequest, record: RequestRecord) -> LoadPlan:
        """What the serving node loads (from which source) and computes; recorded."""
        store = self.stores[record.instance]
        run = store.run(request.keys)
        tiers = self.spec.tiers
        block_s = [self.block_bytes / tiers[m.tier].bandwidth_bytes_per_s for m in run]
        sources = [m.tier.value for m in run]
        if self.spec.shared:
            self._peer_blocks(request, record.instance, len(run), block_s, sources)
        plan = plan_load(block_s, request.input_tokens, self.block_tokens, self.costs)
        store.read(run[: plan.loaded_blocks], self.events.now)
        loaded = record.loaded_tokens
        for source in sources[: plan.loaded_blocks]:
            loaded[source] = loaded.get(source, 0) + self.block_tokens
        usable = min(len(sources), (request.input_tokens - 1) // self.block_tokens)
        record.computed_tokens = request.input_tokens - plan.loaded_blocks * self.block_tokens
        record.cached_recomputed_tokens = (usable - plan.loaded_blocks) * self.block_tokens
        return plan

    def _peer_blocks(
        self,
        request: SimRequest,
        node: str,
        start: int,
        block_s: list[float],
        sources: list[str],
    ) -> None:
        """Extend the local run with blocks other nodes hold (read over the network)."""
        network = self.spec.network_bytes_per_s
        latency = self.spec.network_latency_s
        for key in request.keys[start:]:
            tier = self.directory.fastest(key, exclude=node)
            if tier is None:
                return
            bandwidth = min(network, self.spec.tiers[tier].bandwidth_bytes_per_s)
            block_s.append(self.block_bytes / bandwidth + latency)
            sources.append("peer")
            latency = 0.0


def _done(record: RequestRecord, finish_s: float, tbt_s: float) -> None:
    record.done = True
    record.finish_s = finish_s
    record.tbt_s = tbt_s


__all__ = ["SimResult", "Simulator", "TierKind"]
