"""The supervisor of ``kvengine up``'s children, with fake processes: restart with
back-off, nothing restarted after ``stop``."""

from __future__ import annotations

import threading
import time

from engine.router.supervisor import RestartBackOff, Supervisor


class FakeChild:
    def __init__(self) -> None:
        self.code: int | None = None
        self.stopped = False

    def poll(self) -> int | None:
        return self.code

    def stop(self) -> None:
        self.stopped = True


def test_back_off_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    back_off = RestartBackOff(initial_s=0.5, max_s=4.0, stable_s=60.0)
    assert [back_off.next_delay_s(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert back_off.next_delay_s(61.0) == 0.5


def test_a_dead_child_is_replaced_and_none_after_stop() -> None:
    first = FakeChild()
    started: list[FakeChild] = []

    def start(stopping: threading.Event) -> FakeChild:
        started.append(FakeChild())
        return started[-1]

    supervisor = Supervisor(interval_s=0.01)
    supervisor.watch("worker", first, start, RestartBackOff(initial_s=0.01))
    supervisor.begin()
    first.code = -9
    deadline = time.monotonic() + 5
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started) == 1 and supervisor.restarts() == {"worker": 1}
    (current,) = supervisor.stop()
    assert current is started[0]
    current.code = -9  # dies after stop: stays dead
    time.sleep(0.05)
    assert len(started) == 1
