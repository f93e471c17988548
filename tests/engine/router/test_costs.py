"""The router's cost model: its formulas, its fit and its file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine.router.costs import CostModel
from kvstore.errors import ConfigError

TRUE = CostModel(
    prefill_base_s=3e-3,
    prefill_per_token_s=25e-6,
    prefill_attention_s=4e-9,
    transfer_base_s=0.4e-3,
    transfer_per_token_s=0.6e-6,
    decode_base_s=5e-3,
    decode_per_seq_s=0.3e-3,
    decode_per_context_token_s=8e-9,
)


def samples(model: CostModel, noise: float, seed: int = 0) -> tuple[list, list, list]:
    rng = random.Random(seed)

    def jitter(seconds: float) -> float:
        return seconds * (1 + rng.uniform(-noise, noise))

    prefill = [
        (u, c, jitter(model.prefill_s(u, c)))
        for u in (16, 64, 256, 512, 1024, 2048)
        for c in (0, 256, 1024, 4096)
    ]
    transfer = [(t, jitter(model.transfer_s(t))) for t in (16, 256, 1024, 4096, 16384)]
    decode = [
        (b, ctx, jitter(model.tbt_s(b, ctx)))
        for b in (1, 2, 4, 8, 16)
        for ctx in (100, 10_000, 100_000)
    ]
    return prefill, transfer, decode


def test_formulas() -> None:
    m = TRUE
    # 100 new tokens after 50 cached: 100 * (50 + 100/2) = 10,000 attended pairs.
    assert m.prefill_s(100, 50) == pytest.approx(3e-3 + 100 * 25e-6 + 10_000 * 4e-9)
    assert m.prefill_s(0, 500) == 0.0
    assert m.transfer_s(1000) == pytest.approx(0.4e-3 + 1000 * 0.6e-6)
    assert m.transfer_s(0) == 0.0
    assert m.tbt_s(4, 2000) == pytest.approx(5e-3 + 4 * 0.3e-3 + 2000 * 8e-9)


def test_fit_recovers_known_coefficients_from_noisy_samples() -> None:
    fitted = CostModel.fit(*samples(TRUE, noise=0.02))
    for name, want in TRUE.to_dict().items():
        assert getattr(fitted, name) == pytest.approx(want, rel=0.1), name


def test_fit_keeps_coefficients_non_negative() -> None:
    # No attention cost at all: noise must not make the fit invent a negative one.
    flat = CostModel(**{**TRUE.to_dict(), "prefill_attention_s": 0.0, "decode_base_s": 0.0})
    fitted = CostModel.fit(*samples(flat, noise=0.05, seed=3))
    assert all(v >= 0 for v in fitted.to_dict().values())
    assert fitted.prefill_attention_s < 0.2 * TRUE.prefill_attention_s
    assert fitted.prefill_per_token_s == pytest.approx(25e-6, rel=0.1)


def test_fit_refuses_too_few_or_uninformative_samples() -> None:
    prefill, transfer, decode = samples(TRUE, noise=0.0)
    with pytest.raises(ValueError, match="transfer: need at least 2 samples, got 1"):
        CostModel.fit(prefill, transfer[:1], decode)
    with pytest.raises(ValueError, match="prefill: need at least 3 samples"):
        CostModel.fit(prefill[:2], transfer, decode)
    same_batch = [(4, ctx, s) for _, ctx, s in decode]  # batch never varies
    with pytest.raises(ValueError, match="decode: samples determine only 2 of 3"):
        CostModel.fit(prefill, transfer, same_batch)
    with pytest.raises(ValueError, match="transfer: samples must be finite"):
        CostModel.fit(prefill, [(16, -1.0), (32, 1.0)], decode)


def test_the_default_prefers_pulling_to_recomputing() -> None:
    m = CostModel.default()
    assert m.transfer_s(1024) < m.prefill_s(1024, 0) / 10
    assert 0 < m.tbt_s(1, 100) < 0.1


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    TRUE.save(path)
    assert CostModel.load(path) == TRUE
    assert CostModel.from_dict(TRUE.to_dict()) == TRUE
    TRUE.save(path, about="measured on one GPU")  # provenance rides along, ignored
    assert '"about": "measured on one GPU"' in path.read_text()
    assert CostModel.load(path) == TRUE


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object, got list"),
        (json.dumps({**TRUE.to_dict(), "decode_base_s": -1}), r"decode_base_s: must be a finite"),
        (json.dumps({**TRUE.to_dict(), "transfer_base_s": "fast"}), "transfer_base_s: must be a"),
        (json.dumps({**TRUE.to_dict(), "prefill_base_s": True}), "prefill_base_s: must be a"),
        (json.dumps({**TRUE.to_dict(), "prefil_base_s": 1.0}), "prefil_base_s: unknown field"),
        (json.dumps({**TRUE.to_dict(), "about": 3}), "about: must be a string"),
    ],
)
def test_load_names_the_bad_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "costs.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        CostModel.load(path)


def test_load_names_a_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    raw = TRUE.to_dict()
    del raw["decode_per_seq_s"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"costs.json.decode_per_seq_s: missing") as info:
        CostModel.load(path)
    assert info.value.key.endswith("decode_per_seq_s")


def test_invalid_coefficients_are_refused() -> None:
    with pytest.raises(ValueError, match=r"CostModel\.transfer_per_token_s"):
        CostModel(**{**TRUE.to_dict(), "transfer_per_token_s": float("nan")})
