import json
from pathlib import Path

import pytest

from engine.sim.workload import arrival_rate, at_rate, hash_key, load_trace, synthetic
from kvstore.errors import ConfigError


def test_a_trace_keys_only_full_blocks_and_starts_at_zero(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 5000, "input_length": 1100, "output_length": 7, "hash_ids": [1, 2, 3]},
        {"timestamp": 6000, "input_length": 512, "output_length": 0, "hash_ids": [1]},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    first, second = load_trace(path, 512, max_output_tokens=5)
    assert first.arrival_s == 0.0 and second.arrival_s == 1.0
    assert first.keys == (hash_key(1), hash_key(2))  # 1100 tokens: two full blocks
    assert (first.output_tokens, second.output_tokens) == (5, 1)
    assert at_rate([first, second], 2.0)[1].arrival_s == 0.5
    assert arrival_rate([first, second]) == 1.0


def test_bad_trace_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [-1]}\n')
    with pytest.raises(ConfigError, match=r"t\.jsonl:1\.hash_ids"):
        load_trace(path, 16)
    with pytest.raises(ConfigError, match="block_tokens"):
        load_trace(path, 0)


def test_synthetic_requests_are_seeded_and_share_prefixes() -> None:
    a = synthetic(50, rate_per_s=10, block_tokens=16, seed=3)
    assert a == synthetic(50, rate_per_s=10, block_tokens=16, seed=3)
    assert a != synthetic(50, rate_per_s=10, block_tokens=16, seed=4)
    assert len({r.keys[0] for r in a}) < 50  # popular prefixes repeat
    assert all(len(r.keys) * 16 < r.input_tokens for r in a)
