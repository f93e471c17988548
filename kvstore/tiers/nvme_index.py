"""The NVMe tier's durable index, in LMDB.

Three named databases in ``<data dir>/index/``::

    blocks      block key (16 B) -> record (slot, length, checksum, namespace, parent, times)
    pending     slot (8 B)       -> block key      write intents, cleared by the commit
    namespaces  namespace id     -> namespace description (JSON)

Commit protocol for a batch of writes: (1) one transaction records an intent per slot in
``pending``; (2) the bytes are written to the slab files; (3) one transaction adds the
``blocks`` records and clears the intents. A crash between (1) and (3) leaves intents
behind: on reopen they are counted as torn writes and their slots are free. A block is
visible after a restart if and only if its record committed, and its bytes were written
before that. With ``fsync`` off, commits survive a process crash (kill -9) but not a power
loss; with it on, data is fdatasync'ed before (3) and LMDB syncs every commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import lmdb

from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.tiers.base import BlockRecord
from kvstore.types import BlockKey, NamespaceId, SlotId

logger = logging.getLogger(__name__)

_RECORD = struct.Struct("<QQQ16s16s?dd")
_SLOT = struct.Struct("<Q")


def private_directory(path: Path) -> None:
    """Create ``path`` (and its parents) and make it 0700: the tier's slabs and index are
    this user's alone (parents that already exist are left as they are)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


class NvmeIndex:
    def __init__(self, path: Path, *, num_slots: int, fsync: bool) -> None:
        private_directory(path)
        map_size = max(256 << 20, num_slots * 1024)
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=4,
            sync=fsync,
            metasync=fsync,
            lock=True,
            mode=0o600,  # it holds namespaces' salts: for this user only
        )
        for name in ("data.mdb", "lock.mdb"):  # also when an older version created them
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path / name, 0o600)
        self._blocks = self._env.open_db(b"blocks")
        self._pending = self._env.open_db(b"pending")
        self._namespaces = self._env.open_db(b"namespaces")

    def begin(self, records: Sequence[BlockRecord]) -> None:
        """Record write intents for these slots (step 1 of the commit protocol)."""
        with self._env.begin(write=True) as txn:
            for record in records:
                txn.put(_SLOT.pack(record.slot), record.key, db=self._pending)

    def commit(self, records: Sequence[BlockRecord]) -> None:
        """Make the blocks durable and clear their intents (step 3)."""
        with self._env.begin(write=True) as txn:
            for record in records:
                txn.put(record.key, _encode(record), db=self._blocks)
                txn.delete(_SLOT.pack(record.slot), db=self._pending)

    def delete(self, refs: Iterable[tuple[BlockKey, SlotId]]) -> None:
        """Forget each key's record if it still names that slot. A key removed and put
        again may already have a newer record in another slot, which must survive the
        late free of the old slot."""
        with self._env.begin(write=True) as txn:
            for key, slot in refs:
                value = txn.get(key, db=self._blocks)
                if value is not None and _decode(key, value).slot == slot:
                    txn.delete(key, db=self._blocks)

    def recover(self) -> tuple[list[BlockRecord], int]:
        """Committed records, and how many torn writes were found (and cleared)."""
        with self._env.begin(write=True) as txn:
            torn = [slot for slot, _ in txn.cursor(db=self._pending)]
            for slot in torn:
                txn.delete(slot, db=self._pending)
            records = [_decode(key, value) for key, value in txn.cursor(db=self._blocks)]
        return records, len(torn)

    def save_namespace(self, namespace: Namespace) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(namespace.id, _encode_namespace(namespace), db=self._namespaces)

    def forget_namespace(self, ns_id: NamespaceId) -> None:
        """Delete a namespace and its block records in one transaction, so a restart
        finds neither (their slots read as free)."""
        with self._env.begin(write=True) as txn:
            txn.delete(ns_id, db=self._namespaces)
            doomed = [
                key
                for key, value in txn.cursor(db=self._blocks)
                if _decode(key, value).namespace_id == ns_id
            ]
            for key in doomed:
                txn.delete(key, db=self._blocks)

    def namespaces(self) -> list[Namespace]:
        with self._env.begin() as txn:
            return [_decode_namespace(v) for _, v in txn.cursor(db=self._namespaces)]

    def sync(self) -> None:
        self._env.sync(True)

    def close(self) -> None:
        self._env.close()


def _encode(record: BlockRecord) -> bytes:
    parent = record.parent or bytes(16)
    return _RECORD.pack(
        record.slot,
        record.length_bytes,
        record.checksum,
        record.namespace_id,
        parent,
        record.parent is not None,
        record.created_s,
        record.last_access_s,
    )


def _decode(key: bytes, value: bytes) -> BlockRecord:
    slot, length, checksum, ns_id, parent, has_parent, created_s, last_access_s = _RECORD.unpack(
        value
    )
    return BlockRecord(
        key=BlockKey(bytes(key)),
        namespace_id=NamespaceId(ns_id),
        parent=BlockKey(parent) if has_parent else None,
        slot=SlotId(slot),
        length_bytes=length,
        checksum=checksum,
        created_s=created_s,
        last_access_s=last_access_s,
    )


def _encode_namespace(namespace: Namespace) -> bytes:
    spec = namespace.spec
    fields = {
        "model_id": namespace.model_id,
        "salt": namespace.salt,
        "num_layers": spec.num_layers,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "dtype": spec.dtype.value,
        "block_tokens": spec.block_tokens,
    }
    return json.dumps(fields, sort_keys=True).encode()


def _decode_namespace(raw: bytes) -> Namespace:
    fields = json.loads(raw)
    spec = BlockSpec(
        num_layers=fields["num_layers"],
        num_kv_heads=fields["num_kv_heads"],
        head_dim=fields["head_dim"],
        dtype=KVDtype(fields["dtype"]),
        block_tokens=fields["block_tokens"],
    )
    return Namespace(model_id=fields["model_id"], spec=spec, salt=fields["salt"])
