"""An event loop on a thread of its own, as in an engine's process: the connector's
transfers run there while the test's thread plays the compute thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the loop and wait for it."""

        async def call() -> None:
            fn(*args)

        self.run(call())

    def flush(self) -> None:
        """Wait until the loop has run every callback handed to it so far."""
        self.run(asyncio.sleep(0))

    def block(self) -> threading.Event:
        """Keep the loop busy until the returned event is set (a loop with other work)."""
        release = threading.Event()
        self.loop.call_soon_threadsafe(release.wait, 10.0)
        return release

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()
