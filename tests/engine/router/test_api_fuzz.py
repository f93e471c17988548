"""Fuzzing the OpenAI-compatible endpoint: whatever the body, the answer is a 200 or an
OpenAI-shaped client error (400/404/422), never a 500 or a hang.

The endpoint runs in-process (Starlette's test client) over a fake router that does what
the real one does with a request's contents before any worker sees it: it encodes the
prompt and sampling parameters into the ``GenerateRequest`` protobuf the decode worker
would get, then streams a few tokens. Bounded to a few seconds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from engine.model.loader import TINY_MODEL_PATH, load_tokenizer
from engine.router.api import create_app
from engine.router.metrics import RouterMetrics
from engine.router.router import Chunk
from engine.router.service import RouterService
from engine.sampling import SamplingParams
from engine.service.codec import params_to_pb
from kvstore._proto.strata.v1 import engine_pb2

MODEL = "strata-tiny-v1"


class _Closable:
    async def close(self) -> None:
        return None


class FakeRouter:
    """The router's surface the endpoint uses; ``stream`` encodes the request exactly as
    the real router does before sending it to a decode worker."""

    def __init__(self) -> None:
        self.view = self.pool = _Closable()
        self.metrics = RouterMetrics()
        self.num_streamed = 0

    async def place(self, tokens: list[int], max_tokens: int, cache_salt: str = "") -> Any:
        assert tokens and max_tokens >= 1
        return SimpleNamespace(prefill=SimpleNamespace(id="p"), decode=SimpleNamespace(id="d"))

    async def stream(
        self, tokens: list[int], params: SamplingParams, request_id: str = "", placement: Any = None
    ) -> AsyncIterator[Chunk]:
        engine_pb2.GenerateRequest(
            request_id=request_id, prompt_token_ids=tokens, sampling=params_to_pb(params)
        ).SerializeToString()
        self.num_streamed += 1
        n = min(params.max_tokens, 2)
        for i in range(n):
            yield Chunk([65 + i], chr(65 + i), "length" if i == n - 1 else "", 0, "p")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    model = load_tokenizer(TINY_MODEL_PATH)

    async def open_service() -> RouterService:
        return RouterService(FakeRouter(), model, MODEL, 0)  # type: ignore[arg-type]

    with TestClient(create_app(open_service), raise_server_exceptions=False) as test_client:
        yield test_client


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from([0, 1, 2, 4, 0.5, 1.0, 2**31, 2**63]),
)
content = st.one_of(
    st.text(max_size=40),
    st.none(),
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=10)}
        ),
        max_size=3,
    ),
    json_values,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", ""]) | json_values},
    optional={"content": content, "name": st.text(max_size=5)},
)
sampling = {
    "max_tokens": numbers | st.none() | json_values,
    "max_completion_tokens": numbers,
    "temperature": numbers,
    "top_p": numbers,
    "top_k": numbers,
    "seed": numbers | st.none(),
    "stop": st.text(max_size=6) | st.lists(st.text(max_size=4), max_size=6) | json_values,
    "stop_token_ids": st.lists(numbers, max_size=4) | json_values,
    "ignore_eos": st.booleans() | json_values,
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | json_values,
    "n": numbers,
    "logprobs": scalars,
    "presence_penalty": numbers,
    "echo": st.booleans(),
    "suffix": st.text(max_size=4) | st.none(),
}
model_name = st.sampled_from([MODEL, MODEL, MODEL, "gpt-4", ""]) | json_values
chat_bodies = st.fixed_dictionaries(
    {"model": model_name, "messages": st.lists(message, max_size=3) | json_values},
    optional=sampling,
)
prompts = st.one_of(
    st.text(max_size=40),
    st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=8),
    st.lists(st.integers(min_value=0, max_value=300), max_size=8),
    st.lists(st.text(max_size=10), max_size=2),
    st.lists(st.lists(st.integers(min_value=0, max_value=300), max_size=4), max_size=2),
    json_values,
)
completion_bodies = st.fixed_dictionaries(
    {"model": model_name, "prompt": prompts}, optional=sampling
)


def check(response: Any) -> None:
    assert response.status_code in (200, 400, 404, 422), (response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] in ("invalid_request_error",)
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text
    else:
        assert response.json()["choices"][0]["finish_reason"] == "length"


FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=chat_bodies)
def test_chat_bodies(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/chat/completions", content=json.dumps(body)))


@FUZZ
@given(body=completion_bodies)
def test_completion_bodies(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/completions", content=json.dumps(body)))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    raw=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_arbitrary_bytes_and_json(client: TestClient, path: str, raw: bytes) -> None:
    check(client.post(path, content=raw, headers={"content-type": "application/json"}))


def test_valid_requests_reach_the_router(client: TestClient) -> None:
    """The fuzzing above is not only refusals: valid bodies stream through."""
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "stop_token_ids": [3]}
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "AB"
