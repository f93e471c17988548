"""A conversation's next turn reuses the KV of the previous answer, not only its prompt:
from the worker's own cache and from the store, token-identical to recomputing it."""

from __future__ import annotations

import time

import torch

from engine import LLM, SamplingParams
from kvstore.hashing import prefix_keys
from tests.engine.test_llm import SMALL, prompt

ANSWER = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
NEXT = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
FIRST = list(range(65, 105))  # 40 tokens: 2 full blocks of 16


def next_turn(answer: list[int]) -> list[int]:
    return FIRST + answer + [10, 66, 67, 68]  # 108 tokens


def full_blocks(num_tokens: int) -> int:
    return num_tokens // 16 * 16


def kept(llm: LLM, blocks: int) -> None:
    """Wait for the prefill worker to take the blocks finished generations handed it (it
    does so on its own thread, before it admits the next prompt)."""
    deadline = time.monotonic() + 30
    while llm.prefill_worker.stats.kept_blocks < blocks:
        assert time.monotonic() < deadline, llm.prefill_worker.stats
        time.sleep(0.01)


def recomputed(tokens: list[int]) -> list[int]:
    with LLM(store=None, prefix_caching=False, **SMALL) as llm:
        return llm.generate([tokens], NEXT)[0].token_ids


def test_the_next_turn_reuses_the_previous_answer_from_the_workers_cache() -> None:
    with LLM(store=None, **SMALL) as llm:
        answer = llm.generate([FIRST], ANSWER)[0].token_ids
        second = llm.generate([next_turn(answer)], NEXT)[0]
        kept = llm.stats()["prefill"]["kept_blocks"]
    # the KV of prompt + answer but its last token (sampled, never fed): 103 tokens
    assert second.metrics["cached_tokens"] == full_blocks(len(FIRST) + len(answer) - 1) == 96
    assert kept >= 6
    assert second.token_ids == recomputed(next_turn(answer))


def test_the_next_turn_reuses_the_previous_answer_from_the_store() -> None:
    with LLM(prefix_caching=False, **SMALL) as llm:
        answer = llm.generate([FIRST], ANSWER)[0].token_ids
        # saved before the last token came back: 2 prompt blocks, 4 of the answer
        assert llm.stats()["prefill"]["store"]["saved_blocks"] == 6
        second = llm.generate([next_turn(answer)], NEXT)[0]
    assert second.metrics["cached_store_tokens"] == 96
    assert second.token_ids == recomputed(next_turn(answer))


def test_an_answers_kv_equals_what_a_prefill_of_the_same_tokens_computes() -> None:
    """Decode computes one token per step, prefill many at once: the same KV within the
    dtype's rounding (float32 here)."""
    tokens = prompt(40, seed=5)
    with LLM(store=None, **SMALL) as llm:
        answer = llm.generate([tokens], ANSWER)[0].token_ids
        fed = tokens + answer[:-1]
        keys = prefix_keys(llm.namespace.id, fed, 16)
        kept(llm, len(keys))
        decoded = llm.prefill_worker.prefix.match(keys)
        assert len(decoded) == len(keys) == 6
        from_decode = llm.cache.pages[decoded].clone()
        llm.cache.release(decoded)
    with LLM(store=None, **SMALL) as ref:
        ref.generate([[*fed, 1]], SamplingParams(temperature=0, max_tokens=1))
        kept(ref, len(keys))
        pages = ref.prefill_worker.prefix.match(keys)
        assert len(pages) == len(keys)
        from_prefill = ref.cache.pages[pages].clone()
        ref.cache.release(pages)
    answer_blocks = slice(len(tokens) // 16, None)  # blocks holding generated tokens
    diff = (from_decode[answer_blocks] - from_prefill[answer_blocks]).abs().max().item()
    print(f"max |KV(decode) - KV(prefill)| over the answer's blocks: {diff:.2e}")
    assert diff < 1e-4, diff
    assert torch.equal(from_decode[:2], from_prefill[:2])  # prompt blocks: both prefilled
