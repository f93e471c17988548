"""The vLLM connector's counters in vLLM's own statistics (``KVConnectorStats``): each
worker reports what changed since its last report, vLLM adds the workers' reports up and
logs them with its throughput line ("KV Transfer metrics: ...").

The counters are the connector core's (``ConnectorStats``): blocks loaded from the store,
blocks that failed their checksum, blocks saved, saves that failed, store calls that
failed or were skipped while the store was down; and blocks reported to vLLM as load
errors (recomputed).
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

from kvstore.connector.backend import ConnectorStats

COUNTERS = (
    "loaded_blocks",
    "corrupted_blocks",
    "saved_blocks",
    "save_failures",
    "unreachable",
    "skipped",
    "load_error_blocks",
)


def counters(stats: ConnectorStats, load_error_blocks: int) -> dict[str, int]:
    return {
        "loaded_blocks": sum(stats.loaded_blocks.values()),
        "corrupted_blocks": stats.corrupted_blocks,
        "saved_blocks": stats.saved_blocks,
        "save_failures": stats.save_failures,
        "unreachable": stats.unreachable,
        "skipped": stats.skipped,
        "load_error_blocks": load_error_blocks,
    }


class StrataStats(KVConnectorStats):
    def reset(self) -> None:
        self.data = dict.fromkeys(COUNTERS, 0)

    def aggregate(self, other: KVConnectorStats) -> StrataStats:
        for key in COUNTERS:
            self.data[key] = self.data.get(key, 0) + other.data.get(key, 0)
        return self

    def reduce(self) -> dict[str, int | float]:
        return {key: self.data.get(key, 0) for key in COUNTERS}

    def is_empty(self) -> bool:
        return not any(self.data.get(key, 0) for key in COUNTERS)


def delta(now: dict[str, int], before: dict[str, int]) -> dict[str, Any]:
    return {key: now[key] - before.get(key, 0) for key in COUNTERS}
