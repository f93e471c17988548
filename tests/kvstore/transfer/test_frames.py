import pytest

from kvstore.transfer import frames
from kvstore.transfer.frames import Op, Status
from kvstore.types import BlockKey, MissReason, NamespaceId, TierKind

NS = NamespaceId(b"n" * 16)
KEYS = [BlockKey(bytes([i]) * 16) for i in range(3)]


def test_header_round_trip_and_bad_magic() -> None:
    raw = frames.pack_header(Op.READ_KEYS, 7, 123, Status.FULL)
    assert frames.unpack_header(raw) == (Op.READ_KEYS, Status.FULL, 7, 123)
    with pytest.raises(frames.FrameError, match="not a Strata"):
        frames.unpack_header(b"XX" + raw[2:])
    with pytest.raises(frames.FrameError):
        frames.unpack_header(raw[:2] + bytes([99]) + raw[3:])  # unknown op
    with pytest.raises(frames.FrameError, match="over the limit"):
        frames.unpack_header(frames.pack_header(Op.HELLO, 1, frames.MAX_METADATA_BYTES + 1))


def test_payloads_round_trip() -> None:
    ns, keys, _ = frames.unpack_keys(memoryview(frames.pack_keys(NS, KEYS)))
    assert (ns, keys) == (NS, KEYS)
    hits = [frames.Hit(5, TierKind.DRAM), frames.Hit(6, TierKind.NVME)]
    raw = frames.pack_hits(4096, hits, MissReason.EVICTED)
    assert frames.unpack_hits(memoryview(raw)) == (4096, hits, MissReason.EVICTED)
    ranges = [frames.Range(0, 10), frames.Range(4096, 3)]
    raw = frames.pack_ranges("dram", ranges, 5)
    assert frames.unpack_ranges(memoryview(raw)) == ("dram", 5, ranges)
    writes = [frames.WriteRange(1, 2, 3)]
    assert frames.unpack_write(memoryview(frames.pack_write("kv", 9, 31, writes))) == (
        "kv",
        9,
        31,
        writes,
    )
    leased = [frames.LeasedBlock("dram", 8192, 4096, 77, TierKind.DRAM)]
    assert frames.unpack_lease(memoryview(frames.pack_lease(3, leased, None))) == (3, leased, None)
    assert frames.unpack_put(memoryview(frames.pack_put(NS, KEYS, KEYS[0]))) == (NS, KEYS, KEYS[0])
    assert frames.unpack_put(memoryview(frames.pack_put(NS, KEYS, None))) == (NS, KEYS, None)


def test_a_truncated_key_list_is_refused() -> None:
    raw = frames.pack_keys(NS, KEYS)
    with pytest.raises(frames.FrameError, match="runs past"):
        frames.unpack_keys(memoryview(raw[:-1]))
