"""The shared compute device: one forward pass at a time, turns in arrival order."""

from __future__ import annotations

import threading
import time

from engine.workers.device import Device


def test_turns_are_exclusive_and_first_come_first_served() -> None:
    device = Device()
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with device.turn():
            holding.set()
            time.sleep(0.2)
            order.append("first")

    def waiter(name: str, delay: float) -> None:
        time.sleep(delay)
        with device.turn():
            order.append(name)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert holding.wait(5)
    threads += [
        threading.Thread(target=waiter, args=(name, 0.02 * i)) for i, name in enumerate("abc")
    ]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(5)
    assert order == ["first", "a", "b", "c"]


def test_a_holder_cannot_cut_in_front_of_waiters() -> None:
    device = Device()
    order: list[str] = []
    waiting = threading.Event()

    def other() -> None:
        waiting.set()
        with device.turn():
            order.append("other")

    with device.turn():
        thread = threading.Thread(target=other)
        thread.start()
        assert waiting.wait(5)
        time.sleep(0.05)  # the other thread is queued now
    with device.turn():  # the same thread again: behind the waiter
        order.append("again")
    thread.join(5)
    assert order == ["other", "again"]
