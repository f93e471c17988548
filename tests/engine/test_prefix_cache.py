"""The worker's own prefix cache: longest-run matches, shared pages, LRU eviction."""

from __future__ import annotations

import pytest
import torch

from engine.kv.cache import CacheFull, PagedKVCache
from engine.kv.prefix_cache import PrefixCache
from kvstore.types import BlockKey


def make(num_pages: int = 6) -> PrefixCache:
    cache = PagedKVCache(
        num_pages=num_pages,
        page_tokens=4,
        num_layers=1,
        num_kv_heads=1,
        head_dim=2,
        dtype=torch.float32,
    )
    return PrefixCache(cache)


def keys(*names: str) -> list[BlockKey]:
    return [BlockKey(n.encode().ljust(16, b"\0")) for n in names]


def test_match_returns_the_longest_cached_run_and_shares_it() -> None:
    prefix = make()
    pages = prefix.allocate(3)
    prefix.insert(keys("a", "b", "c"), pages)
    prefix.cache.release(pages)  # the request ended; the cache keeps them
    assert prefix.match(keys("a", "b", "x", "c")) == pages[:2]
    assert [prefix.cache.refs(p) for p in pages] == [2, 2, 1]
    assert prefix.match(keys("z")) == []


def test_allocate_evicts_unshared_pages_tail_first() -> None:
    prefix = make(num_pages=4)
    chain = prefix.allocate(3)
    prefix.insert(keys("a", "b", "c"), chain)
    prefix.cache.release(chain)
    in_use = prefix.match(keys("a"))  # a running request shares "a"
    fresh = prefix.allocate(3)  # one page is free; two are taken from the cache
    assert len(fresh) == 3 and chain[2] in fresh and chain[1] in fresh
    assert prefix.match(keys("a")) == in_use  # still cached, still shared
    with pytest.raises(CacheFull):
        prefix.allocate(1)  # only shared pages are left


def test_clear_gives_every_page_back() -> None:
    prefix = make()
    pages = prefix.allocate(2)
    prefix.insert(keys("a", "b"), pages)
    prefix.cache.release(pages)
    prefix.clear()
    assert prefix.cache.num_free == prefix.cache.num_pages and len(prefix) == 0


def test_disabled_cache_remembers_nothing() -> None:
    prefix = make()
    prefix.enabled = False
    pages = prefix.allocate(1)
    prefix.insert(keys("a"), pages)
    assert prefix.match(keys("a")) == []
