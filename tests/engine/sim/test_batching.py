import pytest

from engine.sim.batching import BatchInstance, Sequence, slowest_mean
from engine.sim.events import EventQueue
from engine.sim.host import Host
from tests.engine.sim.helpers import COSTS

# COSTS: a decode step of b sequences takes 10 ms + 1 ms x b; prefill 1 ms + 1 ms a token.


def instance(events: EventQueue, host: Host | None = None, **kwargs: int) -> BatchInstance:
    settings = {"max_batch": 8, "kv_capacity_tokens": 10_000, "chunk_tokens": 100} | kwargs
    return BatchInstance("i", events, COSTS, host=host, **settings)


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


def test_every_token_interval_counts_once_per_sequence() -> None:
    events = EventQueue()
    batch = instance(events)
    for output in (4, 2):
        seq = Sequence(10, output)
        seq.first_token_s = 0.0
        events.at(0.0, lambda s=seq: batch.submit(s, prefilled=True))
    events.run()
    # the 4-token one starts alone (11 ms); the 2-token one joins at its end, waits
    # 11 ms and takes a step of two (12 ms), which ends it; the 4-token one's last
    # token comes from a step alone (11 ms). Its intervals: 11 (its first: no wait),
    # 12, 11 ms; the other's: 11 + 12 = 23 ms.
    assert batch.durations == pytest.approx([0.011, 0.012, 0.011])
    values, weights = batch.intervals()
    pooled = sorted(v for v, w in zip(values, weights, strict=True) for _ in range(w))
    assert pooled == pytest.approx([0.011, 0.011, 0.012, 0.023])


def test_on_a_shared_host_a_step_lasts_longer_while_other_work_runs() -> None:
    events = EventQueue()
    host = Host(1, events)
    batch = instance(events, host=host)
    done: list[float] = []
    seq = Sequence(10, 3, on_done=lambda t, _: done.append(t))
    seq.first_token_s = 0.0
    events.at(0.0, lambda: batch.submit(seq, prefilled=True))

    def other_work() -> None:  # another instance's 11 ms on the same host
        host.run(0.011, lambda _: None)

    events.at(0.0, other_work)
    events.run()
    # the first 11 ms step shares the one core with 11 ms of other work: 22 ms; the
    # second runs alone: 11 ms
    assert batch.durations == pytest.approx([0.022, 0.011])
    assert done == [pytest.approx(0.033)]
