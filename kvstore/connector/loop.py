"""One asyncio event loop on a daemon thread, for synchronous callers of the asynchronous
store client and transfer engine: an engine's compute threads (the bundled engine's
``LLM``, vLLM's scheduler and worker) hand it coroutines and wait for their results. A
daemon thread: a process that exits without closing it is never held up by it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "strata-connector") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and wait (at most ``timeout_s``) for its result.

        Raises:
            TimeoutError: ``timeout_s`` passed first (the coroutine is cancelled).
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
