"""``kvengine up``'s start-up errors: a taken port stops it before any child starts; a
child that cannot start is reported with its own error. And ``python -m`` entry points."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from engine.launch import free_port
from tests.processes import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
FREE = ["--store-port", "0", "--prefill.port", "0", "--decode.port", "0",
        "--decode.data_port", "0"]  # fmt: skip


def up(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "up", *args],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout_s, check=False,
    )  # fmt: skip


def busy_port_after_a_free_one() -> socket.socket:
    """A listening socket whose port's predecessor is free (the store's port below the
    metrics port it takes, in the second half of the test)."""
    while True:
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port - 1))
            except OSError:
                busy.close()
                continue
        busy.listen()
        return busy


def test_a_busy_port_stops_start_up_before_any_child_starts() -> None:
    with busy_port_after_a_free_one() as busy:
        port = busy.getsockname()[1]
        start = time.monotonic()
        result = up("--port", str(port), *FREE)
        took = time.monotonic() - start
        assert result.returncode != 0
        assert f"router.port (--port): port {port}" in result.stderr, result.stderr
        assert "starting the store node" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr and took < 30

        others = ["--prefill.port", "0", "--decode.port", "0", "--decode.data_port", "0"]
        taken = up("--port", str(free_port()), "--store-port", str(port - 1), *others)
        assert taken.returncode != 0 and "server.metrics_port" in taken.stderr, taken.stderr


def test_a_child_that_cannot_start_says_why() -> None:
    result = up("--port", str(free_port()), *FREE, "--engine.kv_cache_bytes", "1KiB")
    assert result.returncode != 0
    first = next(line for line in result.stderr.splitlines() if "did not start" in line)
    assert "prefill worker did not start: kvengine: engine.kv_cache_bytes:" in first, first
    assert "give it at least" in first


def test_python_dash_m_runs_both_command_lines() -> None:
    for module, words in (("kvstore", "serve"), ("engine", "up")):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0 and words in result.stdout, result.stderr


def test_profiling_fits_a_small_kv_cache_or_names_the_key() -> None:
    from engine.router.profiling import ProfilingError, profile_lengths

    assert profile_lengths(2048, 256, 16) == 64  # half the cache less a batch's pages
    assert profile_lengths(2048, 1 << 20, 16) == 1024
    with pytest.raises(ProfilingError, match=r"raise engine\.kv_cache_bytes"):
        profile_lengths(2048, 160, 16)

    result = up("--port", str(free_port()), *FREE, "--engine.kv_cache_bytes", "128KiB")
    assert result.returncode != 0
    assert "kvengine up: the router did not start: the smallest worker KV cache holds 64" in (
        result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr
