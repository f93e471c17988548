"""A router and its endpoint on a thread of the test process (uvicorn, a free port)."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from engine.config import load_engine_config
from engine.launch import free_port
from engine.router.api import create_app
from engine.router.service import open_router


class RouterThread:
    def __init__(self, **overrides: str) -> None:
        self.port = free_port()
        config = load_engine_config(
            env={},
            overrides={
                "router.port": str(self.port),
                "router.health_interval_s": "0.3",
                **overrides,
            },
        )
        app = create_app(
            lambda: open_router(config, wait_s=30),
            api_keys=config.router.api_keys,
            salt_by_api_key=config.router.salt_by_api_key,
            max_concurrency=config.router.max_concurrency,
        )
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the router did not start")
            time.sleep(0.05)

    def stats(self) -> dict[str, object]:
        stats: dict[str, object] = httpx.get(f"{self.url}/stats", timeout=10).json()
        return stats

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> RouterThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
