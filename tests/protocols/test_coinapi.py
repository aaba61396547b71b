"""CoinAPI protocol on plain frames: hello scope, filter semantics, labels, sequence gaps, errors."""

from __future__ import annotations

import json

import pytest

from ingest.arrow_batch import build_table
from ingest.config import parse_config
from ingest.emulators.coinapi_market import SYMBOLS
from ingest.emulators.coinapi_scope import Scope, parse_request
from ingest.errors import ConfigError
from ingest.events import (
    FatalError,
    Gap,
    Notice,
    Reconnect,
    Rejected,
    Rows,
    SubscriptionAcked,
    SubscriptionFailed,
)
from ingest.protocols.coinapi import CoinAPIProtocol

T0 = 1_763_000_000_000_000_000


def trade(symbol: str, seq: int, uuid: str = "770C7A3B-7258-4441-8182-83740F3E2457") -> bytes:
    return json.dumps(
        {
            "type": "trade",
            "symbol_id": symbol,
            "sequence": seq,
            "time_exchange": "2017-03-18T22:42:21.3763342Z",
            "time_coinapi": "2017-03-18T22:42:21.3763342Z",
            "uuid": uuid,
            "price": 1000.000000001,
            "size": 0.05,
            "taker_side": "SELL",
        }
    ).encode()


def read(p: CoinAPIProtocol, frame: bytes | str, received_at: int) -> list:
    """What a frame gives besides the acknowledgement of its subscription's first message."""
    return [e for e in p.receive(frame, received_at) if not isinstance(e, SubscriptionAcked)]


def proto(*subs: dict, heartbeat: bool = True) -> CoinAPIProtocol:
    specs = [CoinAPIProtocol.parse_subscription(s, f"s[{i}]") for i, s in enumerate(subs)]
    p = CoinAPIProtocol("coinapi", specs, CoinAPIProtocol.parse_options({"heartbeat": heartbeat}, "p"))
    p.set_key("KEY-123")
    return p


def test_hello_carries_the_key_and_the_union_of_every_subscription():
    p = proto(
        {"name": "btc", "data_types": ["trade"], "symbols": ["BITSTAMP_SPOT_BTC_USD$"]},
        {
            "name": "coinbase",
            "data_types": ["trade", "quote"],
            "symbols": ["COINBASE_"],
            "exchanges": ["ITBIT"],
        },
    )
    p.connect()
    (hello,) = [json.loads(f) for f in p.data_to_send()]
    assert hello == {
        "type": "hello",
        "apikey": "KEY-123",
        "heartbeat": True,
        "subscribe_data_type": ["quote", "trade"],
        "subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC_USD$", "COINBASE_"],
        "subscribe_filter_exchange_id": ["ITBIT"],
    }


def test_a_trade_is_one_row_labelled_with_its_subscription(registry):
    p = proto(
        {"name": "btc", "data_types": ["trade"], "symbols": ["BITSTAMP_SPOT_BTC_USD$"]},
        {"name": "cb", "data_types": ["trade"], "symbols": ["COINBASE_"]},
    )
    p.connect()
    (rows,) = read(p, trade("COINBASE_SPOT_ETH_USD", 1), T0)
    assert isinstance(rows, Rows) and rows.dataset == "coinapi_trades" and rows.subscription == "cb"
    row = (
        build_table(registry["coinapi_trades"], [rows])
        .table.drop_columns(["_received_at", "time_exchange", "time_coinapi", "_event_time"])
        .to_pylist()[0]
    )
    assert (row["exchange_id"], row["symbol_type"], row["asset_id_base"], row["asset_id_quote"]) == (
        "COINBASE",
        "SPOT",
        "ETH",
        "USD",
    )
    assert row["price"] == "1000.000000001" and row["size"] == "0.05"  # the text as sent, exact
    assert row["_tracing_id"] == row["_dedup_key"] == "770C7A3B-7258-4441-8182-83740F3E2457"
    assert row["connection"] == 1


def test_seven_fractional_digits_survive(registry):
    p = proto({"name": "all", "data_types": ["trade"]})
    p.connect()
    (rows,) = read(p, trade("KRAKEN_SPOT_BTC_EUR", 1), T0)
    table = build_table(registry["coinapi_trades"], [rows]).table
    ns = table["time_exchange"].cast("int64").to_pylist()[0]
    assert ns % 1_000_000_000 == 376334200  # .3763342 s: every digit kept, down to 100 ns


@pytest.mark.parametrize(
    ("filters", "symbol", "matches"),
    [
        ({"symbols": ["BITSTAMP_SPOT_BTC_"]}, "BITSTAMP_SPOT_BTC_USD", True),
        ({"symbols": ["BITSTAMP_SPOT_BTC_"]}, "BITSTAMP_SPOT_BTC_USDT", True),
        ({"symbols": ["BITSTAMP_SPOT_BTC_USD$"]}, "BITSTAMP_SPOT_BTC_USD", True),
        ({"symbols": ["BITSTAMP_SPOT_BTC_USD$"]}, "BITSTAMP_SPOT_BTC_USDT", False),
        ({"symbols": ["BITSTAMP_SPOT_BTC_USD"]}, "BITSTAMP_SPOT_BTC_USDT", True),  # no $: a prefix
        ({"exchanges": ["KRAKEN"]}, "KRAKEN_SPOT_BTC_EUR", True),
        ({"exchanges": ["KRAKEN"]}, "KRAKENFTS_PERP_BTC_USD", False),
        ({"assets": ["ETH"]}, "COINBASE_SPOT_ETH_USD", True),
        ({"assets": ["BTC/EUR"]}, "KRAKEN_SPOT_BTC_EUR", True),
        ({"assets": ["BTC/EUR"]}, "KRAKEN_SPOT_BTC_USD", False),
        ({"symbols": ["COINBASE_"], "exchanges": ["KRAKEN"]}, "KRAKEN_SPOT_BTC_EUR", True),  # a union
        # Futures and options go on past the quote: it is the 4th part only.
        ({"assets": ["USD"]}, "BITMEX_FTS_BTC_USD_200925", True),
        ({"assets": ["BTC/USD"]}, "DERIBIT_OPT_BTC_USD_200327_9000_C", True),
        ({"assets": ["9000"]}, "DERIBIT_OPT_BTC_USD_200327_9000_C", False),
        ({}, "ANY_SPOT_X_Y", True),
    ],
)
def test_filter_semantics(filters, symbol, matches):
    sub = CoinAPIProtocol.parse_subscription({"name": "s", "data_types": ["trade"], **filters}, "s")
    assert sub.matches("trade", symbol) is matches
    assert sub.matches("quote", symbol) is False


def test_a_sequence_jump_within_a_connection_is_a_gap_and_a_new_connection_starts_over():
    p = proto({"name": "all", "data_types": ["trade"]})
    p.connect()
    assert len(read(p, trade("A_SPOT_B_C", 1), T0)) == 1
    assert len(read(p, trade("A_SPOT_B_C", 2), T0 + 1)) == 1
    gap, rows = read(p, trade("A_SPOT_B_C", 5), T0 + 2)
    assert isinstance(gap, Gap) and isinstance(rows, Rows)
    assert (gap.kind, gap.stream, gap.expected, gap.received) == ("sequence", "trade:A_SPOT_B_C", 3, 5)
    assert (gap.started_at, gap.ended_at, gap.subscription) == (T0 + 1, T0 + 2, "all")
    assert len(read(p, trade("A_SPOT_B_C", 4), T0 + 3)) == 1  # late: not a gap
    assert len(read(p, trade("OTHER_SPOT_B_C", 9), T0 + 3)) == 1  # per symbol
    p.connection_lost()
    p.connect()
    (rows,) = read(p, trade("A_SPOT_B_C", 1), T0 + 4)  # restarts at 1: no gap
    assert rows.context == {"connection": 2}
    # ...and counts from there: a hole below the old connection's mark (5) is still a hole.
    assert len(read(p, trade("A_SPOT_B_C", 2), T0 + 5)) == 1
    gap, _ = read(p, trade("A_SPOT_B_C", 4), T0 + 6)
    assert (gap.stream, gap.expected, gap.received, gap.started_at) == ("trade:A_SPOT_B_C", 3, 4, T0 + 5)


def test_a_sequence_beyond_int64_quarantines_its_frame_and_the_batch_goes_on():
    # It would go into int64 columns (a gap row's `received`), where it failed the flush and,
    # replayed from the journal, every start after it.
    p = proto({"name": "all", "data_types": ["trade"]})
    p.connect()
    huge = trade("A_SPOT_B_C", 1).replace(b'"sequence": 1', b'"sequence": 99999999999999999999')
    frames = [trade("A_SPOT_B_C", 1, "u1"), huge, trade("A_SPOT_B_C", 3, "u3")]
    events = [e for e in p.receive_many(frames, T0, range(10, 13)) if not isinstance(e, SubscriptionAcked)]
    assert [type(e) for e in events] == [Rows, Rejected, Gap, Rows]
    first, bad, gap, last = events
    assert (first.position, bad.position, gap.position, last.position) == (10, 11, 12, 12)
    assert bad.raw == huge and "sequence" in bad.reason
    assert (gap.expected, gap.received) == (2, 3)


def test_a_sequence_far_below_the_mark_counts_from_there_so_later_holes_are_seen():
    """One bogus sequence (or a counter that started again) left every later one "late" for the
    rest of the connection, and no hole after it was ever reported."""
    p = proto({"name": "all", "data_types": ["trade"]})
    p.connect()
    gaps = []
    for seq in (1, 9_000_000_000_000_000_000, 3, 4, 50, 49):
        gaps += [e for e in read(p, trade("A_SPOT_B_C", seq), T0 + seq % 1000) if isinstance(e, Gap)]
    assert [(g.expected, g.received) for g in gaps] == [(2, 9_000_000_000_000_000_000), (5, 50)]
    # The boundary: 100,000 below the mark is still late, 100,001 a counter started again.
    q = proto({"name": "all", "data_types": ["trade"]})
    q.connect()
    gaps = []
    for seq in (200_001, 100_001, 100_002, 100_000, 100_002):
        gaps += [e for e in read(q, trade("A_SPOT_B_C", seq), T0) if isinstance(e, Gap)]
    assert [(g.expected, g.received) for g in gaps] == [(100_001, 100_002)]


def test_heartbeat_reconnect_and_errors():
    p = proto({"name": "all", "data_types": ["trade"]})
    p.connect()
    assert read(p, b'{"type":"hearbeat"}', 1) == [] and read(p, b'{"type":"heartbeat"}', 1) == []
    (reconnect,) = read(
        p, b'{"type":"reconnect","within_seconds":10,"before_time":"2020-08-06T19:19:09.7035429Z"}', 1
    )
    assert isinstance(reconnect, Reconnect)
    (fatal,) = read(p, b'{"type":"error","message":"Invalid API key"}', 1)
    assert isinstance(fatal, FatalError) and "Invalid API key" in fatal.reason
    (notice,) = read(
        p, b'{"type":"error","message":"Reached maximum allowed buffered messages for this connection."}', 1
    )
    assert isinstance(notice, Notice)
    (bad,) = read(p, b'{"type":"mystery"}', 1)
    assert isinstance(bad, Rejected)


def test_quotes_books_ohlcv_and_others_go_to_their_tables(registry):
    p = proto(
        {"name": "all", "data_types": ["trade", "quote", "book5", "ohlcv", "exrate"], "assets": ["BTC"]}
    )
    p.connect()
    frames = {
        "coinapi_quotes": {
            "type": "quote",
            "symbol_id": "X_SPOT_BTC_USD",
            "sequence": 1,
            "time_exchange": "2020-01-01T00:00:00.0000001Z",
            "time_coinapi": "2020-01-01T00:00:00.0000002Z",
            "ask_price": 1.5,
            "ask_size": 2,
            "bid_price": 1.4,
            "bid_size": 3,
        },
        "coinapi_book_updates": {
            "type": "book5",
            "symbol_id": "X_SPOT_BTC_USD",
            "sequence": 1,
            "time_exchange": "2020-01-01T00:00:00Z",
            "time_coinapi": "2020-01-01T00:00:00Z",
            "asks": [{"price": 1.5, "size": 2}],
            "bids": [],
        },
        "coinapi_ohlcv": {
            "type": "ohlcv",
            "symbol_id": "X_SPOT_BTC_USD",
            "sequence": 1,
            "period_id": "1MIN",
            "time_period_start": "2020-01-01T00:00:00.0000000Z",
            "time_period_end": "2020-01-01T00:01:00.0000000Z",
            "time_open": "2020-01-01T00:00:01.0000000Z",
            "time_close": "2020-01-01T00:00:59.0000000Z",
            "price_open": 1,
            "price_high": 2,
            "price_low": 0.5,
            "price_close": 1.5,
            "volume_traded": 10,
            "trades_count": 4,
        },
        "coinapi_generic": {
            "type": "exrate",
            "asset_id_base": "BTC",
            "asset_id_quote": "USD",
            "rate": 1.5,
            "time": "2020-01-01T00:00:00Z",
        },
    }
    for dataset, msg in frames.items():
        (rows,) = read(p, json.dumps(msg), T0)
        assert rows.dataset == dataset
        result = build_table(registry[dataset], [rows])
        assert result.rejected == [] and result.table.num_rows == 1
    book = build_table(
        registry["coinapi_book_updates"], [read(p, json.dumps(frames["coinapi_book_updates"]), T0)[0]]
    )
    assert json.loads(book.table["asks"][0].as_py()) == [{"price": 1.5, "size": 2}]
    assert book.table["book_type"][0].as_py() == "book5"


def test_scope_changes_on_a_live_connection_resend_the_whole_scope():
    p = proto({"name": "a", "data_types": ["trade"], "symbols": ["KRAKEN_"]})
    p.connect()
    p.data_to_send()
    b = {"name": "b", "data_types": ["quote"], "symbols": ["COINBASE_"]}
    p.subscribe(CoinAPIProtocol.parse_subscription(b, "s"))
    p.unsubscribe("a")
    p.unsubscribe("b")
    sent = [json.loads(f) for f in p.data_to_send()]
    head = {"type": "hello", "apikey": "KEY-123", "heartbeat": True}
    assert sent == [
        {
            **head,
            "subscribe_data_type": ["quote", "trade"],
            "subscribe_filter_symbol_id": ["COINBASE_", "KRAKEN_"],
        },
        {**head, "subscribe_data_type": ["quote"], "subscribe_filter_symbol_id": ["COINBASE_"]},
        # The last one: empty the scope (key and heartbeat in it too, as in CoinAPI's example).
        {**head, "type": "unsubscribe", "subscribe_data_type": ["quote"]},
    ]
    p.subscribe(CoinAPIProtocol.parse_subscription(b, "s"))
    p.data_to_send()
    p.connection_lost()
    p.connect()
    (hello,) = [json.loads(f) for f in p.data_to_send()]
    assert hello["subscribe_data_type"] == ["quote"]  # the scope as it is now


def test_a_live_subscription_without_filters_widens_the_scope_instead_of_being_narrowed():
    p = proto({"name": "one_quote", "data_types": ["quote"], "symbols": ["BITSTAMP_SPOT_BTC_USD$"]})
    p.connect()
    p.data_to_send()
    p.subscribe(CoinAPIProtocol.parse_subscription({"name": "all_trades", "data_types": ["trade"]}, "s"))
    (hello,) = [json.loads(f) for f in p.data_to_send()]
    assert hello == {
        "type": "hello",
        "apikey": "KEY-123",
        "heartbeat": True,
        "subscribe_data_type": ["quote", "trade"],
    }
    assert label(p, trade("KRAKEN_SPOT_BTC_EUR", 1)) == "all_trades"


# -- combining subscriptions into one scope ------------------------------------------------------

HEAD = {"type": "hello", "apikey": "KEY-123", "heartbeat": True}
ALL_TRADES = {"name": "all_trades", "data_types": ["trade"]}
ONE_QUOTE = {"name": "one_quote", "data_types": ["quote"], "symbols": ["BITSTAMP_SPOT_BTC_USD$"]}


def sent(*subs: dict) -> list[dict]:
    p = proto(*subs)
    p.connect()
    return [json.loads(f) for f in p.data_to_send()]


def label(p: CoinAPIProtocol, frame: bytes | dict) -> str:
    """The label of the one Rows a frame makes (a row is never dropped, whatever its label)."""
    (rows,) = read(p, frame if isinstance(frame, bytes) else json.dumps(frame), T0)
    assert isinstance(rows, Rows) and len(rows.records) == 1
    return rows.subscription


def quote(symbol: str, seq: int = 1) -> dict:
    return {"type": "quote", "symbol_id": symbol, "sequence": seq, "ask_price": 1.5, "bid_price": 1.4}


def bar(symbol: str, period: str) -> dict:
    return {"type": "ohlcv", "symbol_id": symbol, "sequence": 1, "period_id": period, "price_close": 1}


def rate(base: str) -> dict:
    return {"type": "exrate", "asset_id_base": base, "asset_id_quote": "USD", "rate": 1.5, "time": "2020"}


def test_a_subscription_without_filters_leaves_every_filter_out():
    # It wants every trade: the other subscription's symbol filter would narrow it to one symbol.
    assert sent(ALL_TRADES, ONE_QUOTE) == [{**HEAD, "subscribe_data_type": ["quote", "trade"]}]


def test_filters_of_different_kinds_still_add_up_when_every_subscription_has_one():
    assert sent(ONE_QUOTE, {"name": "kraken", "data_types": ["trade"], "exchanges": ["KRAKEN"]}) == [
        {
            **HEAD,
            "subscribe_data_type": ["quote", "trade"],
            "subscribe_filter_symbol_id": ["BITSTAMP_SPOT_BTC_USD$"],
            "subscribe_filter_exchange_id": ["KRAKEN"],
        }
    ]


def test_rows_of_the_widened_scope_are_labelled_by_who_wants_them_and_kept_when_no_one_does():
    p = proto(ALL_TRADES, ONE_QUOTE)
    p.connect()
    assert label(p, trade("KRAKEN_SPOT_BTC_EUR", 1)) == "all_trades"
    assert label(p, trade("BITSTAMP_SPOT_BTC_USD", 1)) == "all_trades"
    assert label(p, quote("BITSTAMP_SPOT_BTC_USD")) == "one_quote"
    assert label(p, quote("KRAKEN_SPOT_BTC_EUR")) == ""  # only there because of the wider scope


def test_books_and_exrate_keep_their_filters_in_a_subscribe_after_an_unfiltered_hello():
    # CoinAPI refuses books and exrate without a filter, and a hello's filter covers every type.
    books = {"name": "books", "data_types": ["trade", "book5"], "symbols": ["KRAKEN_"], "book_limit_ms": 100}
    rates = {"name": "rates", "data_types": ["exrate"], "assets": ["BTC", "ETH/EUR"], "exrate_limit_ms": 500}
    assert sent(ALL_TRADES, books, rates) == [
        {**HEAD, "subscribe_data_type": ["trade"]},
        {
            **HEAD,
            "type": "subscribe",  # with the hello's key and heartbeat, as CoinAPI's example has them
            "subscribe_data_type": ["book5", "exrate"],
            "subscribe_filter_symbol_id": ["KRAKEN_"],
            "subscribe_filter_asset_id": ["BTC", "ETH/EUR"],
            "subscribe_update_limit_ms_book_snapshot": 100,
            "subscribe_update_limit_ms_exrate": 500,
        },
    ]
    assert sent(books, rates) == [  # every subscription filtered: one hello, as before
        {
            **HEAD,
            "subscribe_data_type": ["book5", "exrate", "trade"],
            "subscribe_filter_symbol_id": ["KRAKEN_"],
            "subscribe_filter_asset_id": ["BTC", "ETH/EUR"],
            "subscribe_update_limit_ms_book_snapshot": 100,
            "subscribe_update_limit_ms_exrate": 500,
        }
    ]


BARS = {"name": "bars", "data_types": ["ohlcv"], "symbols": ["KRAKEN_"]}


@pytest.mark.parametrize(
    ("periods", "expected"),
    [
        ((["1MIN"], ["1SEC"]), ["1MIN", "1SEC"]),  # the union
        ((["1MIN"], []), None),  # one wants every period
        ((["1MIN"], ["1MIN"]), ["1MIN"]),
    ],
)
def test_periods_are_the_union_or_none_when_one_bar_subscription_wants_every_period(periods, expected):
    a, b = periods
    (hello,) = sent({**BARS, "name": "a", "periods": a}, {**BARS, "name": "b", "periods": b})
    assert hello.get("subscribe_filter_period_id") == expected


def test_periods_of_a_subscription_without_bars_narrow_nothing():
    (hello,) = sent(
        {**BARS, "periods": ["1MIN"]}, {"name": "t", "data_types": ["trade"], "periods": ["1SEC"]}
    )
    assert hello["subscribe_filter_period_id"] == ["1MIN"]


def test_bars_are_labelled_by_period():
    p = proto(
        {**BARS, "name": "minutes", "periods": ["1MIN"]}, {**BARS, "name": "seconds", "periods": ["1SEC"]}
    )
    p.connect()
    assert label(p, bar("KRAKEN_SPOT_BTC_EUR", "1SEC")) == "seconds"
    assert label(p, bar("KRAKEN_SPOT_BTC_EUR", "1MIN")) == "minutes"
    assert label(p, bar("KRAKEN_SPOT_BTC_EUR", "1SEC")) == "seconds"  # cached per period, not per symbol
    assert label(p, bar("KRAKEN_SPOT_BTC_EUR", "5SEC")) == ""


QUOTES = {"name": "q", "data_types": ["quote"], "symbols": ["KRAKEN_"]}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"quote_limit_ms": 100}, {"quote_limit_ms": 100}, 100),  # they agree
        ({"quote_limit_ms": 100}, {"quote_limit_ms": 250}, 100),  # the smallest passes what both want
        ({"quote_limit_ms": 100}, {}, None),  # b wants every update
        ({"quote_limit_ms": 100, "data_types": ["trade"]}, {"quote_limit_ms": 250}, 250),  # a has no quotes
        ({"quote_limit_ms": 100, "data_types": ["trade"]}, {}, None),
    ],
)
def test_a_limit_goes_out_only_when_every_subscription_of_its_type_has_one(a, b, expected):
    (hello,) = sent({**QUOTES, "name": "a", **a}, {**QUOTES, "name": "b", **b})
    assert hello.get("subscribe_update_limit_ms_quote") == expected


def test_exrate_is_labelled_by_its_assets():
    p = proto(
        {"name": "btc", "data_types": ["exrate"], "assets": ["BTC"]},
        {"name": "pair", "data_types": ["exrate"], "assets": ["ETH/EUR"]},  # sent as ETH and EUR in USD
        ALL_TRADES,
    )
    p.connect()
    assert label(p, rate("BTC")) == "btc"
    assert label(p, rate("ETH")) == "pair"
    assert label(p, rate("EUR")) == "pair"
    assert label(p, rate("SOL")) == ""
    assert label(p, trade("KRAKEN_SPOT_BTC_EUR", 1)) == "all_trades"


@pytest.mark.parametrize(
    "subs",
    [
        [ALL_TRADES, ONE_QUOTE],
        [ALL_TRADES, {"name": "books", "data_types": ["book5", "book"], "exchanges": ["KRAKEN"]}],
        [ALL_TRADES, {"name": "rates", "data_types": ["exrate", "quote"], "assets": ["BTC", "ETH/EUR"]}],
        [
            {**BARS, "periods": ["1SEC"]},
            {"name": "all_bars", "data_types": ["ohlcv"], "exchanges": ["COINBASE"]},
        ],
        [ONE_QUOTE, {"name": "kraken", "data_types": ["trade", "book20"], "exchanges": ["KRAKEN"]}],
    ],
)
def test_the_emulator_accepts_the_scope_and_serves_every_subscription_all_it_wants(subs):
    scope = Scope()
    for msg in sent(*subs):
        scope.apply(parse_request(msg, msg["type"]))  # raises ScopeError where CoinAPI would refuse
    served = scope.routes(SYMBOLS)
    for spec in (CoinAPIProtocol.parse_subscription(s, "s") for s in subs):
        if "ohlcv" in spec.data_types and scope.periods is not None:
            assert spec.periods and set(spec.periods) <= scope.periods
        for t in spec.data_types:
            if t == "exrate":  # an asset's rate to USD, or a pair's legs' (emulator routes)
                legs = {("exrate", a) for a in spec.assets if "/" not in a}
                legs |= {("exrate", f"{leg}@pair") for a in spec.assets if "/" in a for leg in a.split("/")}
                assert legs <= served
                continue
            period = spec.periods[0] if spec.periods else None
            wanted = {(t, s.symbol_id) for s in SYMBOLS if spec.matches(t, s.symbol_id, period)}
            assert wanted and wanted <= served, (spec.name, t, wanted - served)


@pytest.mark.parametrize(
    ("sub", "key"),
    [
        ({"name": "x", "data_types": ["trades"]}, "data_types"),
        ({"name": "x", "data_types": []}, "data_types"),
        ({"name": "x", "data_types": ["book5"]}, "symbols"),
        ({"name": "x", "data_types": ["book5"], "periods": ["1MIN"]}, "symbols"),  # periods narrow bars only
        ({"name": "x", "data_types": ["exrate"]}, "assets"),
        ({"name": "x", "data_types": ["trade"], "symbols": "BTC"}, "symbols"),
        ({"data_types": ["trade"]}, "name"),
        ({"name": "x", "data_types": ["trade"], "quote_limit_ms": -1}, "quote_limit_ms"),
    ],
)
def test_bad_subscriptions_name_the_key(sub, key):
    with pytest.raises(ConfigError, match=f"s\\.{key}"):
        CoinAPIProtocol.parse_subscription(sub, "s")


def test_a_subscriptions_first_message_on_a_connection_acknowledges_it():
    """CoinAPI acknowledges nothing: without this, its subscriptions showed as pending for good."""
    p = proto(
        {"name": "btc", "data_types": ["trade"], "symbols": ["A_"]}, {"name": "rest", "data_types": ["quote"]}
    )
    p.connect()
    p.data_to_send()
    first = p.receive(trade("A_SPOT_B_C", 1), T0)
    assert [type(e).__name__ for e in first] == ["SubscriptionAcked", "Rows"] and first[
        0
    ].subscription == "btc"
    assert [type(e).__name__ for e in p.receive(trade("A_SPOT_B_C", 2), T0)] == ["Rows"]
    assert [type(e).__name__ for e in p.receive(trade("A_SPOT_X_Y", 1), T0)] == ["Rows"]  # btc again
    p.connect()  # a new connection: acknowledged again by its first message
    assert isinstance(p.receive(trade("A_SPOT_B_C", 1), T0)[0], SubscriptionAcked)


def test_a_message_two_subscriptions_want_acknowledges_both():
    """Overlapping filters: the row is stored once, under the first, but the second is served
    too and is not silent (the driver warned it was, though its data arrived)."""
    p = proto(
        {"name": "coinbase", "data_types": ["trade"], "exchanges": ["COINBASE"]},
        {"name": "btc", "data_types": ["trade"], "symbols": ["COINBASE_SPOT_BTC_USD$"]},
    )
    p.connect()
    events = p.receive(trade("COINBASE_SPOT_BTC_USD", 1), T0)
    assert [e.subscription for e in events if isinstance(e, SubscriptionAcked)] == ["coinbase", "btc"]
    assert [e.subscription for e in events if isinstance(e, Rows)] == ["coinbase"]


# -- review fixes: idle timeout, derivatives, refused data types, metadata ---------------------------


def coinapi_config(tmp_path, **provider) -> float:
    """The idle timeout a config file with these CoinAPI provider keys gets."""
    doc = {
        "providers": {
            "coinapi": {
                "url": "wss://ws.coinapi.io/v1/",
                "auth": {"env": "COINAPI_KEY", "in": "message"},
                "subscriptions": [{"name": "t", "data_types": ["trade"]}],
                **provider,
            }
        }
    }
    return parse_config(doc, base=tmp_path).providers[0].idle_timeout


def test_without_heartbeats_the_idle_timeout_outlasts_the_servers_minute_ping(tmp_path):
    # Without heartbeats a quiet stream sends only the server's Ping, once a minute (PROTOCOLS.md 3.1):
    # 5 s of silence was a reconnect loop on any quiet symbol.
    assert coinapi_config(tmp_path, heartbeat=False) == 90.0
    assert coinapi_config(tmp_path) == coinapi_config(tmp_path, heartbeat=True) == 5.0
    assert coinapi_config(tmp_path, heartbeat=False, idle_timeout=20) == 20.0  # configured: it wins


@pytest.mark.parametrize(
    ("symbol", "parts"),
    [
        ("BITMEX_FTS_BTC_USD_200925", ("BITMEX", "FTS", "BTC", "USD")),
        ("DERIBIT_OPT_BTC_USD_200327_9000_C", ("DERIBIT", "OPT", "BTC", "USD")),
        ("BITSTAMP_SPOT_BTC_USD", ("BITSTAMP", "SPOT", "BTC", "USD")),
        ("IDX_REFRATE_BTC", ("IDX", "REFRATE", "BTC", None)),
    ],
)
def test_futures_and_options_are_labelled_and_quoted_in_their_4th_part(registry, symbol, parts):
    p = proto({"name": "btc_usd", "data_types": ["trade"], "assets": ["BTC/USD"]}, ALL_TRADES)
    p.connect()
    events = p.receive(trade(symbol, 1), T0)
    wanted = "btc_usd" if parts[3] else "all_trades"
    serving = ["btc_usd", "all_trades"] if parts[3] else ["all_trades"]
    assert [e.subscription for e in events if isinstance(e, SubscriptionAcked)] == serving
    (rows,) = [e for e in events if isinstance(e, Rows)]
    table = build_table(registry["coinapi_trades"], [rows]).table
    columns = ["exchange_id", "symbol_type", "asset_id_base", "asset_id_quote", "_subscription"]
    assert table.select(columns).to_pylist() == [dict(zip(columns, (*parts, wanted), strict=True))]


FORBIDDEN = "Forbidden - Your API key don't have privileges to data type 'quote'."  # CoinAPI's FAQ
FORBIDDEN_QUOTE = json.dumps({"message": FORBIDDEN, "type": "error"}).encode()


def test_a_data_type_the_key_lacks_fails_only_the_subscriptions_of_that_type():
    p = proto(
        {"name": "trades", "data_types": ["trade"], "symbols": ["COINBASE_"]},
        {"name": "quotes", "data_types": ["quote"], "symbols": ["COINBASE_"]},
        {"name": "both", "data_types": ["trade", "quote"], "exchanges": ["KRAKEN"]},
    )
    p.connect()
    p.data_to_send()
    events = p.receive(FORBIDDEN_QUOTE, T0)
    message = f"CoinAPI error: {FORBIDDEN}"
    assert events == [SubscriptionFailed(name, message, retryable=False) for name in ("quotes", "both")]
    assert p.active == 1
    # The server closes after an error; the next connection asks without quotes.
    p.connection_lost()
    p.connect()
    (hello,) = [json.loads(f) for f in p.data_to_send()]
    assert hello == {**HEAD, "subscribe_data_type": ["trade"], "subscribe_filter_symbol_id": ["COINBASE_"]}
    assert label(p, trade("COINBASE_SPOT_BTC_USD", 1)) == "trades"
    assert label(p, trade("KRAKEN_SPOT_BTC_EUR", 1)) == ""  # "both" is gone


def test_other_errors_and_a_refused_type_no_subscription_has_stay_fatal():
    p = proto({"name": "trades", "data_types": ["trade"]})
    p.connect()
    (fatal,) = p.receive(FORBIDDEN_QUOTE, T0)
    assert isinstance(fatal, FatalError) and "'quote'" in fatal.reason and p.active == 1
    (fatal,) = p.receive(b'{"type":"error","message":"Invalid API key"}', T0)
    assert isinstance(fatal, FatalError) and p.active == 1


def metadata(kind: str, record_id: str) -> bytes:
    return json.dumps({"type": kind, f"{kind}_id": record_id, "name": record_id.title()}).encode()


def test_asset_and_exchange_records_are_labelled_by_their_own_ids():
    p = proto(
        {
            "name": "btc_kraken",
            "data_types": ["asset", "exchange"],
            "assets": ["BTC"],
            "exchanges": ["KRAKEN"],
        },
        {"name": "pair", "data_types": ["asset"], "assets": ["ETH/EUR"]},  # a pair names both assets
        {"name": "by_symbol", "data_types": ["asset", "exchange"], "symbols": ["KRAKEN_"]},
    )
    p.connect()
    first = p.receive(metadata("asset", "BTC"), T0)
    assert first[0] == SubscriptionAcked("btc_kraken") and first[-1].dataset == "coinapi_generic"
    assert label(p, metadata("asset", "BTC")) == "btc_kraken"
    assert label(p, metadata("exchange", "KRAKEN")) == "btc_kraken"
    assert label(p, metadata("asset", "EUR")) == "pair"
    # A symbol filter narrows no asset or exchange record: that subscription takes the rest.
    assert label(p, metadata("asset", "SOL")) == "by_symbol"
    assert label(p, metadata("exchange", "BINANCE")) == "by_symbol"
    q = proto({"name": "btc", "data_types": ["asset"], "assets": ["BTC"]})
    q.connect()
    assert label(q, metadata("asset", "DOGE")) == ""
    assert label(q, b'{"type":"asset","asset_id":7}') == ""  # a field of the wrong type: as if absent
