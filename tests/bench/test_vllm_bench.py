"""The vLLM bench's own arithmetic, without vLLM: prompts share exactly what they say,
runs are planned per shape and contender, a failed contender is reported by its first
error, and the figures are medians over rounds."""

from __future__ import annotations

import pytest

from bench import vllm

TOKENS = 640  # 20 blocks


def test_prompts_share_whole_blocks_and_nothing_else() -> None:
    p = vllm.prompts_for(TOKENS, 8192, seed=1)
    assert all(len(p[f"shared_{s:.0%}"]) == TOKENS for s in vllm.SHARES)
    assert p["shared_90%"][:576] == p["seed_90%"][:576]  # 18 of 20 blocks
    assert p["shared_50%"][:320] == p["seed_50%"][:320]
    firsts = [p[name][0] for name in ("shared_0%", "shared_50%", "shared_90%", "alone")]
    assert len(set(firsts)) == len(firsts)  # no two share a first block
    assert vllm.prompts_for(TOKENS, 8192, seed=1) == p != vllm.prompts_for(TOKENS, 8192, 2)


def test_each_contender_seeds_evicts_and_measures_the_same_prompts() -> None:
    rounds = [vllm.prompts_for(TOKENS, 8192, seed) for seed in (1, 2)]
    runs = vllm.plans("m", "h:1", rounds, rounds)
    assert list(runs) == [
        "fresh_seed",
        "fresh_strata",
        "fresh_alone",
        "fresh_producer",
        *(f"evicted_{c}" for c in vllm.CONTENDERS),
    ]
    assert [r["connector"] for r in runs.values()] == [
        "strata", "strata", "", "strata_producer", "", "strata", "offloading", "lmcache"
    ]  # fmt: skip
    assert [r["evict"] for r in runs.values()] == [False] * 4 + [True] * 4
    assert runs["fresh_producer"]["rounds"] == runs["fresh_alone"]["rounds"]
    evicted = runs["evicted_offloading"]["rounds"]
    assert evicted == runs["evicted_vllm"]["rounds"] and len(evicted) == 2
    assert evicted[1]["seed"] == [rounds[1]["seed_50%"], rounds[1]["seed_90%"]]
    assert runs["fresh_seed"]["rounds"][0]["measure"] == []
    assert runs["fresh_alone"]["rounds"][0] == {"seed": [], "measure": [rounds[0]["alone"]]}


def test_the_first_error_that_is_not_a_warning_is_the_root_cause() -> None:
    log = "\n".join(
        [
            "(MainProcess pid=1) WARNING 12-04 [base.py:380] ValueError: Tokenizer not available",
            "(EngineCore pid=2) ERROR 12-04 [core.py:1510] RuntimeError: Worker failed with"
            " error 'CPU Offloading is currently only supported on CUDA-alike and XPU GPUs'",
            "RuntimeError: Engine core initialization failed. See root cause above.",
        ]
    )
    assert vllm.first_error(log) == (
        "RuntimeError: Worker failed with error"
        " 'CPU Offloading is currently only supported on CUDA-alike and XPU GPUs'"
    )
    assert vllm.first_error("no error\nlast line") == "last line"


def timings(*ttfts: float, cached: float = 0) -> list[dict[str, float]]:
    return [{"ttft_s": t, "cached": cached if i else 0} for i, t in enumerate(ttfts)]


def test_figures_are_medians_over_rounds_and_speedups_over_the_baseline() -> None:
    out = {
        "fresh_seed": [[], []],
        "fresh_strata": [timings(2.0, 1.0, 0.4, cached=576), timings(2.2, 1.2, 0.6, cached=576)],
        "fresh_alone": [timings(2.0), timings(2.4)],
        "fresh_producer": [timings(2.1), timings(2.5)],
        "evicted_vllm": [timings(2.0, 2.0, 2.0), timings(2.0, 2.0, 2.0)],
        "evicted_strata": [timings(2.1, 1.0, 0.5, cached=320), timings(2.1, 1.0, 0.5, cached=320)],
        "evicted_offloading": vllm.Unavailable("RuntimeError: CPU Offloading ..."),
        "evicted_lmcache": vllm.Unavailable("reused no prefix; RuntimeError: no cpu connector"),
    }
    results, unavailable = vllm.figures(out)
    assert results["ttft_alone_s"] == pytest.approx(2.2)
    assert results["ttft_strata_90%_s"] == pytest.approx(0.5)
    assert results["speedup_90%"] == pytest.approx(4.4)
    assert results["ttft_producer_s"] == pytest.approx(2.3)
    assert results["speedup_evicted_strata_90%"] == pytest.approx(4.0)
    assert results["cached_tokens_evicted_strata_50%"] == 320
    assert "ttft_evicted_offloading_90%_s" not in results
    assert set(unavailable) == {"offloading", "lmcache"}
    out["evicted_strata"] = vllm.Unavailable("broken")
    with pytest.raises(RuntimeError, match="evicted_strata failed: broken"):
        vllm.figures(out)
