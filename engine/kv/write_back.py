"""What a finished generation leaves behind: the KV of its prompt *and* its answer.

A conversation's next turn starts with this turn's prompt and answer, so the answer's KV
is worth keeping as much as the prompt's. When a generation ends (stopped, at its length
or cancelled; not after an error), every full block of the tokens whose KV its pages hold
(the prompt and every generated token but the last, which was never fed back) is:

- taken into the prefix cache of a prefill worker sharing these pages (colocated), and
- saved to the store, from the first block the prefill did not already save, in the
  background; the pages are freed once the store has copied them. The decode worker
  sends a finished request's last event only then, so a client's next turn always
  finds the answer in the store (the decode thread itself never waits).

Pages past the last full block are freed at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

from engine.kv.cache import PagedKVCache
from kvstore.connector.worker import KVConnector
from kvstore.hashing import Namespace, prefix_keys
from kvstore.types import BlockKey


class Keeper(Protocol):
    def keep(self, keys: Sequence[BlockKey], pages: Sequence[int]) -> None:
        """Take over one reference on each of ``pages`` (full blocks ``keys``)."""
        ...


class WriteBack:
    def __init__(
        self,
        cache: PagedKVCache,
        namespace: Namespace,
        *,
        connector: KVConnector | None = None,
        keeper: Keeper | None = None,
    ) -> None:
        self.cache = cache
        self.namespace = namespace
        self.connector = connector if connector is not None and connector.store else None
        self.keeper = keeper
        self.stats = {"generations": 0, "kept_blocks": 0, "saving_blocks": 0, "saved_blocks": 0}

    def finished(
        self,
        tokens: Sequence[int],
        num_prompt_tokens: int,
        pages: Sequence[int],
        cache_salt: str = "",
    ) -> Future[int] | None:
        """A generation ended: ``tokens`` have their KV in ``pages`` (in position order).
        Takes over the caller's reference on every page. Returns the store save under
        way, if any (done once the store holds the blocks or gave up)."""
        block = self.cache.page_tokens
        keys = prefix_keys(self.namespace.id, tokens, block, cache_salt=cache_salt)
        full = list(pages[: len(keys)])
        self.cache.release(pages[len(keys) :])
        self.stats["generations"] += 1
        if not full:
            return None
        if self.keeper is not None:
            self.cache.share(full)
            self.keeper.keep(keys, full)
            self.stats["kept_blocks"] += len(full)
        first = num_prompt_tokens // block  # blocks the prefill saved already
        if self.connector is None or first >= len(keys):
            self.cache.release(full)
            return None
        parent = keys[first - 1] if first else None
        self.stats["saving_blocks"] += len(keys) - first
        saving = self.connector.save_blocks(keys[first:], full[first:], parent)
        saving.add_done_callback(lambda done: self._saved(done, full, len(keys) - first))
        return saving

    def _saved(self, done: Future[int], pages: list[int], count: int) -> None:
        self.cache.release(pages)
        self.stats["saving_blocks"] -= count
        if not done.cancelled() and done.exception() is None:
            self.stats["saved_blocks"] += done.result()
