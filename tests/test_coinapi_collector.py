"""CoinAPI collector on the shared driver against its emulator: a data type the key lacks, and
futures and options symbols. Counts come from the emulator's own send counters."""

from __future__ import annotations

import asyncio

import pytest

from ingest.arrow_batch import build_table
from ingest.emulators import CoinAPIEmulator
from ingest.emulators.coinapi import FORBIDDEN_TYPE
from ingest.emulators.coinapi_market import DERIVATIVES
from ingest.schema import Registry
from tests.helpers import Drain, collector, eventually, provider_config

KEY = "coinapi-collector-key-9"


async def test_a_data_type_the_key_lacks_fails_its_subscription_and_the_others_go_on(registry: Registry):
    """CoinAPI's FAQ error for one data type was fatal for every subscription: now only `quotes`
    fails, and the reconnect after the server's close asks for trades alone, which keep coming."""
    async with CoinAPIEmulator(key=KEY, tick_interval=0.01, forbidden_types=["quote"]) as emu:
        subs = [
            {"name": "trades", "data_types": ["trade"], "symbols": ["COINBASE_"]},
            {"name": "quotes", "data_types": ["quote"], "symbols": ["COINBASE_"]},
        ]
        col, buffer = collector(registry, provider_config("coinapi", emu.url, subs), KEY)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions["trades"] == "active", what="trades active")
        await eventually(lambda: sum(emu.sent.values()) >= 30, what="30 trades sent")
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    forbidden = FORBIDDEN_TYPE.format("quote")
    assert col.stats.subscriptions["quotes"] == f"failed: CoinAPI error: {forbidden}"
    assert col.stats.state != "failed" and col.stats.connects == 2
    assert emu.errors_sent == [forbidden]  # asked once: the second hello has no quotes
    assert {t for t, _ in emu.sent} == {"trade"}
    assert drain.rows["coinapi_trades"] == sum(emu.sent.values()) and "coinapi_quotes" not in drain.rows


async def test_futures_and_options_rows_are_labelled_and_quoted_in_usd(registry: Registry):
    """BITMEX_FTS_BTC_USD_200925's quote was 'USD_200925': its rows had no subscription, which never
    went active."""
    async with CoinAPIEmulator(key=KEY, tick_interval=0.01, symbols=DERIVATIVES) as emu:
        subs = [{"name": "btc_usd", "data_types": ["trade"], "assets": ["BTC/USD"]}]
        col, buffer = collector(registry, provider_config("coinapi", emu.url, subs), KEY)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: len(emu.sent) == 2, what="trades of both symbols")
        await eventually(lambda: col.stats.subscriptions["btc_usd"] == "active", what="active")
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    trades = [c for c in drain.chunks if c.dataset == "coinapi_trades"]
    built = build_table(registry["coinapi_trades"], trades)
    assert built.rejected == [] and built.table.num_rows == sum(emu.sent.values())
    columns = ["symbol_id", "exchange_id", "symbol_type", "asset_id_base", "asset_id_quote", "_subscription"]
    assert {tuple(row.values()) for row in built.table.select(columns).to_pylist()} == {
        ("BITMEX_FTS_BTC_USD_200925", "BITMEX", "FTS", "BTC", "USD", "btc_usd"),
        ("DERIBIT_OPT_BTC_USD_200327_9000_C", "DERIBIT", "OPT", "BTC", "USD", "btc_usd"),
    }


@pytest.mark.parametrize("location", ["message", "header"])
async def test_a_subscribe_after_the_hello_keeps_the_key_and_the_heartbeats(registry: Registry, location):
    """An unfiltered subscription beside a book one sends a hello, then a subscribe for the book.
    The subscribe went without `apikey` and `heartbeat`; a server that reads each message on its own
    (standalone_messages, as CoinAPI's examples write them) refused it as an invalid key (fatal), or
    stopped the heartbeats, so a quiet stream hit the idle timeout and reconnected, over and over."""
    async with CoinAPIEmulator(
        key=KEY, tick_interval=0.01, trades_per_tick=0, heartbeat_interval=0.4, standalone_messages=True
    ) as emu:
        subs = [
            {"name": "all_trades", "data_types": ["trade"]},
            {"name": "book", "data_types": ["book5"], "symbols": ["NO_SUCH_SYMBOL$"]},
        ]
        config = provider_config("coinapi", emu.url, subs, location=location, idle_timeout=1.0)
        col, buffer = collector(registry, config, KEY)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(
            lambda: emu.heartbeats_sent >= 5 or task.done() or col.stats.connects > 1, what="heartbeats"
        )
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    assert emu.errors_sent == [] and col.stats.state != "failed"
    assert col.stats.connects == 1  # the heartbeats kept the quiet connection alive
