"""Config: the built-in demo loads; every mistake gets a message naming the key; secrets stay out of sight."""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import structlog
from yarl import URL

from ingest.auth import build_target, env_secret, read_secret, redact_url
from ingest.config import AuthConfig, load_config, parse_config
from ingest.errors import ConfigError
from ingest.log import configure_logging, register_secret

BASE = {
    "providers": {
        "blockdb": {
            "url": "wss://api.blockdb.io/v1/evm/",
            "auth": {"env": "BLOCKDB_API_KEY"},
            "subscriptions": [{"chain_id": 1, "dataset_id": "0101"}],
        }
    }
}


def with_(path: str, value) -> dict:
    """BASE with one key (dotted path) replaced."""
    import copy

    doc = copy.deepcopy(BASE)
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {}) if not k.isdigit() else node[int(k)]
    node[keys[-1]] = value
    return doc


def test_the_built_in_demo_config_loads():
    config = load_config(None)
    assert config.providers[0].emulated
    assert [s.name for s in config.providers[0].subscriptions][:2] == ["eth_blocks", "eth_transactions"]
    assert config.flush.max_rows == 50_000 and config.flush.max_age == 1.0


def test_defaults(tmp_path):
    config = parse_config(BASE, base=tmp_path)
    assert config.storage.duckdb_path == tmp_path / "data" / "ingest.duckdb"
    assert config.storage.parquet_root == str(tmp_path / "data" / "parquet")
    assert config.providers[0].auth.location == "header"
    assert config.providers[0].subscriptions[0].name == "1:0101"
    assert config.storage.duckdb_raw is False  # the lake keeps _raw; DuckDB only when asked
    assert config.providers[0].read_coalesce == 0.025
    assert config.providers[0].silent_after == 120.0


def test_the_silent_subscription_report_can_be_set_or_switched_off(tmp_path):
    for value in (30, 0):
        config = parse_config(with_("providers.blockdb.silent_after", value), base=tmp_path)
        assert config.providers[0].silent_after == value


def read_coalesce_with(tmp_path, path: str, value) -> float:
    """The BlockDB provider's read_coalesce, parsed from BASE with one key replaced."""
    return parse_config(with_(path, value), base=tmp_path).providers[0].read_coalesce


def test_read_coalescing_can_be_set_or_switched_off(tmp_path):
    assert read_coalesce_with(tmp_path, "providers.blockdb.read_coalesce", 0.002) == 0.002
    assert read_coalesce_with(tmp_path, "providers.blockdb.read_coalesce", 0) == 0


def test_read_coalescing_by_default_follows_the_flush_age(tmp_path):
    """A tenth of max_age_seconds, at most 25 ms: a low-latency flush pauses reads less."""
    for max_age, expected in [(1.0, 0.025), (5.0, 0.025), (0.1, 0.01), (0.02, 0.002)]:
        assert read_coalesce_with(tmp_path, "flush.max_age_seconds", max_age) == pytest.approx(expected)
    doc = with_("flush.max_age_seconds", 0.1)
    doc["providers"]["blockdb"]["read_coalesce"] = 0.05  # set: kept, whatever the flush
    assert parse_config(doc, base=tmp_path).providers[0].read_coalesce == 0.05


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("colour", "blue", "colour: unknown key"),
        ("flush.max_rows", 0, "flush.max_rows: expected a positive number"),
        ("flush.max_rows", "lots", "flush.max_rows: expected an integer"),
        ("flush.max_age_seconds", True, "flush.max_age_seconds: expected"),
        ("flush.max_pending_bytes", 10, "flush.max_pending_bytes: must be at least max_bytes"),
        ("storage.duckdb", 3, "storage.duckdb: expected"),
        ("storage.duckdb_raw", "yes", "storage.duckdb_raw: expected"),
        ("storage.duckdb_commit_seconds", 0, "storage.duckdb_commit_seconds: expected a positive number"),
        ("log_format", "xml", "log_format"),
        ("providers.blockdb.url", "http://example.com", "providers.blockdb.url"),
        ("providers.blockdb.kind", "nope", "providers.blockdb.kind: unknown provider 'nope'"),
        ("providers.blockdb.auth.in", "cookie", "providers.blockdb.auth.in"),
        ("providers.blockdb.auth.env", "not a var!", "providers.blockdb.auth.env"),
        ("providers.blockdb.auth.key", "abc", "providers.blockdb.auth.key: unknown key"),
        ("providers.blockdb.subscriptions", [], "providers.blockdb.subscriptions: at least one"),
        (
            "providers.blockdb.subscriptions",
            [{"chain_id": 1, "dataset_id": "101"}],
            "providers.blockdb.subscriptions[0].dataset_id",
        ),
        (
            "providers.blockdb.subscriptions",
            [{"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0101"}],
            "used twice",
        ),
        ("providers.blockdb.backoff.max", -1, "providers.blockdb.backoff.max"),
        ("providers.blockdb.idle_timeout", "soon", "providers.blockdb.idle_timeout"),
        ("providers.blockdb.read_coalesce", -0.01, "providers.blockdb.read_coalesce: expected"),
        ("providers.blockdb.silent_after", -1, "providers.blockdb.silent_after: expected a non-negative"),
        ("providers.blockdb.enabled", False, "providers: no enabled provider"),
        ("providers.blockdb.url", "ws://[::1/", "providers.blockdb.url: expected a ws:// or wss:// URL"),
        ("providers.blockdb.url", "ws://127.0.0.1:99999/", "Port out of range"),
        (
            "providers.blockdb.url",
            "ws://127.0.0.1:0/",
            'providers.blockdb.url: expected a ws:// or wss:// URL, or "emulator" (port 0 is out of range',
        ),
        (
            "providers.blockdb.auth.header",
            "X-Key\nEvil: 1",
            "providers.blockdb.auth.header: expected an HTTP",
        ),
        ("providers.blockdb.auth.header", "", "providers.blockdb.auth.header: expected an HTTP header name"),
        ("providers.blockdb.auth.scheme", "Bearer\r\n", "providers.blockdb.auth.scheme: control characters"),
        ("providers.blockdb.auth.query_param", "", "providers.blockdb.auth.query_param: expected a param"),
        ("storage.duckdb", "", "storage.duckdb: an empty path"),
        ("storage.data_dir", "", "storage.data_dir: an empty path"),
        (
            "providers.blockdb.subscriptions",
            [
                {"name": "usdt", "chain_id": 1, "dataset_id": "0304", "params": {"token": "0xdac1"}},
                {"name": "usdc", "chain_id": 1, "dataset_id": "0304", "params": {"token": "0xa0b8"}},
            ],
            "'usdt' and 'usdc' both subscribe to chain 1, dataset 0304",
        ),
    ],
)
def test_bad_values_name_the_key_at_fault(tmp_path, path, value, message):
    with pytest.raises(ConfigError) as info:
        parse_config(with_(path, value), base=tmp_path)
    assert message in str(info.value)


def test_credentials_in_a_url_are_a_config_error_that_does_not_print_them(tmp_path):
    """With header auth, aiohttp refused them at the first connect: a traceback from the daemon."""
    with pytest.raises(ConfigError) as info:
        parse_config(with_("providers.blockdb.url", "wss://me:hunter2@127.0.0.1/v1/evm/"), base=tmp_path)
    assert "providers.blockdb.url" in str(info.value) and "without user:password@" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("key", ["data_dir", "duckdb", "journal", "parquet"])
def test_a_storage_path_under_a_file_is_a_config_error(tmp_path, key):
    (tmp_path / "afile").write_text("x")
    path = "afile/x.duckdb" if key == "duckdb" else "afile/sub"
    with pytest.raises(ConfigError, match=rf"storage\.{key}: .*afile is a file, where a directory is needed"):
        parse_config(with_(f"storage.{key}", path), base=tmp_path)


def test_a_key_variable_with_control_characters_is_named_not_shown(monkeypatch):
    monkeypatch.setenv("KEY_WITH_NEWLINE", "s3cr3t\n")
    auth = AuthConfig("KEY_WITH_NEWLINE", "header", "Authorization", "Bearer", "api_key")
    with pytest.raises(ConfigError, match="KEY_WITH_NEWLINE holds control characters") as info:
        read_secret(auth, "providers.x")
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("path", "auth"),
    [
        ("providers.blockdb.auth.env", {"env": "73034021-THIS-IS-SAMPLE-KEY"}),
        (
            "providers.bitquery.auth.oauth.client_id_env",
            {"oauth": {"client_id_env": "73034021-THIS-IS-SAMPLE-KEY", "client_secret_env": "S"}},
        ),
        (
            "providers.bitquery.auth.oauth.client_secret_env",
            {"oauth": {"client_id_env": "I", "client_secret_env": "73034021-THIS-IS-SAMPLE-KEY"}},
        ),
    ],
)
def test_a_key_pasted_where_its_variable_belongs_is_not_shown(tmp_path, path, auth):
    """The value there is most likely the key itself: the error says what belongs there, never the value."""
    provider = path.split(".")[1]
    doc = copy.deepcopy(BASE)
    if provider == "bitquery":
        doc = {
            "providers": {
                "bitquery": {
                    "url": "wss://streaming.bitquery.io/graphql",
                    "subscriptions": [
                        {"name": "b", "query": "subscription { EVM { Blocks { Block { Number } } } }"}
                    ],
                }
            }
        }
    doc["providers"][provider]["auth"] = auth
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: expected the name of an environment variable")
    assert "SAMPLE-KEY" not in message and "73034021" not in message
    assert "environment" in message


def test_an_unset_variable_is_named_unless_its_name_could_be_a_key(monkeypatch):
    """A key that looks like a variable name passes the config's check: the error on it unset
    names only upper-case names, the convention for variables, and never a lower-case one."""
    monkeypatch.delenv("BLOCKDB_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"^k: the environment variable BLOCKDB_API_KEY is not set"):
        env_secret("BLOCKDB_API_KEY", "k")
    pasted = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    with pytest.raises(ConfigError) as info:
        env_secret(pasted, "k")
    assert pasted not in str(info.value) and "not shown" in str(info.value)


def test_both_sinks_off_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="both sinks are off"):
        parse_config({**BASE, "storage": {"duckdb": False, "parquet": False}}, base=tmp_path)


def test_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[providers\nurl = 1")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_config(bad)


def test_missing_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    auth = AuthConfig(
        env="NO_SUCH_KEY_VAR",
        location="header",
        header="Authorization",
        scheme="Bearer",
        query_param="api_key",
    )
    with pytest.raises(
        ConfigError, match=r"providers\.x\.auth\.env: the environment variable NO_SUCH_KEY_VAR"
    ):
        read_secret(auth, "providers.x")


def test_key_goes_where_the_config_says_and_never_into_the_shown_url():
    header = AuthConfig("K", "header", "Authorization", "Bearer", "api_key")
    query = AuthConfig("K", "query", "Authorization", "Bearer", "api_key")
    t1 = build_target("wss://h/v1/evm/", header, "s3cr3t-key")
    assert t1.headers == {"Authorization": "Bearer s3cr3t-key"} and t1.url == "wss://h/v1/evm/"
    t2 = build_target("wss://h/v1/evm/?x=1", query, "s3cr3t-key")
    assert t2.url == "wss://h/v1/evm/?x=1&api_key=s3cr3t-key" and t2.headers == {}
    assert t2.display_url == "wss://h/v1/evm/?x=1&api_key=***"
    assert "s3cr3t-key" not in repr(t1) + repr(t2)
    assert redact_url("wss://user:pw@h/p?token=ory_at_x&network=eth") == "wss://h/p?token=***&network=eth"


def test_a_key_in_a_parameter_of_any_name_is_masked_in_the_shown_url():
    # A base64 key has characters a URL percent-encodes: the shown URL holds neither form of it.
    key = "Zq9/LEAK+KEY=="
    access = AuthConfig("K", "query", "Authorization", "Bearer", "access")
    target = build_target("wss://api.example/v1/?network=eth", access, key)
    assert target.url == "wss://api.example/v1/?network=eth&access=Zq9%2FLEAK%2BKEY%3D%3D"
    assert target.display_url == "wss://api.example/v1/?network=eth&access=***"
    in_path = build_target(f"wss://api.example/{quote(key, safe='')}/ws", access, key)
    assert in_path.display_url.startswith("wss://api.example/***/ws")


def test_registered_secrets_never_reach_the_logs(capsys):
    configure_logging("json", logging.INFO)
    register_secret("ultra-secret-value")
    structlog.get_logger("t").error(
        "failed", url="wss://h/?api_key=ultra-secret-value", err=ValueError("ultra-secret-value")
    )
    err = capsys.readouterr().err
    assert "ultra-secret-value" not in err and "***" in err


def test_every_config_example_in_the_readme_is_valid(tmp_path):
    """Each TOML block README.md shows parses as a config file, as written."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "ingest" / "queries", tmp_path / "queries")  # query_file examples
    blocks = (root / "README.md").read_text().split("```toml\n")[1:]
    assert len(blocks) >= 4
    minimal = (
        '\n[providers.blockdb]\nurl = "wss://h/"\n'
        '[[providers.blockdb.subscriptions]]\nchain_id = 1\ndataset_id = "0101"\n'
    )
    for n, block in enumerate(blocks):
        text = block.split("```", 1)[0]
        path = tmp_path / f"example{n}.toml"
        # An example that shows only storage or metrics keys is checked inside a minimal config.
        path.write_text(text if "[providers." in text else text + minimal)
        config = load_config(path)
        assert config.providers and not any(p.emulated for p in config.providers)


BITQUERY = {
    "providers": {
        "bitquery": {
            "url": "wss://streaming.bitquery.io/graphql",
            "auth": {"env": "BITQUERY_TOKEN"},
            "subscriptions": [
                {"name": "blocks", "query": "subscription { EVM { Blocks { Block { Number } } } }"}
            ],
        }
    }
}
HELIUS = {
    "providers": {
        "helius": {
            "url": "wss://mainnet.helius-rpc.com/",
            "auth": {"env": "HELIUS_API_KEY"},
            "subscriptions": [{"name": "slots", "method": "slotSubscribe"}],
        }
    }
}


def test_a_config_path_that_is_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=rf"{tmp_path}: .*directory"):
        load_config(tmp_path)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'instance = "m\xff"\n')
    with pytest.raises(ConfigError, match=rf"{bad}: not UTF-8 text.*line 1"):
        load_config(bad)


def test_any_os_error_reading_the_config_is_a_config_error(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('instance = "main"\n')

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match=rf"{path}: cannot read.*Permission denied"):
        load_config(path)


def test_a_query_file_that_is_not_utf8_names_the_key(tmp_path):
    (tmp_path / "q.graphql").write_bytes(b"subscription { \xff }")
    doc = copy.deepcopy(BITQUERY)
    doc["providers"]["bitquery"]["subscriptions"] = [{"name": "q", "query_file": "q.graphql"}]
    with pytest.raises(ConfigError, match=r"bitquery\.subscriptions\[0\]\.query_file: .*not UTF-8"):
        parse_config(doc, base=tmp_path, config_dir=tmp_path)
    doc["providers"]["bitquery"]["subscriptions"] = [{"name": "q", "query_file": ["q.graphql"]}]
    with pytest.raises(ConfigError, match=r"bitquery\.subscriptions\[0\]\.query_file: expected"):
        parse_config(doc, base=tmp_path, config_dir=tmp_path)


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        (BITQUERY, "providers.bitquery.subprotocol", "providers.bitquery.subprotocol: expected"),
        (HELIUS, "providers.helius.subscriptions.0.method", "helius.subscriptions[0].method: expected"),
    ],
)
@pytest.mark.parametrize("value", [["x"], {"x": 1}])
def test_a_list_or_table_for_a_scalar_names_the_key(tmp_path, doc, path, message, value):
    node = doc = copy.deepcopy(doc)
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    node[keys[-1]] = value
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("query", "cycle"),
    [
        ("subscription { EVM { ...F } } fragment F on EVM { ...F }", "F -> F"),
        (
            "subscription { EVM { ...F } } fragment F on EVM { Blocks { ...G } }"
            " fragment G on B { ... on B { ...F } }",
            "F -> G -> F",
        ),
        # Never spread by the operation: GraphQL refuses the document all the same.
        ("subscription { EVM { Blocks { Block { Number } } } } fragment H on B { X { ...H } }", "H -> H"),
    ],
)
def test_a_fragment_that_spreads_into_itself_is_named(tmp_path, query, cycle):
    doc = copy.deepcopy(BITQUERY)
    doc["providers"]["bitquery"]["subscriptions"][0]["query"] = query
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    fragment = cycle.split()[0]
    assert str(info.value) == (
        f"providers.bitquery.subscriptions[0].query: fragment {fragment} spreads into itself ({cycle})"
    )


def chained_fragments(n: int, back_to_start: bool = False) -> str:
    """A query spreading F0, which spreads F1, ... F{n}; with back_to_start, F{n} spreads F0."""
    last = "...F0" if back_to_start else "Block { Number }"
    defs = [f"fragment F{i} on B {{ ...F{i + 1} }}" for i in range(n)] + [f"fragment F{n} on B {{ {last} }}"]
    return "subscription { EVM { Blocks { ...F0 } } } " + " ".join(defs)


@pytest.mark.parametrize(
    ("n", "back", "message"),
    [
        (50, False, None),
        (1500, False, "fragments nest too deeply"),
        (1500, True, "fragment F0 spreads into itself (F0 -> F1 -> F2 -> "),
    ],
)
def test_a_long_chain_of_fragments_is_read_or_refused_by_name(tmp_path, n, back, message):
    doc = copy.deepcopy(BITQUERY)
    doc["providers"]["bitquery"]["subscriptions"][0]["query"] = chained_fragments(n, back)
    if message is None:
        assert parse_config(doc, base=tmp_path).providers[0].subscriptions
        return
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    assert str(info.value).startswith(f"providers.bitquery.subscriptions[0].query: {message}")


def test_fragments_spread_twice_without_a_cycle_are_fine(tmp_path):
    doc = copy.deepcopy(BITQUERY)
    query = (
        "subscription { EVM { Blocks { ...A ...B } } }"
        " fragment A on B { Block { ...N } } fragment B on B { Block { ...N } } fragment N on X { Number }"
    )
    doc["providers"]["bitquery"]["subscriptions"][0]["query"] = query
    assert parse_config(doc, base=tmp_path).providers[0].subscriptions[0].name


@pytest.mark.parametrize("key", ["query", "query_file"])
def test_a_query_nested_too_deeply_names_its_key(tmp_path, key):
    query = "subscription { EVM { Blocks " + "{ a " * 3000 + "}" * 3001 + " } }"
    doc = copy.deepcopy(BITQUERY)
    sub = doc["providers"]["bitquery"]["subscriptions"][0]
    del sub["query"]
    if key == "query":
        sub["query"] = query
    else:
        (tmp_path / "deep.graphql").write_text(query)
        sub["query_file"] = "deep.graphql"
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path, config_dir=tmp_path)
    assert str(info.value).startswith(f"providers.bitquery.subscriptions[0].{key}: ")
    assert "nested too deeply" in str(info.value)


@pytest.mark.parametrize(("port", "ok"), [(0, True), (65535, True), (65536, False), (70000, False)])
def test_the_metrics_port_is_a_tcp_port(tmp_path, port, ok):
    doc = {**BASE, "metrics": {"enabled": True, "port": port}}
    if ok:
        assert parse_config(doc, base=tmp_path).metrics.port == port
    else:
        with pytest.raises(ConfigError, match=r"metrics\.port: expected a TCP port"):
            parse_config(doc, base=tmp_path)


@pytest.mark.parametrize(
    "path",
    [
        "storage.duckdb_commit_seconds",
        "flush.max_age_seconds",
        "compaction.interval_seconds",
        "compaction.grace_seconds",
        "metrics.max_frame_age_seconds",
        "providers.blockdb.idle_timeout",
        "providers.blockdb.ping_interval",
        "providers.blockdb.keepalive_interval",
        "providers.blockdb.connect_timeout",
        "providers.blockdb.read_coalesce",
        "providers.blockdb.backoff.initial",
        "providers.blockdb.backoff.max",
        "providers.blockdb.backoff.healthy_after",
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_keys_must_be_finite(tmp_path, path, value):
    with pytest.raises(ConfigError) as info:
        parse_config(with_(path, value), base=tmp_path)
    assert f"{path}: expected a finite number" in str(info.value)


def test_percent_encoded_secrets_never_reach_the_logs(capsys):
    configure_logging("json", logging.INFO)
    register_secret("SEKRET/a+b== c")
    structlog.get_logger("t").error(
        "redirected",
        quoted="wss://h/?api_key=SEKRET%2Fa%2Bb%3D%3D%20c",
        plus="wss://h/?api_key=SEKRET%2Fa%2Bb%3D%3D+c",
    )
    err = capsys.readouterr().err
    assert "SEKRET" not in err and err.count("***") == 2


def test_a_base64_key_is_masked_in_every_form_a_url_library_writes(capsys):
    """A key with '/', '+' and '=' as each encoder writes it in a URL: the forms of yarl (aiohttp's
    URL type, which keeps '/' and encodes '+' and '=' in a query), of quote with and without '/'
    safe, of quote_plus, and lowercase hex."""
    key = "Zm9vYmFy/c2VjcmV0+a2V5= x"
    configure_logging("json", logging.INFO)
    register_secret(key)
    forms = {
        "yarl_query": str(URL("ws://h/").with_query(token=key)),
        "yarl_path": str(URL("ws://h/") / key),
        "yarl_requoted": str(URL(f"ws://h/{quote(key, safe='')}")),
        "quote_slash_safe": f"ws://h/?token={quote(key)}",
        "plus_slash_safe": f"ws://h/?token={quote_plus(key)}",
        "lower_hex": "ws://h/?token=" + re.sub("%..", lambda m: m[0].lower(), quote(key, safe="")),
    }
    assert "c2VjcmV0" in "".join(forms.values())  # each form holds the key, as the library wrote it
    structlog.get_logger("t").error("redirected", **forms)
    err = capsys.readouterr().err
    assert "c2VjcmV0" not in err and err.count("***") == len(forms)
