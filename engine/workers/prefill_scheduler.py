"""Which prompts a prefill worker computes in its next forward pass, and how much of each.

Pure: no threads, no I/O, no clock. The worker asks for a ``StepPlan`` before each pass
and reports the pass with ``advance``:

- **Admission.** Waiting prompts join, in arrival order, while the tokens left to
  compute of the running prompts are under ``max_batch_tokens`` (one prompt is always
  admitted into an idle worker, however long). ``admit`` (the worker's) turns a prompt
  into a running one: it allocates pages and finds what is cached, so it knows how many
  tokens are left to compute; it returns None when there is no room now (the prompt keeps
  its place, and later prompts wait behind it), or raises to fail that prompt alone.
- **Chunking.** Each running prompt, in order, computes up to ``chunk_tokens`` tokens
  within what is left of the pass's ``max_batch_tokens``; a prompt that gets none waits
  for the next pass.
- A prompt whose last chunk ran is ``finished`` at once (``advance``): a short prompt
  batched with long ones does not wait for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Running(Protocol):
    """A prompt being prefilled, as the scheduler sees it."""

    @property
    def num_tokens(self) -> int: ...

    position: int  # tokens already in its pages (reused or computed)


J = TypeVar("J")
R = TypeVar("R", bound=Running)


@dataclass
class StepPlan(Generic[J, R]):
    chunks: list[tuple[R, int]] = field(default_factory=list)  # (prompt, tokens this pass)
    admitted: list[R] = field(default_factory=list)
    failed: list[tuple[J, Exception]] = field(default_factory=list)  # admission refused them
    blocked: bool = False  # prompts wait but none could be admitted for lack of room

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.chunks)


class PrefillScheduler(Generic[J, R]):
    def __init__(self, *, chunk_tokens: int, max_batch_tokens: int) -> None:
        if chunk_tokens < 1 or max_batch_tokens < 1:
            raise ValueError("chunk_tokens and max_batch_tokens must be positive")
        self.chunk_tokens = chunk_tokens
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[J] = deque()
        self.running: list[R] = []

    def add(self, job: J) -> None:
        self.waiting.append(job)

    def add_first(self, job: J) -> None:
        """A prompt that must run again before any other (e.g. its cached KV was bad)."""
        self.waiting.appendleft(job)

    def remove(self, prompt: R) -> None:
        if prompt in self.running:
            self.running.remove(prompt)

    @property
    def num_left(self) -> int:
        """Tokens the running prompts have left to compute."""
        return sum(r.num_tokens - r.position for r in self.running)

    def schedule(self, admit: Callable[[J], R | None]) -> StepPlan[J, R]:
        plan: StepPlan[J, R] = StepPlan()
        budget = self.max_batch_tokens - self.num_left
        added = 0
        while self.waiting and budget > 0 and (not plan.admitted or added < budget):
            job = self.waiting.popleft()
            try:
                prompt = admit(job)
            except Exception as exc:
                plan.failed.append((job, exc))
                continue
            if prompt is None:
                self.waiting.appendleft(job)
                plan.blocked = not self.running and not plan.admitted
                break
            plan.admitted.append(prompt)
            self.running.append(prompt)
            added += prompt.num_tokens - prompt.position
        budget = self.max_batch_tokens
        for prompt in self.running:
            n = min(self.chunk_tokens, prompt.num_tokens - prompt.position, budget)
            if n > 0:
                plan.chunks.append((prompt, n))
                budget -= n
        return plan

    def advance(self, plan: StepPlan[J, R]) -> list[R]:
        """The pass ran: move each prompt on; the prompts now complete leave and are
        returned, in order."""
        finished = []
        for prompt, n in plan.chunks:
            prompt.position += n
            if prompt.position >= prompt.num_tokens:
                finished.append(prompt)
                self.running.remove(prompt)
        return finished
