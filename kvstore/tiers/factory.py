"""Build the tiers a config enables, fastest first."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kvstore.config import Config
from kvstore.tiers.base import Tier
from kvstore.tiers.dram import SHM_PREFIX, DramTier
from kvstore.tiers.hbm import HbmTier
from kvstore.tiers.nvme import NvmeTier
from kvstore.types import TierKind

logger = logging.getLogger(__name__)


def open_tiers(config: Config) -> dict[TierKind, Tier]:
    """Open every enabled tier; on failure, close the ones already opened."""
    store, tiers_config = config.store, config.tiers
    page_bytes = store.page_bytes
    tiers: dict[TierKind, Tier] = {}
    try:
        if tiers_config.hbm.enabled:
            hbm = tiers_config.hbm
            tiers[TierKind.HBM] = HbmTier(hbm.capacity_bytes, page_bytes, device=hbm.device)
        if tiers_config.dram.enabled:
            dram = tiers_config.dram
            remove_stale_arenas(dram.shm_dir, store.node_id)
            tiers[TierKind.DRAM] = DramTier(
                dram.capacity_bytes,
                page_bytes,
                name=f"{store.node_id}-{os.getpid()}",
                shm_dir=dram.shm_dir,
                pin_memory=dram.pin_memory,
            )
        if tiers_config.nvme.enabled:
            nvme = tiers_config.nvme
            assert nvme.path is not None  # validated by TiersConfig
            tiers[TierKind.NVME] = NvmeTier(
                nvme.path,
                nvme.capacity_bytes,
                page_bytes,
                slab_bytes=nvme.slab_bytes,
                direct_io=nvme.direct_io,
                fsync=nvme.fsync,
                io_threads=nvme.io_threads,
            )
    except BaseException:
        for tier in tiers.values():
            _close_now(tier)
        raise
    for kind, tier in tiers.items():
        _warn_unused(kind, getattr(tiers_config, kind.value).capacity_bytes, tier)
    return tiers


def _warn_unused(kind: TierKind, configured: int, tier: Tier) -> None:
    """A tier holds whole pages: say so when the configured capacity is not a multiple."""
    usable = tier.slots.capacity_bytes
    if usable < configured:
        logger.warning(
            "tiers.%s.capacity_bytes = %d is not a multiple of its page (%d bytes, from"
            " store.page_bytes): %d bytes are left unused",
            kind.value,
            configured,
            tier.slots.page_bytes,
            configured - usable,
        )


def remove_stale_arenas(shm_dir: Path, node_id: str) -> None:
    """Unlink DRAM arenas of this node left by processes that died without closing."""
    for path in shm_dir.glob(f"{SHM_PREFIX}{node_id}-*"):
        pid_text = path.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            logger.info("removing stale DRAM arena %s", path)
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _close_now(tier: Tier) -> None:
    import asyncio

    asyncio.run(tier.close())
