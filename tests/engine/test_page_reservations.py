"""The decode worker's page reservations for remote prefills: waits and quarantine."""

from __future__ import annotations

import asyncio

import pytest
import torch

from engine.kv.cache import PagedKVCache
from engine.kv.page_reservations import NoRoom, PageReservations


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(num_pages: int = 4) -> PagedKVCache:
    return PagedKVCache(
        num_pages=num_pages,
        page_tokens=4,
        num_layers=1,
        num_kv_heads=1,
        head_dim=2,
        dtype=torch.float32,
    )


def test_pages_come_at_once_when_there_is_room() -> None:
    cache = make_cache()
    pages = PageReservations(cache, quarantine_s=10, clock=FakeClock())

    got = asyncio.run(pages.allocate(3, wait_s=30))

    assert len(got) == 3 and cache.num_free == 1


def test_a_release_wakes_a_waiting_reservation_without_waiting_out_its_deadline() -> None:
    cache = make_cache()
    pages = PageReservations(cache, quarantine_s=10, clock=FakeClock())
    running = cache.allocate(3)

    async def run() -> list[int]:
        waiter = asyncio.ensure_future(pages.allocate(2, wait_s=3600))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # one page free, two wanted
        await asyncio.to_thread(cache.release, running[:1])  # from another thread
        return await asyncio.wait_for(waiter, timeout=5)

    assert len(asyncio.run(run())) == 2


def test_no_room_by_the_deadline_refuses_the_request() -> None:
    cache = make_cache()
    clock = FakeClock()
    pages = PageReservations(cache, quarantine_s=10, clock=clock)
    running = cache.allocate(3)

    async def run() -> None:
        waiter = asyncio.ensure_future(pages.allocate(4, wait_s=30))
        await asyncio.sleep(0.05)
        clock.now += 31
        cache.release(running[:1])  # wakes it: still too few pages, and too late
        with pytest.raises(NoRoom, match="no room for 4 pages within 30 s"):
            await asyncio.wait_for(waiter, timeout=5)

    asyncio.run(run())


def test_quarantined_pages_are_never_handed_out_before_their_time() -> None:
    cache = make_cache(num_pages=2)
    clock = FakeClock()
    pages = PageReservations(cache, quarantine_s=240, clock=clock)

    async def run() -> None:
        first = await pages.allocate(2, wait_s=0)
        pages.quarantine(first)  # a failed prefill might still write them
        assert pages.held_pages == 2 and cache.num_free == 0
        clock.now += 239
        with pytest.raises(NoRoom):
            await pages.allocate(1, wait_s=0)
        clock.now += 1
        again = await pages.allocate(2, wait_s=0)
        assert sorted(again) == sorted(first)
        assert pages.held_pages == 0 and pages.quarantined_pages == 2

    asyncio.run(run())


def test_a_reservation_waiting_for_quarantined_pages_gets_them_when_they_expire() -> None:
    cache = make_cache(num_pages=2)
    clock = FakeClock()
    pages = PageReservations(cache, quarantine_s=0.05, clock=clock)

    async def run() -> list[int]:
        pages.quarantine(await pages.allocate(2, wait_s=0))
        waiter = asyncio.ensure_future(pages.allocate(2, wait_s=60))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        clock.now += 1  # the quarantine ends; the waiter wakes by its own timer
        return await asyncio.wait_for(waiter, timeout=5)

    assert len(asyncio.run(run())) == 2
