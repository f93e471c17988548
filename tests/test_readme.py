"""The README's promises: its Python example runs, its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)


def test_embedded_store_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXAMPLES[0]], capture_output=True, text=True, check=True, cwd=ROOT
    )
    first, second = result.stdout.splitlines()
    assert first.startswith("6 ['dram'")
    assert second == "torch.Size([4, 2, 16, 2, 64])"


def test_service_client_example_runs_against_a_node() -> None:
    from tests.processes import ServeProcess

    with ServeProcess(**{"store.block_bytes": str(64 << 10)}) as node:
        code = EXAMPLES[1].replace("127.0.0.1:7600", node.address)
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
    assert result.stdout.strip() == "4 ['dram', 'dram', 'dram', 'dram']"


def test_quick_start_is_two_make_targets_and_ci_runs_the_test_one() -> None:
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make run", "make test"]
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "\nrun: setup\n" in makefile
    # the suite runs real vLLM: its environment is built on first use, like .venv
    assert "\ntest: setup vllm-env\n" in makefile


def test_transfer_engine_example_runs_against_a_node() -> None:
    from tests.processes import ServeProcess

    with ServeProcess() as node:
        code = EXAMPLES[2].replace("127.0.0.1:7600", node.address)
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
    assert result.stdout.strip() == "shm b'\\x01'"


def test_engine_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXAMPLES[3]], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.splitlines() == ["8 length", "True 32"]
