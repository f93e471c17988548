"""The event-loop thread every connector test runs its transfers on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kvstore.connector.loop_thread import LoopThread


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()
