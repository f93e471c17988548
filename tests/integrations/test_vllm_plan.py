"""The vLLM connector's scheduler-side bookkeeping and settings, without vLLM: which
keys are looked up, what each step loads and computes, and which settings are refused."""

from __future__ import annotations

import pytest
import torch

from kvstore.errors import ConfigError
from kvstore.integrations.vllm_plan import Planner, StepPlan
from kvstore.integrations.vllm_settings import KVRole, namespace_for, settings_from_extra
from kvstore.types import BlockKey

B = 32
KEYS = tuple(BlockKey(bytes([i]) * 16) for i in range(10))  # a 330-token prompt's blocks


def test_lookup_skips_the_last_tokens_block_and_nothing_is_asked_past_vllms_hit() -> None:
    planner = Planner(B)
    assert planner.lookup_keys("r", KEYS, 330, 0) == KEYS[:10]
    assert planner.lookup_keys("r", (), 321, 0) == KEYS[:10]  # known: keys kept
    assert Planner(B).lookup_keys("r", KEYS[:10], 320, 0) == KEYS[:9]  # 320th token's block
    assert Planner(B).lookup_keys("r", KEYS, 330, 320) == ()  # vLLM holds all it can reuse


def test_a_step_loads_the_stores_blocks_past_vllms_hit_then_computes_the_rest() -> None:
    planner = Planner(B)
    planner.lookup_keys("r", KEYS, 330, 2 * B)  # vLLM's own hit: 2 blocks
    planner.will_load("r", 5 * B)
    plan = planner.scheduled("r", list(range(11)), 7 * B, 330 - 7 * B, replace_blocks=True)
    assert plan == StepPlan("r", KEYS, tuple(range(11)), 330, 7 * B, 330 - 7 * B, 2, 5, True)
    # the next step decodes: nothing to load, nothing of the prompt to compute
    assert planner.scheduled("r", None, 330, 1) is None


def test_chunked_prefill_appends_pages_and_loads_only_once() -> None:
    planner = Planner(B)
    planner.lookup_keys("r", KEYS, 330, 0)
    planner.will_load("r", 3 * B)
    first = planner.scheduled("r", [5, 6, 7, 8], 3 * B, B, replace_blocks=True)
    assert first is not None and (first.load_first, first.load_count) == (0, 3)
    second = planner.scheduled("r", [9, 10], 4 * B, 2 * B)
    assert second is not None and second.block_ids == (5, 6, 7, 8, 9, 10)
    assert (second.start, second.num_tokens, second.load_count) == (4 * B, 2 * B, 0)
    resumed = planner.scheduled("r", [1, 2], 0, B, replace_blocks=True)  # after preemption
    assert resumed is not None and resumed.block_ids == (1, 2)


def test_a_producer_looks_nothing_up_and_saves_every_full_block_it_computes() -> None:
    planner = Planner(B, loads=False)
    assert planner.lookup_keys("r", KEYS, 330, 0) == ()  # 0 external tokens, no lookup
    first = planner.scheduled("r", list(range(4)), 0, 128, replace_blocks=True)
    assert first is not None and first.saves and first.load_count == 0
    assert not first.ends_prompt
    last = planner.scheduled("r", list(range(4, 11)), 128, 202)
    assert last is not None and last.saves and last.keys == KEYS  # keys kept for saves
    assert last.ends_prompt  # its step waits for the request's commits
    assert planner.finished("r") is True


def test_a_consumer_loads_and_its_plans_never_save_so_it_is_never_held() -> None:
    planner = Planner(B, saves=False)
    assert planner.lookup_keys("r", KEYS, 330, 0) == KEYS
    planner.will_load("r", 4 * B)  # the store held 4 blocks; vLLM computes the rest
    plan = planner.scheduled("r", list(range(11)), 4 * B, 330 - 4 * B, replace_blocks=True)
    assert plan is not None and (plan.load_first, plan.load_count) == (0, 4)
    assert not plan.saves  # completes blocks 4-9, saves none of them
    assert planner.finished("r") is False


def test_kv_role_says_what_the_instance_does_with_the_store() -> None:
    roles = [settings_from_extra({"store": "h:1"}, r).role for r in ("kv_producer",
        "kv_consumer", "kv_both")]  # fmt: skip
    assert [(r.loads, r.saves) for r in roles] == [(False, True), (True, False), (True, True)]
    assert settings_from_extra({"store": "h:1"}).role is KVRole.BOTH
    with pytest.raises(ConfigError, match=r"kv_transfer_config.kv_role.*got 'kv_prefill'"):
        settings_from_extra({"store": "h:1"}, "kv_prefill")


def test_a_finished_request_is_forgotten() -> None:
    planner = Planner(B)
    planner.lookup_keys("r", KEYS, 330, 0)
    planner.finished("r")
    assert planner.num_requests == 0
    assert planner.scheduled("r", [1], 0, 10, replace_blocks=True) is None


def test_settings_need_a_store_and_refuse_unknown_keys_by_name() -> None:
    settings = settings_from_extra({"store": "127.0.0.1:7600", "lookup_timeout_s": 0.2})
    assert (settings.store, settings.lookup_timeout_s, settings.retry_after_s) == (
        "127.0.0.1:7600",
        0.2,
        5.0,
    )
    with pytest.raises(ConfigError, match=r"kv_connector_extra_config.store"):
        settings_from_extra({})
    with pytest.raises(ConfigError, match=r"unknown keys \['stroe'\]"):
        settings_from_extra({"stroe": "x:1"})
    with pytest.raises(ConfigError, match="lookup_timeout_s: positive seconds"):
        settings_from_extra({"store": "h:1", "lookup_timeout_s": 0})


def test_the_namespace_names_model_shape_dtype_and_block_size() -> None:
    ns = namespace_for(
        "llama",
        num_layers=2,
        num_kv_heads=2,
        head_size=32,
        head_size_v=32,
        dtype=torch.bfloat16,
        block_size=B,
    )
    assert (ns.model_id, ns.spec.block_tokens, ns.spec.dtype.value) == ("llama", B, "bfloat16")
    assert ns.block_bytes == 2 * 2 * B * 2 * 32 * 2
    with pytest.raises(ConfigError, match="K and V head sizes differ"):
        namespace_for(
            "m", num_layers=1, num_kv_heads=1, head_size=32, head_size_v=16,
            dtype=torch.float32, block_size=B,
        )  # fmt: skip
