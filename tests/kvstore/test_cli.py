import json
import subprocess
import sys
from pathlib import Path

from kvstore.cli import main


def test_demo_runs_and_reports_hits(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--requests", "60", "--data-dir", str(tmp_path / "nvme")]) == 0
    out = capsys.readouterr().out
    assert "hit rate" in out and "blocks verified" in out and "recovered from NVMe" in out
    assert (tmp_path / "nvme" / "FORMAT").exists()


def test_config_prints_effective_values_as_json(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["config", "--json", "--tiers.dram.capacity_bytes", "2GiB"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["tiers"]["dram"]["capacity_bytes"] == 2 << 30


def test_bad_config_exits_with_a_message_naming_the_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "config", "--tiers.dram.capacity_bytes", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "tiers.dram.capacity_bytes" in result.stderr and "Traceback" not in result.stderr
