"""A running router: its workers, global view, cost model and policy, assembled from the
``[router]`` section of the config (and ``[engine]`` for the model's tokenizer)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from engine.config import EngineConfig
from engine.model.loader import TINY_MODEL_PATH, LoadedTokenizer, load_tokenizer
from engine.router.costs import CostModel
from engine.router.global_view import GlobalView
from engine.router.policy import make_policy
from engine.router.profiling import profile_costs
from engine.router.router import Router
from engine.router.views import Policy
from engine.router.workers import WorkerPool
from kvstore.types import NamespaceId

logger = logging.getLogger(__name__)


@dataclass
class RouterService:
    router: Router
    model: LoadedTokenizer
    model_name: str  # what clients call it
    created: int  # when it started (unix seconds), for /v1/models

    async def close(self) -> None:
        await self.router.view.close()
        await self.router.pool.close()


async def open_router(config: EngineConfig, *, wait_s: float = 60.0) -> RouterService:
    """Reach the workers (waiting up to ``wait_s``), check they serve the configured
    model, fit or load the cost model, and build the router."""
    section = config.router
    model = load_tokenizer(config.engine.model_path or TINY_MODEL_PATH)
    pool = WorkerPool(
        section.prefill_addresses,
        section.decode_addresses,
        token=config.engine.token,
        health_interval_s=section.health_interval_s,
    )
    try:
        await pool.start(wait_s)
        info = pool.any_info()
        if info.model_id != model.config.model_id:
            raise RuntimeError(
                f"the workers serve {info.model_id}; the router was given"
                f" {model.config.model_id} (set engine.model the same everywhere)"
            )
        costs = await _costs(config, pool, model, info.page_tokens)
    except BaseException:
        await pool.close()
        raise
    namespace_id = NamespaceId(info.namespace_id)
    view = GlobalView(
        pool, namespace_id, lookup_timeout_s=section.lookup_timeout_s, token=config.engine.token
    )
    policy = configured_policy(config, costs)
    router = Router(
        pool,
        view,
        policy,
        costs,
        namespace_id=namespace_id,
        block_tokens=info.page_tokens,
        token=config.engine.token,
    )
    return RouterService(router, model, served_model_name(config), int(time.time()))


def configured_policy(config: EngineConfig, costs: CostModel) -> Policy:
    """The policy ``router.policy`` names, with the ``[router]`` SLOs and threshold."""
    section = config.router
    return make_policy(
        section.policy,
        costs,
        ttft_slo_s=section.ttft_slo_s or None,
        tbt_slo_s=section.tbt_slo_s or None,
        balance_threshold=section.balance_threshold,
    )


def served_model_name(config: EngineConfig) -> str:
    """What clients call the model: ``router.model_name``, else the checkpoint's folder
    name (the store's model id adds a digest of the weights; clients need not know it),
    else the built-in model's id."""
    if config.router.model_name:
        return config.router.model_name
    path = config.engine.model_path
    if path is None or path == TINY_MODEL_PATH:
        return load_tokenizer(TINY_MODEL_PATH).config.model_id
    return path.resolve().name


async def _costs(
    config: EngineConfig, pool: WorkerPool, model: LoadedTokenizer, page_tokens: int
) -> CostModel:
    if config.router.cost_model:
        return CostModel.load(Path(config.router.cost_model))
    c = model.config
    page = config.engine.page_spec(c)
    bytes_per_token = page.block_bytes // page.block_tokens
    start = time.perf_counter()
    costs = await profile_costs(
        pool,
        vocab_size=min(c.vocab_size, 256) if c.vocab_size > 256 else c.vocab_size,
        max_context=c.max_position_embeddings,
        kv_bytes_per_token=bytes_per_token,
        token=config.engine.token,
    )
    logger.info("cost model fitted in %.1f s: %s", time.perf_counter() - start, costs.to_dict())
    return costs
