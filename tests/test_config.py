"""Configuration (SPEC §8): a bad file is refused with a message naming the key and the problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import ConfigError, demo_config, load, parse
from tests.support import free_port

ZJ_SECRET = "zj-key-secret-000000001"
ZJ_CALLBACK = "zj-callback-secret-01"


def minimal() -> dict[str, Any]:
    return {
        "gateway": {"listen": "127.0.0.1:8080"},
        "partners": [
            {
                "region": "330000",
                "name": "浙江省一体化政务服务平台",
                "callback_url": "http://127.0.0.1:9100/events",
                "callback_secret": ZJ_CALLBACK,
                "keys": {"zj-2026-01": ZJ_SECRET},
                "adapter": {"kind": "rest_json", "base_url": "http://127.0.0.1:9101"},
            },
        ],
    }


def second_partner(**changes: Any) -> dict[str, Any]:
    partner = {
        "region": "510000",
        "name": "四川省一体化政务服务平台",
        "keys": {"sc-2026-01": "sc-key-secret-000000001"},
    }
    partner.update(changes)
    return partner


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw)
    return str(info.value)


def test_minimal_document_parses():
    config = parse(minimal())
    assert config.gateway.host == "127.0.0.1"
    assert config.gateway.port == 8080
    partner = config.partner("330000")
    assert partner is not None
    assert partner.keys == {"zj-2026-01": ZJ_SECRET}
    assert config.key_regions() == {"zj-2026-01": "330000"}
    assert config.key_secrets() == {"zj-2026-01": ZJ_SECRET}
    assert config.partner("510000") is None


def test_empty_document_gives_defaults():
    config = parse({})
    assert config.partners == []
    assert config.gateway.listen == "127.0.0.1:8080"


def test_several_key_ids_in_one_region():
    raw = minimal()
    raw["partners"][0]["keys"]["zj-2026-02"] = "zj-key-secret-000000002"
    config = parse(raw)
    assert config.key_regions() == {"zj-2026-01": "330000", "zj-2026-02": "330000"}


@pytest.mark.parametrize("region", ["990000", "33000", "abcdef", "3300000"])
def test_bad_partner_region_names_the_key_path(region):
    raw = minimal()
    raw["partners"].append(second_partner(region=region))
    message = refused(raw)
    assert "partners[1].region" in message


def test_bad_first_partner_region():
    raw = minimal()
    raw["partners"][0]["region"] = "990000"
    assert "partners[0].region" in refused(raw)


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:", ":8080", "localhost:http", ""])
def test_listen_without_port_is_refused(listen):
    raw = minimal()
    raw["gateway"]["listen"] = listen
    message = refused(raw)
    assert "gateway.listen" in message
    assert "HOST:PORT" in message


def test_listen_port_out_of_range_is_refused():
    # BUG: the validator only checks port.isdigit(); 99999 passes and fails later at bind().
    raw = minimal()
    raw["gateway"]["listen"] = "127.0.0.1:99999"
    assert "gateway.listen" in refused(raw)


def test_duplicate_region_is_refused():
    raw = minimal()
    raw["partners"].append(second_partner(region="330000"))
    message = refused(raw)
    assert "partners[1].region" in message
    assert "330000" in message


def test_key_id_in_two_regions_is_refused():
    raw = minimal()
    raw["partners"].append(second_partner(keys={"zj-2026-01": "another-secret-00000001"}))
    message = refused(raw)
    assert "partners[1].keys" in message
    assert "zj-2026-01" in message
    assert ZJ_SECRET not in message


def test_callback_url_without_callback_secret_is_refused():
    raw = minimal()
    del raw["partners"][0]["callback_secret"]
    message = refused(raw)
    assert "partners[0].callback_secret" in message


def test_short_key_secret_is_refused_without_echoing_it():
    raw = minimal()
    raw["partners"][0]["keys"]["zj-2026-01"] = "short-secret"
    message = refused(raw)
    assert "partners[0].keys" in message
    assert "short-secret" not in message


def test_token_mode_without_token_is_refused():
    raw = minimal()
    raw["partners"][0]["inbound"] = {"mode": "token"}
    assert "partners[0].inbound.token" in refused(raw)


def test_every_bad_key_is_named():
    raw = minimal()
    raw["partners"][0]["region"] = "990000"
    raw["gateway"]["listen"] = "nowhere"
    raw["operators"] = [{"name": "ops", "token_sha256": "not-hex", "role": "root"}]
    message = refused(raw)
    for path in (
        "partners[0].region",
        "gateway.listen",
        "operators[0].token_sha256",
        "operators[0].role",
    ):
        assert path in message


def test_env_reference_is_resolved(monkeypatch):
    monkeypatch.setenv("TONGBAN_TEST_ZJ_KEY", "zj-from-environment-0001")
    monkeypatch.setenv("TONGBAN_TEST_ZJ_CALLBACK", "zj-callback-from-env-01")
    raw = minimal()
    raw["partners"][0]["keys"]["zj-2026-01"] = {"env": "TONGBAN_TEST_ZJ_KEY"}
    raw["partners"][0]["callback_secret"] = {"env": "TONGBAN_TEST_ZJ_CALLBACK"}
    config = parse(raw)
    partner = config.partner("330000")
    assert partner is not None
    assert partner.keys["zj-2026-01"] == "zj-from-environment-0001"
    assert partner.callback_secret == "zj-callback-from-env-01"


def test_missing_env_variable_names_key_path_and_variable(monkeypatch):
    monkeypatch.delenv("TONGBAN_TEST_UNSET_SECRET", raising=False)
    raw = minimal()
    raw["partners"][0]["callback_secret"] = {"env": "TONGBAN_TEST_UNSET_SECRET"}
    message = refused(raw)
    assert "partners[0].callback_secret" in message
    assert "TONGBAN_TEST_UNSET_SECRET" in message


def test_missing_env_variable_in_a_key_table(monkeypatch):
    monkeypatch.delenv("TONGBAN_TEST_UNSET_KEY", raising=False)
    raw = minimal()
    raw["partners"][0]["keys"]["zj-2026-01"] = {"env": "TONGBAN_TEST_UNSET_KEY"}
    message = refused(raw)
    assert "partners[0].keys.zj-2026-01" in message
    assert "TONGBAN_TEST_UNSET_KEY" in message


def test_env_name_that_is_not_a_string_is_a_config_error():
    # BUG: `name not in os.environ` raises TypeError ("str expected, not int") for a non-string.
    raw = minimal()
    raw["partners"][0]["callback_secret"] = {"env": 5}
    assert "partners[0].callback_secret" in refused(raw)


@pytest.mark.parametrize(
    ("where", "path"),
    [
        (lambda raw: raw, "colour"),
        (lambda raw: raw["gateway"], "gateway.colour"),
        (lambda raw: raw["partners"][0], "partners[0].colour"),
    ],
)
def test_unknown_keys_are_refused_with_their_name(where, path):
    raw = copy.deepcopy(minimal())
    where(raw)["colour"] = "red"
    message = refused(raw)
    assert path in message


def test_misspelt_key_is_refused():
    raw = minimal()
    raw["gateway"]["listen_port"] = 8080
    assert "gateway.listen_port" in refused(raw)


def test_source_is_named_in_the_message():
    raw = minimal()
    raw["partners"][0]["region"] = "990000"
    with pytest.raises(ConfigError, match=r"^prod\.toml"):
        parse(raw, "prod.toml")


# ---- load ---------------------------------------------------------------------------------------


def test_load_good_file(tmp_path: Path):
    path = tmp_path / "tongban.toml"
    path.write_text(
        '[gateway]\nlisten = "0.0.0.0:9000"\n\n'
        '[[partners]]\nregion = "330000"\nname = "浙江"\n'
        f'keys = {{ "zj-2026-01" = "{ZJ_SECRET}" }}\n',
        encoding="utf-8",
    )
    config = load(path)
    assert config.gateway.port == 9000
    assert config.key_regions() == {"zj-2026-01": "330000"}


def test_load_of_a_file_that_is_not_toml(tmp_path: Path):
    path = tmp_path / "tongban.toml"
    path.write_text('{"gateway": {"listen": "127.0.0.1:8080"}}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert "TOML" in str(info.value)


def test_load_of_a_file_not_in_utf8(tmp_path: Path):
    # BUG: read_text(encoding="utf-8") raises UnicodeDecodeError, which load() does not catch.
    path = tmp_path / "tongban.toml"
    path.write_bytes('[[partners]]\nregion = "330000"\nname = "浙江省"\n'.encode("gbk"))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_load_of_a_missing_file(tmp_path: Path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_load_of_a_bad_file_names_the_file_and_key(tmp_path: Path):
    path = tmp_path / "tongban.toml"
    path.write_text('[gateway]\nlisten = "127.0.0.1"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert "gateway.listen" in str(info.value)


def test_bundled_demo_loads():
    config = demo_config()
    assert config.demo is True
    assert {p.region for p in config.partners} == {"330000", "510000", "440000", "320000", "420000"}
    assert config.national_hub is not None
    assert len(config.key_regions()) == 5
    kinds = {(p.adapter or {}).get("kind") for p in config.partners}
    assert kinds == {"rest_json", "soap_xml", "async_ticket", "file_exchange", "frontdb_exchange"}
    for partner in config.partners:
        assert partner.adapter is not None
        assert partner.callback_url and partner.callback_secret


def test_store_url_of_an_unsupported_kind_names_the_key_and_keeps_the_password() -> None:
    with pytest.raises(ConfigError, match=r"gateway\.store") as err:
        parse({"gateway": {"store": "mysql://gw:s3cret-pw@h/db"}})
    assert "s3cret-pw" not in str(err.value)


def test_a_postgresql_store_url_is_accepted() -> None:
    for url in ("postgresql://gw@db.internal/tongban", "postgres://gw@db/tongban?sslmode=require"):
        assert parse({"gateway": {"store": url}}).gateway.store == url


def test_lease_shorter_than_two_partner_calls_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"gateway: .*lease_seconds"):
        parse({"gateway": {"lease_seconds": 20, "request_timeout_seconds": 15}})


def test_serve_on_an_unreachable_store_says_so_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    path = tmp_path / "gw.toml"
    path.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\n'
        f'store = "postgresql://gw:s3cret-pw@127.0.0.1:{port}/tongban"\n',
        encoding="utf-8",
    )
    assert main(["serve", "--config", str(path)]) == 3
    err = capsys.readouterr().err
    assert f"cannot open the store postgresql://gw:***@127.0.0.1:{port}/tongban" in err
    assert "s3cret-pw" not in err and "Traceback" not in err


def test_reuse_port_needs_a_postgresql_store() -> None:
    with pytest.raises(ConfigError, match=r"gateway: .*reuse_port.*PostgreSQL"):
        parse({"gateway": {"reuse_port": True}})
    shared = parse({"gateway": {"reuse_port": True, "store": "postgresql://gw@db/tongban"}})
    assert shared.gateway.reuse_port
