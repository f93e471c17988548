"""The scheduler side of the vLLM connector: which blocks each request loads from the
store, and which tokens each step computes (whose full blocks the worker saves).

vLLM's scheduler asks, per waiting request, how many tokens the store holds beyond its
own prefix-cache hit, then allocates pages and schedules a step. ``Planner`` keeps a
request's keys and pages between those calls and turns each step into ``StepPlan``s,
the only thing the worker is sent. A request is planned while its prompt is being
computed; decode steps cost nothing. Pure bookkeeping: no vLLM, no I/O.

The worker commits a step's saves in the background, so a request whose plans saved
blocks (``StepPlan.saves``) is held when it finishes: ``finished`` says so, vLLM keeps
its pages until the worker reports its saves done (``vllm_saves.PendingSaves``).

The instance's role (``vllm_settings.KVRole``) decides what is planned at all: a
producer's requests look nothing up (so nothing is loaded), a consumer's plans never
save (so its requests are never held).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.types import BlockKey


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One request's transfers in one step (sent to the worker, so plain and picklable)."""

    req_id: str
    keys: tuple[BlockKey, ...]  # of the prompt's full blocks
    block_ids: tuple[int, ...]  # the request's pages, in position order
    num_prompt_tokens: int
    start: int  # the first token this step computes
    num_tokens: int  # prompt tokens this step computes
    load_first: int = 0  # blocks [load_first, load_first + load_count) come from the store
    load_count: int = 0
    saves: bool = False  # the step completes full blocks: the worker saves them

    @property
    def ends_prompt(self) -> bool:
        """The step computes the prompt's last token (its answer's first follows)."""
        return self.start + self.num_tokens >= self.num_prompt_tokens


@dataclass
class _Request:
    keys: tuple[BlockKey, ...]
    num_prompt_tokens: int
    have_blocks: int = 0  # vLLM's own prefix-cache hit, in blocks
    load_count: int = 0  # blocks to load before the next step
    block_ids: list[int] = field(default_factory=list)
    saved: bool = False  # a plan that saves was sent: the worker may still be saving


class Planner:
    def __init__(self, block_tokens: int, *, loads: bool = True, saves: bool = True) -> None:
        """``loads``/``saves``: whether the instance's requests load from the store, and
        save to it (its ``KVRole``)."""
        self.block_tokens = block_tokens
        self._loads = loads
        self._saves = saves
        self._requests: dict[str, _Request] = {}

    def lookup_keys(
        self, req_id: str, keys: Sequence[BlockKey], num_prompt_tokens: int, have_tokens: int
    ) -> tuple[BlockKey, ...]:
        """Note a waiting request (``keys``: its prompt's full blocks) and vLLM's hit;
        the keys worth looking up: past the hit, never the block of the last prompt
        token (vLLM always computes it); none when the instance never loads."""
        request = self._requests.get(req_id)
        if request is None:
            request = _Request(tuple(keys), num_prompt_tokens)
            self._requests[req_id] = request
        request.have_blocks = have_tokens // self.block_tokens
        reusable = (num_prompt_tokens - 1) // self.block_tokens
        if not self._loads or request.have_blocks >= reusable:
            return ()
        return request.keys[:reusable]

    def is_known(self, req_id: str) -> bool:
        return req_id in self._requests

    def will_load(self, req_id: str, num_tokens: int) -> None:
        """vLLM allocated pages for ``num_tokens`` tokens from the store."""
        request = self._requests.get(req_id)
        if request is not None:
            request.load_count = num_tokens // self.block_tokens

    def scheduled(
        self,
        req_id: str,
        new_block_ids: Sequence[int] | None,
        num_computed_tokens: int,
        num_scheduled_tokens: int,
        *,
        replace_blocks: bool = False,
    ) -> StepPlan | None:
        """A step schedules ``num_scheduled_tokens`` of the request from
        ``num_computed_tokens`` on (its store load counted as computed); its plan, or
        None once the prompt is computed. ``replace_blocks``: the pages are all new (a
        new or resumed request), not appended."""
        request = self._requests.get(req_id)
        if request is None:
            return None
        if replace_blocks:
            request.block_ids = list(new_block_ids or ())
        elif new_block_ids:
            request.block_ids.extend(new_block_ids)
        count, request.load_count = request.load_count, 0
        num_tokens = min(num_scheduled_tokens, request.num_prompt_tokens - num_computed_tokens)
        if num_tokens <= 0:
            return None
        first = num_computed_tokens // self.block_tokens
        last = min((num_computed_tokens + num_tokens) // self.block_tokens, len(request.keys))
        saves = self._saves and last > first
        request.saved |= saves
        return StepPlan(
            req_id,
            request.keys,
            tuple(request.block_ids),
            request.num_prompt_tokens,
            num_computed_tokens,
            num_tokens,
            load_first=request.have_blocks if count else 0,
            load_count=count,
            saves=saves,
        )

    def finished(self, req_id: str) -> bool:
        """Forget the request; whether its pages must wait for the worker's saves (a
        plan that saves blocks was sent)."""
        request = self._requests.pop(req_id, None)
        return request is not None and request.saved

    @property
    def num_requests(self) -> int:
        return len(self._requests)
