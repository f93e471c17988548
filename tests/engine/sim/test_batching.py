import pytest

from engine.sim.batching import BatchInstance, Sequence, slowest_mean
from engine.sim.events import EventQueue
from tests.engine.sim.helpers import COSTS

# COSTS: a decode step of b sequences takes 10 ms + 1 ms x b; prefill 1 ms + 1 ms a token.


def instance(events: EventQueue, **kwargs: int) -> BatchInstance:
    settings = {"max_batch": 8, "kv_capacity_tokens": 10_000, "chunk_tokens": 100} | kwargs
    return BatchInstance("i", events, COSTS, **settings)


def test_a_handed_off_sequence_decodes_one_token_a_step() -> None:
    events = EventQueue()
    batch = instance(events)
    done: list[tuple[float, float]] = []
    seq = Sequence(10, 4, on_done=lambda t, tbt: done.append((t, tbt)))
    events.at(1.0, lambda: batch.submit(seq, prefilled=True))
    seq.first_token_s = 0.5  # the prefill ended at 0.5; the hand-off took 0.5 s
    events.run()
    # three decode steps of 11 ms each after joining at 1.0
    assert done[0][0] == pytest.approx(1.033)
    # intervals: 0.5 + 0.011 (hand-off, then the first step), 0.011, 0.011: slowest one
    assert done[0][1] == pytest.approx(0.511)
    assert batch.durations == pytest.approx([0.011] * 3)


def test_colocated_prefill_chunks_lengthen_the_decode_steps() -> None:
    events = EventQueue()
    batch = instance(events, chunk_tokens=50)
    ttft: list[float] = []
    tbt: dict[str, float] = {}
    first = Sequence(10, 5, on_done=lambda t, x: tbt.__setitem__("first", x))
    second = Sequence(100, 2, on_first_token=ttft.append)
    events.at(0.0, lambda: batch.submit(first, prefilled=False))
    events.at(0.02, lambda: batch.submit(second, prefilled=False))
    events.run()
    # step 1: prefill of 10 tokens (11 ms); then the first decodes alone (11 ms) until
    # the second's chunks (50 + 50 tokens) share its steps: 11 + 51 - 1 = 61 ms each.
    assert batch.durations[:2] == pytest.approx([0.011, 0.011])
    assert batch.durations[2:4] == pytest.approx([0.061, 0.061])
    assert ttft == [pytest.approx(0.144)]
    assert tbt["first"] == pytest.approx(0.061)


def test_admission_waits_for_kv_room() -> None:
    events = EventQueue()
    batch = instance(events, kv_capacity_tokens=30)
    finished: list[float] = []
    for _ in range(2):
        seq = Sequence(10, 10, on_done=lambda t, _: finished.append(t))
        seq.first_token_s = 0.0
        events.at(0.0, lambda s=seq: batch.submit(s, prefilled=True))
    events.run()
    # 20 tokens each: the second waits until the first finishes (9 steps of 11 ms)
    assert finished == pytest.approx([0.099, 0.198])


def test_slowest_mean_is_the_mean_of_the_slowest_tenth() -> None:
    assert slowest_mean([]) == 0.0
    assert slowest_mean([1.0, 5.0]) == 5.0
    assert slowest_mean([float(i) for i in range(1, 21)]) == 19.5
