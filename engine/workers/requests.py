"""What travels between the engine's parts: requests, hand-offs, results, events."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import EngineError
from engine.sampling import SamplingParams


class InvalidRequest(EngineError, ValueError):
    """A request the engine refuses; the message says what is wrong with it."""


class FinishReason(enum.Enum):
    STOP = "stop"  # an EOS token, a stop token or a stop string
    LENGTH = "length"  # max_tokens, or the model's context is full
    CANCELLED = "cancelled"
    ERROR = "error"


def check_prompt(tokens: Sequence[int], *, vocab_size: int, max_context: int) -> None:
    if not tokens:
        raise InvalidRequest("prompt is empty")
    if len(tokens) >= max_context:
        raise InvalidRequest(
            f"prompt has {len(tokens)} tokens; the model's context is {max_context}"
            " (prompt and output must fit)"
        )
    bad = next((t for t in tokens if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})")


@dataclass(frozen=True)
class KVTarget:
    """Pages of a decode worker in another process: the prefill worker writes the
    request's KV there, layer by layer, through the transfer engine."""

    addresses: tuple[str, ...]  # the decode worker's data plane
    pages: tuple[int, ...]  # its pages for the prompt, in position order
    transfer_id: int
    segment: str = "kv"


@dataclass
class PrefillResult:
    first_token: int
    pages: list[int]  # the request's pages, now the caller's ([] when sent to a target)
    cached_local_tokens: int  # reused from this worker's own cache
    cached_store_tokens: int  # loaded from the store
    computed_tokens: int
    cached_remote_tokens: int = 0  # of the store's, served by another node than the worker's
    queue_s: float = 0.0
    compute_s: float = 0.0

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens reused, from anywhere."""
        return self.cached_local_tokens + self.cached_store_tokens

    def metrics(self) -> dict[str, float]:
        """What a caller is told about its prompt's reuse."""
        return {
            "cached_tokens": self.cached_tokens,
            "cached_store_tokens": self.cached_store_tokens,
            "cached_remote_tokens": self.cached_remote_tokens,
            "computed_tokens": self.computed_tokens,
            "prefill_s": self.compute_s,
        }


@dataclass(frozen=True)
class TokenEvent:
    """One step of a generation, as it streams out."""

    request_id: str
    token_ids: tuple[int, ...]  # new tokens
    text: str  # new text (held back while it could be the start of a stop string)
    finish_reason: FinishReason | None = None  # set on the last event
    error: str = ""


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    prefill_address: str = ""  # a remote prefill worker chosen for it ("": any)
    cache_salt: str = ""  # reuse KV only from requests with the same salt
    profiling: bool = False  # the router's start-up profiling: kept apart, never kept
    prefilled: PrefillResult | None = None  # set once its prompt is prefilled
