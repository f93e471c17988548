"""The request the connector tests run, and one forward pass over it.

14 tokens in blocks of 4 (``caches.SPEC``): 3 full blocks (``KEYS``) and 2 more tokens,
over 4 pages of the cache (``PAGES``, in position order).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.connector.worker import KVConnector, RequestKV
from kvstore.types import BlockKey
from tests.kvstore.connector.caches import SPEC

TOKENS = 14
PAGES = [5, 2, 0, 3]


def key(name: str) -> BlockKey:
    return BlockKey(name.encode().ljust(16, b"\0"))


KEYS = [key("k0"), key("k1"), key("k2")]


def run_pass(connector: KVConnector, items: Sequence[tuple[RequestKV, int, int]]) -> None:
    """One forward pass: every layer, with the connector's hooks around it."""
    hooks = connector.step(items)
    for layer in range(SPEC.num_layers):
        hooks.before_layer(layer)
        hooks.after_layer(layer)
    hooks.done()
