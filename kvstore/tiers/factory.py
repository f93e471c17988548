"""Build the tiers a config enables, fastest first."""

from __future__ import annotations

import fcntl
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
            remove_stale_arenas(dram.shm_dir)
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


def remove_stale_arenas(shm_dir: Path) -> list[Path]:
    """Unlink the DRAM arenas in ``shm_dir`` whose owners died without closing them (a
    SIGKILL, an OOM kill), whatever their node id. Returns the paths removed.

    An arena is stale when its owner's lock is free *and* the pid in its name is not a
    live process here: the lock protects owners in other pid namespaces sharing the
    directory, the pid check protects an owner between creating its file and locking
    it. A reused pid keeps a stale arena until that process goes (a leak, never a
    removal of a live arena).
    """
    removed = []
    for path in shm_dir.glob(f"{SHM_PREFIX}*"):
        pid_text = path.name.rsplit("-", 1)[-1]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live owner holds it
        finally:
            os.close(fd)
        logger.info("removing stale DRAM arena %s", path)
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
