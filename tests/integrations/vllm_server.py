"""vLLM's OpenAI server with ``StrataConnector``, as a child process on a free port, for
the tests that run it (``vllm.entrypoints.openai.api_server`` from ``.venv-vllm``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import openai

from engine.launch import Child, free_port
from kvstore.client import StoreClient
from tests.integrations.vllm_env import ROOT, VLLM_ENV, VLLM_PYTHON

BLOCK_TOKENS = 32
PROMPT_TOKENS = 300
KV_CACHE_BYTES = 1 << 20  # 32 pages of 32 tokens (2 layers, 2 KV heads of 32, float32)
MAX_MODEL_LEN = 512
STEP_TOKENS = 128  # long prompts are prefilled in chunks


class ApiServer(Child):
    """One vLLM OpenAI server with ``StrataConnector`` in ``role`` (vLLM's ``kv_role``);
    ``url`` once ``/health`` answers."""

    def __init__(self, model: Path, store: str, role: str = "kv_both") -> None:
        port = free_port()
        strata = {
            "kv_connector": "StrataConnector",
            "kv_connector_module_path": "kvstore.integrations.vllm",
            "kv_role": role,
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"store": store},
        }
        args = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"]
        args += ["--model", str(model), "--port", str(port), "--dtype", "float32"]
        args += ["--block-size", str(BLOCK_TOKENS), "--enforce-eager"]
        args += ["--kv-cache-memory-bytes", str(KV_CACHE_BYTES)]
        args += ["--max-model-len", str(MAX_MODEL_LEN)]
        args += ["--max-num-batched-tokens", str(STEP_TOKENS)]
        args += ["--enable-prompt-tokens-details", "--kv-transfer-config", json.dumps(strata)]
        super().__init__("vLLM api_server", args, env=VLLM_ENV, cwd=ROOT, port=port)
        self.url = f"http://127.0.0.1:{port}"
        self.model = str(model)

    def descendants(self) -> list[int]:
        """Its processes' ids: vLLM's engine core and its workers (from /proc)."""
        parents: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                parents.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            children = parents.get(todo.pop(), [])
            found += children
            todo += children
        return found

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> int:
        """End the server and whatever it started: vLLM ends its engine core itself
        when it shuts down, not when it is killed (the core then outlives it)."""
        left = self.descendants()
        code = super().stop(sig, grace_s)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return code

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metric(self, name: str) -> float:
        """One of vLLM's Prometheus gauges or counters (its only sample)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            body = response.read().decode()
        (value,) = [
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(f"vllm:{name}{{")
        ]
        return value

    def strata_counter(self, name: str) -> float:
        """A ``vllm:strata_*_total`` counter, summed over its samples (0 before any)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            body = response.read().decode()
        prefix = f"vllm:strata_{name}_total{{"
        lines = body.splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    def complete(self, prompt: str, max_tokens: int) -> openai.types.Completion:
        """A greedy completion of ``prompt``."""

        async def ask() -> openai.types.Completion:
            async with self.client() as client:
                return await client.completions.create(
                    model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=0.0
                )

        return asyncio.run(ask())

    def client(self, **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **options
        )


def stored_blocks(address: str) -> int:
    async def stats() -> int:
        async with StoreClient(address) as client:
            return (await client.stats()).put_blocks

    return asyncio.run(stats())
