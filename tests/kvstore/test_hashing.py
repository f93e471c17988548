import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import xxhash

from kvstore.errors import InvalidArgument
from kvstore.hashing import Namespace, checksum, prefix_keys, root_key
from kvstore.layout import BlockSpec, KVDtype

SPEC = BlockSpec(
    num_layers=32, num_kv_heads=8, head_dim=128, dtype=KVDtype.BFLOAT16, block_tokens=16
)
NS = Namespace("llama-3-8b", SPEC)

# Pinned: changing any of these silently invalidates every stored cache.
GOLDEN_NS_ID = "fb24a5fb4f82bc2f7d4d006760ae07e7"
GOLDEN_ROOT = "0ea90ed4d779e24e1beaa4c091ec2d0d"
GOLDEN_KEYS = ["49d5244ea205cf5d533bd89805bbef60", "58a0638d38efa40f4a7f225d80329c16"]
GOLDEN_SALTED_NS_ID = "fdb2b6e64f4a189e94a1ead166373587"


def test_golden_vectors() -> None:
    assert NS.id.hex() == GOLDEN_NS_ID
    assert root_key(NS.id).hex() == GOLDEN_ROOT
    assert [k.hex() for k in prefix_keys(NS.id, list(range(40)), 16)] == GOLDEN_KEYS
    assert Namespace("llama-3-8b", SPEC, salt="tenant-a").id.hex() == GOLDEN_SALTED_NS_ID
    assert checksum(b"strata") == 5431800237448241503


def test_key_follows_the_documented_chain() -> None:
    tokens = list(range(100, 132))
    keys = prefix_keys(NS.id, tokens, 16)
    prev = root_key(NS.id)
    for i, key in enumerate(keys):
        chunk = struct.pack("<16i", *tokens[i * 16 : (i + 1) * 16])
        prev = xxhash.xxh3_128_digest(prev + NS.id + chunk)
        assert key == prev


def test_only_full_blocks_are_keyed() -> None:
    assert len(prefix_keys(NS.id, list(range(47)), 16)) == 2
    assert prefix_keys(NS.id, list(range(15)), 16) == []
    assert prefix_keys(NS.id, [], 16) == []


def test_list_numpy_and_torch_inputs_agree() -> None:
    tokens = list(range(64))
    expected = prefix_keys(NS.id, tokens, 16)
    for dtype in (np.int32, np.int64, np.uint16):
        assert prefix_keys(NS.id, np.array(tokens, dtype=dtype), 16) == expected
    assert prefix_keys(NS.id, torch.tensor(tokens, dtype=torch.int64), 16) == expected
    assert prefix_keys(NS.id, torch.tensor(tokens, dtype=torch.int32), 16) == expected


def test_a_key_names_the_whole_prefix() -> None:
    a = prefix_keys(NS.id, [1] * 16 + [2] * 16, 16)
    b = prefix_keys(NS.id, [3] * 16 + [2] * 16, 16)
    assert a[1] != b[1]  # same second chunk, different prefix


def test_extending_a_chain_matches_hashing_it_whole() -> None:
    tokens = list(range(64))
    whole = prefix_keys(NS.id, tokens, 16)
    head = prefix_keys(NS.id, tokens[:32], 16)
    tail = prefix_keys(NS.id, tokens[32:], 16, parent=head[-1])
    assert head + tail == whole


def test_namespaces_never_match() -> None:
    tokens = list(range(32))
    other_model = Namespace("mistral-7b", SPEC)
    other_salt = Namespace("llama-3-8b", SPEC, salt="tenant-b")
    other_dtype = Namespace("llama-3-8b", BlockSpec(32, 8, 128, KVDtype.FLOAT16, 16))
    base = prefix_keys(NS.id, tokens, 16)
    for ns in (other_model, other_salt, other_dtype):
        assert ns.id != NS.id
        assert prefix_keys(ns.id, tokens, 16)[0] != base[0]


def test_length_prefixing_prevents_field_aliasing() -> None:
    a = Namespace("ab", SPEC, salt="c")
    b = Namespace("a", SPEC, salt="bc")
    assert a.id != b.id


@pytest.mark.parametrize(
    "tokens",
    [
        [1.5] * 16,
        np.array([2**31] * 16, dtype=np.int64),
        np.array([-(2**31) - 1] * 16, dtype=np.int64),
        np.zeros((2, 16), dtype=np.int32),
        np.array([2**32 - 1] * 16, dtype=np.uint32),
    ],
)
def test_bad_tokens_are_refused(tokens: object) -> None:
    with pytest.raises(InvalidArgument):
        prefix_keys(NS.id, tokens, 16)  # type: ignore[arg-type]


def test_bad_keys_and_sizes_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="16 bytes"):
        prefix_keys(NS.id, list(range(16)), 16, parent=b"short")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="block_tokens"):
        prefix_keys(NS.id, list(range(16)), 0)
    with pytest.raises(InvalidArgument, match="model_id"):
        Namespace("", SPEC)


def test_keys_are_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from kvstore.hashing import Namespace, prefix_keys\n"
        "from kvstore.layout import BlockSpec, KVDtype\n"
        "ns = Namespace('llama-3-8b', BlockSpec(32, 8, 128, KVDtype.BFLOAT16, 16))\n"
        "print(' '.join(k.hex() for k in prefix_keys(ns.id, list(range(40)), 16)))\n"
    )
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == GOLDEN_KEYS


def test_a_cache_salt_gives_its_requests_a_chain_of_their_own() -> None:
    tokens = list(range(48))
    plain = prefix_keys(NS.id, tokens, 16)
    assert prefix_keys(NS.id, tokens, 16, cache_salt="") == plain  # unchanged without one
    a = prefix_keys(NS.id, tokens, 16, cache_salt="tenant-a")
    assert a == prefix_keys(NS.id, tokens, 16, cache_salt="tenant-a")
    assert not set(a) & set(plain)
    assert not set(a) & set(prefix_keys(NS.id, tokens, 16, cache_salt="tenant-b"))
    salt = b"tenant-a"
    root = xxhash.xxh3_128_digest(
        b"strata.root.v1" + NS.id + b"strata.cache_salt.v1" + struct.pack("<I", len(salt)) + salt
    )
    assert root_key(NS.id, "tenant-a") == root
    assert a[0] == xxhash.xxh3_128_digest(root + NS.id + struct.pack("<16i", *tokens[:16]))
