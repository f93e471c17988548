"""Layer arrivals: which layers of which incoming transfers have landed in a segment.

A writer pushes a transfer's KV layer by layer (WRITE_RANGES with a transfer id and a
layer); the receiving process awaits each layer before it uses it (``wait``), and
forgets a transfer once it is done with it. Marks come from the data-plane server once a
write's checksums matched, or from the same-process transport, which copies directly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class LayerArrivals:
    """Which layers of which incoming transfers have landed, and who waits for them."""

    done: dict[int, set[int]] = field(default_factory=dict)
    events: dict[tuple[int, int], asyncio.Event] = field(default_factory=dict)

    def mark(self, transfer_id: int, layer: int) -> None:
        self.done.setdefault(transfer_id, set()).add(layer)
        event = self.events.pop((transfer_id, layer), None)
        if event is not None:
            event.set()

    async def wait(self, transfer_id: int, layer: int, timeout_s: float) -> None:
        if layer in self.done.get(transfer_id, ()):
            return
        event = self.events.setdefault((transfer_id, layer), asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout_s)

    def forget(self, transfer_id: int) -> None:
        self.done.pop(transfer_id, None)
        for key in [k for k in self.events if k[0] == transfer_id]:
            del self.events[key]
