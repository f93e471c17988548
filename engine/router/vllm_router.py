"""The router in front of vLLM OpenAI servers: tokenize, place, forward.

``tokens`` asks a healthy server's own ``/tokenize`` for the prompt's token ids (chat
messages through vLLM's chat template, exactly as its completion will see them).
``place`` computes the prompt's block keys as the connector does (the store's namespace
for the model, vLLM's block size, the request's ``cache_salt``) and lets the policy
choose a server from two sources of prefix, the same two a vLLM server reuses:

    prefix_blocks[server]         its own prefix cache: what the router placed there
                                  (``PrefixIndex``; a hint, vLLM may have evicted it)
    prefix_blocks["store HOST"]   what that store node holds (a local-scope ``Lookup``
                                  to each node, in parallel, within ``lookup_timeout_s``)

A store node is no server, so it is never chosen; it is a holder the servers load from,
which ``CacheAware`` prices as a pull (``transfer_s`` of the blocks past the server's own
cache). So a server that has the prefix in its own cache wins over one that would load
it, and either wins over computing it. A request runs wholly on the server chosen for
its prefill; the policy's decode choice (among the same servers) only lets it refuse a
request by its TBT SLO. The approximation: the policy's ``best`` is the most blocks any
holder has, so every server is credited with it. A prefix only another server's cache
holds is rare (the connector saves every full block, so its node holds it too); a prefix
only another store node holds is loaded through the server's own node where the nodes
share metadata (the store's peer fetch), else recomputed.

``forward`` sends the client's body unchanged to the chosen server's endpoint and hands
the response back as it comes (SSE passed through). A server that cannot be reached
before its response starts is marked down and the request placed again without it,
once. After that, failures reach the client as they come: vLLM's own error statuses and
bodies unchanged; a stream cut mid-way simply ends.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from engine.router.costs import CostModel
from engine.router.metrics import RouterMetrics
from engine.router.prefix_index import PrefixIndex
from engine.router.router import NoHealthyWorker, Overloaded, WorkerFailed
from engine.router.store_lookups import StoreLookups
from engine.router.views import Decision, Policy, Rejection, RequestView
from engine.router.vllm_backends import VllmNamespace, VllmPool, VllmServer
from kvstore.hashing import prefix_keys
from kvstore.types import BlockKey

logger = logging.getLogger(__name__)
STORE = "store "  # prefix of a store node's entry in a RequestView's prefix_blocks
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class VllmError(WorkerFailed):
    """A server answered an error before any routing could happen (``/tokenize``)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body.decode(errors="replace"))
        self.status, self.body = status, body


@dataclass
class VllmPlacement:
    tokens: list[int]
    keys: list[BlockKey]
    decision: Decision
    server: VllmServer
    max_tokens: int
    prefill_s: float  # the prefill work this placement adds to the server's queue
    decided_s: float  # when it was decided (perf_counter)
    cache_salt: str = ""


@dataclass
class Forwarded:
    """A server's response, its body still to come."""

    server: VllmServer
    status: int
    media_type: str
    body: AsyncIterator[bytes]
    usage: Usage  # filled in as the body passes


class VllmRouter:
    def __init__(
        self,
        pool: VllmPool,
        policy: Policy,
        costs: CostModel,
        namespace: VllmNamespace,
        *,
        lookup_timeout_s: float = 0.02,
        token: str = "",
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.costs = costs
        self.namespace = namespace
        self.block_tokens = namespace.block_tokens
        self.index = PrefixIndex(max_blocks=1_000_000)
        self.metrics = metrics or RouterMetrics()
        self.counts: Counter[str] = Counter()
        self.stores = StoreLookups(
            pool.store_addresses(), namespace.namespace_id, timeout_s=lookup_timeout_s, token=token
        )
        self.lookups = self.stores.lookups

    async def close(self) -> None:
        await self.stores.close()
        await self.pool.close()

    async def tokens(self, chat: bool, body: dict[str, Any]) -> list[int]:
        """The prompt's token ids by a healthy server's ``/tokenize`` (for a completion,
        its first prompt). Raises ``VllmError`` (the server refused the prompt) or
        ``NoHealthyWorker``."""
        prompt = body.get("prompt")
        if not chat and isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]  # a batch: placed by its first prompt
        if not chat and isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if not chat and isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        request = _tokenize_body(chat, body, prompt)
        for server in self.pool.healthy():
            try:
                response = await self.pool.http.post(f"{server.url}/tokenize", json=request)
            except _UNREACHABLE as exc:
                self.pool.mark_down(server, str(exc) or type(exc).__name__)
                continue
            if response.status_code != 200:
                raise VllmError(response.status_code, response.content)
            return list(response.json()["tokens"])
        raise NoHealthyWorker("no healthy vLLM server; retry shortly")

    async def place(
        self,
        tokens: list[int],
        max_tokens: int,
        cache_salt: str = "",
        exclude: Sequence[str] = (),
    ) -> VllmPlacement:
        """Choose a server for a prompt. Raises ``Overloaded`` or ``NoHealthyWorker``."""
        start = time.perf_counter()
        keys = prefix_keys(
            self.namespace.namespace_id, tokens, self.block_tokens, cache_salt=cache_salt
        )
        prefix = await self.prefix_blocks(keys)
        request = RequestView(max(1, len(tokens)), self.block_tokens, prefix, max_tokens)
        prefills = [v for v in self.pool.prefill_views() if v.id not in exclude]
        decodes = [v for v in self.pool.decode_views() if v.id not in exclude]
        if not any(v.healthy for v in prefills):
            self.counts["unavailable"] += 1
            raise NoHealthyWorker("no healthy vLLM server; retry shortly")
        choice = self.policy.choose(request, prefills, decodes, time.monotonic())
        self.metrics.decision.observe(time.perf_counter() - start)
        if isinstance(choice, Rejection):
            self.counts["rejected"] += 1
            raise Overloaded(choice.reason, choice.retry_after_s)
        server = self.pool.servers[choice.prefill]  # colocated: it decodes too
        cached = (choice.local_blocks + choice.pulled_blocks) * self.block_tokens
        prefill_s = self.costs.prefill_s(len(tokens) - cached, cached)
        self.counts["placed"] += 1
        self.counts["loaded_blocks"] += choice.pulled_blocks
        self.metrics.queue.observe(server.queued_s)
        return VllmPlacement(tokens, keys, choice, server, max_tokens, prefill_s, start, cache_salt)

    async def prefix_blocks(self, keys: Sequence[BlockKey]) -> dict[str, int]:
        """Server id -> leading blocks of ``keys`` in its own cache (by the router's
        index), and ``"store " + node address`` -> leading blocks that node holds."""
        if not keys:
            return {}
        blocks = self.index.longest(keys)
        for address, nodes in (await self.stores.ask(keys) or {}).items():
            held = max((n.num_blocks for n in nodes or ()), default=0)
            if held:
                blocks[STORE + address] = held
        return blocks

    async def forward(self, path: str, body: dict[str, Any], placement: VllmPlacement) -> Forwarded:
        """Send ``body`` to ``path`` on the placed server; on a server that cannot be
        reached, mark it down and place the request once more elsewhere. Raises
        ``WorkerFailed`` when the second server fails too."""
        tried: list[str] = []
        while True:
            server = placement.server
            request = self.pool.http.build_request("POST", f"{server.url}{path}", json=body)
            _account(placement, +1)
            try:
                response = await self.pool.http.send(request, stream=True)
            except BaseException as exc:
                _account(placement, -1)
                if not isinstance(exc, _UNREACHABLE):
                    raise
                self.pool.mark_down(server, str(exc) or type(exc).__name__)
                tried.append(server.id)
                self.counts["retried"] += 1
                if len(tried) > 1:
                    raise WorkerFailed(f"vLLM server {server.id}: {exc}") from None
                placement = await self.place(
                    placement.tokens, placement.max_tokens, placement.cache_salt, exclude=tried
                )
                continue
            media_type = response.headers.get("content-type", "application/json")
            usage = Usage()
            relayed = self._relay(response, placement, usage)
            return Forwarded(server, response.status_code, media_type, relayed, usage)

    async def _relay(
        self, response: httpx.Response, placement: VllmPlacement, usage: Usage
    ) -> AsyncIterator[bytes]:
        """The response's bytes as they come; the request leaves the server's accounts
        when they end (its prefill estimate at the first bytes: vLLM sends a stream's
        headers at once, a whole answer's with it), and its prompt counts as cached there
        from the first bytes on."""
        server = placement.server
        try:
            async for data in response.aiter_raw():
                if not usage.started:
                    usage.started = True
                    server.queued_s = max(0.0, server.queued_s - placement.prefill_s)
                    self._first_bytes(placement, response.status_code)
                usage.read(data)
                yield data
        except httpx.HTTPError as exc:
            logger.warning("vLLM server %s: the response broke off: %s", server.id, exc)
        finally:
            await response.aclose()
            if not usage.started:
                server.queued_s = max(0.0, server.queued_s - placement.prefill_s)
            server.running -= 1
            server.context_tokens -= len(placement.tokens)
            usage.finish()
            if response.status_code == 200:
                # vLLM's cached_tokens does not say which came from the store: all count
                # under the server's own cache
                self.metrics.count_prompt(len(placement.tokens), usage.cached_tokens, 0, 0)
                self.metrics.generated_tokens.inc(usage.completion_tokens)

    def _first_bytes(self, placement: VllmPlacement, status: int) -> None:
        if status != 200:
            return
        full = len(placement.tokens) // self.block_tokens
        self.index.add(placement.server.id, placement.keys[:full])
        self.metrics.ttft.observe(time.perf_counter() - placement.decided_s)

    def stats(self) -> dict[str, object]:
        return {
            "policy": self.policy.name,
            **dict(self.counts),
            "lookups": dict(self.lookups),
            "servers": {
                s.id: {
                    "store": s.store,
                    "healthy": s.healthy,
                    "queued_s": round(s.queued_s, 4),
                    "running": s.running,
                }
                for s in self.pool.servers.values()
            },
        }


def _account(placement: VllmPlacement, sign: int) -> None:
    """Add the request to its server's accounts (``sign`` +1) or take it out (-1)."""
    server = placement.server
    server.queued_s = max(0.0, server.queued_s + sign * placement.prefill_s)
    server.running += sign
    server.context_tokens += sign * len(placement.tokens)


class Usage:
    """The ``usage`` of a response, read from its bytes as they pass (a JSON body, or
    the SSE event that carries it when the client asked for ``include_usage``)."""

    def __init__(self) -> None:
        self.started = False
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self._tail = b""

    def read(self, data: bytes) -> None:
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._parse(line)

    def finish(self) -> None:
        """The body ended: read what followed its last newline."""
        self._parse(self._tail)
        self._tail = b""

    def _parse(self, line: bytes) -> None:
        if b'"usage"' not in line:
            return
        text = line.removeprefix(b"data:").strip()
        try:
            usage = json.loads(text).get("usage") or {}
        except ValueError:
            return
        details = usage.get("prompt_tokens_details") or {}
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.cached_tokens = int(details.get("cached_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)


def _tokenize_body(chat: bool, body: dict[str, Any], prompt: object) -> dict[str, Any]:
    """The ``/tokenize`` request giving the token ids vLLM will see for ``body``."""
    if not chat:
        return {"model": body.get("model"), "prompt": prompt if isinstance(prompt, str) else ""}
    fields = (
        "messages",
        "add_generation_prompt",
        "continue_final_message",
        "add_special_tokens",
        "chat_template",
        "chat_template_kwargs",
        "tools",
    )
    return {"model": body.get("model"), **{f: body[f] for f in fields if f in body}}
