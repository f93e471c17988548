import functools
from collections.abc import Callable

import pytest

from engine.sim.events import EventQueue
from engine.sim.host import Host


def start(host: Host, work_s: float, on_done: Callable[[float], None]) -> None:
    host.run(work_s, on_done)


def test_work_alone_takes_its_own_time() -> None:
    events = EventQueue()
    host = Host(2, events)
    walls: list[float] = []
    events.at(1.0, lambda: start(host, 0.5, walls.append))
    events.run()
    assert walls == [pytest.approx(0.5)]
    assert events.now == pytest.approx(1.5)


def test_three_items_on_two_cores_share_them_until_one_ends() -> None:
    events = EventQueue()
    host = Host(2, events)
    ends: dict[str, float] = {}

    def start(name: str, work_s: float) -> None:
        host.run(work_s, lambda wall_s: ends.__setitem__(name, wall_s))

    events.at(0.0, lambda: start("a", 1.0))
    events.at(0.0, lambda: start("b", 1.0))
    events.at(0.0, lambda: start("c", 0.2))
    events.run()
    # three items at 2/3 each: c's 0.2 s of work ends at 0.3 s; a and b have done 0.2
    # and run alone on a core each from then: 0.8 s more, ending at 1.1 s
    assert ends == {"c": pytest.approx(0.3), "a": pytest.approx(1.1), "b": pytest.approx(1.1)}


def test_an_item_started_later_slows_the_running_ones_from_then_on() -> None:
    events = EventQueue()
    host = Host(1, events)
    ends: dict[str, float] = {}
    first = host.run(1.0, lambda wall_s: ends.__setitem__("first", wall_s))
    events.at(0.5, lambda: start(host, 0.25, lambda wall_s: ends.__setitem__("second", wall_s)))
    events.at(0.6, lambda: ends.__setitem__("left at 0.6", host.work_left_s(first)))
    events.run()
    # one core: the first does 0.5 alone, then both at half speed; the second's 0.25
    # takes 0.5 s (ends at 1.0), the first has 0.25 left then, alone again: ends at 1.25
    assert ends["left at 0.6"] == pytest.approx(0.45)
    assert ends["second"] == pytest.approx(0.5)
    assert ends["first"] == pytest.approx(1.25)
    assert host.work_left_s(first) == 0.0


def test_a_host_has_cores() -> None:
    with pytest.raises(ValueError, match="a host has cores"):
        Host(0, EventQueue())


def test_pinned_items_share_only_their_own_core() -> None:
    """Two prefill workers pinned to a core each and an unpinned decode step: the step
    lands on core 0 (fewest items, the first on a tie) and shares it with that worker,
    at half speed, while the other worker keeps its core."""
    events = EventQueue()
    host = Host(2, events, per_core=2)
    ends: dict[str, float] = {}

    def start(name: str, work_s: float, core: int | None) -> None:
        host.run(work_s, lambda wall_s: ends.__setitem__(name, wall_s), core)

    events.at(0.0, lambda: start("prefill-0", 1.0, 0))
    events.at(0.0, lambda: start("prefill-1", 1.0, 1))
    events.at(0.0, lambda: start("step", 0.2, None))
    events.run()
    # core 0: both at 1/2; the step's 0.2 ends at 0.4, prefill-0 has 0.8 left, ends at 1.2
    assert ends == {
        "step": pytest.approx(0.4),
        "prefill-0": pytest.approx(1.2),
        "prefill-1": pytest.approx(1.0),
    }


def test_an_unpinned_item_takes_an_idle_core_and_a_share_counts_per_core() -> None:
    events = EventQueue()
    host = Host(1.6, events, per_core=2)  # two cores, 0.8 of each left by other processes
    ends: dict[str, float] = {}
    events.at(0.0, lambda: host.run(0.8, lambda w: ends.__setitem__("pinned", w), 2))  # core 0
    events.at(0.0, lambda: host.run(0.4, lambda w: ends.__setitem__("anywhere", w)))
    events.run()
    assert ends == {"pinned": pytest.approx(1.0), "anywhere": pytest.approx(0.5)}


def test_side_work_is_free_beside_an_idle_core_and_slows_a_crowded_host() -> None:
    """Each item brings a quarter of its work as side work (its store node, its RPCs):
    alone, that runs on the idle core and the item ends on its own time, as when it was
    profiled; with both cores busy, each side item shares a core with the other worker."""
    walls: dict[int, float] = {}

    def run(pinned: list[int]) -> dict[int, float]:
        events = EventQueue()
        host = Host(2, events, per_core=2)
        walls.clear()
        for core in pinned:
            done = functools.partial(walls.__setitem__, core)
            events.at(0.0, functools.partial(host.run, 1.0, done, core, side_s=0.25))
        events.run()
        return dict(walls)

    assert run([0]) == {0: pytest.approx(1.0)}
    # core 0: worker 0 and worker 1's side item, core 1 the reverse: the side items'
    # 0.25 take 0.5 s at half speed, then the workers' 0.75 left run alone
    assert run([0, 1]) == {0: pytest.approx(1.25), 1: pytest.approx(1.25)}
