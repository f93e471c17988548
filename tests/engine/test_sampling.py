"""The sampler: greedy, temperature, top-k, top-p, and reproducible seeded draws."""

from __future__ import annotations

import pytest
import torch

from engine.sampling import SamplingParams, sample

LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))


def draws(params: SamplingParams, steps: int = 300) -> set[int]:
    return {sample(LOGITS, params, step) for step in range(steps)}


def test_greedy_is_the_argmax() -> None:
    assert sample(LOGITS, SamplingParams(temperature=0), 0) == 1
    assert draws(SamplingParams(top_k=1, seed=3)) == {1}


def test_seeded_draws_repeat_per_step_and_differ_between_steps() -> None:
    params = SamplingParams(seed=42)
    first = [sample(LOGITS, params, step) for step in range(50)]
    assert first == [sample(LOGITS, SamplingParams(seed=42), step) for step in range(50)]
    assert len(set(first)) > 1
    assert first != [sample(LOGITS, SamplingParams(seed=43), step) for step in range(50)]


def test_unseeded_params_draw_a_seed_once() -> None:
    params = SamplingParams()
    assert params.effective_seed == params.effective_seed
    assert SamplingParams().effective_seed != params.effective_seed


def test_top_k_and_top_p_limit_the_candidates() -> None:
    assert draws(SamplingParams(top_k=2, seed=1)) == {1, 3}
    assert draws(SamplingParams(top_p=0.7, seed=1)) == {1, 3}  # 0.5 + 0.3 reaches 0.7
    assert draws(SamplingParams(top_p=0.01, seed=1)) == {1}  # the top token always stays
    assert draws(SamplingParams(seed=1)) == {0, 1, 2, 3}


def test_temperature_sharpens_and_flattens() -> None:
    cold = [sample(LOGITS, SamplingParams(temperature=0.1, seed=5), s) for s in range(200)]
    hot = [sample(LOGITS, SamplingParams(temperature=5.0, seed=5), s) for s in range(200)]
    assert cold.count(1) > 190 and hot.count(1) < 100


def test_a_single_stop_string_is_a_tuple() -> None:
    assert SamplingParams(stop="END").stop == ("END",)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_temperature_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=value)
