import json
from pathlib import Path

import pytest

from engine.sim.profiles import load_profile, parse_profile, profile_names
from kvstore.errors import ConfigError


def test_the_gpu_profiles_ship_with_sources_and_published_anchors() -> None:
    assert {"llama3-8b-h100", "llama3-70b-8xh100"} <= set(profile_names())
    big = load_profile("llama3-70b-8xh100")
    assert big.gpus_per_instance == 8 and big.kv_bytes_per_token == 327680
    assert big.sources and big.uncertainty
    # Splitwise's measured TTFTs on 8x H100: 78 ms at 1k, 845 ms at 8k prompt tokens
    assert big.costs.prefill_s(1024, 0) == pytest.approx(0.078, rel=0.02)
    assert big.costs.prefill_s(8192, 0) == pytest.approx(0.845, rel=0.02)
    small = load_profile("llama3-8b-h100")
    assert small.kv_bytes_per_token == 131072
    for profile in (big, small):  # loading beats recompute only above a few GB/s
        tokens = 4096  # the load bandwidth at which loading them costs their recompute:
        seconds = profile.costs.prefill_s(tokens, 0) - profile.costs.prefill_base_s
        assert 2e9 < tokens * profile.kv_bytes_per_token / seconds < 8e9


def test_a_profile_of_measured_samples_is_fitted_on_load(tmp_path: Path) -> None:
    def prefill(u: int, c: int) -> float:
        return 0.002 + 2e-5 * u + 1e-9 * u * (c + u / 2)

    raw = {
        "name": "measured",
        "model": "m",
        "hardware": "measured on one H200",
        "gpus_per_instance": 1,
        "kv_bytes_per_token": 131072,
        "uncertainty": "fit residual",
        "uncertainty_factor": 0.1,
        "sources": ["a device run"],
        "samples": {
            "prefill": [
                [u, c, prefill(u, c)] for u, c in ((512, 0), (2048, 0), (4096, 0), (1024, 3072))
            ],
            "decode": [
                [b, x, 0.007 + 1e-4 * b + 5e-8 * x]
                for b, x in ((1, 1000), (8, 4000), (32, 64000), (64, 8000))
            ],
        },
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    profile = load_profile(str(path))
    assert profile.costs.prefill_s(3000, 1000) == pytest.approx(prefill(3000, 1000), rel=1e-6)
    assert profile.costs.tbt_s(16, 20000) == pytest.approx(0.007 + 16e-4 + 1e-3, rel=1e-6)


def test_bad_profiles_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        load_profile("nope")
    raw = json.loads(
        Path(load_profile.__code__.co_filename)
        .with_name("profiles")
        .joinpath("llama3-8b-h100.json")
        .read_text()
    )
    del raw["sources"]
    with pytest.raises(ConfigError, match="sources"):
        parse_profile(raw, "p")
    raw["sources"] = ["x"]
    raw["costs"]["decode_base_s"] = -1
    with pytest.raises(ConfigError, match="decode_base_s"):
        parse_profile(raw, "p")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(str(bad))


def test_the_measured_h200_profiles_say_so_and_fit_their_points() -> None:
    engine = load_profile("llama3-8b-h200-engine")
    assert "measured on one H200" in engine.hardware
    # bench.cuda --part engine: 310 ms for a 1k prefill, 1335 ms for 4k
    assert engine.costs.prefill_s(1024, 0) == pytest.approx(0.310, rel=0.15)
    assert engine.costs.prefill_s(4096, 0) == pytest.approx(1.335, rel=0.15)
    raw = load_profile("llama3-8b-h200-measured")
    assert "measured on one H200" in raw.hardware
    assert raw.costs.prefill_s(8192, 0) == pytest.approx(1.99, rel=0.15)
