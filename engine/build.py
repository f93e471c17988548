"""Putting an engine together: the model, its paged cache, its link to the store.

The store is one of:

- ``"embedded"``: a store node started inside this process on loopback (gRPC and data
  plane on free ports), with a DRAM tier of ``store_bytes``. The single-machine default.
- ``"HOST:PORT"``: a running store node (``kvstore serve``); the engine is its client.
  A node that refuses the model's blocks (larger than its ``store.block_bytes``) is a
  ``ConfigError`` here, at start-up; one that cannot be reached is not (the engine
  recomputes until it can).
- ``None``: no store; prompts reuse only the worker's own prefix cache.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import torch

from engine.config import ModelSection
from engine.dtypes import Dtype
from engine.kv.cache import PagedKVCache
from engine.model.config import ModelConfig
from engine.model.loader import TINY_MODEL_PATH, LoadedModel, load_model
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.config import load_config
from kvstore.connector.backend import StoreBackend
from kvstore.errors import ConfigError
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.server.serve import RunningNode, start_node

EMBEDDED = "embedded"
MiB = 1 << 20


@dataclass
class StoreLink:
    backend: StoreBackend | None
    node: RunningNode | None  # the embedded node, if this process runs one

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.close()
        if self.node is not None:
            await self.node.stop(grace_s=0.5)


def make_cache(
    config: ModelConfig,
    *,
    page_tokens: int,
    cache_bytes: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> PagedKVCache:
    spec = BlockSpec(
        config.num_layers, config.num_kv_heads, config.head_dim, KVDtype.of(dtype), page_tokens
    )
    page_bytes = spec.block_bytes
    num_pages = cache_bytes // page_bytes
    if num_pages < 2:
        raise ConfigError(
            "engine.kv_cache_bytes",
            f"{cache_bytes} bytes hold {num_pages} KV pages of {page_bytes} bytes;"
            f" give it at least {2 * page_bytes} bytes",
        )
    return PagedKVCache(
        num_pages=num_pages,
        page_tokens=page_tokens,
        num_layers=config.num_layers,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        dtype=dtype,
        device=device,
    )


async def open_store(
    store: str | None,
    namespace: Namespace,
    *,
    store_bytes: int = 1024 * MiB,
    token: str = "",
    timeout_s: float = 5.0,
) -> StoreLink:
    if store is None:
        return StoreLink(None, None)
    node = None
    address = store
    if store == EMBEDDED:
        config = load_config(
            env={},
            overrides={
                "store.node_id": f"embedded-{uuid.uuid4().hex[:8]}",
                "store.block_bytes": str(namespace.block_bytes),
                "tiers.dram.capacity_bytes": str(max(store_bytes, namespace.block_bytes)),
                "server.host": "127.0.0.1",
                "server.port": "0",
                "server.metrics_port": "0",
                "transfer.port": "0",
            },
        )
        node = await start_node(config)
        address = node.address
    client = StoreClient(address, CallOptions(token=token, timeout_s=timeout_s, retries=1))
    backend = StoreBackend(client, namespace)
    link = StoreLink(backend, node)
    try:
        await backend.connect(block_tokens_key="engine.page_tokens")
    except BaseException:
        await link.close()
        raise
    return link


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` -> torch.bfloat16; empty or None: the checkpoint's own.

    Raises:
        ValueError: a name the engine does not compute in (the message lists them).
    """
    if name is None or isinstance(name, torch.dtype):
        return name
    return Dtype.named(name).torch_dtype() if name else None


def load_for(section: ModelSection) -> LoadedModel:
    """The model a worker's config names (the tiny default when none)."""
    if section.threads:
        torch.set_num_threads(section.threads)
    path = section.model_path or TINY_MODEL_PATH
    return load_model(path, dtype=torch_dtype(section.dtype), device=section.device)


def cache_for(section: ModelSection, loaded: LoadedModel) -> PagedKVCache:
    return make_cache(
        loaded.config,
        page_tokens=section.page_tokens,
        cache_bytes=section.kv_cache_bytes,
        dtype=loaded.model.model.embed_tokens.weight.dtype,
        device=section.device,
    )
