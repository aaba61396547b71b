"""OAuth2 tokens that expire: config, the token source, the emulator's token endpoint, the driver
reconnecting with a new token, and the daemon on the demo path. All on 127.0.0.1, each a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ingest.app import Daemon
from ingest.auth import build_target
from ingest.buffer import Buffer
from ingest.config import FlushPolicy, OAuthConfig, ProviderConfig, load_config, parse_config
from ingest.driver import Collector
from ingest.emulators import BitqueryEmulator
from ingest.errors import ConfigError
from ingest.log import configure_logging
from ingest.metrics import ProviderStats
from ingest.protocols import PROTOCOLS
from ingest.schema import Registry
from ingest.tokens import (
    TokenRejected,
    TokenSource,
    TokenUnavailable,
    read_client_credentials,
    refresh_margin,
)
from tests.helpers import Drain, collector, eventually, provider_config, run_cli

CLIENT_ID = "client-id-7f3a"
SECRET = "client-secret-9c1e4b7d2a"
ENV_NAMES = ("BQ_CLIENT_ID", "BQ_CLIENT_SECRET")
BLOCKS = "subscription { EVM(network: eth) { Blocks { Block { Number Hash ParentHash Time } } } }"
OAUTH = {"client_id_env": "BQ_CLIENT_ID", "client_secret_env": "BQ_CLIENT_SECRET"}


def bitquery_doc(
    auth: dict[str, Any], kind: str = "bitquery", url: str = "wss://streaming.bitquery.io/graphql"
):
    sub = {"name": "b", "query": BLOCKS} if kind == "bitquery" else {"chain_id": 1, "dataset_id": "0101"}
    return {"providers": {"p": {"kind": kind, "url": url, "auth": auth, "subscriptions": [sub]}}}


# -- config ----------------------------------------------------------------------------------------


def test_oauth_config_defaults_to_bitquerys_endpoint_or_the_emulators(tmp_path: Path) -> None:
    auth = parse_config(bitquery_doc({"oauth": OAUTH}), base=tmp_path).providers[0].auth
    assert auth.env is None and auth.location == "query" and auth.query_param == "token"
    assert auth.oauth == OAuthConfig(
        "BQ_CLIENT_ID", "BQ_CLIENT_SECRET", "https://oauth2.bitquery.io/oauth2/token", "api"
    )
    emulated = parse_config(bitquery_doc({"oauth": OAUTH}, url="emulator"), base=tmp_path)
    assert emulated.providers[0].auth.oauth is not None
    assert emulated.providers[0].auth.oauth.token_url is None  # filled in with the emulator's
    explicit = {"oauth": {**OAUTH, "token_url": "https://idp.example/token", "scope": "stream"}}
    oauth = parse_config(bitquery_doc(explicit, url="emulator"), base=tmp_path).providers[0].auth.oauth
    assert oauth is not None and (oauth.token_url, oauth.scope) == ("https://idp.example/token", "stream")


@pytest.mark.parametrize(
    ("auth", "kind", "message"),
    [
        (
            {"env": "BITQUERY_TOKEN", "oauth": OAUTH},
            "bitquery",
            "providers.p.auth.oauth: env and oauth are mutually",
        ),
        ({"oauth": "yes"}, "bitquery", "providers.p.auth.oauth: expected a table"),
        ({"oauth": {"client_id_env": "A"}}, "bitquery", "providers.p.auth.oauth.client_secret_env: required"),
        (
            {"oauth": {**OAUTH, "client_id_env": "not a var"}},
            "bitquery",
            "providers.p.auth.oauth.client_id_env",
        ),
        (
            {"oauth": {**OAUTH, "client_secret": "x"}},
            "bitquery",
            "providers.p.auth.oauth.client_secret: unknown key",
        ),
        (
            {"oauth": {**OAUTH, "token_url": "ftp://h/t"}},
            "bitquery",
            "providers.p.auth.oauth.token_url: expected",
        ),
        ({"oauth": {**OAUTH, "scope": 1}}, "bitquery", "providers.p.auth.oauth.scope: expected a string"),
        ({"oauth": OAUTH}, "blockdb", "providers.p.auth.oauth.token_url: required"),
        (
            {"oauth": OAUTH, "in": "message"},
            "coinapi",
            'providers.p.auth.oauth: needs in = "header" or "query"',
        ),
    ],
)
def test_oauth_config_errors_name_the_key(
    tmp_path: Path, auth: dict[str, Any], kind: str, message: str
) -> None:
    urls = {"bitquery": "wss://h/graphql", "blockdb": "wss://h/v1/evm/", "coinapi": "wss://h/v1/"}
    doc = bitquery_doc(auth, kind=kind, url=urls[kind])
    if kind == "coinapi":
        doc["providers"]["p"]["subscriptions"] = [{"name": "t", "data_types": ["trade"]}]
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    assert message in str(info.value)


def test_missing_client_credentials_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BQ_CLIENT_ID", CLIENT_ID)
    monkeypatch.delenv("BQ_CLIENT_SECRET", raising=False)
    oauth = OAuthConfig(*ENV_NAMES, "https://h/t")
    with pytest.raises(
        ConfigError, match=r"providers\.p\.auth\.oauth\.client_secret_env: .*BQ_CLIENT_SECRET"
    ):
        read_client_credentials(oauth, "providers.p")
    monkeypatch.setenv("BQ_CLIENT_SECRET", SECRET)
    assert read_client_credentials(oauth, "providers.p") == (CLIENT_ID, SECRET)


# -- the token source ------------------------------------------------------------------------------


def test_refresh_margin_is_a_tenth_of_the_lifetime_at_most_five_minutes() -> None:
    assert refresh_margin(1.0) == pytest.approx(0.1)
    assert refresh_margin(600.0) == pytest.approx(60.0)
    assert refresh_margin(17999.0) == 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def source(url: str, secret: str = SECRET, clock: Clock | None = None) -> TokenSource:
    return TokenSource(
        url, CLIENT_ID, secret, env_names=ENV_NAMES, where="providers.p.auth.oauth", clock=clock or Clock()
    )


async def test_a_token_is_cached_until_the_refresh_margin_then_renewed() -> None:
    async with BitqueryEmulator(client_id=CLIENT_ID, client_secret=SECRET, token_lifetime=2) as emu:
        clock = Clock()
        tokens = source(emu.token_url, clock=clock)
        async with aiohttp.ClientSession() as http:
            first = await tokens.token(http)
            assert first.startswith("ory_at_") and emu.tokens_issued == 1
            clock.now += 1.75  # 0.25 s left of 2 s: more than the 0.2 s margin
            assert await tokens.token(http) == first and emu.tokens_issued == 1
            clock.now += 0.1  # 0.15 s left: renewed before it expires
            second = await tokens.token(http)
            assert second != first and emu.tokens_issued == 2 and tokens.fetches == 2
            tokens.invalidate()  # what the driver does after a 401
            assert await tokens.token(http) not in (first, second) and emu.tokens_issued == 3


async def test_wrong_credentials_are_fatal_and_name_the_variables_not_the_values() -> None:
    async with (
        BitqueryEmulator(client_id=CLIENT_ID, client_secret=SECRET) as emu,
        aiohttp.ClientSession() as http,
    ):
        with pytest.raises(TokenRejected) as info:
            await source(emu.token_url, secret="wrong-secret-5e6f").token(http)
    text = str(info.value)
    assert "BQ_CLIENT_ID" in text and "BQ_CLIENT_SECRET" in text and "invalid_client" in text
    assert "wrong-secret-5e6f" not in text and CLIENT_ID not in text
    assert emu.token_requests_refused == 1 and emu.tokens_issued == 0


@contextlib.asynccontextmanager
async def serve_post(route: str, handler: Any) -> AsyncIterator[str]:
    """A token endpoint of our own on 127.0.0.1: its base URL while in the block."""
    app = web.Application()
    app.router.add_post(route, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_server_errors_and_network_failures_are_transient_a_wrong_url_is_not() -> None:
    async def handler(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        headers = {"Retry-After": "7"} if status == 429 else {}
        return web.json_response({"error": "server_error"}, status=status, headers=headers)

    async with serve_post("/{status}", handler) as base, aiohttp.ClientSession() as http:
        for status in (500, 503, 429):
            with pytest.raises(TokenUnavailable, match=f"HTTP {status}") as info:
                await source(f"{base}/{status}").token(http)
            # A rate limit's Retry-After is the driver's wait at least (Transient.retry_after).
            assert info.value.retry_after == (7.0 if status == 429 else None)
        with pytest.raises(TokenRejected, match=r"HTTP 404.*check token_url"):
            await source(f"{base}/404").token(http)
    async with aiohttp.ClientSession() as http:  # the port is closed now
        with pytest.raises(TokenUnavailable, match="unreachable: Client"):
            await source(f"{base}/500").token(http)


async def test_a_token_with_control_characters_is_not_taken() -> None:
    """No header or URL can carry it: aiohttp refused it at connect with a ValueError that ended
    the daemon. It is a failed fetch instead, retried with the backoff."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "ory_at_x\r\nX-Evil: 1", "expires_in": 3600})

    async with serve_post("/token", handler) as base, aiohttp.ClientSession() as http:
        with pytest.raises(TokenUnavailable, match="a token with control characters") as info:
            await source(f"{base}/token").token(http)
    assert "ory_at_x" not in str(info.value)


async def test_the_emulator_accepts_only_issued_unexpired_tokens() -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "scope": "api",
    }
    emulator = BitqueryEmulator(client_id=CLIENT_ID, client_secret=SECRET, token_lifetime=0.5)
    async with emulator as emu, aiohttp.ClientSession() as http:
        async with http.post(emu.token_url, data=form) as resp:
            reply = await resp.json()
        assert set(reply) == {"access_token", "expires_in", "scope", "token_type"}
        assert (reply["expires_in"], reply["scope"], reply["token_type"]) == (0.5, "api", "bearer")

        async def status(token: str) -> int:
            try:
                async with http.ws_connect(f"{emu.url}?token={token}", protocols=["graphql-ws"]):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

        assert await status(reply["access_token"]) == 101
        assert await status("ory_at_made_up") == 401
        await asyncio.sleep(0.6)
        assert await status(reply["access_token"]) == 401  # expired
        assert emu.auth_rejected == 2
        async with http.post(emu.token_url, data={**form, "client_secret": "nope"}) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "invalid_client"
        async with http.post(emu.token_url, data={**form, "grant_type": "password"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "unsupported_grant_type"


# -- the driver ------------------------------------------------------------------------------------


def oauth_collector(
    registry: Registry, emu: BitqueryEmulator, secret: str = SECRET, **overrides: Any
) -> tuple[Collector, Buffer, TokenSource]:
    config = provider_config("bitquery", emu.url, [{"name": "blocks", "query": BLOCKS}], **overrides)
    auth = dataclasses.replace(config.auth, env=None, oauth=OAuthConfig(*ENV_NAMES, emu.token_url))
    config = dataclasses.replace(config, auth=auth)
    buffer = Buffer(registry, FlushPolicy(max_rows=100, max_age=0.05))
    protocol = PROTOCOLS["bitquery"](config.name, list(config.subscriptions), config.options)
    tokens = TokenSource(
        emu.token_url, CLIENT_ID, secret, env_names=ENV_NAMES, where="providers.bitquery.auth.oauth"
    )
    target = build_target(emu.url, config.auth, None)  # no key: the driver adds the token at connect
    return (
        Collector(config, protocol, target, buffer, ProviderStats(config.name), tokens=tokens),
        buffer,
        tokens,
    )


def blocks(buffer: Buffer) -> int:
    return buffer.received.get("bitquery_evm_blocks", 0)


async def test_a_reconnect_after_expiry_uses_a_new_token_and_ingestion_goes_on(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", logging.INFO)
    async with BitqueryEmulator(
        client_id=CLIENT_ID, client_secret=SECRET, token_lifetime=1, block_interval=0.05
    ) as emu:
        col, buffer, tokens = oauth_collector(registry, emu)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: blocks(buffer) >= 3, 5, "rows with the first token")
        await asyncio.sleep(1.1)  # the first token has expired; the open socket goes on regardless
        assert col.stats.connects == 1 and emu.tokens_issued == 1
        before = blocks(buffer)
        assert before > 3
        await emu.drop_connections()  # a network cut: the reconnect needs a token
        await eventually(lambda: col.stats.connects == 2, 5, "reconnect")
        await eventually(lambda: blocks(buffer) >= before + 3, 5, "rows with the second token")
        await col.stop()
        await asyncio.wait_for(task, 5)
        await drain.close()
        # Renewed before connecting, so the server never saw the expired one.
        assert emu.tokens_issued == 2 and tokens.fetches == 2 and emu.auth_rejected == 0
        assert col.stats.state == "stopped" and "token=***" in col.stats.display_url
    err = capsys.readouterr().err
    assert '"connected"' in err and "token=***" in err and "ory_at_" not in err  # no token in any log line


async def test_a_refused_token_is_replaced_once_at_connect(registry: Registry) -> None:
    async with BitqueryEmulator(client_id=CLIENT_ID, client_secret=SECRET, block_interval=0.05) as emu:
        col, buffer, _ = oauth_collector(registry, emu)
        task = asyncio.create_task(col.run())
        await eventually(lambda: blocks(buffer) >= 2, 5, "rows")
        emu.revoke_tokens()  # the cached token looks fresh but the server no longer knows it
        await emu.drop_connections()
        await eventually(lambda: col.stats.connects == 2, 5, "reconnect with a new token")
        await col.stop()
        await asyncio.wait_for(task, 5)
        assert emu.auth_rejected == 1 and emu.tokens_issued == 2 and col.stats.state == "stopped"


async def test_a_token_refused_twice_stops_the_collector(registry: Registry) -> None:
    # Tokens that expire at once: the first is refused, so is its replacement, then it is fatal.
    async with BitqueryEmulator(client_id=CLIENT_ID, client_secret=SECRET, token_lifetime=0) as emu:
        col, _, _ = oauth_collector(registry, emu)
        await asyncio.wait_for(col.run(), 5)
        assert col.stats.state == "failed" and "401" in col.stats.last_error
        assert emu.tokens_issued == 2 and emu.auth_rejected == 2 and emu.connections_total == 0


@contextlib.asynccontextmanager
async def checking_at_init(
    registry: Registry, subprotocol: str = "graphql-transport-ws"
) -> AsyncIterator[tuple[BitqueryEmulator, Collector, Buffer, TokenSource, asyncio.Task[None]]]:
    """An emulator that checks tokens at connection_init, and an OAuth collector whose first
    token has delivered rows."""
    async with BitqueryEmulator(
        client_id=CLIENT_ID, client_secret=SECRET, block_interval=0.05, auth_at="init"
    ) as emu:
        col, buffer, tokens = oauth_collector(registry, emu, options={"subprotocol": subprotocol})
        task = asyncio.create_task(col.run())
        await eventually(lambda: blocks(buffer) >= 2, 5, "rows with the first token")
        yield emu, col, buffer, tokens, task


@pytest.mark.parametrize("subprotocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_token_refused_at_connection_init_is_replaced_once(
    registry: Registry, subprotocol: str
) -> None:
    # A server that checks the token at connection_init (4403, or connection_error on graphql-ws)
    # instead of at the upgrade: the same rule, one new token (PROTOCOLS.md 1.11).
    async with checking_at_init(registry, subprotocol) as (emu, col, buffer, tokens, task):
        for refusal in (1, 2):  # the second time, the refused token is the first one's replacement
            # A healthy session with this token (backoff.healthy_after, as the watchdog's 1 s tick sees it).
            await asyncio.sleep(1.2)
            emu.revoke_tokens()
            await emu.drop_connections()
            before = blocks(buffer)
            await eventually(lambda b=before: blocks(buffer) >= b + 2, 5, f"rows after refusal {refusal}")
        await col.stop()
        await asyncio.wait_for(task, 5)
        # Connected with the old token (refused at init), then at once with a new one: no backoff.
        assert emu.auth_rejected == 2 and emu.tokens_issued == 3 and tokens.fetches == 3
        assert col.stats.connects == 5 and emu.connections_total == 5 and col.stats.state == "stopped"


async def test_after_a_healthy_session_a_replacement_refused_at_once_stops_the_collector(
    registry: Registry,
) -> None:
    """The first token served for a while, then was refused: one replacement, and when that is
    refused straight away too, the collector stops (two tokens, not a third)."""
    async with checking_at_init(registry) as (emu, col, _, tokens, task):
        await asyncio.sleep(1.2)  # longer than backoff.healthy_after, as the watchdog's 1 s tick sees it
        emu.token_lifetime = 0  # from now on every token it issues has expired when it is used
        emu.revoke_tokens()
        await emu.close_connections(4403, "Forbidden")  # the open socket's token refused, late in its life
        await asyncio.wait_for(task, 5)
    assert col.stats.state == "failed" and "4403" in col.stats.last_error
    assert emu.tokens_issued == 2 and tokens.fetches == 2 and emu.auth_rejected == 1


@pytest.mark.parametrize("subprotocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_new_token_refused_at_connection_init_stops_the_collector(
    registry: Registry, subprotocol: str
) -> None:
    # Tokens that expire at once: the first is refused at init, so is its replacement, then it is fatal.
    async with BitqueryEmulator(
        client_id=CLIENT_ID, client_secret=SECRET, token_lifetime=0, auth_at="init"
    ) as emu:
        col, _, _ = oauth_collector(registry, emu, options={"subprotocol": subprotocol})
        await asyncio.wait_for(col.run(), 5)
        assert col.stats.state == "failed" and "Forbidden" in col.stats.last_error
        assert col.stats.last_error.startswith(
            "server refused the credentials: closed with 4403"
            if subprotocol == "graphql-transport-ws"
            else "connection refused: Forbidden"
        )
        assert emu.tokens_issued == 2 and emu.auth_rejected == 2 and emu.connections_total == 2


async def test_a_token_the_server_echoes_in_its_refusal_never_reaches_a_log_or_an_error(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refused token is forgotten by the log's masking once replaced: the reason that quotes it
    is masked before that, for the log lines after it and for last_error (/health, live view)."""
    configure_logging("json", logging.INFO)
    issued = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal issued
        issued += 1
        return web.json_response({"access_token": f"ory_at_echoed-{issued}-XYZ", "expires_in": 3600})

    async def graphql(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("graphql-transport-ws",))
        await ws.prepare(request)
        await ws.receive()  # connection_init
        await ws.close(code=4403, message=f"Forbidden: {request.query['token']}".encode())
        return ws

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/graphql", graphql)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url, token_url = f"ws://127.0.0.1:{port}/graphql", f"http://127.0.0.1:{port}/token"
        config = provider_config("bitquery", url, [{"name": "blocks", "query": BLOCKS}])
        auth = dataclasses.replace(config.auth, env=None, oauth=OAuthConfig(*ENV_NAMES, token_url))
        config = dataclasses.replace(config, auth=auth)
        tokens = TokenSource(token_url, CLIENT_ID, SECRET, env_names=ENV_NAMES, where="p")
        protocol = PROTOCOLS["bitquery"](config.name, list(config.subscriptions), config.options)
        buffer = Buffer(registry, FlushPolicy(max_rows=100, max_age=0.05))
        stats = ProviderStats(config.name)
        col = Collector(config, protocol, build_target(url, config.auth, None), buffer, stats, tokens=tokens)
        await asyncio.wait_for(col.run(), 10)
    finally:
        await runner.cleanup()
    err = capsys.readouterr().err
    assert issued == 2 and stats.state == "failed"
    assert stats.last_error == "server refused the credentials: closed with 4403 Forbidden: ***"
    assert "Forbidden: ***" in err and "echoed-" not in err


async def test_a_key_refused_at_connection_init_stops_the_collector_at_once(registry: Registry) -> None:
    # Not a token from an endpoint: nothing to replace, and the same key would be refused again.
    async with BitqueryEmulator(key="the-right-key", auth_at="init") as emu:
        config = provider_config("bitquery", emu.url, [{"name": "blocks", "query": BLOCKS}])
        col, _ = collector(registry, config, "a-wrong-key")
        await asyncio.wait_for(col.run(), 5)
        assert col.stats.state == "failed"
        assert col.stats.last_error == "server refused the credentials: closed with 4403 Forbidden"
        assert emu.connections_total == 1 and emu.auth_rejected == 1


async def test_wrong_credentials_stop_the_collector_with_the_variables_named_and_no_secret_logged(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", logging.INFO)
    wrong = "wrong-secret-3d8a1f6b"
    async with BitqueryEmulator(client_id=CLIENT_ID, client_secret=SECRET) as emu:
        col, _, _ = oauth_collector(registry, emu, secret=wrong)
        await asyncio.wait_for(col.run(), 5)
    err = capsys.readouterr().err
    assert col.stats.state == "failed" and "BQ_CLIENT_SECRET" in col.stats.last_error
    stopped = [line for line in err.splitlines() if "collector stopped" in line]
    assert len(stopped) == 1 and "BQ_CLIENT_ID" in stopped[0] and "BQ_CLIENT_SECRET" in stopped[0]
    assert wrong not in err and SECRET not in err and emu.connections_total == 0


async def test_a_token_endpoint_that_is_down_is_retried_with_backoff(registry: Registry) -> None:
    async with BitqueryEmulator(client_id=CLIENT_ID, client_secret=SECRET, block_interval=0.05) as emu:
        col, buffer, tokens = oauth_collector(registry, emu)
        tokens._url = "http://127.0.0.1:9/oauth2/token"  # nothing listens there (the discard port)
        task = asyncio.create_task(col.run())
        await eventually(
            lambda: col.stats.state == "backoff" and "unreachable" in col.stats.last_error, 5, "backoff"
        )
        tokens._url = emu.token_url  # the endpoint is back
        await eventually(lambda: blocks(buffer) >= 2, 5, "rows once a token is had")
        await col.stop()
        await asyncio.wait_for(task, 5)
        assert col.stats.connects == 1


# -- the daemon ------------------------------------------------------------------------------------


def emulated_config(tmp_path: Path, provider_keys: str) -> Path:
    """A config file: Parquet only, one Bitquery provider on the emulator with these extra keys."""
    cfg = tmp_path / "ingest.toml"
    cfg.write_text(f"""
[storage]
data_dir = "{tmp_path / "data"}"
duckdb = false

[providers.bitquery]
url = "emulator"
auth.in = "query"
{provider_keys}

[[providers.bitquery.subscriptions]]
name = "blocks"
query = "{BLOCKS}"
""")
    return cfg


async def test_the_daemon_with_oauth_against_the_emulator_renews_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BQ_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("BQ_CLIENT_SECRET", SECRET)
    cfg = emulated_config(
        tmp_path,
        """auth.oauth = { client_id_env = "BQ_CLIENT_ID", client_secret_env = "BQ_CLIENT_SECRET" }
backoff = { initial = 0.02, max = 0.1, healthy_after = 0.3 }
emulator = { block_interval = 0.05, token_lifetime = 1 }""",
    )
    config = load_config(cfg)
    provider: ProviderConfig = config.providers[0]
    assert provider.auth.oauth is not None and provider.auth.oauth.token_url is None
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(duration=8))

    def received() -> int:
        return daemon.buffer.received.get("bitquery_evm_blocks", 0)

    await eventually(lambda: "bitquery" in daemon._emulators and received() >= 3, 5, "rows")
    emu = daemon._emulators["bitquery"]
    await asyncio.sleep(1.1)
    before = received()
    await emu.drop_connections()
    await eventually(lambda: received() >= before + 3, 5, "rows after the reconnect")
    daemon.request_stop()
    result = await asyncio.wait_for(task, 10)
    assert result.failed == [] and emu.tokens_issued >= 2 and emu.auth_rejected == 0
    assert daemon.metrics.provider("bitquery").connects >= 2


async def test_an_emulator_option_of_a_wrong_value_is_a_config_error(tmp_path: Path) -> None:
    cfg = emulated_config(tmp_path, 'emulator = { auth_at = "handshake" }')
    code, _, err = await run_cli("run", "--config", str(cfg), "--duration", "2", "--no-live", cwd=tmp_path)
    assert code == 2
    expected = "providers.bitquery.emulator: auth_at must be 'upgrade' or 'init', not 'handshake'"
    assert f"config error: {expected}" in err
