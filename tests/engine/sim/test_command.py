import json
from pathlib import Path

import pytest

from engine.cli import main

TOML = """
[cluster]
num_prefill = 2
num_decode = 1
profile = "llama3-8b-h100"
[store]
block_tokens = 16
"""


def test_simulate_writes_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = tmp_path / "c.toml"
    cluster.write_text(TOML)
    out = tmp_path / "out.json"
    argv = ["simulate", "--cluster", str(cluster), "--synthetic", "200", "--rate", "20"]
    assert (
        main([*argv, "--json", str(out), "--sweep", "0.5:2:3", "--plot", str(tmp_path / "p.png")])
        == 0
    )
    doc = json.loads(out.read_text())
    run = doc["runs"]["run"]
    for key in (
        "ttft_p50_ms",
        "ttft_p99_ms",
        "tbt_p90_ms",
        "slo_attainment",
        "hit_rate_dram",
        "tokens_recomputed",
        "events_per_s",
    ):
        assert key in run
    assert set(doc["utilisation"]) == {"prefill-0", "prefill-1", "decode-0"}
    assert len(doc["sweeps"]["run"]) == 3
    assert "goodput_rps_tbt200" in doc["capacity"]["run"]
    assert (tmp_path / "p.png").stat().st_size > 0
    assert "events/s" in capsys.readouterr().out


def test_a_trace_file_is_replayed(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": 100 * i, "input_length": 40, "output_length": 3, "hash_ids": [0, i, i + 50]}
        for i in range(10)
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "o.json"
    assert (
        main(["simulate", "--trace", str(trace), "--block-tokens", "16", "--json", str(out)]) == 0
    )
    assert json.loads(out.read_text())["runs"]["run"]["requests"] == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace", "/no/such/trace.jsonl"], "--trace"),
        (["--synthetic", "10", "--rate-scale", "0"], "--rate-scale"),
        (["--synthetic", "10", "--profile", "nope"], "profile"),
        (["--synthetic", "10", "--sweep", "2:1:3"], "--sweep"),
        (["--synthetic", "10", "--plan", "--dram", "lots"], "--dram"),
    ],
)
def test_bad_input_exits_2_naming_it(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_trace_line_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    good = {"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0]}
    trace.write_text(json.dumps(good) + '\n{"timestamp": "x"}\n')
    assert main(["simulate", "--trace", str(trace)]) == 2
    assert "t.jsonl:2.timestamp" in capsys.readouterr().err
