"""``kvengine router`` in front of two vLLM OpenAI servers (``router.vllm``), reached
with the official ``openai`` client; each server's ``StrataConnector`` uses one store node.

With ``cache_aware``, a chat whose long system prompt was answered before goes back to
the server that answered it (its own prefix cache beats loading the prefix from the
store); once that server is killed, the same prefix is answered by the other, which
loads it from Strata, and the router planned exactly those blocks as loaded: its keys
(with the request's ``cache_salt``) are the connector's.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any, NamedTuple

import openai
import pytest

from engine.launch import Child, free_port
from tests.integrations.vllm_env import ROOT, VLLM_MODULE
from tests.integrations.vllm_model import words, write_model
from tests.integrations.vllm_server import BLOCK_TOKENS, ApiServer, stored_blocks
from tests.processes import ServeProcess

pytestmark = VLLM_MODULE

SYSTEM = words(300, seed=1)  # 9 full blocks of 32 tokens, then 12 tokens
REUSABLE = 9 * BLOCK_TOKENS  # of the system prompt followed by a 4-word question
SALT = "tenant-a"


class RouterProcess(Child):
    """``kvengine router`` with ``router.vllm`` naming ``servers`` and ``store``."""

    def __init__(self, servers: list[ApiServer], store: str) -> None:
        port = free_port()
        vllm = ",".join(f"127.0.0.1:{s.port}={store}" for s in servers)
        args = [sys.executable, "-m", "engine.cli", "router", "--log-level", "INFO"]
        args += ["--router.vllm", vllm, "--router.port", str(port)]
        args += ["--router.lookup_timeout_s", "2", "--router.health_interval_s", "0.5"]
        super().__init__("kvengine router", args, cwd=ROOT, port=port)
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)


class Stack(NamedTuple):
    store: ServeProcess
    first: ApiServer  # the lower address: where ties go
    second: ApiServer
    router: RouterProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model = write_model(tmp_path_factory.mktemp("vllm-router") / "llama")
    flags = {"tiers.dram.capacity_bytes": "64MiB"}
    with ServeProcess(**flags) as store:
        servers: list[ApiServer] = []
        router: RouterProcess | None = None
        try:
            servers = [ApiServer(model, store.address) for _ in range(2)]
            for server in servers:
                server.wait_until(server.healthy, timeout_s=300, what="healthy")
            router = RouterProcess(servers, store.address)
            router.wait_until(lambda: router.get("/health")[0] == 200, timeout_s=60, what="up")
            first, second = sorted(servers, key=lambda s: f"127.0.0.1:{s.port}")
            yield Stack(store, first, second, router)
        finally:
            for child in [*servers, *([router] if router else [])]:
                alive = child.poll() is None
                out = child.output()
                child.stop(grace_s=30.0)
                start = out.find("Traceback")
                assert not alive or start < 0, out[max(0, start - 2000) : start + 6000]


def chat(router: RouterProcess, model: str, question_seed: int) -> tuple[str, Any]:
    """The system prompt and a 4-word question through the router: (server, completion)."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": words(4, seed=question_seed)},
    ]
    with router.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0.0,
            extra_body={"cache_salt": SALT},
        )
    return raw.headers["x-strata-prefill"], raw.parse()


def cached(completion: Any) -> int:
    details = completion.usage.prompt_tokens_details
    return int(details.cached_tokens if details else 0)


def address(server: ApiServer) -> str:
    return f"127.0.0.1:{server.port}"


def test_a_repeated_prefix_goes_to_the_server_that_has_it_cached(stack: Stack) -> None:
    store, first, _, router = stack
    where, answer = chat(router, first.model, 2)
    assert where == address(first)  # nothing cached anywhere: the tie goes to the first
    assert cached(answer) == 0
    assert answer.usage.prompt_tokens == 304
    first.wait_until(lambda: stored_blocks(store.address) >= 9, timeout_s=60, what="saved")

    where, answer = chat(router, first.model, 3)
    assert where == address(first)  # its own cache, not the store's copy
    assert cached(answer) == REUSABLE
    assert router.get("/stats")[1]["loaded_blocks"] == 0


def test_a_killed_server_is_routed_around_and_the_other_loads_the_prefix(
    stack: Stack,
) -> None:
    _, first, second, router = stack
    first.kill()
    where, answer = chat(router, first.model, 4)
    assert where == address(second)
    assert cached(answer) == REUSABLE  # loaded from Strata: the second never saw it
    stats = router.get("/stats")[1]
    assert stats["loaded_blocks"] == 9  # the router's keys are the connector's
    assert stats["servers"][address(first)]["healthy"] is False

    with router.client() as client:
        stream = client.chat.completions.create(
            model=first.model,
            messages=[{"role": "user", "content": words(40, seed=5)}],
            max_tokens=8,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 8
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert router.get("/health") == (200, {"status": "ok", "servers": 1})
