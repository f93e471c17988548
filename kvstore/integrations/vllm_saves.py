"""The worker side's asynchronous saves: which finished requests vLLM may free.

A step's saves commit in the background (``KVConnector.commit_later``), so a step never
waits for the store. vLLM's contract for that::

    scheduler: request_finished(request) -> (True, None)   # keep its pages for now
    worker:    get_finished(finished_req_ids) -> ({req_id, ...}, None)
               # saves done: vLLM frees the pages (once, and only ids it was told of)

Both sides decide from the same fact, so they always agree: a request is held exactly
when the scheduler sent the worker a plan that saves blocks (``StepPlan.saves``); the
scheduler remembers it (``Planner.finished``), the worker ``expect``s it on receiving the
plan. vLLM sends each plan to the worker in the step it is made, and tells the worker a
request finished (``finished_req_ids``) only in a later step, so the worker always knows
a held request before it hears that it finished.

``PendingSaves`` is pure bookkeeping (no vLLM, no I/O): it is given each save's future
and polls ``done()``. Invariants: an id is reported once, only after vLLM said it
finished and only when every save of it is done; ids vLLM never had held are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class Done(Protocol):
    """A save in flight (a ``concurrent.futures.Future``)."""

    def done(self) -> bool: ...


S = TypeVar("S", bound=Done)


class PendingSaves(Generic[S]):
    def __init__(self) -> None:
        self._saves: dict[str, list[S]] = {}  # held requests -> saves not known done
        self._finished: set[str] = set()  # held requests vLLM said finished

    def expect(self, req_id: str) -> None:
        """A plan that saves blocks of ``req_id`` arrived: the scheduler holds it."""
        self._saves.setdefault(req_id, [])

    def add(self, req_id: str, save: S) -> None:
        """A save of a held request started (its done ones are forgotten). Only held
        requests save: reporting any other would free its pages twice."""
        if req_id not in self._saves:
            raise AssertionError(f"a save of {req_id}, which no plan that saves named")
        saves = [s for s in self._saves[req_id] if not s.done()]
        self._saves[req_id] = [*saves, save]

    def last(self, req_id: str) -> S | None:
        """The request's latest save still in flight (the next one commits after it)."""
        saves = [s for s in self._saves.get(req_id, ()) if not s.done()]
        return saves[-1] if saves else None

    def finished(self, req_ids: Iterable[str]) -> set[str]:
        """vLLM says ``req_ids`` finished; the held ones whose saves are all done now
        (each reported once: vLLM frees their pages)."""
        self._finished.update(r for r in req_ids if r in self._saves)
        ready = {r for r in self._finished if all(s.done() for s in self._saves[r])}
        for req_id in ready:
            del self._saves[req_id]
        self._finished -= ready
        return ready

    def in_flight(self) -> list[S]:
        """Every save not done yet (what shutdown waits for)."""
        return [s for saves in self._saves.values() for s in saves if not s.done()]

    @property
    def num_held(self) -> int:
        return len(self._saves)
