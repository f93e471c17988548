import functools

import pytest

from engine.sim.events import EventQueue
from engine.sim.host import Host
from engine.sim.prefill import PrefillInstance, PrefillJob, PrefillWork
from tests.engine.sim.helpers import COSTS

# COSTS: a prefill pass costs 1 ms + 1 ms a token.


def jobs(
    instance: PrefillInstance, events: EventQueue, works: list[PrefillWork]
) -> dict[int, float]:
    """Submit one job per work at time 0, in order; returns job index -> finish time."""
    ends: dict[int, float] = {}

    def submit(i: int, work: PrefillWork) -> None:
        def begin() -> PrefillWork:
            return work

        def end() -> None:
            ends[i] = events.now

        predicted_s = COSTS.prefill_s(work.computed_tokens, work.cached_tokens)
        instance.submit(PrefillJob(predicted_s, begin, end))

    for i, work in enumerate(works):
        events.at(0.0, functools.partial(submit, i, work))
    events.run()
    return ends


def test_one_at_a_time_each_prompt_pays_its_own_pass() -> None:
    events = EventQueue()
    instance = PrefillInstance("p", events, COSTS)
    ends = jobs(instance, events, [PrefillWork(10, 0, 0.0), PrefillWork(20, 0, 0.0)])
    assert ends == {0: pytest.approx(0.011), 1: pytest.approx(0.032)}
    assert instance.busy_s == pytest.approx(0.032)


def test_a_batched_burst_shares_one_pass_and_finishes_together() -> None:
    events = EventQueue()
    instance = PrefillInstance("p", events, COSTS, chunk_tokens=100, max_batch_tokens=100)
    ends = jobs(instance, events, [PrefillWork(10, 0, 0.0), PrefillWork(20, 0, 0.0)])
    # the first joins the idle instance at once and runs alone (11 ms); the second
    # joins at the next pass (running prompts have < 100 tokens left), alone: 21 ms
    assert ends == {0: pytest.approx(0.011), 1: pytest.approx(0.032)}


def test_waiting_prompts_join_a_pass_within_the_token_budget() -> None:
    events = EventQueue()
    instance = PrefillInstance("p", events, COSTS, chunk_tokens=30, max_batch_tokens=40)
    busy = PrefillWork(5, 0, 0.0)
    ends = jobs(instance, events, [busy, PrefillWork(50, 0, 0.0), PrefillWork(20, 0, 0.0)])
    # pass 1 (0-6 ms): the first prompt alone (1 + 5 ms). The second joins then; with
    # its 50 tokens left (>= 40) the third waits. Pass 2: 30 of the second (31 ms).
    # Pass 3: the third joins (20 left < 40): 20 of each in one forward, 1 + 40 ms;
    # both finish at 78 ms
    assert ends == {0: pytest.approx(0.006), 1: pytest.approx(0.078), 2: pytest.approx(0.078)}
    assert instance.busy_s == pytest.approx(0.078)


def test_a_pass_lasts_at_least_a_new_prompts_load() -> None:
    events = EventQueue()
    instance = PrefillInstance("p", events, COSTS, chunk_tokens=100, max_batch_tokens=100)
    ends = jobs(instance, events, [PrefillWork(5, 20, 0.5)])
    assert ends == {0: pytest.approx(0.5)}


def test_on_a_shared_host_a_pass_waits_for_its_share_of_the_cores() -> None:
    events = EventQueue()
    host = Host(1, events)
    instance = PrefillInstance("p", events, COSTS, host=host)

    def other_work() -> None:  # another instance's 11 ms on the same host
        host.run(0.011, lambda _: None)

    events.at(0.0, other_work)
    ends = jobs(instance, events, [PrefillWork(10, 0, 0.0)])
    assert ends == {0: pytest.approx(0.022)}  # 11 ms of work at half a core


def test_the_router_sees_the_work_left() -> None:
    events = EventQueue()
    instance = PrefillInstance("p", events, COSTS, chunk_tokens=10, max_batch_tokens=10)
    seen: list[float] = []
    events.at(0.005, lambda: seen.append(instance.queued_s()))
    jobs(instance, events, [PrefillWork(30, 0, 0.0)])
    # at 5 ms into the first 11 ms pass: 6 ms of it left, then 20 tokens in passes of
    # 10 (predicted 1 ms + 20 ms by prefill_s(20, 10))
    assert seen == [pytest.approx(0.006 + 0.021)]
