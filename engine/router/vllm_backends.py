"""vLLM OpenAI servers as the router's backends, and the store namespace their blocks use.

Each server is colocated: it prefills and decodes its own requests. ``router.vllm`` names
each one with the store node its Strata connector uses (``HOST:PORT=STORE_HOST:PORT``).
At start the pool reads every server's ``/v1/models`` (all must serve the same model),
then checks ``/health`` every ``health_interval_s``; a server that does not answer, or
that a request could not reach, is marked down and skipped until it answers again.

The router keeps its own accounts of each server, which move at once: the predicted
seconds of prefill work placed there and not yet started streaming (``queued_s``), and
the requests streaming from it with their prompt tokens (``running``,
``context_tokens``). vLLM reports neither per request over HTTP.

Namespace: the router must compute exactly the keys the connector stores, so it does not
take the namespace's parts (model, layers, heads, dtype, block size) from an operator.
It reads them from the store nodes instead: the connector registers its namespace at
vLLM's start-up, so each server's node lists it (``Stats``), under the model id the
connector uses: the server's model path (``root`` in ``/v1/models``), or
``router.vllm_model_id`` where the connector was given another ``model_id``. Exactly
one such namespace must exist on every server's node, and it must be the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import httpx

from engine.router.views import DecodeView, PrefillView
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.errors import ConfigError
from kvstore.types import NamespaceId

logger = logging.getLogger(__name__)
# vLLM's default ``max_num_seqs``; it does not say its own over HTTP. Only the decode
# views' ``has_room`` reads it, and a colocated request runs where its prefill runs.
MAX_BATCH = 256


@dataclass
class VllmServer:
    id: str  # its HOST:PORT
    store: str  # HOST:PORT of the store node its connector uses
    healthy: bool = False
    down_since: float = 0.0
    model: str = ""  # the served model's name (``/v1/models`` ``id``)
    model_path: str = ""  # what vLLM loaded (``root``): the connector's default model id
    max_model_len: int = 0
    # the router's own accounts
    queued_s: float = 0.0  # predicted seconds of prefill placed and not yet streaming
    running: int = 0  # requests streaming
    context_tokens: int = 0  # their prompts

    @property
    def url(self) -> str:
        return f"http://{self.id}"


@dataclass(frozen=True, slots=True)
class VllmNamespace:
    """The store namespace of the servers' blocks, as their store nodes report it."""

    namespace_id: NamespaceId
    model_id: str
    block_tokens: int


class VllmPool:
    def __init__(
        self,
        servers: list[tuple[str, str]],
        http: httpx.AsyncClient,
        *,
        health_interval_s: float = 1.0,
    ) -> None:
        if not servers:
            raise ValueError("a router needs at least one vLLM server")
        self.servers = {a: VllmServer(a, store) for a, store in servers}
        self.http = http
        self._interval_s = health_interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait_s: float = 60.0) -> None:
        """Read every server's model (waiting up to ``wait_s`` for all to answer), then
        keep checking their health in the background.

        Raises:
            RuntimeError: a server still not answering after ``wait_s``, or servers
                serving different models.
        """
        deadline = time.monotonic() + wait_s
        while True:
            await asyncio.gather(*(self._read_model(s) for s in self.servers.values()))
            missing = [s.id for s in self.servers.values() if not s.healthy]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM servers not answering: {', '.join(missing)}")
            await asyncio.sleep(0.5)
        models = {(s.model, s.model_path) for s in self.servers.values()}
        if len(models) > 1:
            described = ", ".join(f"{s.id}: {s.model_path}" for s in self.servers.values())
            raise RuntimeError(f"vLLM servers serve different models ({described})")
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def any(self) -> VllmServer:
        return next(iter(self.servers.values()))

    def healthy(self) -> list[VllmServer]:
        return [s for s in self.servers.values() if s.healthy]

    def mark_down(self, server: VllmServer, why: str) -> None:
        if server.healthy:
            logger.warning("vLLM server %s is down: %s", server.id, why)
        server.healthy = False
        server.down_since = time.monotonic()

    def prefill_views(self) -> list[PrefillView]:
        return [PrefillView(s.id, s.queued_s, s.healthy) for s in self.servers.values()]

    def decode_views(self) -> list[DecodeView]:
        return [
            DecodeView(s.id, s.running, s.context_tokens, MAX_BATCH, s.healthy)
            for s in self.servers.values()
        ]

    def store_addresses(self) -> list[str]:
        return sorted({s.store for s in self.servers.values()})

    async def check(self) -> None:
        await asyncio.gather(*(self._check(s) for s in self.servers.values()))

    async def _check(self, server: VllmServer) -> None:
        try:
            response = await self.http.get(f"{server.url}/health", timeout=self._timeout_s)
        except httpx.HTTPError as exc:
            self.mark_down(server, str(exc) or type(exc).__name__)
            return
        if response.status_code != 200:
            self.mark_down(server, f"/health answered {response.status_code}")
            return
        if not server.healthy and server.down_since:
            logger.info("vLLM server %s is back", server.id)
        server.healthy = True

    async def _read_model(self, server: VllmServer) -> None:
        try:
            response = await self.http.get(f"{server.url}/v1/models", timeout=self._timeout_s)
            response.raise_for_status()
            card = response.json()["data"][0]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            server.healthy = False
            logger.debug("vLLM server %s: no model yet (%s)", server.id, exc)
            return
        server.model = str(card["id"])
        server.model_path = str(card.get("root") or card["id"])
        server.max_model_len = int(card.get("max_model_len") or 0)
        server.healthy = True

    @property
    def _timeout_s(self) -> float:
        return max(2.0, self._interval_s)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check()


async def find_namespace(pool: VllmPool, model_id: str, *, token: str = "") -> VllmNamespace:
    """The one namespace of ``model_id`` on every server's store node (see the module
    docstring).

    Raises:
        ConfigError: a node without it, a node with several, or nodes that disagree.
    """
    found: dict[str, VllmNamespace] = {}
    options = CallOptions(token=token, timeout_s=5.0, retries=1)
    for address in pool.store_addresses():
        async with StoreClient(address, options) as client:
            stats = await client.stats()
        matches = {
            VllmNamespace(
                NamespaceId(ns.namespace_id), ns.namespace.model_id, ns.namespace.block_tokens
            )
            for ns in stats.namespaces
            if ns.namespace.model_id == model_id
        }
        if len(matches) != 1:
            held = sorted({ns.namespace.model_id for ns in stats.namespaces}) or "none"
            raise ConfigError(
                "router.vllm",
                f"store node {address} holds {len(matches)} namespaces of model {model_id!r}"
                f" (one expected; its namespaces' models: {held}). Is each vLLM server's"
                " connector using the store node named after it, and router.vllm_model_id"
                " the connector's model_id if one is set?",
            )
        found[address] = matches.pop()
    if len(set(found.values())) != 1:
        described = ", ".join(f"{a}: block {n.block_tokens}" for a, n in found.items())
        raise ConfigError(
            "router.vllm", f"the servers' store nodes hold different namespaces ({described})"
        )
    return next(iter(found.values()))
