"""``kvengine up`` in a subprocess, driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engine.model.tiny import MODEL_ID
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from tests.processes import ROOT, UpProcess

MODEL = "strata-tiny-v1"
SYSTEM = "You are a careful assistant. Answer briefly and never make things up. " * 3


@pytest.fixture(scope="module")
def up() -> Iterator[UpProcess]:
    stack = UpProcess("--router.log_interval_s", "1")
    try:
        yield stack
    finally:
        code = stack.stop()
        assert code == 0, stack.output()
        assert "stopped" in stack.output()


@pytest.fixture
def client(up: UpProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0)


def chat(client: openai.OpenAI, text: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        **kwargs,  # type: ignore[arg-type]
    )


def store_stats(up: UpProcess) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while not (match := re.search(r"export STRATA_ADDRESS=(\S+)", up.output())):
        assert time.monotonic() < deadline, up.output()  # as up prints it
        time.sleep(0.1)
    stats = subprocess.run(
        [sys.executable, "-m", "kvstore", "admin", "stats", "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env={**os.environ, "STRATA_ADDRESS": match[1]},
    )  # fmt: skip
    summary: dict[str, object] = json.loads(stats.stdout)
    return summary


def test_start_up_profiling_stays_out_of_the_users_namespace(up: UpProcess) -> None:
    """The cost model's profiling requests (before any user's) run in a namespace of
    their own, counted apart, and their blocks are gone once profiling ended."""
    summary: dict[str, Any] = store_stats(up)
    assert summary["hit_blocks"] == summary["miss_blocks"] == 0, summary  # no user yet
    assert summary["profiling_miss_blocks"] > 0, summary
    by_model = {ns["model_id"]: ns for ns in summary["namespaces"]}
    profiling = by_model[f"{MODEL_ID}#profiling"]
    assert profiling["profiling"] and sum(profiling["miss_blocks"].values()) > 0
    assert f"{MODEL_ID}#profiling (" in profiling["namespace"]  # how tables name it
    user = by_model[MODEL_ID]
    assert not user["hit_blocks"] and not user["miss_blocks"], user
    assert all(tier["blocks"] == 0 for tier in summary["tiers"]), summary  # removed


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_chat_whole_and_streamed_agree(client: openai.OpenAI) -> None:
    whole = chat(client, "What is a KV cache?", max_tokens=12, temperature=0)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is a KV cache?"},
        ],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, reasons = [], None, []
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons[-1] == "length" and usage is not None and usage.completion_tokens == 12


def test_a_repeated_prefix_is_reported_as_cached(client: openai.OpenAI, up: UpProcess) -> None:
    first = chat(client, "First question?", max_tokens=4)
    second = chat(client, "Second question?", max_tokens=4)
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and (details.cached_tokens or 0) >= 192  # the system prompt
    match = re.search(r"export STRATA_ADDRESS=(\S+)", up.output())  # as up prints it
    assert match is not None, up.output()
    stats = subprocess.run(
        [sys.executable, "-m", "kvstore", "admin", "stats", "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env={**os.environ, "STRATA_ADDRESS": match[1]},
    )  # fmt: skip
    summary = json.loads(stats.stdout)
    assert summary["hit_blocks"] >= 12, summary


def test_a_three_turn_chat_reuses_every_full_block_of_the_last_prompt_and_answer(
    client: openai.OpenAI, up: UpProcess
) -> None:
    """Each turn reuses the previous turn's prompt *and* answer: the decode worker saved
    the answer's KV to the store before its last token came back."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Tell me about KV caches."},
    ]
    computed = 0  # tokens whose KV the last turn left: its prompt and answer but the last
    for turn in range(3):
        tokenized = httpx.post(f"{up.url}/tokenize", json={"messages": messages}, timeout=30)
        prompt = tokenized.json()["tokens"]
        reply = client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=10,
            temperature=0,
        )
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        cached = reply.usage.prompt_tokens_details.cached_tokens or 0
        if turn:  # whole blocks of the last prompt and answer (the prompt's only: 1 less)
            assert cached == computed // 16 * 16 > 0, (turn, cached, computed)
        answer = reply.choices[0].message.content or ""
        # the tiny model's bytes: the client sends back exactly what it generated only
        # when they are text (its byte tokenizer then round-trips them; measured in
        # bench.chat_reuse)
        assert "\ufffd" not in answer, answer
        generated = len(answer.encode()) + (reply.choices[0].finish_reason == "stop")
        computed = len(prompt) + generated - 1
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"And turn {turn + 2}?"},
        ]


def _cached(client: openai.OpenAI, prompt: str | list[int], salt: str | None = None) -> int:
    extra = {"cache_salt": salt} if salt is not None else None
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, extra_body=extra)
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    return reply.usage.prompt_tokens_details.cached_tokens or 0


def test_kv_planted_under_computable_keys_is_never_reused(
    client: openai.OpenAI, up: UpProcess
) -> None:
    """An outsider computes the block keys of a prompt in the model's public namespace
    and plants KV under them first; the deployment's namespace has a secret salt, so
    the prompt reuses none of it."""
    tokens = list(range(40, 104))  # 64 byte-level tokens: 3 reusable blocks of 16
    spec = BlockSpec(4, 2, 32, KVDtype.FLOAT32, 16)  # the tiny model's pages
    match = re.search(r"store node (\S+) ·", up.output())
    assert match is not None

    async def plant(remove: bool) -> None:
        async with StoreClient(match[1], CallOptions()) as store:
            ns = await store.register_namespace(Namespace(MODEL_ID, spec))
            if remove:  # the outsider's namespace goes: the next tests see one namespace
                await store.remove_namespace(ns)
                return
            keys = prefix_keys(ns, tokens, spec.block_tokens)
            await store.put(ns, keys, [bytes([7]) * spec.block_bytes] * len(keys))

    asyncio.run(plant(remove=False))
    try:
        assert _cached(client, tokens) == 0
    finally:
        asyncio.run(plant(remove=True))


def test_cache_salt_separates_tenants(client: openai.OpenAI) -> None:
    """vLLM's cache_salt: a prompt reuses KV only from requests with the same salt, so
    one tenant cannot learn another's prompt from cached_tokens."""
    prompt = "A tenant's private system prompt, block after block. " * 3
    assert _cached(client, prompt, "tenant-a") == 0
    assert _cached(client, prompt, "tenant-b") == 0  # a right guess, another salt
    assert _cached(client, prompt) == 0
    assert _cached(client, prompt, "tenant-a") >= 128


def test_lookup_and_pin_speak_the_models_chat_template(
    client: openai.OpenAI, up: UpProcess, tmp_path: Path
) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Pin me."}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
    assert reply.usage is not None
    tokenized = httpx.post(f"{up.url}/tokenize", json={"messages": messages}, timeout=30).json()
    assert tokenized["count"] == reply.usage.prompt_tokens  # what the chat request saw
    file = tmp_path / "messages.json"
    file.write_text(json.dumps({"model": MODEL, "messages": messages}))
    address = re.search(r"export STRATA_ADDRESS=(\S+)", up.output())
    assert address is not None
    env = {**os.environ, "STRATA_ADDRESS": address[1], "STRATA_ROUTER": up.url}

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kvstore", "admin", *args, "--json"],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
        )  # fmt: skip

    full_blocks = reply.usage.prompt_tokens // tokenized["block_tokens"]
    found = admin("lookup", "--messages", str(file))
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["nodes"][0]["blocks"] == full_blocks
    pinned = admin("pin", "--messages", str(file), "--ttl", "30")
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads(pinned.stdout) == {"verb": "pin", "blocks": full_blocks, "of": full_blocks}
    assert admin("unpin", "--messages", str(file)).returncode == 0
    text = admin("lookup", "--text", "Once upon a time")  # the model's tokenizer, no template
    assert text.returncode == 0 and json.loads(text.stdout)["num_tokens"] == 16


def test_completions_take_text_and_token_ids(client: openai.OpenAI) -> None:
    text = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=5, temperature=0)
    ids = client.completions.create(
        model=MODEL, prompt=list(b"Once upon"), max_tokens=5, temperature=0
    )
    assert text.choices[0].text == ids.choices[0].text
    assert text.usage is not None and text.usage.prompt_tokens == 9
    streamed = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text


def test_concurrent_clients_get_what_one_client_gets(up: UpProcess) -> None:
    client = openai.AsyncOpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0)
    prompts = [f"Question number {i}?" for i in range(8)]

    async def ask(text: str) -> str:
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            max_tokens=10,
            temperature=0.9,
            seed=5,
        )
        return reply.choices[0].message.content or ""

    async def everything() -> tuple[list[str], list[str]]:
        together = await asyncio.gather(*(ask(p) for p in prompts))
        alone = [await ask(p) for p in prompts]
        await client.close()
        return list(together), alone

    together, alone = asyncio.run(everything())
    assert together == alone


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": HI, "temperature": 5}, 400, "temperature"),
        ({"model": MODEL, "messages": HI, "n": 2}, 400, "n"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}, 400, "messages"),
        ({"model": "gpt-4", "messages": HI}, 404, "model"),
        ({"model": MODEL, "messages": HI, "tools": [{"type": "function"}]}, 400, "tools"),
        (
            {"model": MODEL, "messages": HI, "response_format": {"type": "json_object"}},
            400,
            "response_format",
        ),
        ({"model": MODEL, "messages": HI, "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ],
)
def test_bad_requests_get_openai_errors(
    up: UpProcess, body: dict[str, object], status: int, param: str
) -> None:
    response = httpx.post(f"{up.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_harmless_defaults_of_refused_fields_are_accepted(up: UpProcess) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 2, "tool_choice": "none",
            "response_format": {"type": "text"}, "logit_bias": {}}  # fmt: skip
    assert httpx.post(f"{up.url}/v1/chat/completions", json=body, timeout=30).status_code == 200


def test_several_prompts_and_unknown_routes_get_openai_errors(up: UpProcess) -> None:
    body = {"model": MODEL, "prompt": ["one", "two"], "max_tokens": 2}
    several = httpx.post(f"{up.url}/v1/completions", json=body, timeout=30)
    assert several.status_code == 400
    error = several.json()["error"]
    assert error["param"] == "prompt" and error["message"].startswith("2 prompts in one request")
    missing = httpx.post(f"{up.url}/v1/embeddings", json={}, timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no such endpoint: /v1/embeddings"
    wrong = httpx.get(f"{up.url}/v1/chat/completions", timeout=30)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(up: UpProcess) -> None:
    response = httpx.post(
        f"{up.url}/v1/chat/completions",
        content=b'{"model": ',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_a_client_leaving_mid_stream_frees_its_request(up: UpProcess) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{up.url}/v1/chat/completions", json=body, timeout=30) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n >= 5:
                break  # leave
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats = httpx.get(f"{up.url}/stats", timeout=10).json()
        decode = next(w for w in stats["reported"].values() if w["role"] == "decode")
        if decode["running"] == 0 and decode["kv_pages_free"] == decode["kv_pages_total"]:
            break
        time.sleep(0.2)
    assert stats["in_flight"] == 0
    assert decode["running"] == 0 and decode["kv_pages_free"] == decode["kv_pages_total"]


def test_the_terminal_chat_streams_a_reply(up: UpProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "chat", "--url", up.url, "--max-tokens", "6",
         "--temperature", "0"],  # greedy: a sampled reply may end early at the tiny model's EOS
        input="Hello there\n/exit\n", capture_output=True, text=True, timeout=60, cwd=ROOT,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "assistant>" in result.stdout and "6 tokens" in result.stdout


def test_each_request_gets_an_access_line_and_traffic_a_throughput_line(
    client: openai.OpenAI, up: UpProcess
) -> None:
    chat(client, "Log me.", max_tokens=3)
    list(client.completions.create(model=MODEL, prompt="Stream me", max_tokens=3, stream=True))
    httpx.post(f"{up.url}/v1/chat/completions", json={"model": "nope", "messages": HI}, timeout=30)
    expected = [
        r'"POST /v1/chat/completions" 200 prompt=\d+ cached=\d+ generated=3 ttft=\d+ ms',
        r'"POST /v1/completions" 200 prompt=9 cached=0 generated=3 ttft=\d+ ms',
        r'"POST /v1/chat/completions" 404 prompt=0',
        r"throughput: [\d.]+ req/s, \d+ prompt tok/s \(\d+% reused\)",
    ]
    # a streamed response's line is written once its stream closes, which may come after
    # the client has read the last chunk and sent the next request
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(re.search(e, up.output()) for e in expected):
        time.sleep(0.2)
    lines = up.output()
    missing = [pattern for pattern in expected if not re.search(pattern, lines)]
    if missing:  # the whole output, untruncated, to tell a late line from a wrong one
        pytest.fail(f"no line matches {missing} in the output:\n{lines}")
