"""The vLLM connector's asynchronous saves without vLLM: the scheduler holds exactly the
requests the worker reports, and the worker reports each once, when its saves are done."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from kvstore.integrations.vllm_plan import Planner
from kvstore.integrations.vllm_saves import PendingSaves
from kvstore.types import BlockKey

B = 32
KEYS = tuple(BlockKey(bytes([i]) * 16) for i in range(10))  # a 330-token prompt's blocks


def save() -> Future[None]:
    return Future()


def test_a_plan_saves_when_its_step_completes_a_full_prompt_block() -> None:
    planner = Planner(B)
    planner.lookup_keys("r", KEYS, 330, 0)
    first = planner.scheduled("r", list(range(11)), 0, 20, replace_blocks=True)
    assert first is not None and not first.saves  # tokens 0-19: no block is full yet
    second = planner.scheduled("r", None, 20, 100)
    assert second is not None and second.saves  # blocks 0-3 complete
    last = planner.scheduled("r", None, 320, 10)
    assert last is not None and not last.saves  # the partial tail block is never saved
    assert planner.finished("r") is True  # a save was planned: hold its pages


def test_a_request_that_never_saved_is_freed_at_once() -> None:
    planner = Planner(B)
    planner.lookup_keys("r", KEYS, 330, 0)
    assert planner.scheduled("r", [1], 0, 20, replace_blocks=True) is not None
    assert planner.finished("r") is False
    assert planner.finished("unknown") is False  # aborted before it was ever looked up
    # vLLM already holds the whole prompt: nothing to save, nothing to hold
    planner.lookup_keys("s", KEYS, 330, 320)
    assert planner.scheduled("s", list(range(11)), 320, 10, replace_blocks=True) is not None
    assert planner.finished("s") is False


def test_a_finished_request_is_reported_once_when_all_its_saves_are_done() -> None:
    saves: PendingSaves[Future[None]] = PendingSaves()
    saves.expect("r")
    one, two = save(), save()
    saves.add("r", one)
    assert saves.last("r") is one
    saves.add("r", two)
    assert saves.last("r") is two and saves.in_flight() == [one, two]
    assert saves.finished(set()) == set()  # running: never reported
    one.set_result(None)
    assert saves.finished({"r"}) == set()  # finished, one save still in flight
    two.set_result(None)
    assert saves.last("r") is None and saves.in_flight() == []
    assert saves.finished(set()) == {"r"}  # vLLM was told earlier: reported now
    assert saves.finished({"r"}) == set() and saves.num_held == 0  # and only once


def test_a_held_request_without_saves_is_reported_as_soon_as_it_finishes() -> None:
    saves: PendingSaves[Future[None]] = PendingSaves()
    saves.expect("r")  # its save never started (the store was down, or a load failed)
    assert saves.finished({"r", "never-held"}) == {"r"}
    assert saves.finished({"never-held"}) == set() and saves.num_held == 0


def test_a_request_that_only_loads_is_never_reported() -> None:
    saves: PendingSaves[Future[None]] = PendingSaves()
    with pytest.raises(AssertionError, match="no plan that saves"):
        saves.add("loads-only", save())  # its plans never saved: vLLM does not hold it
    assert saves.finished({"loads-only"}) == set() and saves.num_held == 0


def test_done_saves_are_forgotten_while_a_long_request_runs() -> None:
    saves: PendingSaves[Future[None]] = PendingSaves()
    saves.expect("r")
    for _ in range(100):
        done = save()
        done.set_result(None)
        saves.add("r", done)
    saves.add("r", save())
    assert len(saves.in_flight()) == 1


def test_scheduler_and_worker_agree_on_every_request_through_preemption_and_abort() -> None:
    """vLLM's steps, replayed: the scheduler plans, the worker expects what it is sent and
    starts saves; requests finish or are aborted. The scheduler holds exactly the requests
    the worker reports (a held request never reported would keep its pages forever; a
    reported one not held would be freed twice: vLLM asserts)."""
    planner = Planner(B)
    worker: PendingSaves[Future[None]] = PendingSaves()
    started: list[Future[None]] = []

    def step(req_id: str, start: int, n: int, blocks: list[int] | None, *, new: bool) -> None:
        plan = planner.scheduled(req_id, blocks, start, n, replace_blocks=new)
        if plan is not None and plan.saves:
            worker.expect(req_id)
            started.append(save())
            worker.add(req_id, started[-1])

    for req_id in ("done", "aborted", "preempted", "short", "loaded"):
        planner.lookup_keys(req_id, KEYS, 330 if req_id != "short" else 20, 0)
    planner.will_load("loaded", 10 * B)  # all its full blocks come from the store
    step("loaded", 10 * B, 10, list(range(70, 81)), new=True)  # loads, saves nothing
    step("done", 0, 330, list(range(11)), new=True)
    step("aborted", 0, 64, [20, 21], new=True)  # chunked prefill, aborted after a chunk
    step("preempted", 0, 128, [30, 31, 32, 33], new=True)
    step("preempted", 0, 330, list(range(40, 51)), new=True)  # resumed: computed again
    step("short", 0, 20, [60], new=True)  # no full block: never saved
    everyone = {"done", "aborted", "preempted", "short", "loaded"}
    held = {r for r in everyone if planner.finished(r)}
    assert held == {"done", "aborted", "preempted"}
    reported = worker.finished(everyone)
    assert reported == set()  # saves in flight: vLLM keeps the pages
    for future in started:
        future.set_result(None)
    assert worker.finished(set()) == held
