"""The data plane's wire format: fixed little-endian headers, then raw bytes.

Every request and reply starts with one header::

    | magic "SD" (2) | op (1) | status (1) | request id (u32) | payload length (u64) |

then ``payload length`` bytes of op-specific metadata, then (for ops that move data)
the block or range bytes back to back, their lengths known from the metadata, so they
are received with ``recv_into`` straight into their destination. Ops:

    HELLO        token, node id                      -> OK, server node id
    READ_KEYS    namespace id, keys                  -> hit count, block size, per hit
                                                        (checksum, tier); then the bytes
    READ_RANGES  segment, lease id, (offset, length)* -> per range checksum; then the bytes
                 (the arena: only within blocks of that lease; other segments: id 0)
    WRITE_RANGES segment, transfer id, layer,        <- bytes follow the request
                 (offset, length, checksum)*         -> OK once verified and written
    ACQUIRE      namespace id, keys, leases to end   -> lease id, per hit (segment,
                                                        offset, length, checksum, tier)
    RELEASE      lease ids                           (no reply: fire and forget)
    PUT_KEYS     namespace id, parent, keys          <- the blocks follow the request
                                                     -> stored, present, in flight
    RESERVE      namespace id, parent, keys          -> reservation id, per reserved block
                                                        (position, arena offset); then
                                                        WRITE_RANGES into those slots,
                                                        layer by layer if the writer likes
    COMMIT       reservation id                      -> stored, present, in flight
    ABORT        reservation id                      -> OK

A status other than OK carries a UTF-8 message as its payload.

Decoding never trusts a count or a length: every ``unpack_*`` checks what it reads
against the bytes it was given and raises ``FrameError`` (never ``struct.error``,
``IndexError`` or ``UnicodeDecodeError``) for anything malformed, so a server answers a
hostile peer with INVALID and hangs up, and no loop runs for a count the payload cannot
hold.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple, ParamSpec, TypeVar

from kvstore.types import (
    KEY_BYTES,
    MAX_KEYS_PER_REQUEST,
    BlockKey,
    MissReason,
    NamespaceId,
    TierKind,
)

MAGIC = b"SD"
HEADER = struct.Struct("<2sBBIQ")
HEADER_BYTES = HEADER.size
MAX_METADATA_BYTES = 64 << 20
MAX_HELLO_BYTES = 4096  # all a peer may make the server allocate before it is admitted
MAX_KEYS = MAX_KEYS_PER_REQUEST  # keys (or ranges, or ids) in one request

_TIERS = (TierKind.HBM, TierKind.DRAM, TierKind.NVME)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RANGE = struct.Struct("<QQ")
_RANGE_SUM = struct.Struct("<QQQ")
_HIT = struct.Struct("<QB")
_LEASE_HIT = struct.Struct("<QQQB")


class Op(enum.IntEnum):
    HELLO = 1
    READ_KEYS = 2
    READ_RANGES = 3
    WRITE_RANGES = 4
    ACQUIRE = 5
    RELEASE = 6
    PUT_KEYS = 7
    RESERVE = 8
    COMMIT = 9
    ABORT = 10


class Status(enum.IntEnum):
    OK = 0
    DENIED = 1  # bad or missing token
    INVALID = 2  # malformed request
    NOT_FOUND = 3  # unknown segment or namespace
    CORRUPTED = 4  # checksum mismatch on a write
    ERROR = 5
    FULL = 6  # no room: every candidate for eviction is pinned or being read


class Header(NamedTuple):
    op: Op
    status: Status
    request_id: int
    payload_bytes: int


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


P = ParamSpec("P")
R = TypeVar("R")


def _decoder(unpack: Callable[P, R]) -> Callable[P, R]:
    """Any malformation found while decoding becomes a ``FrameError``."""

    @functools.wraps(unpack)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return unpack(*args, **kwargs)
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
            what = unpack.__name__.removeprefix("unpack_")
            raise FrameError(f"malformed {what}: {exc}") from None

    return wrapper


def _count(raw: memoryview, pos: int, item_bytes: int, first: int | None = None) -> int:
    """A u32 count at ``pos`` of items of at least ``item_bytes`` each that must fit in
    the payload from ``first`` (default: right after the count)."""
    (count,) = _U32.unpack_from(raw, pos)
    if count > MAX_KEYS:
        raise FrameError(f"{count} items in one request; at most {MAX_KEYS}")
    if (pos + 4 if first is None else first) + count * item_bytes > len(raw):
        raise FrameError(f"a list of {count} items runs past the payload")
    return int(count)


def pack_header(op: Op, request_id: int, payload_bytes: int, status: Status = Status.OK) -> bytes:
    return HEADER.pack(MAGIC, op, status, request_id, payload_bytes)


def unpack_header(raw: bytes | memoryview) -> Header:
    magic, op, status, request_id, length = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FrameError("not a Strata data-plane frame")
    if length > MAX_METADATA_BYTES:
        raise FrameError(f"metadata of {length} bytes is over the limit")
    try:
        return Header(Op(op), Status(status), request_id, length)
    except ValueError as exc:
        raise FrameError(str(exc)) from None


# -- payloads ---------------------------------------------------------------------------


def pack_str(text: str) -> bytes:
    raw = text.encode()
    return _U32.pack(len(raw)) + raw


@_decoder
def unpack_str(raw: memoryview, pos: int) -> tuple[str, int]:
    (length,) = _U32.unpack_from(raw, pos)
    pos += 4
    if pos + length > len(raw):
        raise FrameError("a string runs past the payload")
    return bytes(raw[pos : pos + length]).decode(), pos + length


def pack_keys(ns_id: NamespaceId, keys: Sequence[BlockKey]) -> bytes:
    return b"".join((ns_id, _U32.pack(len(keys)), *keys))


@_decoder
def unpack_keys(raw: memoryview, pos: int = 0) -> tuple[NamespaceId, list[BlockKey], int]:
    if pos + KEY_BYTES > len(raw):
        raise FrameError("namespace id runs past the payload")
    ns_id = NamespaceId(bytes(raw[pos : pos + KEY_BYTES]))
    count = _count(raw, pos + KEY_BYTES, KEY_BYTES)
    pos += KEY_BYTES + 4
    end = pos + count * KEY_BYTES
    keys = [BlockKey(bytes(raw[p : p + KEY_BYTES])) for p in range(pos, end, KEY_BYTES)]
    return ns_id, keys, end


HITS_ONLY = 1  # READ_KEYS flag: the reader goes on elsewhere and counts the misses itself


def pack_read(ns_id: NamespaceId, keys: Sequence[BlockKey], *, count_misses: bool) -> bytes:
    """A READ_KEYS payload: the keys, then a flags byte when the read counts hits only."""
    return pack_keys(ns_id, keys) + (b"" if count_misses else bytes([HITS_ONLY]))


@_decoder
def unpack_read(raw: memoryview) -> tuple[NamespaceId, list[BlockKey], bool]:
    """(namespace, keys, count_misses) of a READ_KEYS payload (no flags byte: count them)."""
    ns_id, keys, end = unpack_keys(raw)
    flags = bytes(raw[end:])
    if len(flags) > 1 or (flags and flags[0] & ~HITS_ONLY):
        raise ValueError(f"unknown READ_KEYS flags {flags.hex()}")
    return ns_id, keys, not (flags and flags[0] & HITS_ONLY)


class Hit(NamedTuple):
    checksum: int
    tier: TierKind


_REASONS = (None, *MissReason)


def pack_hits(block_bytes: int, hits: Sequence[Hit], reason: MissReason | None) -> bytes:
    parts = [_U32.pack(len(hits)), _U64.pack(block_bytes), bytes((_REASONS.index(reason),))]
    parts += [_HIT.pack(h.checksum, _TIERS.index(h.tier)) for h in hits]
    return b"".join(parts)


@_decoder
def unpack_hits(raw: memoryview) -> tuple[int, list[Hit], MissReason | None]:
    count = _count(raw, 0, _HIT.size, first=13)
    (block_bytes,) = _U64.unpack_from(raw, 4)
    reason = _REASONS[raw[12]]
    hits = [
        Hit(checksum, _TIERS[tier])
        for checksum, tier in (_HIT.unpack_from(raw, 13 + i * _HIT.size) for i in range(count))
    ]
    return block_bytes, hits, reason


class Range(NamedTuple):
    offset: int
    length: int


def pack_ranges(segment: str, ranges: Sequence[Range], lease_id: int = 0) -> bytes:
    head = pack_str(segment) + _U64.pack(lease_id) + _U32.pack(len(ranges))
    return head + b"".join(_RANGE.pack(*r) for r in ranges)


@_decoder
def unpack_ranges(raw: memoryview) -> tuple[str, int, list[Range]]:
    segment, pos = unpack_str(raw, 0)
    (lease_id,) = _U64.unpack_from(raw, pos)
    count = _count(raw, pos + 8, _RANGE.size)
    pos += 12
    return (
        segment,
        lease_id,
        [Range(*_RANGE.unpack_from(raw, pos + i * _RANGE.size)) for i in range(count)],
    )


def pack_checksums(checksums: Sequence[int]) -> bytes:
    return b"".join(_U64.pack(c) for c in checksums)


@_decoder
def unpack_checksums(raw: memoryview, count: int) -> list[int]:
    if 8 * count > len(raw):
        raise FrameError(f"{count} checksums run past the payload")
    return [_U64.unpack_from(raw, i * 8)[0] for i in range(count)]


class WriteRange(NamedTuple):
    offset: int
    length: int
    checksum: int


def pack_write(segment: str, transfer_id: int, layer: int, ranges: Sequence[WriteRange]) -> bytes:
    head = pack_str(segment) + _U64.pack(transfer_id) + _U32.pack(layer) + _U32.pack(len(ranges))
    return head + b"".join(_RANGE_SUM.pack(*r) for r in ranges)


@_decoder
def unpack_write(raw: memoryview) -> tuple[str, int, int, list[WriteRange]]:
    segment, pos = unpack_str(raw, 0)
    (transfer_id,) = _U64.unpack_from(raw, pos)
    (layer,) = _U32.unpack_from(raw, pos + 8)
    count = _count(raw, pos + 12, _RANGE_SUM.size)
    pos += 16
    ranges = [
        WriteRange(*_RANGE_SUM.unpack_from(raw, pos + i * _RANGE_SUM.size)) for i in range(count)
    ]
    return segment, transfer_id, layer, ranges


class LeasedBlock(NamedTuple):
    segment: str
    offset: int
    length: int
    checksum: int
    tier: TierKind


def pack_lease(lease_id: int, blocks: Sequence[LeasedBlock], reason: MissReason | None) -> bytes:
    parts = [_U64.pack(lease_id), bytes((_REASONS.index(reason),)), _U32.pack(len(blocks))]
    for b in blocks:
        parts.append(pack_str(b.segment))
        parts.append(_LEASE_HIT.pack(b.offset, b.length, b.checksum, _TIERS.index(b.tier)))
    return b"".join(parts)


@_decoder
def unpack_lease(raw: memoryview) -> tuple[int, list[LeasedBlock], MissReason | None]:
    (lease_id,) = _U64.unpack_from(raw, 0)
    reason = _REASONS[raw[8]]
    count = _count(raw, 9, 4 + _LEASE_HIT.size)
    pos, blocks = 13, []
    for _ in range(count):
        segment, pos = unpack_str(raw, pos)
        offset, length, checksum, tier = _LEASE_HIT.unpack_from(raw, pos)
        pos += _LEASE_HIT.size
        blocks.append(LeasedBlock(segment, offset, length, checksum, _TIERS[tier]))
    return lease_id, blocks, reason


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


@_decoder
def unpack_u64(raw: memoryview, pos: int = 0) -> int:
    value: int = _U64.unpack_from(raw, pos)[0]
    return value


_PUT_RESULT = struct.Struct("<IIII")  # stored, present, in flight, skipped


def pack_put(ns_id: NamespaceId, keys: Sequence[BlockKey], parent: BlockKey | None) -> bytes:
    return (b"\x01" + parent if parent is not None else b"\x00" + bytes(KEY_BYTES)) + pack_keys(
        ns_id, keys
    )


@_decoder
def unpack_put(raw: memoryview) -> tuple[NamespaceId, list[BlockKey], BlockKey | None]:
    if raw[0] not in (0, 1):
        raise FrameError("the parent flag must be 0 or 1")
    has_parent = raw[0] == 1
    parent = BlockKey(bytes(raw[1 : 1 + KEY_BYTES])) if has_parent else None
    ns_id, keys, _ = unpack_keys(raw, 1 + KEY_BYTES)
    return ns_id, keys, parent


def pack_put_result(stored: int, present: int, in_flight: int, skipped: int) -> bytes:
    return _PUT_RESULT.pack(stored, present, in_flight, skipped)


@_decoder
def unpack_put_result(raw: memoryview) -> tuple[int, int, int, int]:
    stored, present, in_flight, skipped = _PUT_RESULT.unpack_from(raw, 0)
    return stored, present, in_flight, skipped


def pack_ids(ids: Sequence[int]) -> bytes:
    return _U32.pack(len(ids)) + b"".join(_U64.pack(i) for i in ids)


@_decoder
def unpack_ids(raw: memoryview, pos: int = 0) -> list[int]:
    count = _count(raw, pos, 8)
    return [_U64.unpack_from(raw, pos + 4 + 8 * i)[0] for i in range(count)]


_SLOT = struct.Struct("<IQ")


def pack_reservation(reservation_id: int, slots: Sequence[tuple[int, int]]) -> bytes:
    """``slots``: (position in the key list, byte offset in the arena) per reserved block."""
    return (
        _U64.pack(reservation_id) + _U32.pack(len(slots)) + b"".join(_SLOT.pack(*s) for s in slots)
    )


@_decoder
def unpack_reservation(raw: memoryview) -> tuple[int, list[tuple[int, int]]]:
    (reservation_id,) = _U64.unpack_from(raw, 0)
    count = _count(raw, 8, _SLOT.size)
    return reservation_id, [_SLOT.unpack_from(raw, 12 + i * _SLOT.size) for i in range(count)]
