from engine.sim.events import EventQueue


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    events = EventQueue()
    seen: list[tuple[float, str]] = []
    events.at(2.0, lambda: seen.append((events.now, "b")))
    events.at(1.0, lambda: seen.append((events.now, "a")))
    events.at(2.0, lambda: seen.append((events.now, "c")))
    events.at(1.0, lambda: events.after(0.5, lambda: seen.append((events.now, "nested"))))
    events.run()
    assert seen == [(1.0, "a"), (1.5, "nested"), (2.0, "b"), (2.0, "c")]
    assert events.num_events == 5


def test_an_event_in_the_past_runs_now() -> None:
    events = EventQueue()
    seen: list[float] = []
    events.at(3.0, lambda: events.at(1.0, lambda: seen.append(events.now)))
    events.run()
    assert seen == [3.0]
