"""CoinAPI WebSocket V1 emulator, driven by a plain aiohttp client: auth, scopes, messages and faults.

Field names, formats and semantics come from /work/shared/PROTOCOLS.md section 3, written out here
independently of the emulator; expected counts come from the emulator's own send counters.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import WSMsgType

from ingest.emulators.coinapi import CoinAPIEmulator

KEY = "coinapi-test-key-7d3f"
HEADER = {"X-CoinAPI-Key": KEY}
DATA_TYPES = {"trade", "quote", "book", "book5", "book20", "book50", "ohlcv", "exrate"}
ISO7 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z")
UUID4 = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}")
NUMBER_9 = re.compile(r'"price":\d+\.\d{9}[,}]')
HEADER_FIELDS = {"type", "symbol_id", "sequence", "time_exchange", "time_coinapi"}
FIELDS = {
    "trade": HEADER_FIELDS | {"uuid", "price", "size", "taker_side"},
    "quote": HEADER_FIELDS | {"ask_price", "ask_size", "bid_price", "bid_size"},
    "book": HEADER_FIELDS | {"is_snapshot", "asks", "bids"},
    "book5": HEADER_FIELDS | {"asks", "bids"},
    "book20": HEADER_FIELDS | {"asks", "bids"},
    "book50": HEADER_FIELDS | {"asks", "bids"},
    "ohlcv": {"type", "symbol_id", "sequence", "period_id", "time_period_start", "time_period_end",
              "time_open", "time_close", "price_open", "price_high", "price_low", "price_close",
              "volume_traded", "trades_count"},
    "exrate": {"type", "asset_id_base", "asset_id_quote", "rate_type", "time", "rate"},
}  # fmt: skip
COINBASE = {"COINBASE_SPOT_BTC_USD", "COINBASE_SPOT_ETH_USD", "COINBASE_SPOT_SOL_USD"}

StartCoinAPI = Callable[..., Awaitable[CoinAPIEmulator]]


@pytest.fixture
async def coinapi() -> AsyncIterator[StartCoinAPI]:
    """Start CoinAPI emulators on 127.0.0.1:0 (fast ticks by default) and stop them after the test."""
    started: list[CoinAPIEmulator] = []

    async def start(**kwargs: Any) -> CoinAPIEmulator:
        kwargs.setdefault("tick_interval", 0.01)
        emulator = CoinAPIEmulator(**kwargs)
        await emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        await emulator.stop()


class Client:
    """One socket: sends control messages and sorts what arrives (data, heartbeats, control)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.data: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.control: list[dict[str, Any]] = []
        self.heartbeats: list[float] = []
        self.closed: aiohttp.WSMessage | None = None

    async def send(self, type: str, **params: Any) -> None:
        await self.ws.send_json({"type": type, **params})

    def _sort(self, msg: aiohttp.WSMessage) -> None:
        assert msg.type is WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if frame["type"] in DATA_TYPES:
            self.data.append(frame)
            self.raw.append(msg.data)
        elif frame["type"] == "hearbeat":
            assert msg.data == '{"type":"hearbeat"}'
            self.heartbeats.append(time.monotonic())
        else:
            self.control.append(frame)

    async def read(self, timeout: float | None = None) -> bool:
        """Read one frame; False once the socket is closed (or nothing came within `timeout`)."""
        if self.closed is not None:
            return False
        try:
            msg = await self.ws.receive(timeout=timeout)
        except TimeoutError:
            return False
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
            self.closed = msg
            return False
        if msg.type is not WSMsgType.PING:
            self._sort(msg)
        return True

    async def pump(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                if not await self.read():
                    break
        assert done(), "socket closed before the condition held"

    async def pump_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and await self.read(timeout=left):
            pass

    async def until_closed(self, timeout: float = 3.0) -> aiohttp.WSMessage:
        async with asyncio.timeout(timeout):
            while await self.read():
                pass
        assert self.closed is not None
        return self.closed

    def of(self, dtype: str, symbol_id: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.data if f["type"] == dtype and symbol_id in (None, f.get("symbol_id"))]

    def symbols(self, dtype: str | None = None) -> set[str]:
        return {f["symbol_id"] for f in self.data if dtype in (None, f["type"]) and "symbol_id" in f}


async def connect(
    session: aiohttp.ClientSession, emulator: CoinAPIEmulator, *, path: str | None = None, **kwargs: Any
) -> Client:
    url = emulator.url if path is None else emulator.url.removesuffix("/v1/") + path
    kwargs.setdefault("headers", HEADER)
    return Client(await session.ws_connect(url, **kwargs))


async def settle(client: Client, emulator: CoinAPIEmulator, quiet: float = 0.15) -> None:
    """Read until `quiet` s pass with no data, every queue empty and every data frame sent here received."""
    async with asyncio.timeout(10):
        count, changed = len(client.data), time.monotonic()
        while True:
            got = await client.read(timeout=quiet)
            if len(client.data) != count:
                count, changed = len(client.data), time.monotonic()
            elif (not got or time.monotonic() - changed >= quiet) and all(
                c.queue.empty() for c in emulator.connections
            ):
                break
    assert len(client.data) == sum(emulator.sent.values())


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def scope(emulator: CoinAPIEmulator) -> set[tuple[str, str, str]]:
    """The single connection's scope atoms: (data type, filter kind, value)."""
    (conn,) = emulator.connections
    return set(conn.subscriptions)


def ticks(stamp: str) -> int:
    """A 7-digit ISO time as 100 ns ticks since the epoch (parsed by hand, not by the emulator)."""
    whole, fraction = stamp.removesuffix("Z").split(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(seconds) * 10_000_000 + int(fraction)


def sequences(client: Client) -> dict[tuple[str, str], list[int]]:
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for frame in client.data:
        if "sequence" in frame:
            seqs[(frame["type"], frame["symbol_id"])].append(frame["sequence"])
    return seqs


def sent_key(frame: dict[str, Any]) -> tuple[str, str]:
    if frame["type"] == "exrate":
        return ("exrate", f"{frame['asset_id_base']}/{frame['asset_id_quote']}")
    return (frame["type"], frame["symbol_id"])


async def error_then_close(client: Client, timeout: float = 3.0) -> str:
    """The one error message that must end the session, followed by the server's close."""
    await client.until_closed(timeout)
    assert client.control and client.control[-1]["type"] == "error", client.control
    assert [c["type"] for c in client.control].count("error") == 1
    assert set(client.control[-1]) == {"type", "message"}
    assert client.closed is not None and client.closed.type is WSMsgType.CLOSE
    return client.control[-1]["message"]


# -- authentication -------------------------------------------------------------------------------

HELLO_TRADES = {"subscribe_data_type": ["trade"], "subscribe_filter_exchange_id": ["COINBASE", "BINANCE"]}


@pytest.mark.parametrize(
    ("path", "headers", "params", "hello_key"),
    [
        ("/v1/", {}, None, KEY),
        ("/v1/", {"X-CoinAPI-Key": KEY}, None, None),
        ("/v1/", {}, {"apikey": KEY}, None),
        ("/v1/", {"Authorization": KEY}, None, None),
        (
            "/v1/",
            {"Authorization": "Basic " + base64.b64encode(f"coinapi:{KEY}".encode()).decode()},
            None,
            None,
        ),
        (f"/v1/APIKEY-{KEY}", {}, None, None),
        ("/", {"X-CoinAPI-Key": KEY}, None, KEY),
        ("/v1", {}, None, KEY),
    ],
)
async def test_each_auth_placement_and_path_gets_data(
    coinapi, session, path, headers, params, hello_key
) -> None:
    """apikey in hello, X-CoinAPI-Key, ?apikey=, Authorization (plain or Basic) or /APIKEY-: data flows."""
    emulator = await coinapi(key=KEY)
    client = await connect(session, emulator, path=path, headers=headers, params=params)
    hello = dict(HELLO_TRADES, apikey=hello_key) if hello_key else HELLO_TRADES
    await client.send("hello", **hello)
    await client.pump(lambda: len(client.of("trade")) >= 3)
    assert not client.control


@pytest.mark.parametrize(
    ("headers", "params", "hello_key", "key"),
    [
        ({}, None, "wrong", KEY),
        ({}, None, None, KEY),
        ({}, None, "", None),
        ({}, {"apikey": "wrong"}, None, KEY),
        ({"Authorization": "Bearer eyJhbGciOi.x.y"}, None, None, None),
    ],
)
async def test_bad_or_missing_key_in_hello_gets_error_then_close(
    coinapi, session, headers, params, hello_key, key
) -> None:
    """A wrong, empty or missing key: {"type":"error","message":"Invalid API key"}, then the socket closes."""
    emulator = await coinapi(key=key)
    client = await connect(session, emulator, headers=headers, params=params)
    hello = dict(HELLO_TRADES, apikey=hello_key) if hello_key is not None else HELLO_TRADES
    await client.send("hello", **hello)
    assert await error_then_close(client) == "Invalid API key"
    assert not client.data
    assert emulator.errors_sent == ["Invalid API key"]


async def test_bad_key_at_upgrade_is_answered_without_waiting_for_hello(coinapi, session) -> None:
    """The socket is accepted, then the error arrives and the server closes it."""
    emulator = await coinapi(key=KEY)
    client = await connect(session, emulator, headers={"X-CoinAPI-Key": "nope"})
    assert await error_then_close(client) == "Invalid API key"


async def test_key_never_reaches_the_logs(coinapi, session, caplog) -> None:
    """Neither structlog events nor stdlib logs (aiohttp's included) contain the API key."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        emulator = await coinapi(key=KEY)
        good = await connect(session, emulator, headers={}, params={"apikey": KEY})
        await good.send("hello", apikey=KEY, **HELLO_TRADES)
        await good.pump(lambda: len(good.data) >= 1)
        for headers, hello_key in (({"X-CoinAPI-Key": KEY + "-bad"}, None), ({}, KEY + "-bad")):
            bad = await connect(session, emulator, headers=headers)
            if hello_key:
                await bad.send("hello", apikey=hello_key, **HELLO_TRADES)
            await error_then_close(bad)
        await good.ws.close()
        await emulator.stop()
    assert events, "the emulator should log something to check"
    assert KEY not in repr(events)
    assert KEY not in caplog.text


# -- request validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("{not json", "JSON"),
        ({"type": "unsubscribe", "subscribe_data_type": ["trade"]}, "hello"),
        ({"subscribe_data_type": ["trade"]}, "hello"),
        ({"type": "hello", "subscribe_data_type": ["trades"]}, "'trades'"),
        ({"type": "hello"}, "subscribe_data_type"),
        ({"type": "hello", "subscribe_data_type": "trade"}, "subscribe_data_type"),
        ({"type": "hello", "subscribe_data_type": ["book5"]}, "book5"),
        ({"type": "hello", "subscribe_data_type": ["book"], "heartbeat": True}, "book"),
        ({"type": "hello", "subscribe_data_type": ["exrate"], "subscribe_filter_symbol_id": ["X"]}, "exrate"),
        ({"type": "hello", "subscribe_data_type": ["trade"], "subscribe_filter_symbol_id": "COINBASE_"},
         "subscribe_filter_symbol_id"),
        ({"type": "hello", "subscribe_data_type": ["trade"], "heartbeat": "yes"}, "heartbeat"),
    ],
)  # fmt: skip
async def test_bad_first_message_gets_error_naming_the_problem(coinapi, session, message, named) -> None:
    """Not JSON, not hello/subscribe first, unknown or missing data type, a book without filter, ..."""
    emulator = await coinapi()
    client = await connect(session, emulator)
    await client.ws.send_str(message if isinstance(message, str) else json.dumps(message))
    assert named in await error_then_close(client)


async def test_unknown_message_type_after_hello_ends_the_session(coinapi, session) -> None:
    """Errors are permanent even mid-session: the data stops, the error comes, the socket closes."""
    emulator = await coinapi()
    client = await connect(session, emulator)
    await client.send("hello", **HELLO_TRADES)
    await client.pump(lambda: len(client.data) >= 1)
    await client.send("ping")
    assert "'ping'" in await error_then_close(client)


async def test_subscribe_may_open_the_session(coinapi, session) -> None:
    """The first message may be subscribe instead of hello."""
    emulator = await coinapi()
    client = await connect(session, emulator)
    await client.send("subscribe", **HELLO_TRADES)
    await client.pump(lambda: len(client.data) >= 2)
    assert client.symbols() <= COINBASE | {
        "BINANCE_SPOT_BTC_USDT",
        "BINANCE_SPOT_ETH_USDT",
        "BINANCE_PERP_BTC_USDT",
    }


# -- filters and scope ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"subscribe_filter_symbol_id": ["COINBASE_"]}, COINBASE),
        ({"subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC_USD$"]}, {"BITSTAMP_SPOT_BTC_USD"}),
        ({"subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC_USD"]},
         {"BITSTAMP_SPOT_BTC_USD", "BITSTAMP_SPOT_BTC_USDT"}),
        ({"subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC_"]},
         {"BITSTAMP_SPOT_BTC_USD", "BITSTAMP_SPOT_BTC_USDT", "BITSTAMP_SPOT_BTC_EUR"}),
        ({"subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC$"]}, set()),
        ({"subscribe_filter_exchange_id": ["KRAKEN"]}, {"KRAKEN_SPOT_BTC_EUR", "KRAKEN_SPOT_ETH_EUR"}),
        ({"subscribe_filter_exchange_id": ["BINANCE"]},
         {"BINANCE_SPOT_BTC_USDT", "BINANCE_SPOT_ETH_USDT", "BINANCE_PERP_BTC_USDT"}),
        ({"subscribe_filter_asset_id": ["SOL"]}, {"COINBASE_SPOT_SOL_USD"}),
        ({"subscribe_filter_asset_id": ["EUR"]},
         {"BITSTAMP_SPOT_BTC_EUR", "KRAKEN_SPOT_BTC_EUR", "KRAKEN_SPOT_ETH_EUR"}),
        ({"subscribe_filter_asset_id": ["BTC/USD"]},
         {"BITSTAMP_SPOT_BTC_USD", "COINBASE_SPOT_BTC_USD", "BITMEX_PERP_BTC_USD"}),
        ({"subscribe_filter_exchange_id": ["KRAKEN"],
          "subscribe_filter_symbol_id": ["COINBASE_SPOT_SOL_USD$"],
          "subscribe_filter_asset_id": ["ETH/USDT"]},
         {"KRAKEN_SPOT_BTC_EUR", "KRAKEN_SPOT_ETH_EUR", "COINBASE_SPOT_SOL_USD", "BINANCE_SPOT_ETH_USDT"}),
    ],
)  # fmt: skip
async def test_filters_select_exactly_the_documented_symbols(coinapi, session, filters, expected) -> None:
    """Prefix vs trailing-$ exact symbol ids, exchange ids, assets and pairs; mixed kinds are a union."""
    emulator = await coinapi(max_ticks=2, book_snapshot_every=1)
    client = await connect(session, emulator)
    await client.send("hello", subscribe_data_type=["book", "trade"], **filters)
    await until(lambda: emulator.ticks_produced >= 2)
    await settle(client, emulator)
    # book_snapshot_every=1: every selected symbol has a book message on every tick.
    assert client.symbols("book") == expected
    assert client.symbols() == expected


async def test_subscribe_adds_unsubscribe_removes_hello_replaces(coinapi, session) -> None:
    """subscribe adds to the scope, unsubscribe takes out what it names, hello replaces everything."""
    emulator = await coinapi(tick_interval=60, book_snapshot_every=1)
    client = await connect(session, emulator)

    async def step(expected: set[tuple[str, str, str]]) -> set[tuple[str, str]]:
        await until(lambda: scope(emulator) == expected)
        seen = len(client.data)
        done = emulator.ticks_produced + 2
        emulator.burst(2)
        await until(lambda: emulator.ticks_produced >= done)
        await settle(client, emulator)
        return {(f["type"], f["symbol_id"]) for f in client.data[seen:]}

    await client.send(
        "hello", subscribe_data_type=["book"], subscribe_filter_symbol_id=["COINBASE_SPOT_BTC_USD$"]
    )
    assert await step({("book", "symbol", "COINBASE_SPOT_BTC_USD$")}) == {("book", "COINBASE_SPOT_BTC_USD")}

    await client.send(
        "subscribe", subscribe_data_type=["book", "book5"], subscribe_filter_exchange_id=["KRAKEN"]
    )
    kraken = {"KRAKEN_SPOT_BTC_EUR", "KRAKEN_SPOT_ETH_EUR"}
    got = await step({("book", "symbol", "COINBASE_SPOT_BTC_USD$"), ("book", "exchange", "KRAKEN"),
                      ("book5", "exchange", "KRAKEN")})  # fmt: skip
    assert {s for t, s in got if t == "book"} == {"COINBASE_SPOT_BTC_USD"} | kraken
    assert {s for t, s in got if t == "book5"} <= kraken  # no book5 for the hello's Coinbase symbol

    await client.send("unsubscribe", subscribe_data_type=["book"], subscribe_filter_exchange_id=["KRAKEN"])
    got = await step({("book", "symbol", "COINBASE_SPOT_BTC_USD$"), ("book5", "exchange", "KRAKEN")})
    assert {s for t, s in got if t == "book"} == {"COINBASE_SPOT_BTC_USD"}

    await client.send("hello", subscribe_data_type=["book"], subscribe_filter_symbol_id=["BINANCE_SPOT_"])
    got = await step({("book", "symbol", "BINANCE_SPOT_")})
    assert got == {("book", "BINANCE_SPOT_BTC_USDT"), ("book", "BINANCE_SPOT_ETH_USDT")}

    await client.send("unsubscribe", subscribe_data_type=["book"])
    assert await step(set()) == set()
    assert client.closed is None and not client.control


async def test_period_filter_and_update_limits(coinapi, session) -> None:
    """subscribe_filter_period_id keeps only those bars; update limits space quotes and book5 apart."""
    emulator = await coinapi(tick_duration=0.5, max_ticks=30)
    client = await connect(session, emulator)
    await client.send(
        "hello",
        subscribe_data_type=["ohlcv", "quote", "book5"],
        subscribe_filter_symbol_id=["COINBASE_SPOT_BTC_USD$"],
        subscribe_filter_period_id=["1MIN"],
        subscribe_update_limit_ms_quote=2000,
        subscribe_update_limit_ms_book_snapshot=1500,
    )
    await until(lambda: emulator.ticks_produced >= 30, timeout=5)
    await settle(client, emulator)
    assert {f["period_id"] for f in client.of("ohlcv")} == {"1MIN"}
    for dtype, limit_ms in (("quote", 2000), ("book5", 1500)):
        times = [ticks(f["time_exchange"]) for f in client.of(dtype)]
        assert len(times) >= 3
        assert all(b - a >= limit_ms * 10_000 for a, b in itertools.pairwise(times))


# -- heartbeats -----------------------------------------------------------------------------------


async def test_heartbeat_spelt_hearbeat_only_when_idle(coinapi, session) -> None:
    """heartbeat:true sends {"type":"hearbeat"} after each quiet interval, never while data flows."""
    emulator = await coinapi(heartbeat_interval=0.1)
    client = await connect(session, emulator)
    await client.send("hello", heartbeat=True, subscribe_data_type=["quote", "book5"],
                      subscribe_filter_exchange_id=["COINBASE", "BINANCE"])  # fmt: skip
    await client.pump_for(0.6)
    assert len(client.data) > 50 and not client.heartbeats
    await client.send(
        "hello", heartbeat=True, subscribe_data_type=["trade"], subscribe_filter_symbol_id=["NOPE$"]
    )
    await client.pump(lambda: len(client.heartbeats) >= 4, timeout=2)
    gaps = [b - a for a, b in itertools.pairwise(client.heartbeats)]
    assert all(0.07 < g < 0.3 for g in gaps), gaps
    await client.send(
        "hello", heartbeat=False, subscribe_data_type=["trade"], subscribe_filter_symbol_id=["NOPE$"]
    )
    await asyncio.sleep(0.15)
    quiet_from = len(client.heartbeats)
    await client.pump_for(0.4)
    assert len(client.heartbeats) == quiet_from
    assert emulator.heartbeats_sent == len(client.heartbeats)
    assert all(dtype != "hearbeat" for dtype, _ in emulator.sent)


QUIET = {"subscribe_data_type": ["trade"], "subscribe_filter_symbol_id": ["NOPE$"]}


@pytest.mark.parametrize("standalone", [False, True])
async def test_a_subscribe_without_heartbeat_keeps_or_stops_the_hellos_heartbeats(
    coinapi, session, standalone
) -> None:
    """By default a session keeps the hello's heartbeat choice; standalone_messages reads each
    subscribe on its own, as CoinAPI's examples write them, and an absent `heartbeat` is false."""
    emulator = await coinapi(heartbeat_interval=0.05, standalone_messages=standalone)
    client = await connect(session, emulator)
    await client.send("hello", heartbeat=True, **QUIET)
    await client.pump(lambda: len(client.heartbeats) >= 2, timeout=2)
    await client.send("subscribe", subscribe_data_type=["quote"], subscribe_filter_symbol_id=["NOPE$"])
    await asyncio.sleep(0.1)
    beats = len(client.heartbeats)
    await client.pump_for(0.3)
    assert (len(client.heartbeats) == beats) is standalone
    await client.send(
        "subscribe", heartbeat=True, subscribe_data_type=["book5"], subscribe_filter_symbol_id=["NOPE$"]
    )
    await client.pump(lambda: len(client.heartbeats) > beats + 2, timeout=2)
    assert client.closed is None and not client.control


@pytest.mark.parametrize(("headers", "refused"), [({}, True), (HEADER, False)])
async def test_standalone_messages_need_their_own_key_unless_the_upgrade_had_it(
    coinapi, session, headers, refused
) -> None:
    """With standalone_messages a subscribe without `apikey` after a keyed hello is an invalid key,
    unless the key came at the upgrade (X-CoinAPI-Key here)."""
    emulator = await coinapi(standalone_messages=True)
    client = await connect(session, emulator, headers=headers)
    await client.send("hello", apikey=KEY, heartbeat=True, **QUIET)
    await client.send("subscribe", heartbeat=True, **HELLO_TRADES)
    if refused:
        assert await error_then_close(client) == "Invalid API key"
    else:
        await client.pump(lambda: len(client.data) >= 2)
        assert client.closed is None and not client.control


# -- messages -------------------------------------------------------------------------------------


def check_common(frame: dict[str, Any]) -> None:
    assert set(frame) == FIELDS[frame["type"]], frame
    for name in ("time_exchange", "time_coinapi", "time_period_start", "time_period_end", "time_open",
                 "time_close", "time"):  # fmt: skip
        if name in frame:
            assert ISO7.fullmatch(frame[name]), frame
    if "time_coinapi" in frame:
        assert 0 < ticks(frame["time_coinapi"]) - ticks(frame["time_exchange"]) < 10_000_000


def check_levels(frame: dict[str, Any], depth: int | None) -> None:
    asks, bids = frame["asks"], frame["bids"]
    for level in asks + bids:
        assert set(level) == {"price", "size"} and isinstance(level["price"], float)
    ask_prices, bid_prices = [a["price"] for a in asks], [b["price"] for b in bids]
    assert ask_prices == sorted(ask_prices) and bid_prices == sorted(bid_prices, reverse=True)
    if depth is not None:
        assert len(asks) == len(bids) == depth
        assert bid_prices[0] < ask_prices[0]
        assert all(level["size"] > 0 for level in asks + bids)


async def test_message_shapes(coinapi, session) -> None:
    """trade, quote, book, book5/20/50, ohlcv and exrate carry the documented fields and formats."""
    emulator = await coinapi(tick_duration=0.5)
    client = await connect(session, emulator)
    await client.send(
        "hello",
        subscribe_data_type=["trade", "quote", "book", "book5", "book20", "book50", "ohlcv"],
        subscribe_filter_symbol_id=["COINBASE_SPOT_BTC_USD$", "KRAKEN_SPOT_BTC_EUR$", "BITMEX_PERP_BTC_USD$"],
    )
    await client.send(
        "subscribe", subscribe_data_type=["exrate"], subscribe_filter_asset_id=["BTC", "ETH/EUR"]
    )
    wanted = ("trade", "quote", "book", "book5", "book20", "book50", "ohlcv", "exrate")
    await client.pump(
        lambda: (
            all(len(client.of(t)) >= 3 for t in wanted)
            and {f["period_id"] for f in client.of("ohlcv")} == {"1SEC", "1MIN"}
        )
    )
    for frame in client.data:
        check_common(frame)
    for trade in client.of("trade"):
        assert UUID4.fullmatch(trade["uuid"])
        assert trade["taker_side"] in {"BUY", "SELL", "BUY_ESTIMATED", "SELL_ESTIMATED", "UNKNOWN"}
        assert trade["price"] > 0 and trade["size"] > 0
    assert {t["taker_side"] for t in client.of("trade", "KRAKEN_SPOT_BTC_EUR")} <= {
        "BUY_ESTIMATED", "SELL_ESTIMATED", "UNKNOWN"}  # fmt: skip
    for quote in client.of("quote"):
        assert 0 < quote["bid_price"] < quote["ask_price"] and quote["ask_size"] > 0 and quote["bid_size"] > 0
    for dtype, depth in (("book5", 5), ("book20", 20), ("book50", 50)):
        for frame in client.of(dtype):
            check_levels(frame, depth)
    for symbol_id in ("COINBASE_SPOT_BTC_USD", "KRAKEN_SPOT_BTC_EUR", "BITMEX_PERP_BTC_USD"):
        books = client.of("book", symbol_id)
        assert books[0]["is_snapshot"] is True and all(b["is_snapshot"] is False for b in books[1:])
        check_levels(books[0], 50)
        for update in books[1:]:
            check_levels(update, None)
    for bar in client.of("ohlcv"):
        length = {"1SEC": 10_000_000, "1MIN": 600_000_000}[bar["period_id"]]
        start, end = ticks(bar["time_period_start"]), ticks(bar["time_period_end"])
        assert end - start == length and start % length == 0
        assert start <= ticks(bar["time_open"]) <= ticks(bar["time_close"]) < end
        assert bar["price_low"] <= min(bar["price_open"], bar["price_close"])
        assert bar["price_high"] >= max(bar["price_open"], bar["price_close"])
        assert bar["trades_count"] >= 1 and bar["volume_traded"] > 0
    assert {f["period_id"] for f in client.of("ohlcv")} == {"1SEC", "1MIN"}
    rates = {(f["asset_id_base"], f["rate_type"]) for f in client.of("exrate")}
    assert rates == {("BTC", "BASE_ALL_CROSSES_TO_REF"), ("ETH", "BASE_AND_QUOTE_TO_REF"),
                     ("EUR", "BASE_AND_QUOTE_TO_REF")}  # fmt: skip
    assert all(f["asset_id_quote"] == "USD" and f["rate"] > 0 for f in client.of("exrate"))
    # CoinAPI prints numbers with 9 decimals (770.000000000); the emulator does the same.
    assert all(NUMBER_9.search(raw) for raw in client.raw if '"price"' in raw)


async def test_book_updates_rebuild_the_published_top_of_book(coinapi, session) -> None:
    """Applying book deltas (size 0 = remove) to the snapshot reproduces every book5 of the same instant."""
    emulator = await coinapi(max_ticks=40)
    client = await connect(session, emulator)
    await client.send("hello", subscribe_data_type=["book", "book5", "quote"],
                      subscribe_filter_symbol_id=["COINBASE_SPOT_ETH_USD$"])  # fmt: skip
    await until(lambda: emulator.ticks_produced >= 40)
    await settle(client, emulator)
    asks: dict[float, float] = {}
    bids: dict[float, float] = {}
    last_book_time = None
    checked = 0
    for frame in client.data:
        if frame["type"] == "book":
            if frame["is_snapshot"]:
                asks, bids = {}, {}
            for side, levels in ((asks, frame["asks"]), (bids, frame["bids"])):
                for level in levels:
                    if level["size"] == 0:
                        side.pop(level["price"], None)
                    else:
                        side[level["price"]] = level["size"]
            last_book_time = frame["time_exchange"]
        elif frame["type"] == "book5" and frame["time_exchange"] == last_book_time:
            top_asks = [{"price": p, "size": asks[p]} for p in sorted(asks)[:5]]
            top_bids = [{"price": p, "size": bids[p]} for p in sorted(bids, reverse=True)[:5]]
            assert (frame["asks"], frame["bids"]) == (top_asks, top_bids)
            checked += 1
    assert checked >= 20


# -- sequences ------------------------------------------------------------------------------------


async def test_sequence_starts_at_one_per_connection_and_is_contiguous(coinapi, session) -> None:
    """Per (type, symbol_id), every connection counts 1, 2, 3, ... on its own."""
    emulator = await coinapi()
    hello = {"subscribe_data_type": ["trade", "quote", "book5"], "subscribe_filter_exchange_id": ["COINBASE"]}
    first = await connect(session, emulator)
    await first.send("hello", **hello)
    await first.pump(lambda: len(first.data) >= 30)
    second = await connect(session, emulator)
    await second.send("hello", **hello)
    await second.pump(lambda: len(second.data) >= 30)
    await first.pump(lambda: len(first.data) >= 200)
    for client in (first, second):
        seqs = sequences(client)
        assert len(seqs) >= 6
        for key, values in seqs.items():
            assert values == list(range(1, len(values) + 1)), key
    assert emulator.gaps_injected == []


@pytest.mark.parametrize("every", [1, 4])
async def test_injected_sequence_gaps_are_exactly_the_recorded_ones(coinapi, session, every) -> None:
    """sequence_gap_every=N skips one number on every Nth message of a (type, symbol_id)."""
    emulator = await coinapi(sequence_gap_every=every, max_ticks=20)
    client = await connect(session, emulator)
    await client.send(
        "hello", subscribe_data_type=["trade", "quote"], subscribe_filter_exchange_id=["BINANCE"]
    )
    await until(lambda: emulator.ticks_produced >= 20)
    await settle(client, emulator)
    seen = []
    for (dtype, symbol_id), values in sequences(client).items():
        expected = 0
        for n, value in enumerate(values, start=1):
            if value != expected + 1:
                seen.append((symbol_id, dtype, expected + 1, value))
            assert (value == expected + 2) == (n % every == 0)
            expected = value
    assert seen and sorted(seen) == sorted(emulator.gaps_injected)


# -- faults ---------------------------------------------------------------------------------------


async def test_send_reconnect_then_close(coinapi, session) -> None:
    """reconnect carries within_seconds and a 7-digit before_time; data goes on until the server closes."""
    emulator = await coinapi()
    client = await connect(session, emulator)
    await client.send("hello", subscribe_data_type=["quote"], subscribe_filter_exchange_id=["COINBASE"])
    await client.pump(lambda: len(client.data) >= 5)
    emulator.send_reconnect(within_seconds=3, close_after=0.3)
    sent_at = time.monotonic()
    closed = await client.until_closed()
    assert time.monotonic() - sent_at > 0.25  # not before close_after; after it, within until_closed's 3 s
    (reconnect,) = client.control
    assert set(reconnect) == {"type", "within_seconds", "before_time"} and reconnect["type"] == "reconnect"
    assert reconnect["within_seconds"] == 3 and ISO7.fullmatch(reconnect["before_time"])
    after = [
        f for f in client.data if ticks(f["time_exchange"]) > ticks(reconnect["before_time"]) - 30_000_000
    ]
    assert after, "data keeps flowing during the reconnect window"
    lead = ticks(reconnect["before_time"]) - max(ticks(f["time_exchange"]) for f in client.data)
    assert 0 < lead <= 30_000_000
    assert (closed.type, closed.data) == (WSMsgType.CLOSE, 1001)
    assert emulator.reconnects_sent == 1


async def test_send_error_then_close(coinapi, session) -> None:
    """send_error reaches every socket as {"type":"error"} followed by the close; the data stops."""
    emulator = await coinapi()
    clients = [await connect(session, emulator) for _ in range(2)]
    for client in clients:
        await client.send("hello", subscribe_data_type=["trade"], subscribe_filter_exchange_id=["BINANCE"])
        await client.pump(lambda c=client: len(c.data) >= 2)
    await emulator.send_error("Service is restarting.")
    for client in clients:
        assert await error_then_close(client) == "Service is restarting."
    assert emulator.errors_sent == ["Service is restarting."] * 2
    await until(lambda: not emulator.connections)


async def test_a_data_type_the_key_lacks_gets_the_faq_error_and_the_rest_is_served(coinapi, session) -> None:
    """forbidden_types: a hello or subscribe asking for one is refused with CoinAPI's FAQ error and
    closed; the same key asking without it gets its data."""
    emulator = await coinapi(forbidden_types=["quote"])
    client = await connect(session, emulator)
    coinbase = {"subscribe_filter_exchange_id": ["COINBASE"]}
    await client.send("hello", subscribe_data_type=["trade", "quote"], **coinbase)
    forbidden = "Forbidden - Your API key don't have privileges to data type 'quote'."
    assert await error_then_close(client) == forbidden and client.data == []
    client = await connect(session, emulator)
    await client.send("hello", subscribe_data_type=["trade"], **coinbase)
    await client.pump(lambda: len(client.data) >= 3)
    assert {f["type"] for f in client.data} == {"trade"}
    await client.send("subscribe", subscribe_data_type=["quote"], subscribe_filter_exchange_id=["KRAKEN"])
    assert await error_then_close(client) == forbidden
    assert emulator.errors_sent == [forbidden, forbidden]


async def test_flood_pushes_n_trades_per_subscribed_symbol(coinapi, session) -> None:
    """flood(n): n more trades for each symbol with a trade listener, numbered on, with distinct uuids."""
    emulator = await coinapi(tick_interval=60)
    client = await connect(session, emulator)
    symbols = ["COINBASE_SPOT_SOL_USD", "KRAKEN_SPOT_ETH_EUR"]
    await client.send(
        "hello", subscribe_data_type=["trade"], subscribe_filter_symbol_id=[s + "$" for s in symbols]
    )
    await until(lambda: len(emulator.connections[0].subscriptions) == 2)
    emulator.flood(2000)
    await client.pump(lambda: len(client.data) >= 4000, timeout=10)
    await settle(client, emulator)
    assert emulator.sent == Counter({("trade", s): 2000 for s in symbols})
    assert dict(sequences(client)) == {("trade", s): list(range(1, 2001)) for s in symbols}
    assert len({f["uuid"] for f in client.data}) == 4000
    assert emulator.ticks_produced == 0 and emulator.flooded == 2000


async def test_buffer_limit_sends_the_documented_error_and_closes(coinapi, session) -> None:
    """Past max_queue buffered messages: the buffer is dropped, the documented error sent, the socket shut."""
    emulator = await coinapi(tick_interval=60, max_queue=50)
    client = await connect(session, emulator)
    await client.send(
        "hello", subscribe_data_type=["trade"], subscribe_filter_symbol_id=["BINANCE_SPOT_BTC_USDT$"]
    )
    await until(lambda: len(emulator.connections[0].subscriptions) == 1)
    emulator.flood(500)
    message = await error_then_close(client)
    assert message == "Reached maximum allowed buffered messages for this connection."
    assert len(client.data) < 500
    assert emulator.dropped[("trade", "BINANCE_SPOT_BTC_USDT")] > 0
    assert emulator.sent[("trade", "BINANCE_SPOT_BTC_USDT")] == len(client.data)


async def test_go_silent_sends_nothing_then_resumes_with_lost_numbers(coinapi, session) -> None:
    """go_silent: nothing arrives for the window, then data resumes; lost frames leave sequence gaps."""
    emulator = await coinapi(heartbeat_interval=0.05)
    client = await connect(session, emulator)
    await client.send(
        "hello", heartbeat=True, subscribe_data_type=["quote"], subscribe_filter_exchange_id=["COINBASE"]
    )
    await client.pump(lambda: len(client.data) >= 10)
    emulator.go_silent(0.4)
    silenced, before = time.monotonic(), len(client.data)
    arrivals: list[float] = []
    while time.monotonic() - silenced < 0.7:
        if await client.read(timeout=0.05):
            arrivals.append(time.monotonic() - silenced)
    assert not [t for t in arrivals if 0.05 < t < 0.35]
    assert len(client.data) > before + 5
    assert sum(emulator.dropped.values()) >= 5
    jumps = [b - a for values in sequences(client).values() for a, b in itertools.pairwise(values)]
    assert max(jumps) > 1 and emulator.gaps_injected == []


async def test_close_and_drop_connections(coinapi, session) -> None:
    """The inherited faults: close_connections(code) sends that code; drop_connections cuts TCP."""
    emulator = await coinapi()
    first = await connect(session, emulator)
    await first.send("hello", **HELLO_TRADES)
    await emulator.close_connections(4001, "bye")
    closed = await first.until_closed()
    assert (closed.type, closed.data, closed.extra) == (WSMsgType.CLOSE, 4001, "bye")
    second = await connect(session, emulator)
    await second.send("hello", **HELLO_TRADES)
    await second.pump(lambda: len(second.data) >= 1)
    await emulator.drop_connections()
    await second.until_closed()
    assert second.ws.close_code == 1006 and emulator.connections_total == 2


async def test_server_pings(coinapi, session) -> None:
    """The server sends WebSocket pings (every minute by default)."""
    emulator = await coinapi(ping_interval=0.05)
    client = await connect(session, emulator, autoping=False)
    async with asyncio.timeout(2):
        while (await client.ws.receive()).type is not WSMsgType.PING:
            pass


# -- determinism and counters ---------------------------------------------------------------------

ALL = {"subscribe_data_type": ["trade", "quote", "book", "book5", "book20", "ohlcv"],
       "subscribe_filter_exchange_id": ["BITSTAMP", "BITMEX"]}  # fmt: skip


async def run_raw(coinapi, session, hello: dict[str, Any], **kwargs: Any) -> list[str]:
    emulator = await coinapi(max_ticks=25, tick_duration=0.25, **kwargs)
    client = await connect(session, emulator)
    await client.send("hello", **hello)
    await until(lambda: emulator.ticks_produced >= 25)
    await settle(client, emulator)
    return client.raw


async def test_same_seed_same_frames(coinapi, session) -> None:
    """Equal seeds give byte-identical streams; another seed differs; what a client picks does not matter."""
    first = await run_raw(coinapi, session, ALL, seed=7)
    again = await run_raw(coinapi, session, ALL, seed=7)
    other = await run_raw(coinapi, session, ALL, seed=8)
    trades_only = await run_raw(coinapi, session, {"subscribe_data_type": ["trade"]}, seed=7)
    assert len(first) > 300 and first == again
    assert other != first
    bitstamp = [r for r in trades_only if '"symbol_id":"BITSTAMP_' in r or '"symbol_id":"BITMEX_' in r]
    assert bitstamp == [r for r in first if r.startswith('{"type":"trade"')]


async def test_counters_equal_what_the_client_received(coinapi, session) -> None:
    """sent counts (type, symbol_id) of data frames handed over; sent_log lists them in order."""
    emulator = await coinapi(max_ticks=20, tick_duration=0.5, record_log=True, heartbeat_interval=0.05)
    client = await connect(session, emulator)
    await client.send("hello", heartbeat=True, **ALL)
    await client.send("subscribe", subscribe_data_type=["exrate"], subscribe_filter_asset_id=["BTC", "SOL"])
    await until(lambda: emulator.ticks_produced >= 20)
    await settle(client, emulator)
    assert emulator.sent == Counter(sent_key(f) for f in client.data)
    assert emulator.sent_log == [(*sent_key(f), f.get("uuid"), f.get("sequence")) for f in client.data]
    await emulator.close_connections(1000)
    await client.until_closed()  # every heartbeat sent before the close frame has now been read
    assert emulator.heartbeats_sent == len(client.heartbeats) >= 1
    assert emulator.connections_total == 1
