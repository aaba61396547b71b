"""CoinAPI protocol on plain frames: hello scope, filter semantics, labels, sequence gaps, errors."""

from __future__ import annotations

import json

import pytest

from ingest.arrow_batch import build_table
from ingest.errors import ConfigError
from ingest.events import FatalError, Gap, Notice, Reconnect, Rejected, Rows
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
    (rows,) = p.receive(trade("COINBASE_SPOT_ETH_USD", 1), T0)
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
    (rows,) = p.receive(trade("KRAKEN_SPOT_BTC_EUR", 1), T0)
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
    assert len(p.receive(trade("A_SPOT_B_C", 1), T0)) == 1
    assert len(p.receive(trade("A_SPOT_B_C", 2), T0 + 1)) == 1
    gap, rows = p.receive(trade("A_SPOT_B_C", 5), T0 + 2)
    assert isinstance(gap, Gap) and isinstance(rows, Rows)
    assert (gap.kind, gap.stream, gap.expected, gap.received) == ("sequence", "trade:A_SPOT_B_C", 3, 5)
    assert (gap.started_at, gap.ended_at, gap.subscription) == (T0 + 1, T0 + 2, "all")
    assert len(p.receive(trade("A_SPOT_B_C", 4), T0 + 3)) == 1  # late: not a gap
    assert len(p.receive(trade("OTHER_SPOT_B_C", 9), T0 + 3)) == 1  # per symbol
    p.connection_lost()
    p.connect()
    (rows,) = p.receive(trade("A_SPOT_B_C", 1), T0 + 4)  # restarts at 1: no gap
    assert rows.context == {"connection": 2}


def test_heartbeat_reconnect_and_errors():
    p = proto({"name": "all", "data_types": ["trade"]})
    p.connect()
    assert p.receive(b'{"type":"hearbeat"}', 1) == [] and p.receive(b'{"type":"heartbeat"}', 1) == []
    (reconnect,) = p.receive(
        b'{"type":"reconnect","within_seconds":10,"before_time":"2020-08-06T19:19:09.7035429Z"}', 1
    )
    assert isinstance(reconnect, Reconnect)
    (fatal,) = p.receive(b'{"type":"error","message":"Invalid API key"}', 1)
    assert isinstance(fatal, FatalError) and "Invalid API key" in fatal.reason
    (notice,) = p.receive(
        b'{"type":"error","message":"Reached maximum allowed buffered messages for this connection."}', 1
    )
    assert isinstance(notice, Notice)
    (bad,) = p.receive(b'{"type":"mystery"}', 1)
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
        (rows,) = p.receive(json.dumps(msg), T0)
        assert rows.dataset == dataset
        result = build_table(registry[dataset], [rows])
        assert result.rejected == [] and result.table.num_rows == 1
    book = build_table(
        registry["coinapi_book_updates"], [p.receive(json.dumps(frames["coinapi_book_updates"]), T0)[0]]
    )
    assert json.loads(book.table["asks"][0].as_py()) == [{"price": 1.5, "size": 2}]
    assert book.table["book_type"][0].as_py() == "book5"


def test_scope_changes_on_a_live_connection():
    p = proto({"name": "a", "data_types": ["trade"], "symbols": ["KRAKEN_"]})
    p.connect()
    p.data_to_send()
    p.subscribe(
        CoinAPIProtocol.parse_subscription(
            {"name": "b", "data_types": ["quote"], "symbols": ["COINBASE_"]}, "s"
        )
    )
    p.unsubscribe("a")
    sent = [json.loads(f) for f in p.data_to_send()]
    assert sent == [
        {"type": "subscribe", "subscribe_data_type": ["quote"], "subscribe_filter_symbol_id": ["COINBASE_"]},
        {"type": "unsubscribe", "subscribe_data_type": ["trade"], "subscribe_filter_symbol_id": ["KRAKEN_"]},
    ]
    p.connection_lost()
    p.connect()
    (hello,) = [json.loads(f) for f in p.data_to_send()]
    assert hello["subscribe_data_type"] == ["quote"]  # the scope as it is now


@pytest.mark.parametrize(
    ("sub", "key"),
    [
        ({"name": "x", "data_types": ["trades"]}, "data_types"),
        ({"name": "x", "data_types": []}, "data_types"),
        ({"name": "x", "data_types": ["book5"]}, "symbols"),
        ({"name": "x", "data_types": ["exrate"]}, "assets"),
        ({"name": "x", "data_types": ["trade"], "symbols": "BTC"}, "symbols"),
        ({"data_types": ["trade"]}, "name"),
        ({"name": "x", "data_types": ["trade"], "quote_limit_ms": -1}, "quote_limit_ms"),
    ],
)
def test_bad_subscriptions_name_the_key(sub, key):
    with pytest.raises(ConfigError, match=f"s\\.{key}"):
        CoinAPIProtocol.parse_subscription(sub, "s")
