"""Bitquery, CoinAPI and Helius collectors on the shared driver, against their emulators on 127.0.0.1.

Counts are compared with the emulators' own send counters; every test stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import msgspec
import pytest

from ingest.buffer import Buffer
from ingest.config import BackoffConfig, FlushPolicy
from ingest.emulators import BitqueryEmulator, CoinAPIEmulator, HeliusEmulator
from ingest.journal import Journal, Kind, read_records, segment_files
from ingest.log import configure_logging
from ingest.protocols.bitquery import BitqueryProtocol
from ingest.replay import replay
from tests.helpers import Drain, collector, eventually, provider_config

KEY = "collector-test-key-42"
BLOCKS = "subscription { EVM(network: eth) { Blocks { Block { Number Hash ParentHash Time } } } }"
TRANSFERS = (
    "subscription { EVM(network: eth) { Transfers { Block { Number Hash } Transaction { Hash }"
    " Log { Index } Call { Index } Transfer { Amount Sender Receiver Currency { SmartContract } } } } }"
)


async def run_and_stop(col, predicate, what, timeout=15.0):
    task = asyncio.create_task(col.run())
    try:
        await eventually(predicate, timeout, what)
    finally:
        await col.stop()
        await asyncio.wait_for(task, 10)


# -- Bitquery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("subprotocol", ["graphql-ws", "graphql-transport-ws"])
async def test_bitquery_rows_equal_what_the_emulator_sent(registry, subprotocol):
    async with BitqueryEmulator(key=KEY, block_interval=0.02, txs_per_block=4) as emu:
        subs = [{"name": "blocks", "query": BLOCKS}, {"name": "transfers", "query": TRANSFERS}]
        col, buffer = collector(
            registry, provider_config("bitquery", emu.url, subs, {"subprotocol": subprotocol}), KEY
        )
        drain = Drain(buffer)
        await run_and_stop(col, lambda: emu.blocks_produced >= 10, "10 blocks")
        await drain.close()
        assert drain.rows["bitquery_evm_blocks"] == sum(
            n for (op, path), n in emu.sent.items() if path == "EVM.Blocks"
        )
        assert drain.rows["bitquery_evm_transfers"] == sum(
            n for (op, path), n in emu.sent.items() if path == "EVM.Transfers"
        )
        assert sum(drain.rows.values()) == emu.rows_sent > 10
        assert col.stats.subscriptions == {"blocks": "active", "transfers": "active"}


async def test_bitquery_silence_reconnects_and_starts_every_subscription_again(registry):
    """No data and no ka for the idle timeout: reconnect, init, and every operation started anew."""
    async with BitqueryEmulator(key=KEY, block_interval=0.02, ka_interval=0.05) as emu:
        subs = [{"name": "blocks", "query": BLOCKS}, {"name": "transfers", "query": TRANSFERS}]
        col, buffer = collector(
            registry,
            provider_config("bitquery", emu.url, subs, {"subprotocol": "graphql-ws"}, idle_timeout=0.5),
            KEY,
        )
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.received.get("bitquery_evm_blocks", 0) >= 2, what="blocks")
        emu.go_silent(3.0)
        await eventually(lambda: col.stats.connects == 2, timeout=3, what="reconnect after silence")
        before = dict(buffer.received)
        await eventually(
            lambda: all(
                buffer.received.get(d, 0) > before.get(d, 0)
                for d in ("bitquery_evm_blocks", "bitquery_evm_transfers")
            ),
            what="both subscriptions flowing again",
        )
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
        assert "no frame" in col.stats.last_error
        assert [g["subscription"] for g in drain.values["gaps"]] == ["blocks", "transfers"]


async def test_bitquery_graphql_error_stops_one_subscription_not_the_others(registry):
    """The server rejects an unknown field: reported with the subscription's name, never retried."""
    async with BitqueryEmulator(key=KEY, block_interval=0.02) as emu:
        bad = "subscription { EVM(network: eth) { Blocks { Block { Number NoSuchField } } } }"
        subs = [{"name": "broken", "query": bad}, {"name": "blocks", "query": BLOCKS}]
        col, buffer = collector(registry, provider_config("bitquery", emu.url, subs), KEY)
        await run_and_stop(col, lambda: buffer.received.get("bitquery_evm_blocks", 0) >= 5, "blocks")
        assert (
            col.stats.subscriptions["broken"].startswith("failed")
            and "NoSuchField" in col.stats.subscriptions["broken"]
        )
        assert col.stats.subscriptions["blocks"] == "active" and col.stats.connects == 1


async def test_bitquery_plan_limit_refusal_is_started_again_not_fatal(registry, monkeypatch):
    """The only subscription refused over a plan limit does not stop the collector: it is started
    again after `plan_limit_retry`, and its rows then flow."""
    monkeypatch.setattr(BitqueryProtocol, "plan_limit_retry", 0.3)
    async with BitqueryEmulator(key=KEY, block_interval=0.02) as emu:
        emu.refuse_starts("points limit exceeded: usage quota reached")
        config = provider_config(
            "bitquery",
            emu.url,
            [{"name": "blocks", "query": BLOCKS}],
            keepalive_interval=0.05,
            idle_timeout=0.4,
        )
        col, buffer = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(
            lambda: col.stats.subscriptions["blocks"].startswith("failed: points limit"), what="refused"
        )
        await eventually(
            lambda: buffer.received.get("bitquery_evm_blocks", 0) > 2, what="blocks after the wait"
        )
        await col.stop()
        await asyncio.wait_for(task, 10)
    assert col.stats.subscriptions == {"blocks": "active"} and col.stats.connects == 1


async def test_bitquery_over_the_plans_cap_a_subscription_is_reported_silent(registry, capsys):
    """Over the concurrent-subscription cap Bitquery accepts a start and sends it nothing: after
    `silent_after` it shows as silent (once, with a warning saying what it may be), the one served
    stays active, and once the cap allows it the next connection's start flows."""
    configure_logging("json", logging.INFO)
    async with BitqueryEmulator(key=KEY, block_interval=0.02, max_concurrent=1) as emu:
        subs = [{"name": "blocks", "query": BLOCKS}, {"name": "transfers", "query": TRANSFERS}]
        config = provider_config("bitquery", emu.url, subs, silent_after=0.5)
        col, buffer = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions["transfers"] == "silent", 5, "silent")
        assert col.stats.subscriptions["blocks"] == "active"
        assert buffer.received.get("bitquery_evm_blocks", 0) > 0
        assert buffer.received.get("bitquery_evm_transfers", 0) == 0
        emu.max_concurrent = None  # the plan was upgraded
        await emu.drop_connections()
        await eventually(lambda: buffer.received.get("bitquery_evm_transfers", 0) > 0, 5, "transfers")
        await asyncio.sleep(1.5)  # the new connection's check comes and finds both answered
        await col.stop()
        await asyncio.wait_for(task, 10)
    assert col.stats.subscriptions == {"blocks": "active", "transfers": "active"} and col.stats.connects == 2
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    silent = [line for line in lines if line["event"] == "subscription silent"]
    assert len(silent) == 1 and silent[0]["subscription"] == "transfers"
    assert "concurrent-subscription cap" in silent[0]["hint"] and silent[0]["level"] == "warning"


class _Pulsing:
    """The buffer as the driver sees it, short of room for 20 ms every 100 ms of reading (by the
    clock, not by reads: on a loaded machine reads come back to back and would be paused nearly
    all the time)."""

    def __init__(self, buffer) -> None:
        self._buffer, self._last = buffer, time.monotonic()

    def __getattr__(self, name):
        return getattr(self._buffer, name)

    @property
    def congested(self) -> bool:
        return time.monotonic() - self._last >= 0.1

    async def wait_for_room(self) -> None:
        await asyncio.sleep(0.02)
        self._last = time.monotonic()


async def test_bitquery_a_silent_subscription_is_reported_under_steady_backpressure(registry):
    """Pauses for buffer room are left out of the silence, not a reason to start counting again:
    a busy daemon whose buffer fills every few reads still reports what never answers."""
    async with BitqueryEmulator(key=KEY, block_interval=0.02, max_concurrent=1) as emu:
        subs = [{"name": "blocks", "query": BLOCKS}, {"name": "transfers", "query": TRANSFERS}]
        col, buffer = collector(registry, provider_config("bitquery", emu.url, subs, silent_after=0.5), KEY)
        col._sink = _Pulsing(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions["transfers"] == "silent", 10, "silent")
        assert col.stats.subscriptions["blocks"] == "active" and col.stats.frames > 20
        assert col._paused_for > 0.1  # the reader did wait for room meanwhile
        await col.stop()
        await asyncio.wait_for(task, 10)


async def test_bitquery_bad_token_fails_once(registry):
    async with BitqueryEmulator(key=KEY) as emu:
        col, _ = collector(
            registry, provider_config("bitquery", emu.url, [{"name": "b", "query": BLOCKS}]), "wrong-token"
        )
        await asyncio.wait_for(col.run(), 5)
        assert col.stats.state == "failed" and "401" in col.stats.last_error and emu.connections_total == 0


async def test_bitquery_a_connection_never_acknowledged_is_given_up_with_backoff(registry):
    """A server that sends keep-alives but never `connection_ack` keeps the idle watchdog happy:
    after `handshake_timeout` the driver gives up on it (PROTOCOLS.md 1.11 step 2; gql's 4504) and
    connects again after the backoff, as after any lost connection, even one that lived long."""
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with BitqueryEmulator(key=KEY, block_interval=0.02, ka_interval=0.05, pong_interval=0.05) as emu:
        emu.withhold_acks(2)
        config = provider_config(
            "bitquery", emu.url, [{"name": "blocks", "query": BLOCKS}], handshake_timeout=0.5
        )
        col, buffer = collector(registry, config, KEY, sleep=sleep)
        await run_and_stop(col, lambda: buffer.received.get("bitquery_evm_blocks", 0) > 2, "blocks")
    assert col.stats.connects == 3 and len(sleeps) == 2  # healthy_after is 0.3 s: backoff all the same
    assert col.stats.last_error == "handshake not acknowledged within 0.5 s"
    assert col.stats.subscriptions == {"blocks": "active"}


async def test_bitquery_too_many_sessions_at_init_waits_the_plan_limit_then_connects_again(
    registry, monkeypatch
):
    """`connection_error` "Too Many Sessions: 429" before the ack (graphql-ws, PROTOCOLS.md 1.6) is
    a plan's limit: no new token and no stop, a reconnect after plan_limit_retry."""
    monkeypatch.setattr(BitqueryProtocol, "plan_limit_retry", 0.3)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    async with BitqueryEmulator(key=KEY, block_interval=0.02) as emu:
        emu.refuse_inits("Too Many Sessions: 429")
        config = provider_config(
            "bitquery", emu.url, [{"name": "blocks", "query": BLOCKS}], {"subprotocol": "graphql-ws"}
        )
        col, buffer = collector(registry, config, KEY, sleep=sleep)
        await run_and_stop(col, lambda: buffer.received.get("bitquery_evm_blocks", 0) > 2, "blocks")
    assert col.stats.connects == 2 and col.stats.state == "stopped"
    (slept,) = sleeps
    assert 0.3 <= slept <= 0.36  # the plan's wait with its jitter, not the 0.02 s backoff
    assert "Too Many Sessions" in col.stats.last_error


async def test_bitquery_a_passing_server_error_is_started_again_not_the_end(registry, monkeypatch):
    """The emulator answers a start it fails on with "Internal server error": not the query's
    fault, so the only subscription is started again after a wait and the collector stays up."""
    monkeypatch.setattr(BitqueryProtocol, "error_retry", 0.2)
    async with BitqueryEmulator(key=KEY, block_interval=0.02) as emu:
        emu.refuse_starts("Internal server error")
        config = provider_config(
            "bitquery", emu.url, [{"name": "blocks", "query": BLOCKS}], keepalive_interval=0.05
        )
        col, buffer = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(
            lambda: col.stats.subscriptions["blocks"].startswith("failed: Internal server error"),
            what="refused",
        )
        await eventually(
            lambda: buffer.received.get("bitquery_evm_blocks", 0) > 2, what="blocks after the wait"
        )
        await col.stop()
        await asyncio.wait_for(task, 10)
    assert col.stats.subscriptions == {"blocks": "active"} and col.stats.connects == 1


@pytest.mark.parametrize("subprotocol", ["graphql-ws", "graphql-transport-ws"])
async def test_bitquery_an_operation_failed_by_a_result_of_errors_is_ended_on_the_server(
    registry, monkeypatch, subprotocol
):
    """A result of errors only does not end the operation on the server; Bitquery ignores `stop`
    (PROTOCOLS.md 1.6), so it must be ended with `complete` before it is started again, else two
    operations run (one over the plan's cap, or every row twice)."""
    monkeypatch.setattr(BitqueryProtocol, "error_retry", 0.1)
    async with BitqueryEmulator(key=KEY, block_interval=0.02) as emu:
        config = provider_config(
            "bitquery",
            emu.url,
            [{"name": "blocks", "query": BLOCKS}],
            {"subprotocol": subprotocol},
            keepalive_interval=0.05,
        )
        col, _ = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(lambda: emu.messages_sent["1"] >= 2, what="blocks on operation 1")
        emu.fail_running("Internal server error")
        await eventually(lambda: emu.messages_sent["2"] >= 2, what="blocks on the restarted operation")
        (conn,) = emu.connections
        running = sorted(conn.subscriptions)
        await col.stop()
        await asyncio.wait_for(task, 10)
    assert running == ["2"] and col.stats.connects == 1


async def test_bitquery_a_replay_routes_rows_as_the_live_session_did(registry, tmp_path):
    """Operation ids are chosen at the ack, and a subscription waiting out a plan's limit gets
    none: the state is journaled before the starts go out, so a replay of the journal from the
    second connection on (what a crash leaves once the first segment is stored) routes each row
    to the subscription and table it went to live."""
    async with BitqueryEmulator(key=KEY, block_interval=0.02) as emu:
        emu.refuse_starts("points limit exceeded: usage quota reached")  # blocks, operation 1
        journal = Journal(tmp_path)
        journal.open()
        subs = [{"name": "blocks", "query": BLOCKS}, {"name": "transfers", "query": TRANSFERS}]
        col, buffer = collector(registry, provider_config("bitquery", emu.url, subs), KEY, journal=journal)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.received.get("bitquery_evm_transfers", 0) > 0, what="transfers")
        await emu.drop_connections()
        await eventually(lambda: col.stats.connects == 2, what="the second connection")
        n = buffer.received["bitquery_evm_transfers"]
        await eventually(lambda: buffer.received["bitquery_evm_transfers"] > n + 5, what="transfers again")
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
        journal.close()
    records = [r for seg in segment_files(tmp_path) for r in read_records(seg)]
    states = [r for r in records if r.kind is Kind.STATE and not msgspec.json.decode(r.payload)["acked"]]
    cut = states[1].position  # the second connect's state: a segment could start here
    live = sorted(
        (position, chunk.subscription, chunk.dataset)
        for chunk in drain.chunks
        for position in chunk.positions or [chunk.position] * len(chunk.records)
        if position > cut
    )
    fresh = BitqueryProtocol("bitquery", list(col.config.subscriptions), col.config.options)
    replayed = Drain(Buffer(registry, FlushPolicy(max_rows=100, max_age=0.05)))
    await replay([r for r in records if r.position >= cut], {"bitquery": fresh}, replayed.buffer)
    await replayed.close()
    again = sorted(
        (position, chunk.subscription, chunk.dataset)
        for chunk in replayed.chunks
        for position in chunk.positions or [chunk.position] * len(chunk.records)
    )
    assert live and {(s, d) for _, s, d in live} == {("transfers", "bitquery_evm_transfers")}
    assert again == live


@pytest.mark.parametrize("subprotocol", ["graphql-ws", "graphql-transport-ws"])
async def test_bitquery_connects_after_a_replay_whose_frames_asked_for_answers(registry, subprotocol):
    """A start-up replay feeds the protocol a journaled ack and ping: what they ask it to send
    (every start, a pong) was for the crashed run's socket and must not precede the handshake."""
    async with BitqueryEmulator(key=KEY, block_interval=0.02) as emu:
        subs = [{"name": "blocks", "query": BLOCKS}]
        col, buffer = collector(
            registry, provider_config("bitquery", emu.url, subs, {"subprotocol": subprotocol}), KEY
        )
        col.protocol.receive(b'{"type":"connection_ack"}', 1)
        col.protocol.receive(b'{"type":"ping"}', 2)
        col.protocol.connection_lost()  # as replay() ends
        drain = Drain(buffer)
        await run_and_stop(col, lambda: drain.rows["bitquery_evm_blocks"] >= 5, "5 blocks")
        await drain.close()
        assert col.stats.state == "stopped" and col.stats.connects == 1
        assert col.stats.subscriptions == {"blocks": "active"}


# -- CoinAPI -------------------------------------------------------------------------------------


async def test_coinapi_trades_and_quotes_with_sequence_gaps_on_record(registry):
    async with CoinAPIEmulator(key=KEY, tick_interval=0.01, sequence_gap_every=20) as emu:
        subs = [
            {
                "name": "btc",
                "data_types": ["trade", "quote"],
                "symbols": ["BITSTAMP_SPOT_BTC_USD$", "COINBASE_"],
            }
        ]
        col, buffer = collector(registry, provider_config("coinapi", emu.url, subs), KEY)
        drain = Drain(buffer)
        await run_and_stop(col, lambda: len(emu.gaps_injected) >= 3, "injected gaps")
        await drain.close()
        assert drain.rows["coinapi_trades"] == sum(n for (t, _), n in emu.sent.items() if t == "trade")
        assert drain.rows["coinapi_quotes"] == sum(n for (t, _), n in emu.sent.items() if t == "quote")
        symbols = {json.loads(r)["symbol_id"] for r in drain.records}
        assert symbols and all(s == "BITSTAMP_SPOT_BTC_USD" or s.startswith("COINBASE_") for s in symbols)
        gaps = {
            (g["stream"], g["expected"], g["received"])
            for g in drain.values["gaps"]
            if g["kind"] == "sequence"
        }
        assert gaps == {(f"{t}:{s}", expected, got) for s, t, expected, got in emu.gaps_injected}


async def test_coinapi_a_filter_that_matches_nothing_is_reported_silent(registry, capsys):
    """CoinAPI acknowledges no subscription and sends nothing for a symbol that does not exist."""
    configure_logging("json", logging.INFO)
    async with CoinAPIEmulator(key=KEY, tick_interval=0.01) as emu:
        subs = [
            {"name": "btc", "data_types": ["trade"], "symbols": ["BITSTAMP_SPOT_BTC_USD$"]},
            {"name": "typo", "data_types": ["trade"], "symbols": ["BITSTAMP_SPOT_BTC_UDS$"]},
        ]
        col, buffer = collector(registry, provider_config("coinapi", emu.url, subs, silent_after=0.5), KEY)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions["typo"] == "silent", 5, "silent")
        assert col.stats.subscriptions["btc"] == "active" and buffer.received["coinapi_trades"] > 0
        await col.stop()
        await asyncio.wait_for(task, 10)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (silent,) = [line for line in lines if line["event"] == "subscription silent"]
    assert silent["subscription"] == "typo" and "match no symbol" in silent["hint"]


async def test_coinapi_bad_key_is_reported_once_without_a_loop(registry):
    async with CoinAPIEmulator(key=KEY) as emu:
        col, _ = collector(
            registry, provider_config("coinapi", emu.url, [{"name": "t", "data_types": ["trade"]}]), "nope"
        )
        await asyncio.wait_for(col.run(), 5)
        assert col.stats.state == "failed" and "Invalid API key" in col.stats.last_error
        assert emu.connections_total == 1


async def test_coinapi_reconnect_message_reconnects_at_once_but_not_every_time(registry):
    """The provider asked for it: no backoff, and trades flow on the new connection. But a server
    (or a proxy) answering every hello with `reconnect` must not get a storm of connections: asked
    again before the new session lived `healthy_after`, the collector waits the backoff; asked by
    a session that lived that long, it reconnects at once again."""
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    backoff = BackoffConfig(initial=0.02, max=0.1, healthy_after=2.0)
    async with CoinAPIEmulator(key=KEY, tick_interval=0.01) as emu:
        config = provider_config(
            "coinapi", emu.url, [{"name": "t", "data_types": ["trade"]}], backoff=backoff
        )
        col, buffer = collector(registry, config, KEY, sleep=sleep)
        task = asyncio.create_task(col.run())
        # Sessions 1 and 2 ask within 2 s of connecting; session 3 has lived 2 s when it is asked.
        for connects, wait, slept in ((2, 0.0, 0), (3, 0.0, 1), (4, 2.1, 1)):
            n = buffer.received.get("coinapi_trades", 0)
            await eventually(lambda n=n: buffer.received.get("coinapi_trades", 0) > n + 5, what="trades")
            await asyncio.sleep(wait)
            emu.send_reconnect(within_seconds=10, close_after=5.0)
            await eventually(lambda c=connects: col.stats.connects == c, what="reconnect")
            assert len(sleeps) == slept
        await col.stop()
        await asyncio.wait_for(task, 10)
    assert "again" in col.stats.last_error and "after connecting" in col.stats.last_error


# -- Helius --------------------------------------------------------------------------------------


async def test_helius_rows_equal_notifications_sent(registry):
    async with HeliusEmulator(key=KEY, slot_interval=0.02, finality_lag=4, confirm_lag=1) as emu:
        subs = [
            {"name": "slots", "method": "slotSubscribe"},
            {"name": "roots", "method": "rootSubscribe"},
            {
                "name": "tokens",
                "method": "programSubscribe",
                "params": [
                    "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
                    {"commitment": "confirmed", "encoding": "base64"},
                ],
            },
            {"name": "logs", "method": "logsSubscribe", "params": ["all", {"commitment": "processed"}]},
            {
                "name": "txs",
                "method": "transactionSubscribe",
                "params": [
                    {"vote": False, "failed": False},
                    {"commitment": "confirmed", "maxSupportedTransactionVersion": 0},
                ],
            },
        ]
        col, buffer = collector(registry, provider_config("helius", emu.url, subs), KEY)
        drain = Drain(buffer)
        await run_and_stop(col, lambda: emu.slots_produced >= 30, "30 slots")
        await drain.close()
        expected = {
            "solana_slots": "slotNotification",
            "solana_roots": "rootNotification",
            "solana_program_accounts": "programNotification",
            "solana_logs": "logsNotification",
            "solana_transactions": "transactionNotification",
        }
        assert {d: drain.rows[d] for d in expected} == {d: emu.sent[m] for d, m in expected.items()}
        assert all(v > 0 for v in drain.rows.values())
        txs = [json.loads(r) for r in drain.records if b'"transactionIndex"' in r]
        assert len(txs) == drain.rows["solana_transactions"]
        for tx in txs:  # the filter: no failed and no vote transaction
            meta = tx["transaction"]["meta"]
            assert meta["err"] is None and not any("Vote111" in line for line in meta["logMessages"])


async def test_helius_resubscribes_and_remaps_after_a_reconnect(registry):
    """Subscription ids die with the socket: after a drop, new ids are mapped to the same names."""
    async with HeliusEmulator(key=KEY, slot_interval=0.02) as emu:
        col, buffer = collector(
            registry, provider_config("helius", emu.url, [{"name": "slots", "method": "slotSubscribe"}]), KEY
        )
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.received.get("solana_slots", 0) >= 3, what="slots")
        await emu.drop_connections()
        await eventually(lambda: col.stats.connects == 2, what="reconnect")
        n = buffer.received["solana_slots"]
        await eventually(lambda: buffer.received["solana_slots"] > n + 3, what="slots after reconnect")
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
        assert emu.subscriptions_total == 2  # one subscribe per connection, a new id each time
        labels = {json.loads(r).get("slot") is not None for r in drain.records}
        assert labels == {True}
        assert drain.rows["solana_slots"] == emu.sent["slotNotification"]


async def test_helius_signature_subscription_ends_after_its_notification(registry):
    async with HeliusEmulator(key=KEY, slot_interval=0.02, finality_lag=3, confirm_lag=1) as emu:
        slot, signature = emu.upcoming_signature(ahead=3)
        subs = [
            {
                "name": "tx",
                "method": "signatureSubscribe",
                "params": [signature, {"commitment": "confirmed"}],
            },
            {"name": "slots", "method": "slotSubscribe"},
        ]
        col, buffer = collector(registry, provider_config("helius", emu.url, subs), KEY)
        await run_and_stop(
            col,
            lambda: buffer.received.get("solana_signatures", 0) >= 1 and emu.chain.next_slot > slot + 5,
            "the signature",
        )
        assert buffer.received["solana_signatures"] == 1
        assert col.protocol.active == 1  # only slots remain wanted
