"""``kvengine up`` watches its children: a SIGKILLed prefill worker is answered with 503
(OpenAI error shape) while it is gone, logged, and restarted on its old port."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import UpProcess

MODEL = "strata-tiny-v1"


@pytest.fixture
def up() -> Iterator[UpProcess]:
    stack = UpProcess()
    try:
        yield stack
    finally:
        assert stack.stop() == 0, stack.output()


def child_pid(parent: int, role: str) -> int:
    tasks = Path(f"/proc/{parent}/task").glob("*/children")  # children of every thread
    children = [pid for task in tasks for pid in task.read_text().split()]
    for pid in map(int, children):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if role.encode() in argv and b"engine.cli" in argv:
            return pid
    raise AssertionError(f"no {role} child of {parent}: {children}")


def ask(url: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 2, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def test_a_killed_prefill_worker_gets_503_then_comes_back(up: UpProcess) -> None:
    assert ask(up.url).status_code == 200
    old = child_pid(up.proc.pid, "prefill")
    os.kill(old, signal.SIGKILL)

    statuses: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        reply = ask(up.url)
        statuses.append(reply.status_code)
        if reply.status_code == 200 and 503 in statuses:
            break
        if reply.status_code == 503:
            error = reply.json()["error"]
            assert error["type"] == "server_error" and "worker" in error["message"]
        time.sleep(0.2)
    assert 503 in statuses and statuses[-1] == 200, statuses
    assert 429 not in statuses, statuses
    assert child_pid(up.proc.pid, "prefill") != old
    time.sleep(0.3)
    log = up.output()
    assert "prefill worker exited with code -9" in log and "prefill worker restarted" in log
    assert "no healthy prefill worker" in log
