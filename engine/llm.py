"""Offline generation in the shape of vLLM's ``LLM``::

    from engine import LLM, SamplingParams

    llm = LLM()                                  # the tiny default model; or LLM(model=PATH)
    params = SamplingParams(temperature=0, max_tokens=32)
    for out in llm.generate(["Hello", [1, 2, 3]], params):
        print(out.token_ids, out.text)
    llm.close()

Prompts are strings (tokenized with the checkpoint's tokenizer, special tokens added as it
says) or lists of token ids. A prefill worker and a decode worker run in this process over
one paged KV cache, with a store node embedded (``store="embedded"``), a running one
(``store="HOST:PORT"``) or none (``store=None``). Requests are prefilled and decoded
concurrently: decode batches every running request each step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.build import EMBEDDED, StoreLink, make_cache, open_store, torch_dtype
from engine.chat import Message, encode_chat
from engine.config import ModelSection
from engine.core import Engine, LocalPrefill
from engine.kv.cache import PagedKVCache
from engine.model.loader import TINY_MODEL_PATH, LoadedModel, load_model
from engine.sampling import SamplingParams
from engine.workers.decode import DecodeWorker
from engine.workers.device import Device
from engine.workers.prefill import PrefillWorker
from engine.workers.requests import FinishReason, InvalidRequest
from kvstore.connector.loop import LoopThread
from kvstore.hashing import Namespace

MiB = 1 << 20
Prompt = str | Sequence[int]


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    metrics: dict[str, float] = field(default_factory=dict)  # cached_tokens, prefill_s, ...


class LLM:
    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        device: str = "cpu",
        store: str | None = EMBEDDED,
        store_bytes: int = 512 * MiB,
        kv_cache_bytes: int = 256 * MiB,
        page_tokens: int = 16,
        chunk_tokens: int = 512,
        max_batch_tokens: int = 2048,
        max_batch: int = 32,
        prefix_caching: bool = True,
    ) -> None:
        """
        Args:
            model: a Hugging Face checkpoint folder; None: the built-in tiny model
                (random weights: its text is meaningless).
            dtype: weights and KV cache dtype (float32, bfloat16); default: the
                checkpoint's.
            store: ``"embedded"``, a store node's ``HOST:PORT``, or None.
            kv_cache_bytes: memory for the engine's paged KV cache.
            page_tokens: tokens per KV page, and per store block.
        """
        self.loaded: LoadedModel = load_model(
            TINY_MODEL_PATH if model is None else model, dtype=torch_dtype(dtype), device=device
        )
        config = self.loaded.config
        self.tokenizer = self.loaded.tokenizer
        weights_dtype = self.loaded.model.model.embed_tokens.weight.dtype
        self.cache: PagedKVCache = make_cache(
            config,
            page_tokens=page_tokens,
            cache_bytes=kv_cache_bytes,
            dtype=weights_dtype,
            device=device,
        )
        self.namespace = Namespace(config.model_id, self.cache.spec)
        self._runtime = LoopThread("strata-loop")
        self._store: StoreLink = self._runtime.run(
            open_store(store, self.namespace, store_bytes=store_bytes)
        )
        compute = Device()  # prefill and decode share it: one device, turns in order
        self.prefill_worker = PrefillWorker(
            self.loaded.model,
            self.cache,
            loop=self._runtime.loop,
            store=self._store.backend,
            chunk_tokens=chunk_tokens,
            max_batch_tokens=max_batch_tokens,
            prefix_caching=prefix_caching,
            device=compute,
        ).start()
        self.decode_worker = DecodeWorker(
            self.loaded.model,
            self.cache,
            tokenizer=self.tokenizer,
            max_batch=max_batch,
            device=compute,
            write_back=self.prefill_worker.write_back(),
        ).start()
        self.engine = Engine(
            LocalPrefill(self.prefill_worker),
            self.decode_worker,
            eos_token_ids=self.loaded.eos_token_ids,
        )
        self._closed = threading.Event()

    @classmethod
    def from_config(cls, section: ModelSection) -> LLM:
        """An LLM as the ``[engine]`` section of the config file describes it."""
        if section.threads:
            torch.set_num_threads(section.threads)
        return cls(
            section.model_path,
            dtype=section.dtype or None,
            device=section.device,
            store=section.store_address,
            store_bytes=section.store_bytes,
            kv_cache_bytes=section.kv_cache_bytes,
            page_tokens=section.page_tokens,
            chunk_tokens=section.chunk_tokens,
            max_batch_tokens=section.max_batch_tokens,
            max_batch=section.max_batch,
            prefix_caching=section.prefix_caching,
        )

    @property
    def store_address(self) -> str | None:
        backend = self._store.backend
        return backend.client.address if backend is not None else None

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """One output per prompt, in order. Raises ``InvalidRequest`` for a bad prompt
        (empty, too long, unknown token ids) before anything runs."""
        batch = _as_batch(prompts)
        if params is None or isinstance(params, SamplingParams):
            param_list = [params or SamplingParams()] * len(batch)
        else:
            param_list = list(params)
            if len(param_list) != len(batch):
                raise InvalidRequest(f"{len(batch)} prompts but {len(param_list)} params")
        token_lists = [self._encode(p) for p in batch]
        requests = [
            self.engine.new_request(t, p) for t, p in zip(token_lists, param_list, strict=True)
        ]

        async def run_all() -> list[tuple[list[int], str, FinishReason]]:
            return list(await asyncio.gather(*(self.engine.generate(r) for r in requests)))

        results = self._runtime.run(run_all())
        return [
            RequestOutput(
                request_id=r.request_id,
                prompt=p if isinstance(p, str) else None,
                prompt_token_ids=r.prompt_token_ids,
                token_ids=tokens,
                text=text,
                finish_reason=reason.value,
                metrics=r.prefilled.metrics() if r.prefilled else {},
            )
            for p, r, (tokens, text, reason) in zip(batch, requests, results, strict=True)
        ]

    def chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
    ) -> RequestOutput:
        """Generate the assistant's next turn with the checkpoint's chat template."""
        tokens = encode_chat(
            self.tokenizer,
            self.loaded.chat_template,
            messages,
            special_tokens=self.loaded.special_tokens,
        )
        return self.generate([tokens], params)[0]

    def stats(self) -> dict[str, Any]:
        """Counters of the prefill worker (with the store's part) and the decode worker."""
        return self.engine.stats()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.prefill_worker.stop()
        self.decode_worker.stop()
        self._runtime.run(self._store.close())
        self._runtime.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]


def _as_batch(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [items]  # type: ignore[list-item]
    return items  # type: ignore[return-value]
