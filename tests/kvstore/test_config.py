import argparse
from pathlib import Path

import pytest

from kvstore.cli import main
from kvstore.config import Config, add_config_flags, config_from_args, load_config
from kvstore.config_loader import as_dict, env_name, parse_size
from kvstore.errors import ConfigError
from kvstore.types import EvictionPolicyKind


def test_defaults_need_no_file() -> None:
    config = load_config(env={})
    assert config.tiers.dram.enabled and not config.tiers.nvme.enabled
    assert not config.tiers.hbm.enabled
    assert config.store.eviction_policy is EvictionPolicyKind.PREFIX_LRU


def test_layers_file_then_env_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "strata.toml"
    file.write_text(
        '[store]\nblock_bytes = "2MiB"\neviction_policy = "lfu"\n'
        '[tiers.dram]\ncapacity_bytes = "4GiB"\n'
        '[tiers.nvme]\nenabled = true\npath = "/data/strata"\n'
    )
    env = {"STRATA_TIERS__DRAM__CAPACITY_BYTES": "8GiB", "STRATA_STORE__EVICTION_POLICY": "lru"}
    config = load_config(file, env=env, overrides={"store.eviction_policy": "prefix_lru"})
    assert config.store.block_bytes == 2 << 20
    assert config.tiers.dram.capacity_bytes == 8 << 30
    assert config.tiers.nvme.path == Path("/data/strata")
    assert config.store.eviction_policy is EvictionPolicyKind.PREFIX_LRU


def test_strata_config_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[store]\nnode_id = 'from-file'\n")
    assert load_config(env={"STRATA_CONFIG": str(file)}).store.node_id == "from-file"


def test_flags_are_generated_for_every_key() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--tiers.dram.capacity_bytes", "3GiB", "--store.node_id", "n1"])
    config = config_from_args(args)
    assert config.tiers.dram.capacity_bytes == 3 << 30 and config.store.node_id == "n1"


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        ({"tiers.dram.capacity_bytes": "0"}, "tiers.dram.capacity_bytes", "positive"),
        ({"tiers.dram.capacity_bytes": "lots"}, "tiers.dram.capacity_bytes", "size in bytes"),
        ({"tiers.dram.capacity": "1GiB"}, "tiers.dram.capacity", "did you mean"),
        ({"store.eviction_policy": "fifo"}, "store.eviction_policy", "'lru', 'prefix_lru'"),
        ({"tiers.nvme.enabled": "maybe"}, "tiers.nvme.enabled", "true or false"),
        ({"tiers.nvme.enabled": "true"}, "tiers.nvme.path", "required"),
        ({"tiers.dram.enabled": "false"}, "tiers", "at least one"),
        ({"store.node_id": "a b"}, "store.node_id", "letters"),
        ({"tiers.nvme.io_threads": "0"}, "tiers.nvme.io_threads", "1 to 64"),
        ({"store.reservation_timeout_s": "-1"}, "store.reservation_timeout_s", "positive"),
        ({"tiers.dram.capacity_bytes": "1KiB"}, "tiers.dram.capacity_bytes", "holds no block"),
        ({"store.promotion_min_hits": "1.5"}, "store.promotion_min_hits", "integer"),
        ({"store.admission_policy": "full_blocks"}, "store.admission_policy", "'all', 'door"),
        ({"store.admission_window_blocks": "0"}, "store.admission_window_blocks", "positive"),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, str], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(env={}, overrides=overrides)
    assert info.value.key == key


def test_bad_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[store\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    typed = tmp_path / "typed.toml"
    typed.write_text("[store]\nnode_id = 5\n")
    with pytest.raises(ConfigError, match=r"store\.node_id"):
        load_config(typed, env={})


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.store = None  # type: ignore[misc]


def test_sizes_and_names() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("1.5KiB") == 1536
    assert parse_size("2 GB") == 2 << 30
    assert env_name("tiers.dram.capacity_bytes") == "STRATA_TIERS__DRAM__CAPACITY_BYTES"
    assert as_dict(load_config(env={}))["store"]["eviction_policy"] == "prefix_lru"


def test_a_store_token_needs_an_admin_token_of_its_own() -> None:
    with pytest.raises(ConfigError, match=r"auth\.admin_token.*must not grant admin"):
        load_config(env={}, overrides={"auth.token": "store-secret"})
    with pytest.raises(ConfigError, match="must differ"):
        load_config(env={}, overrides={"auth.token": "same", "auth.admin_token": "same"})
    with pytest.raises(ConfigError, match=r"auth\.reader_token.*needs auth\.token"):
        load_config(env={}, overrides={"auth.reader_token": "r", "auth.admin_token": "a"})


def test_tokens_come_from_files_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    env = {
        "STRATA_AUTH__ADMIN_TOKEN": "from-env",
        "STRATA_AUTH__TOKEN_FILE": str(tmp_path / "token"),
    }
    config = load_config(env=env)
    assert (config.auth.token, config.auth.admin_token) == ("from-file", "from-env")
    with pytest.raises(ConfigError, match=r"auth\.token_file.*cannot read"):
        load_config(env={**env, "STRATA_AUTH__TOKEN_FILE": str(tmp_path / "missing")})


def test_secrets_are_never_shown() -> None:
    config = load_config(
        env={},
        overrides={
            "auth.token": "store-secret",
            "auth.admin_token": "admin-secret",
            "metadata.redis_url": "redis://user:hunter2@10.0.0.3:6379/0",
        },
    )
    shown = str(config.redacted())
    assert "store-secret" not in shown and "admin-secret" not in shown
    assert "hunter2" not in shown and "redis://user:***@10.0.0.3:6379/0" in shown


def test_kvstore_config_masks_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--json", "--auth.token", "s3cret", "--auth.admin_token", "adm1n"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "adm1n" not in out and '"<set>"' in out
