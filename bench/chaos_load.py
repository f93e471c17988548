"""The chaos harness's load and its accounting: what happened to every request.

Each request ends in exactly one ``Outcome``:

    OK          answered right on the first try
    RETRIED     answered right after the client retried (an error, a 503 or a 429)
    RECOMPUTED  answered, but what should have been cached was not (a store get that
                missed blocks it had stored, which the client then put again; an
                engine reply that reused no token of a prompt it had reused before)
    FAILED      no answer within the retry budget

and, separately, every block or reply whose bytes differ from what was written (or from
the first answer to the same prompt at temperature 0) counts as *wrong* (must be 0).

``StoreLoad`` drives a ``StoreClient`` or ``ClusterClient``: chains of blocks whose
bytes are a function of their key, put once, then read and verified. ``EngineLoad``
drives the OpenAI endpoint. Both run closed-loop (``concurrency`` callers) or at a fixed
rate, and record (time, outcome, latency) so that time to detect and to recover can be
read off afterwards (``Tally.window``).
"""

from __future__ import annotations

import asyncio
import enum
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from kvstore.errors import KVStoreError
from kvstore.hashing import prefix_keys
from kvstore.types import BlockKey, NamespaceId

RETRIES = 4
RETRY_SLEEP_S = 0.25
ENGINE_RETRY_BUDGET_S = 20.0  # a chat client retrying 503/429 gives up after this


class Outcome(enum.Enum):
    OK = "ok"
    RETRIED = "retried"
    RECOMPUTED = "recomputed"
    FAILED = "failed"


@dataclass(slots=True)
class Tally:
    """Every request's end, in time order (monotonic seconds)."""

    events: list[tuple[float, Outcome, float]] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # when a client saw something wrong
    wrong: int = 0  # blocks or replies with wrong bytes

    def record(self, outcome: Outcome, latency_s: float) -> None:
        self.events.append((time.monotonic(), outcome, latency_s))

    def saw_error(self) -> None:
        """A call failed, was refused (503/429) or missed what it had stored."""
        self.errors.append(time.monotonic())

    def window(self, start_s: float, end_s: float = float("inf")) -> Window:
        return Window(
            [e for e in self.events if start_s <= e[0] < end_s],
            sorted(t for t in self.errors if start_s <= t < end_s),
            self.wrong,
        )


@dataclass(frozen=True, slots=True)
class Window:
    events: list[tuple[float, Outcome, float]]
    errors: list[float]
    wrong: int

    def counts(self) -> dict[str, int]:
        return {o.value: sum(1 for _, got, _ in self.events if got is o) for o in Outcome}

    def detect_s(self, fault_s: float) -> float | None:
        """From the fault to the first error a client saw (None: none saw one)."""
        return self.errors[0] - fault_s if self.errors else None

    def recover_s(self, fault_s: float) -> float | None:
        """From the fault to the last error a client saw (0: none saw one)."""
        return self.errors[-1] - fault_s if self.errors else 0.0

    def latency_ms(self, q: float) -> float:
        values = sorted(lat for _, o, lat in self.events if o is not Outcome.FAILED)
        if not values:
            return 0.0
        if q == 0.5:
            return statistics.median(values) * 1000
        return values[min(len(values) - 1, int(q * len(values)))] * 1000


class BlockStore(Protocol):
    async def put(
        self, ns_id: NamespaceId, keys: Any, blocks: Any, parent: BlockKey | None = None
    ) -> Any: ...

    async def get(self, ns_id: NamespaceId, keys: Any, buffers: Any = None) -> Any: ...


def block_of(key: BlockKey, block_bytes: int) -> bytes:
    """The bytes stored under ``key``: the key repeated (so any mix-up shows)."""
    return (bytes(key) * (block_bytes // len(key) + 1))[:block_bytes]


async def with_retries(call: Callable[[], Awaitable[Any]], tally: Tally) -> tuple[Any, int]:
    """``call()``'s answer and how many retries it took; raises after ``RETRIES``."""
    for attempt in range(RETRIES + 1):
        try:
            return await call(), attempt
        except (KVStoreError, OSError, TimeoutError):
            tally.saw_error()
            if attempt == RETRIES:
                raise
            await asyncio.sleep(RETRY_SLEEP_S)
    raise AssertionError("unreachable")


class StoreLoad:
    """Chains of ``chain_blocks`` blocks, put once and then read back and verified."""

    def __init__(
        self,
        client: BlockStore,
        ns_id: NamespaceId,
        *,
        block_bytes: int,
        block_tokens: int,
        num_chains: int,
        chain_blocks: int,
        seed: int,
    ) -> None:
        self.client, self.ns_id, self.block_bytes = client, ns_id, block_bytes
        self.rng = random.Random(seed)
        self.chains = [
            prefix_keys(
                ns_id,
                list(
                    range(
                        seed * 10**6 + i * 10**4,
                        seed * 10**6 + i * 10**4 + chain_blocks * block_tokens,
                    )
                ),
                block_tokens,
            )
            for i in range(num_chains)
        ]
        self.stored: set[int] = set()
        self.tally = Tally()

    async def one(self) -> None:
        chain = self.rng.randrange(len(self.chains))
        start = time.monotonic()
        try:
            outcome = await self._read(chain) if chain in self.stored else await self._write(chain)
        except (KVStoreError, OSError, TimeoutError):
            outcome = Outcome.FAILED
        self.tally.record(outcome, time.monotonic() - start)

    async def _write(self, chain: int) -> Outcome:
        keys = self.chains[chain]
        blocks = [block_of(k, self.block_bytes) for k in keys]
        _, retries = await with_retries(
            lambda: self.client.put(self.ns_id, keys, blocks), self.tally
        )
        self.stored.add(chain)
        return Outcome.RETRIED if retries else Outcome.OK

    async def _read(self, chain: int) -> Outcome:
        keys = self.chains[chain]
        result, retries = await with_retries(lambda: self.client.get(self.ns_id, keys), self.tally)
        for key, block in zip(keys, result.blocks[: result.num_hits], strict=False):
            if bytes(block) != block_of(key, self.block_bytes):
                self.tally.wrong += 1
        if result.num_hits < len(keys):
            self.tally.saw_error()
            self.stored.discard(chain)
            await self._write(chain)  # what a caller does after recomputing
            return Outcome.RECOMPUTED
        return Outcome.RETRIED if retries else Outcome.OK


class EngineLoad:
    """Completions of a few prompts sharing a long prefix, at temperature 0."""

    PREFIX = "You are a careful assistant; answer in one short sentence. " * 6

    def __init__(self, url: str, model: str, num_prompts: int = 8) -> None:
        self.url, self.model = url, model
        self.prompts = [
            f"{self.PREFIX}Question {i}: what is {i} plus {i}?" for i in range(num_prompts)
        ]
        self.reference: dict[int, str] = {}
        self.reused: set[int] = set()
        self.tally = Tally()
        self.rng = random.Random(7)
        self._http = httpx.AsyncClient(timeout=30)

    async def close(self) -> None:
        await self._http.aclose()

    async def one(self) -> None:
        prompt = self.rng.randrange(len(self.prompts))
        start = time.monotonic()
        outcome = Outcome.FAILED
        attempt = -1
        while time.monotonic() - start < ENGINE_RETRY_BUDGET_S:
            attempt += 1
            try:
                reply = await self._http.post(f"{self.url}/v1/completions", json=self._body(prompt))
            except httpx.HTTPError:
                self.tally.saw_error()
                await asyncio.sleep(RETRY_SLEEP_S)
                continue
            if reply.status_code in (429, 502, 503, 504):
                self.tally.saw_error()
                await asyncio.sleep(RETRY_SLEEP_S)
                continue
            if reply.status_code != 200:
                self.tally.saw_error()
            else:
                outcome = self._judge(prompt, reply.json(), attempt)
            break
        self.tally.record(outcome, time.monotonic() - start)

    def _body(self, prompt: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompts[prompt],
            "max_tokens": 4,
            "temperature": 0,
        }

    def _judge(self, prompt: int, body: dict[str, Any], attempt: int) -> Outcome:
        text = body["choices"][0]["text"]
        if self.reference.setdefault(prompt, text) != text:
            self.tally.wrong += 1
        cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        if cached == 0 and prompt in self.reused:
            self.tally.saw_error()
            return Outcome.RECOMPUTED
        if cached:
            self.reused.add(prompt)
        return Outcome.RETRIED if attempt else Outcome.OK


async def drive(
    one: Callable[[], Awaitable[None]],
    until: Callable[[], bool],
    *,
    concurrency: int,
    rate_per_s: float | None = None,
) -> None:
    """Run ``one()`` from ``concurrency`` callers until ``until()``; with ``rate_per_s``,
    each caller starts its requests on a fixed schedule (open loop, late ones at once)."""

    async def caller(index: int) -> None:
        interval = concurrency / rate_per_s if rate_per_s else 0.0
        next_s = time.monotonic() + interval * index / concurrency
        while not until():
            if interval:
                await asyncio.sleep(max(0.0, next_s - time.monotonic()))
                next_s += interval
            await one()

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
