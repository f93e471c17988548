import json

from engine.cli import main
from engine.tokenizer import ByteTokenizer
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from tests.engine.stores import TINY_BLOCK, NodeThread


def test_keys_match_the_store_hashing(capsys) -> None:  # type: ignore[no-untyped-def]
    text = "You are a helpful assistant. " * 3
    assert main(["keys", text, "--block-tokens", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ns = Namespace("strata-tiny-v1", BlockSpec(4, 2, 32, KVDtype.FLOAT32, 16))
    expected = prefix_keys(ns.id, ByteTokenizer().encode(text), 16)
    assert out["namespace_id"] == ns.id.hex()
    assert [b["key"] for b in out["blocks"]] == [k.hex() for k in expected]
    assert out["num_tokens"] == len(text)


def test_keys_table_and_bad_input(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["keys", "short", "--block-tokens", "2"]) == 0
    assert "2 full blocks; 1 trailing tokens" in capsys.readouterr().out
    assert main(["keys", "x", "--block-tokens", "0"]) == 2
    assert "block_tokens" in capsys.readouterr().err


def test_byte_tokenizer_round_trips() -> None:
    tokenizer = ByteTokenizer()
    text = "héllo, 世界"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_generate_in_process(capsys) -> None:  # type: ignore[no-untyped-def]
    flags = ["--engine.store", "none", "--engine.kv_cache_bytes", "16MiB"]
    assert main(["generate", "Hello", "--max-tokens", "4", "--json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["token_ids"]) == 4 and out["finish_reason"] == "length"
    assert out["prompt_tokens"] == 5
    assert main(["generate", "Hello", "--chat", "--max-tokens", "2", *flags]) == 0
    assert "2 tokens (length)" in capsys.readouterr().out


def test_generate_refuses_bad_values(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["generate", "Hello", "--top-p", "0", "--engine.store", "none"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["generate", "Hello", "--engine.page_tokens", "0"]) == 2
    assert "engine.page_tokens" in capsys.readouterr().err


def test_a_store_that_refuses_the_model_blocks_stops_the_engine(capsys) -> None:  # type: ignore[no-untyped-def]
    """Not "unreachable" and recompute forever: a configuration error, exit status 2."""
    node = NodeThread(**{"store.block_bytes": str(TINY_BLOCK // 2)})
    try:
        flags = ["--engine.store", node.address, "--engine.kv_cache_bytes", "16MiB"]
        code = main(["generate", "Hello", "--max-tokens", "1", *flags])
    finally:
        node.stop()
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(TINY_BLOCK) in err and str(TINY_BLOCK // 2) in err, err
    assert "store.block_bytes" in err and "engine.page_tokens" in err, err
