"""The router's vLLM backends without vLLM: ``router.vllm`` as configured, how a store
node's holding is priced against a server's own cache, and the usage read off a
response as it passes."""

from __future__ import annotations

import json

import pytest

from engine.config import load_engine_config
from engine.router.costs import CostModel
from engine.router.policy import CacheAware
from engine.router.views import DecodeView, PrefillView, RequestView
from engine.router.vllm_router import STORE, Usage
from kvstore.errors import ConfigError

B = 32


def test_router_vllm_names_each_server_with_its_store_node() -> None:
    config = load_engine_config(
        env={}, overrides={"router.vllm": "127.0.0.1:8001=10.0.0.1:7600, 127.0.0.1:8002=h:7600"}
    )
    assert config.router.vllm_servers == [
        ("127.0.0.1:8001", "10.0.0.1:7600"),
        ("127.0.0.1:8002", "h:7600"),
    ]
    assert load_engine_config(env={}).router.vllm_servers == []  # the gRPC workers
    for bad in ("127.0.0.1:8001", "127.0.0.1:8001=store", "a:1=s:1,a:1=s:2", "a:x=s:1"):
        with pytest.raises(ConfigError, match=r"router\.vllm"):
            _ = load_engine_config(env={}, overrides={"router.vllm": bad}).router.vllm_servers


def test_a_server_s_own_cache_beats_loading_from_the_store_which_beats_computing() -> None:
    policy = CacheAware(
        CostModel.default(), ttft_slo_s=None, tbt_slo_s=None, balance_threshold=1.25
    )
    servers = [PrefillView("a:1", 0.0), PrefillView("b:1", 0.0), PrefillView("c:1", 0.0)]
    decodes = [DecodeView(s.id, 0, 0, 256) for s in servers]
    # b has the prefix in its own cache, the store node holds it too
    request = RequestView(300, B, {"b:1": 9, STORE + "s:1": 9})
    decision = policy.choose(request, servers, decodes, 0.0)
    assert (decision.prefill, decision.local_blocks, decision.pulled_blocks) == ("b:1", 9, 0)
    # b is busy: a loads the 9 blocks from the store rather than computing them
    busy = [servers[0], PrefillView("b:1", 1.0), servers[2]]
    decision = policy.choose(request, busy, decodes, 0.0)
    assert (decision.prefill, decision.local_blocks, decision.pulled_blocks) == ("a:1", 0, 9)


def test_usage_is_read_from_a_body_or_from_sse_events_split_anywhere() -> None:
    usage = {"prompt_tokens": 304, "completion_tokens": 8}
    usage["prompt_tokens_details"] = {"cached_tokens": 288}  # type: ignore[assignment]
    whole = Usage()
    whole.read(json.dumps({"id": "x", "usage": usage}).encode())
    whole.finish()
    assert (whole.prompt_tokens, whole.cached_tokens, whole.completion_tokens) == (304, 288, 8)

    events = b'data: {"choices": [], "usage": null}\n\n'
    events += b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
    events += b"data: [DONE]\n\n"
    streamed = Usage()
    for i in range(0, len(events), 7):
        streamed.read(events[i : i + 7])
    streamed.finish()
    assert (streamed.cached_tokens, streamed.completion_tokens) == (288, 8)
