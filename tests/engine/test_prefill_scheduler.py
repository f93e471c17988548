"""The prefill worker's scheduler: exact step plans, pass after pass.

Jobs here are the prompts themselves (``admit`` hands them back, or refuses or fails
them), so each plan reads as ``[(name, tokens this pass), ...]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.workers.prefill_scheduler import PrefillScheduler, StepPlan


@dataclass(eq=False)
class Prompt:
    name: str
    num_tokens: int
    position: int = 0  # tokens reused from a cache before the first pass, then computed


@dataclass
class Admit:
    """The worker's ``admit``: refuses (no room) or fails the prompts it is told to."""

    refuse: set[str] = field(default_factory=set)
    fail: dict[str, Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, job: Prompt) -> Prompt | None:
        self.calls.append(job.name)
        if job.name in self.fail:
            raise self.fail[job.name]
        return None if job.name in self.refuse else job


Plan = StepPlan[Prompt, Prompt]


def scheduler(*prompts: Prompt, chunk: int, budget: int) -> PrefillScheduler[Prompt, Prompt]:
    s: PrefillScheduler[Prompt, Prompt] = PrefillScheduler(
        chunk_tokens=chunk, max_batch_tokens=budget
    )
    for p in prompts:
        s.add(p)
    return s


def chunks(plan: Plan) -> list[tuple[str, int]]:
    return [(p.name, n) for p, n in plan.chunks]


def names(prompts: Sequence[Prompt]) -> list[str]:
    return [p.name for p in prompts]


def test_prompts_are_chunked_by_chunk_tokens_within_max_batch_tokens() -> None:
    a, b, c = Prompt("a", 9), Prompt("b", 9), Prompt("c", 5)
    s = scheduler(a, b, c, chunk=8, budget=10)

    plan = s.schedule(Admit())  # a (9 left) is under the budget, so b joins; then it is full
    assert names(plan.admitted) == ["a", "b"] and names(s.waiting) == ["c"]
    assert chunks(plan) == [("a", 8), ("b", 2)] and plan.num_tokens == 10
    assert s.advance(plan) == []

    plan = s.schedule(Admit())  # 1 + 7 tokens left: c joins, and gets what remains
    assert names(plan.admitted) == ["c"]
    assert chunks(plan) == [("a", 1), ("b", 7), ("c", 2)]
    assert s.advance(plan) == [a, b]

    plan = s.schedule(Admit())
    assert chunks(plan) == [("c", 3)]
    assert s.advance(plan) == [c]
    assert s.running == [] and not s.waiting
    assert chunks(s.schedule(Admit())) == []


def test_an_idle_worker_admits_one_prompt_however_long() -> None:
    s = scheduler(Prompt("long", 100), Prompt("short", 1), chunk=4, budget=8)
    plan = s.schedule(Admit())
    assert names(plan.admitted) == ["long"] and chunks(plan) == [("long", 4)]
    assert names(s.waiting) == ["short"]  # arrival order: it does not jump the queue


def test_waiting_prompts_join_once_the_running_ones_have_less_than_a_batch_left() -> None:
    s = scheduler(Prompt("a", 20), Prompt("b", 1), chunk=4, budget=8)
    admit = Admit()
    admitted, plans = [], []
    for _ in range(5):
        plan = s.schedule(admit)
        admitted.append(names(plan.admitted))
        plans.append(chunks(plan))
        s.advance(plan)
    # b waits while a has 16, 12 and 8 tokens left; it joins once a has 4 (< 8)
    assert admitted == [["a"], [], [], [], ["b"]]
    assert plans == [[("a", 4)], [("a", 4)], [("a", 4)], [("a", 4)], [("a", 4), ("b", 1)]]
    assert admit.calls == ["a", "b"]  # nobody is asked while the batch is full


def test_a_short_prompt_behind_a_long_one_does_not_skip_the_queue() -> None:
    s = scheduler(
        Prompt("a", 3), Prompt("b", 4), Prompt("c", 5), Prompt("d", 1), chunk=10, budget=10
    )
    plan = s.schedule(Admit())
    assert names(plan.admitted) == ["a", "b", "c"]  # 3 + 4 < 10: c joins; then 12 >= 10
    assert names(s.waiting) == ["d"]  # d would fit, but it came after c
    assert chunks(plan) == [("a", 3), ("b", 4), ("c", 3)]
    assert names(s.advance(plan)) == ["a", "b"]

    plan = s.schedule(Admit())
    assert names(plan.admitted) == ["d"] and chunks(plan) == [("c", 2), ("d", 1)]


def test_a_prompt_without_room_keeps_its_place_and_later_prompts_wait_behind_it() -> None:
    s = scheduler(Prompt("a", 2), Prompt("b", 2), Prompt("c", 2), chunk=8, budget=16)
    admit = Admit(refuse={"b"})
    plan = s.schedule(admit)
    assert names(plan.admitted) == ["a"] and chunks(plan) == [("a", 2)]
    assert names(s.waiting) == ["b", "c"]  # head of line: c is not even asked
    assert admit.calls == ["a", "b"]
    assert not plan.blocked  # a runs, so the worker is not stuck
    assert names(s.advance(plan)) == ["a"]

    plan = s.schedule(admit)  # nothing runs and b still finds no room: blocked
    assert plan.blocked and chunks(plan) == [] and names(s.waiting) == ["b", "c"]

    admit.refuse.clear()  # pages came back
    plan = s.schedule(admit)
    assert names(plan.admitted) == ["b", "c"] and not plan.blocked
    assert chunks(plan) == [("b", 2), ("c", 2)]


def test_a_prompt_whose_admission_fails_fails_alone() -> None:
    error = ValueError("prompt b is broken")
    s = scheduler(Prompt("a", 2), Prompt("b", 2), Prompt("c", 2), chunk=8, budget=16)
    plan = s.schedule(Admit(fail={"b": error}))
    assert [(job.name, exc) for job, exc in plan.failed] == [("b", error)]
    assert names(plan.admitted) == ["a", "c"] and chunks(plan) == [("a", 2), ("c", 2)]
    assert not s.waiting and names(s.running) == ["a", "c"]
    assert not plan.blocked


def test_a_failed_admission_does_not_count_against_the_batch() -> None:
    s = scheduler(Prompt("bad", 50), Prompt("a", 50), chunk=4, budget=8)
    plan = s.schedule(Admit(fail={"bad": RuntimeError("no")}))
    assert names(plan.admitted) == ["a"] and chunks(plan) == [("a", 4)]


def test_add_first_puts_a_prompt_before_those_waiting() -> None:
    s = scheduler(Prompt("a", 2), Prompt("b", 2), chunk=8, budget=16)
    s.add_first(Prompt("again", 2))  # e.g. its cached KV was bad: it runs again first
    plan = s.schedule(Admit())
    assert names(plan.admitted) == ["again", "a", "b"]
    assert chunks(plan) == [("again", 2), ("a", 2), ("b", 2)]


def test_advance_returns_the_finished_prompts_in_order_and_keeps_the_rest() -> None:
    s = scheduler(Prompt("a", 2), Prompt("b", 8), Prompt("c", 3), chunk=4, budget=16)
    plan = s.schedule(Admit())
    assert chunks(plan) == [("a", 2), ("b", 4), ("c", 3)]
    assert names(s.advance(plan)) == ["a", "c"]  # c does not wait for b
    assert names(s.running) == ["b"] and s.num_left == 4
    assert [p.position for p in plan.admitted] == [2, 4, 3]


def test_reused_tokens_are_not_computed_nor_counted_against_the_batch() -> None:
    cached = Prompt("cached", 100, position=96)  # 96 tokens came from a cache
    s = scheduler(cached, Prompt("b", 5), chunk=8, budget=10)
    plan = s.schedule(Admit())
    assert names(plan.admitted) == ["cached", "b"]  # 4 tokens left < 10: b joins
    assert chunks(plan) == [("cached", 4), ("b", 5)]
    assert names(s.advance(plan)) == ["cached", "b"]  # both done in one pass
    assert cached.position == 100


def test_remove_takes_a_failed_prompt_out_of_the_batch() -> None:
    a = Prompt("a", 20)
    s = scheduler(a, Prompt("b", 2), chunk=4, budget=8)
    s.advance(s.schedule(Admit()))
    s.remove(a)
    s.remove(a)  # twice is harmless
    plan = s.schedule(Admit())
    assert names(plan.admitted) == ["b"] and chunks(plan) == [("b", 2)]


@pytest.mark.parametrize(("chunk", "budget"), [(0, 8), (4, 0), (-1, -1)])
def test_sizes_must_be_positive(chunk: int, budget: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        PrefillScheduler(chunk_tokens=chunk, max_batch_tokens=budget)


@settings(max_examples=60, deadline=None)
@given(
    chunk=st.integers(1, 12),
    budget=st.integers(1, 24),
    prompts=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 39)), min_size=1, max_size=8),
    arrivals=st.lists(st.integers(0, 3), min_size=1, max_size=8).filter(any),
)
def test_every_pass_fits_the_batch_and_every_running_prompt_moves_on(
    chunk: int, budget: int, prompts: list[tuple[int, int]], arrivals: list[int]
) -> None:
    """Admission only while less than a batch is left means each running prompt gets a
    chunk in every pass: none waits a pass for tokens, and each finishes exactly once."""
    jobs = [Prompt(str(i), n, min(reused, n - 1)) for i, (n, reused) in enumerate(prompts)]
    left = {p.name: p.num_tokens - p.position for p in jobs}
    s = scheduler(chunk=chunk, budget=budget)
    pending, finished, computed = list(jobs), [], dict.fromkeys(left, 0)
    for step in range(1000):
        for _ in range(arrivals[step % len(arrivals)]):
            if pending:
                s.add(pending.pop(0))
        plan = s.schedule(Admit())
        assert plan.num_tokens <= budget
        assert all(0 < n <= chunk for _, n in plan.chunks)
        assert [p for p, _ in plan.chunks] == s.running  # every running prompt moves on
        for p, n in plan.chunks:
            computed[p.name] += n
        finished += s.advance(plan)
        if not pending and not s.waiting and not s.running:
            break
    assert sorted(names(finished), key=int) == names(jobs)
    assert computed == left
