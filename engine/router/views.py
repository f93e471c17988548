"""What a routing policy sees and what it answers.

A policy gets snapshots, never live objects: one ``RequestView`` (the prompt's size and
which prefill instance's store node holds how much of its prefix), a ``PrefillView`` per
prefill instance and a ``DecodeView`` per decode instance, plus ``now``. It answers a
``Decision`` (where to run, what it predicts, which KV moves) or a ``Rejection`` (the HTTP
layer turns it into 429 with ``Retry-After``). Snapshots are plain frozen values, so a
policy is testable with constructed cluster states and replayable in a simulator.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.roles import WorkerRole


class PolicyName(enum.StrEnum):
    """The routing policies, by the names the config (``router.policy``) uses."""

    CACHE_AWARE = "cache_aware"
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class PrefillView:
    """A prefill instance. ``queued_s``: predicted seconds of prefill work already queued
    on it (the router accounts it from its own predictions)."""

    id: str
    queued_s: float
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class DecodeView:
    """A decode instance: ``running`` sequences holding ``context_tokens`` tokens in all,
    room for ``max_batch`` sequences."""

    id: str
    running: int
    context_tokens: int
    max_batch: int
    healthy: bool = True

    @property
    def has_room(self) -> bool:
        return self.running < self.max_batch


@dataclass(frozen=True, slots=True)
class RequestView:
    """A request to route.

    Attributes:
        num_tokens: Prompt tokens (>= 1).
        block_tokens: Tokens per store block (``B``).
        prefix_blocks: Prefill instance id -> leading blocks of this prompt cached on that
            instance's store node (absent = 0). May name instances that are not healthy
            or not offered: their node may still serve transfers.
        max_tokens: Most tokens the request may generate (0: unknown).
    """

    num_tokens: int
    block_tokens: int
    prefix_blocks: Mapping[str, int] = field(default_factory=dict)
    max_tokens: int = 0

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if self.block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {self.block_tokens}")

    @property
    def reusable_blocks(self) -> int:
        """Most blocks a prefill may reuse: the last prompt token is always computed (its
        logits give the first output token), so at most ``(n - 1) // B`` blocks."""
        return (self.num_tokens - 1) // self.block_tokens

    def cached_blocks(self, instance_id: str) -> int:
        """Leading blocks reusable on ``instance_id``'s node (capped at ``reusable_blocks``)."""
        return min(self.prefix_blocks.get(instance_id, 0), self.reusable_blocks)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request runs and what the policy predicts for it.

    Attributes:
        prefill: The prefill instance's id.
        decode: The decode instance's id.
        predicted_ttft_s: Transfer + queue + prefill (0 when the policy has no cost model).
        predicted_tbt_s: The chosen decode instance's step time with this request added.
        local_blocks: Leading blocks the prefill instance's own node holds and reuses.
        pulled_blocks: Blocks after those that the prefill instance's node fetches from a
            peer holding them (and keeps: a replica of a hot prefix).
        computed_tokens: Prompt tokens the prefill computes.
    """

    prefill: str
    decode: str
    predicted_ttft_s: float
    predicted_tbt_s: float
    local_blocks: int
    pulled_blocks: int
    computed_tokens: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """No choice meets the SLOs (or none exists): reject before any prefill work."""

    reason: str
    retry_after_s: float


class Policy(Protocol):
    """Chooses a prefill and a decode instance for one request. Pure: the same views
    (and, for stateful baselines, the same history) give the same answer."""

    name: PolicyName

    def choose(
        self,
        request: RequestView,
        prefills: Sequence[PrefillView],
        decodes: Sequence[DecodeView],
        now: float,
    ) -> Decision | Rejection: ...


NO_INSTANCE_RETRY_S = 1.0  # a lost instance takes seconds to come back or be replaced


def unavailable(prefills: Sequence[PrefillView], decodes: Sequence[DecodeView]) -> Rejection | None:
    """The rejection every policy gives when a side has no healthy instance, else None."""
    for role, views in ((WorkerRole.PREFILL, prefills), (WorkerRole.DECODE, decodes)):
        if not any(v.healthy for v in views):
            return Rejection(
                f"no healthy {role} instance ({len(views)} known)", NO_INSTANCE_RETRY_S
            )
    return None
