"""The shared driver against the BlockDB emulator's faults; every test runs on 127.0.0.1, bounded."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import msgspec
import pytest

from ingest.buffer import Buffer
from ingest.config import BackoffConfig, FlushPolicy
from ingest.driver import Collector, _jittered
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.emulators.coinapi import CoinAPIEmulator
from ingest.emulators.helius import HeliusEmulator
from ingest.journal import Journal, Kind, read_records, segment_files
from ingest.schema import Registry
from tests.helpers import Drain, blockdb_config, collector, eventually, provider_config

KEY = "test-key-0123456789"
BLOCKS = [{"name": "blocks", "chain_id": 1, "dataset_id": "0101"}]
ALL = [*BLOCKS, {"name": "transfers", "chain_id": 1, "dataset_id": "0304"}]


@pytest.fixture
async def emulator():
    emu = BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=3, ping_interval=5.0)
    await emu.start()
    yield emu
    await emu.stop()


async def run_until(col, predicate, what, timeout=10.0):
    task = asyncio.create_task(col.run())
    try:
        await eventually(predicate, timeout, what)
    finally:
        await col.stop()
        await asyncio.wait_for(task, 10)


async def test_every_record_sent_is_received_and_stop_is_clean(registry, emulator):
    """With a graceful stop (unsubscribe, read until acked) the client holds exactly what was sent."""
    col, buffer = collector(registry, blockdb_config(emulator.url, ALL), KEY)
    drain = Drain(buffer)
    await run_until(col, lambda: emulator.blocks_produced >= 10, "10 blocks")
    await drain.close()
    assert sum(drain.rows.values()) == sum(emulator.sent.values()) > 0
    assert drain.rows["blockdb_blocks"] == emulator.sent[(1, "0101")]
    assert drain.rows["blockdb_transfers"] == emulator.sent[(1, "0304")]
    assert col.stats.state == "stopped" and col.stats.connects == 1
    assert col.stats.subscriptions == {"blocks": "active", "transfers": "active"}


async def test_abrupt_close_reconnects_and_resubscribes(registry, emulator):
    col, buffer = collector(registry, blockdb_config(emulator.url, BLOCKS), KEY)
    drain = Drain(buffer)
    task = asyncio.create_task(col.run())
    await eventually(lambda: buffer.received.get("blockdb_blocks", 0) >= 3, what="first blocks")
    before = buffer.received["blockdb_blocks"]
    dropped_at = time.time_ns()
    await emulator.drop_connections()
    await eventually(lambda: col.stats.connects == 2, what="a second connection")
    reconnected_by = time.time_ns()
    await eventually(lambda: buffer.received["blockdb_blocks"] >= before + 3, what="blocks after reconnect")
    await col.stop()
    await asyncio.wait_for(task, 10)
    await drain.close()
    assert col.stats.reconnects == 1
    assert emulator.connections_total == 2
    (gap,) = drain.values["gaps"]  # the hole from the drop to the resubscribe is on record
    assert (gap["provider"], gap["subscription"], gap["kind"]) == ("blockdb", "blocks", "disconnected")
    # From the loss to the new connection: within the drop and the reconnect, not merely short.
    assert dropped_at <= gap["started_at"] < gap["ended_at"] <= reconnected_by


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1013])
async def test_retryable_close_codes_reconnect(registry, emulator, code):
    col, _ = collector(registry, blockdb_config(emulator.url, BLOCKS), KEY)
    task = asyncio.create_task(col.run())
    await eventually(lambda: col.stats.state == "connected" and col.stats.frames > 2, what="connected")
    await emulator.close_connections(code, "test")
    await eventually(lambda: col.stats.connects == 2, what="reconnect")
    await col.stop()
    await asyncio.wait_for(task, 10)


async def test_policy_violation_close_stops_this_collector(registry, emulator):
    """1008 means a bad key or scope: reconnecting with the same key would loop, so the collector stops."""
    col, _ = collector(registry, blockdb_config(emulator.url, BLOCKS), KEY)
    task = asyncio.create_task(col.run())
    await eventually(lambda: col.stats.state == "connected", what="connected")
    await emulator.close_connections(1008, "invalid auth")
    await asyncio.wait_for(task, 5)
    assert col.stats.state == "failed" and "1008" in col.stats.last_error
    assert emulator.connections_total == 1


@pytest.mark.parametrize("location", ["header", "query"])
async def test_bad_key_fails_once_without_looping_and_never_shows_the_key(registry, emulator, location):
    col, _ = collector(registry, blockdb_config(emulator.url, BLOCKS, location=location), "wrong-key-abcdef")
    await asyncio.wait_for(col.run(), 5)
    assert col.stats.state == "failed"
    assert "401" in col.stats.last_error
    assert "wrong-key-abcdef" not in col.stats.last_error and "wrong-key-abcdef" not in col.stats.display_url
    assert emulator.connections_total == 0


async def test_good_key_in_the_query_works(registry, emulator):
    col, buffer = collector(registry, blockdb_config(emulator.url, BLOCKS, location="query"), KEY)
    await run_until(col, lambda: buffer.received.get("blockdb_blocks", 0) >= 2, "blocks")
    assert KEY not in col.stats.display_url and "api_key=***" in col.stats.display_url


async def test_silence_triggers_a_reconnect(registry, emulator):
    """Half-open socket: no data, no ping for idle_timeout means reconnect, and data flows again."""
    col, buffer = collector(registry, blockdb_config(emulator.url, BLOCKS, idle_timeout=0.4), KEY)
    task = asyncio.create_task(col.run())
    await eventually(lambda: buffer.received.get("blockdb_blocks", 0) >= 2, what="blocks")
    emulator.go_silent(3.0)
    await eventually(lambda: col.stats.connects == 2, timeout=3, what="reconnect after silence")
    assert "no frame" in col.stats.last_error
    count = buffer.received["blockdb_blocks"]
    await eventually(lambda: buffer.received["blockdb_blocks"] > count, what="data after reconnect")
    await col.stop()
    await asyncio.wait_for(task, 10)


async def test_server_pings_keep_a_quiet_connection_alive(registry):
    """No data but server pings: the watchdog counts pings as life and the driver answers them."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.02, max_blocks=0, ping_interval=0.1)
    await emu.start()
    try:
        col, _ = collector(registry, blockdb_config(emu.url, BLOCKS, idle_timeout=0.5), KEY)
        task = asyncio.create_task(col.run())
        await asyncio.sleep(1.5)
        assert col.stats.connects == 1 and col.stats.state == "connected"
        assert col.stats.keepalives >= 5
        await col.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await emu.stop()


async def test_steady_pings_keep_a_busy_helius_stream_past_its_idle_limit(registry):
    """Helius's idle timer counts client frames only, and aiohttp's heartbeat pings only after
    ping_interval of silence, which a busy stream never has: the driver pings every ping_interval
    whatever arrives, so one connection outlives several idle limits (0.5 s stands in for 10 min)."""
    async with HeliusEmulator(key=KEY, slot_interval=0.05, idle_timeout=0.5) as emu:
        subs = [{"name": "slots", "method": "slotSubscribe"}]
        cfg = provider_config("helius", emu.url, subs, ping_interval=0.2, idle_timeout=5.0)
        col, buffer = collector(registry, cfg, KEY)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        try:
            await asyncio.sleep(2.0)  # four idle limits, a slot notification every 50 ms
            assert col.stats.connects == 1 and emu.connections_total == 1
            assert col.stats.state == "connected" and not col.stats.last_error
            assert emu.pings_received >= 6 and col.stats.keepalives >= 6  # each ping answered
            assert buffer.received.get("solana_slots", 0) >= 20
        finally:
            await col.stop()
            await asyncio.wait_for(task, 10)
            await drain.close()


class _PingedWS:
    """A socket as the watchdog sees it: records when it was pinged; a closing one raises."""

    def __init__(self, fail: bool = False) -> None:
        self.pings: list[float] = []
        self.fail = fail

    async def ping(self, message: bytes = b"") -> None:
        self.pings.append(asyncio.get_running_loop().time())
        if self.fail:
            raise ConnectionResetError("Cannot write to closing transport")


async def _watch(col: Collector, ws: _PingedWS, seconds: float) -> None:
    """Run the watchdog for `seconds` while frames keep arriving (a busy stream)."""
    watchdog = asyncio.create_task(col._watchdog(ws))  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            col.stats.frames += 1
            await asyncio.sleep(0.01)
        assert not watchdog.done()  # a failed ping does not end it either
    finally:
        watchdog.cancel()


@pytest.mark.parametrize("fail", [False, True])
async def test_steady_pings_go_out_every_ping_interval_while_frames_arrive(registry, fail):
    subs = [{"name": "slots", "method": "slotSubscribe"}]
    cfg = provider_config("helius", "ws://127.0.0.1:9/", subs, ping_interval=0.1, idle_timeout=5.0)
    col, _ = collector(registry, cfg, KEY)
    ws = _PingedWS(fail)
    await _watch(col, ws, 1.0)
    assert len(ws.pings) >= 8
    gaps = [b - a for a, b in zip(ws.pings, ws.pings[1:], strict=False)]
    # On the watchdog's last tick (ping_interval / 4 here) before one is due: never further apart
    # than ping_interval, give or take the event loop's lag, nor much closer.
    assert min(gaps) > 0.1 * 0.7 and max(gaps) < 0.1 + 0.03


async def test_other_providers_ping_only_after_silence_and_get_no_steady_pings(registry):
    """BlockDB's ping_interval is a ping after silence only, as aiohttp's heartbeat was."""
    col, _ = collector(registry, blockdb_config("ws://127.0.0.1:9/", BLOCKS, ping_interval=0.1), KEY)
    ws = _PingedWS()
    await _watch(col, ws, 0.5)
    assert ws.pings == []


async def test_backoff_grows_while_down_and_resets_after_a_healthy_session(registry):
    """Refused connects back off more and more (capped); a healthy session starts the sequence again."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    emu = BlockDBEmulator(key=KEY, block_interval=0.02)
    url = await emu.start()
    await emu.stop()  # the port is now closed: connects are refused
    backoff = BackoffConfig(initial=1.0, max=8.0, healthy_after=0.2)
    col, _ = collector(registry, blockdb_config(url, BLOCKS, backoff=backoff), KEY, sleep=sleep)
    task = asyncio.create_task(col.run())
    await eventually(lambda: len(delays) >= 8, what="8 retries")
    await col.stop()
    await asyncio.wait_for(task, 5)
    # full jitter: each wait is at most min(cap, initial * 2**n) (+ the small floor)
    for n, d in enumerate(delays[:8]):
        assert 0.05 <= d <= min(8.0, 2.0**n) + 0.05 + 1e-9
    assert max(delays) > 1.0  # it did grow
    assert col.stats.connects == 0


async def test_a_healthy_session_resets_the_backoff(registry, emulator):
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    backoff = BackoffConfig(initial=1.0, max=8.0, healthy_after=0.2)
    col, _ = collector(registry, blockdb_config(emulator.url, BLOCKS, backoff=backoff), KEY, sleep=sleep)
    task = asyncio.create_task(col.run())
    await eventually(lambda: col.stats.state == "connected", what="connected")
    await asyncio.sleep(0.3)  # healthy
    await emulator.drop_connections()
    await eventually(lambda: col.stats.connects == 2, what="reconnect")
    assert delays == []  # after a healthy session the first reconnect is immediate
    await col.stop()
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("healthy", [False, True])
async def test_try_again_later_waits_the_backoff_cap_even_after_a_healthy_session(
    registry, emulator, healthy
):
    """Close 1013 TRY_AGAIN_LATER asks for a longer backoff (PROTOCOLS.md 1.6, 2.4): the wait is the
    backoff's cap, where any other close after a healthy session reconnects at once."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    backoff = BackoffConfig(initial=0.01, max=0.5, healthy_after=0.2 if healthy else 60.0)
    col, _ = collector(registry, blockdb_config(emulator.url, BLOCKS, backoff=backoff), KEY, sleep=sleep)
    task = asyncio.create_task(col.run())
    await eventually(lambda: col.stats.state == "connected" and col.stats.frames > 2, what="connected")
    await asyncio.sleep(0.3)
    await emulator.close_connections(1013, "slow consumer")
    await eventually(lambda: col.stats.connects == 2, what="reconnect")
    assert "(1013 slow consumer): try again later, in 0.5 s" in col.stats.last_error
    await emulator.close_connections(1011, "boom")  # an ordinary close: the usual backoff
    await eventually(lambda: col.stats.connects == 3, what="reconnect")
    await col.stop()
    await asyncio.wait_for(task, 5)
    # The 1013's wait and the 1011's: the second session lived under healthy_after (0.2 s), so its
    # loss backs off; an assertion over delays[1:] alone passed also with no second wait at all.
    assert len(delays) == 2
    assert 0.5 <= delays[0] <= 0.6  # the cap, plus up to a fifth of jitter
    assert delays[1] < 0.5
    assert "1011" in col.stats.last_error


async def test_a_stop_while_an_upgrade_hangs_ends_the_collector_at_once(registry):
    """A server that takes the TCP connection and never answers the upgrade held a stop (SIGTERM)
    up for the whole connect_timeout: the connect is given up as soon as stop() comes."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = blockdb_config(f"ws://127.0.0.1:{port}/v1/evm/", BLOCKS, connect_timeout=10.0)
        col, _ = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(lambda: bool(held), what="the TCP connection")
        await asyncio.wait_for(col.stop(), 1)
        await asyncio.wait_for(task, 1)  # not the 10 s connect_timeout
        assert col.stats.state == "stopped" and col.stats.connects == 0 and not col.stats.last_error
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def test_a_providers_wait_gets_up_to_a_fifth_more_at_random():
    """Collectors shed together (a 1013 to every socket) must not come back in the same instant."""
    waits = [_jittered(10.0) for _ in range(200)]
    assert all(10.0 <= w <= 12.0 for w in waits)
    assert min(waits) < 11.0 < max(waits)  # spread over the fifth, not a fixed extra


async def test_a_stop_while_waiting_out_a_try_again_later_ends_the_collector_cleanly(registry, emulator):
    """The wait after a healthy session's 1013 comes after the socket is let go of: a stop() then
    ends the wait at once and says no goodbye on a closed socket."""
    backoff = BackoffConfig(initial=0.01, max=30.0, healthy_after=0.2)
    col, _ = collector(registry, blockdb_config(emulator.url, BLOCKS, backoff=backoff), KEY)
    task = asyncio.create_task(col.run())
    await eventually(lambda: col.stats.state == "connected" and col.stats.frames > 2, what="connected")
    await asyncio.sleep(0.3)
    await emulator.close_connections(1013, "slow consumer")
    await eventually(lambda: col.stats.state == "backoff", what="waiting")
    await asyncio.sleep(0.1)
    await asyncio.wait_for(col.stop(), 2)
    await asyncio.wait_for(task, 2)  # not the 30 s wait
    assert col.stats.state == "stopped" and col.stats.connects == 1


async def test_a_rate_limited_upgrade_waits_as_long_as_the_provider_says(registry):
    """CoinAPI limits new connections per IP and says when to come back (`-RetryAfterMs`, PROTOCOLS.md
    3.7): the driver waits that long instead of its short backoff, so it is refused only once."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(seconds)

    async with CoinAPIEmulator(key=KEY, tick_interval=0.01, connection_limit=(1, 0.6)) as emu:
        backoff = BackoffConfig(initial=0.01, max=0.02, healthy_after=60.0)
        config = provider_config(
            "coinapi", emu.url, [{"name": "t", "data_types": ["trade"]}], backoff=backoff
        )
        col, buffer = collector(registry, config, KEY, sleep=sleep)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.received.get("coinapi_trades", 0) > 2, what="trades")
        await emu.drop_connections()
        await eventually(lambda: col.stats.connects == 2, what="reconnect", timeout=5)
        await col.stop()
        await asyncio.wait_for(task, 5)
    assert emu.upgrades_refused == 1
    assert "HTTP 429" in (col.stats.last_error or "")
    assert max(delays) > 0.3  # the rest of the 0.6 s window, not the 20 ms backoff


async def test_a_rate_limited_subscription_is_asked_again_once_the_limit_allows(registry):
    """BlockDB refuses a subscribe over its rate limit with `retry_after_seconds`: the collector asks
    again after that long (not at the next keep-alive), once, and the subscription becomes active."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.02, subscribe_limit=(1, 0.5))
    await emu.start()
    try:
        config = blockdb_config(emu.url, ALL, keepalive_interval=0.05, idle_timeout=0.4)
        col, buffer = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.received.get("blockdb_transfers", 0) > 0, what="transfers")
        await col.stop()
        await asyncio.wait_for(task, 5)
    finally:
        await emu.stop()
    assert emu.rate_limited == 1
    assert col.stats.subscriptions == {"blocks": "active", "transfers": "active"}
    assert col.stats.connects == 1


async def test_a_refused_subscription_does_not_stop_the_others(registry, emulator):
    subs = [*BLOCKS, {"name": "arb", "chain_id": 1, "dataset_id": "0701"}]
    col, buffer = collector(registry, blockdb_config(emulator.url, subs), KEY)
    await run_until(col, lambda: buffer.received.get("blockdb_blocks", 0) >= 3, "blocks")
    assert col.stats.subscriptions["blocks"] == "active"
    assert col.stats.subscriptions["arb"].startswith("failed: NOT_FOUND")
    assert col.stats.connects == 1


async def test_when_every_subscription_is_refused_the_collector_stops(registry, emulator):
    subs = [{"name": "arb", "chain_id": 1, "dataset_id": "0701"}]
    col, _ = collector(registry, blockdb_config(emulator.url, subs), KEY)
    await asyncio.wait_for(col.run(), 5)
    assert col.stats.state == "failed" and "refused" in col.stats.last_error


async def test_backpressure_pauses_reading_without_losing_frames(registry):
    """A stalled writer fills the byte budget; the reader waits, then everything arrives in order."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.001, txs_per_block=2, max_blocks=300)
    await emu.start()
    try:
        policy = FlushPolicy(max_rows=50, max_bytes=10_000, max_age=0.05, max_pending_bytes=20_000)
        col, buffer = collector(registry, blockdb_config(emu.url, ALL), KEY, policy=policy)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.congested, what="congestion")
        stalled = sum(buffer.received.values())
        await asyncio.sleep(0.3)
        assert sum(buffer.received.values()) == stalled  # the reader really waits
        drain = Drain(buffer)
        await eventually(lambda: emu.blocks_produced >= 300, timeout=20, what="all blocks")
        await asyncio.sleep(0.2)
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
        assert sum(drain.rows.values()) == sum(emu.sent.values())
        assert col.stats.connects == 1
        numbers = [
            int(r.split(b'"block_number":')[1].split(b",")[0]) for r in drain.records if b'"block_hash"' in r
        ]
        assert numbers == sorted(numbers)
    finally:
        await emu.stop()


async def test_a_burst_is_read_a_socket_read_at_a_time_and_every_row_keeps_its_frame(registry, tmp_path):
    """Frames that arrived together are journaled and read together: they share one receive time
    and one journal record, and each row still points at the very frame it came from."""
    emu = BlockDBEmulator(key=KEY, block_interval=3600, txs_per_block=40)
    await emu.start()
    journal = Journal(tmp_path)
    journal.open()
    try:
        col, buffer = collector(
            registry, blockdb_config(emu.url, ALL), KEY, journal=journal, policy=FlushPolicy(max_age=0.05)
        )
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions == {"blocks": "active", "transfers": "active"})
        emu.burst(50)
        await eventually(lambda: sum(buffer.received.values()) >= sum(emu.sent.values()) >= 50 * 41)
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    finally:
        await emu.stop()
    journal.close()
    journaled = [r for seg in segment_files(tmp_path) for r in read_records(seg)]
    frames = {r.position: r for r in journaled if r.kind is Kind.FRAME}
    rows = [
        (chunk.dataset, record, position, chunk.received_at)
        for chunk in drain.chunks
        for record, position in zip(
            chunk.records, chunk.positions or [chunk.position] * len(chunk.records), strict=True
        )
    ]
    assert len(rows) == sum(emu.sent.values())
    assert len({position for _, _, position, _ in rows}) == len(rows)  # one frame, one row
    for dataset in ("blockdb_blocks", "blockdb_transfers"):
        positions = [position for name, _, position, _ in rows if name == dataset]
        assert positions == sorted(positions)
    for _, record, position, received_at in rows:  # the journaled frame holds exactly this record
        frame = frames[position]
        assert record in frame.payload and frame.received_at == received_at
    assert len(drain.chunks) < len(rows) / 4  # a run of frames of one read is one Rows
    reads = len({received_at for _, _, _, received_at in rows})
    assert reads < len(rows) / 4  # a 64 KiB read carries dozens of these frames


async def test_pings_amid_a_burst_are_answered_and_no_frame_around_them_is_lost(registry):
    """Frames of one socket read are taken from aiohttp's queue in a batch; a ping among them
    stops the batch there and goes through receive(), so it is answered (the server drops a
    peer that leaves its pings unanswered) and the data after it is read as well."""
    # idle_timeout is also how long the emulator waits for a pong before it drops the peer. Not
    # shorter: each burst is made on the test's own event loop (0.5 s on a slow, busy VM cut the
    # link in one CI run with every ping answered).
    emu = BlockDBEmulator(
        key=KEY, block_interval=3600, txs_per_block=40, ping_interval=0.005, idle_timeout=2.0
    )
    await emu.start()
    try:
        col, buffer = collector(registry, blockdb_config(emu.url, ALL, idle_timeout=5.0), KEY)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions == {"blocks": "active", "transfers": "active"})
        for _ in range(8):  # bursts, with pings every 5 ms in between and among them
            emu.burst(40)
            await asyncio.sleep(0.03)
        await eventually(lambda: sum(buffer.received.values()) >= sum(emu.sent.values()) >= 8 * 40 * 41)
        await asyncio.sleep(2.1)  # past the pong timeout: a ping left unanswered would cut the link
        assert col.stats.connects == 1 and col.stats.state == "connected"
        assert col.stats.keepalives >= 10
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    finally:
        await emu.stop()
    assert sum(len(chunk.records) for chunk in drain.chunks) == sum(emu.sent.values())


async def test_a_fast_trickle_is_read_in_gathered_reads_and_nothing_is_lost(registry, tmp_path):
    """A block every 2 ms, each its own write: reads come less than half of `read_coalesce`
    apart, so after each read that drains the socket reading pauses for `read_coalesce`, and the
    frames come a few dozen to a read, each once and in order."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.002, txs_per_block=0)
    await emu.start()
    journal = Journal(tmp_path)
    journal.open()
    try:
        config = blockdb_config(emu.url, BLOCKS, read_coalesce=0.05)
        col, buffer = collector(registry, config, KEY, journal=journal, policy=FlushPolicy(max_age=0.05))
        drain = Drain(buffer)
        await run_until(col, lambda: buffer.received.get("blockdb_blocks", 0) >= 150, "150 blocks")
        await drain.close()
    finally:
        await emu.stop()
        journal.close()
    rows = [
        (record, position, chunk.received_at)
        for chunk in drain.chunks
        for record, position in zip(
            chunk.records, chunk.positions or [chunk.position] * len(chunk.records), strict=True
        )
    ]
    assert len(rows) == emu.sent[(1, "0101")] >= 150
    numbers = [msgspec.json.decode(record)["block_number"] for record, _, _ in rows]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # each block once, in order
    positions = [position for _, position, _ in rows]
    assert positions == sorted(positions)
    reads = len({received_at for _, _, received_at in rows})
    assert reads < len(rows) / 4  # ~25 blocks a read; one a read without the pauses


def test_reads_are_paced_only_while_pauses_gather_frames():
    from ingest.driver import _ReadPacer

    pacer = _ReadPacer(None, -1, 0.01)
    # A slow stream (reads 10 ms apart or more) is never paused: a pause would cost a wake-up.
    assert [pacer.pace(t, 1) for t in (1.0, 1.010, 1.030, 1.5)] == [False] * 4
    # Reads 2 ms apart: pace; and keep pacing while each pause gathers more than one frame.
    assert pacer.pace(1.502, 3) is True
    assert [pacer.pace(t, 8) for t in (1.513, 1.524, 1.535)] == [True] * 3
    # A pause that gathered one frame: the stream has slowed, stop pacing.
    assert pacer.pace(1.546, 1) is False
    assert pacer.pace(1.600, 1) is False


async def test_no_read_pacer_when_coalescing_is_off_or_the_transport_is_out_of_reach():
    from ingest.driver import _ReadPacer

    assert _ReadPacer.of(object(), 0.01) is None  # type: ignore[arg-type]
    ws = type("WS", (), {"_response": type("R", (), {"connection": None})()})()
    assert _ReadPacer.of(ws, 0.01) is None


class _Message:
    def __init__(self, kind, data=b""):
        self.type, self.data = kind, data


class _Reader:
    """aiohttp's WebSocketDataQueue as the driver sees it: `_buffer` of (message, size), `read()`."""

    def __init__(self, messages):
        self._buffer = deque((m, len(m.data)) for m in messages)

    async def read(self):
        return self._buffer.popleft()[0]


class _WS:
    def __init__(self, messages):
        self._reader = _Reader(messages)


async def test_queued_data_frames_are_taken_up_to_a_control_frame_or_the_limit():
    from aiohttp import WSMsgType

    from ingest.driver import _parsed_queue, _queued_data_reader

    text, ping = WSMsgType.TEXT, WSMsgType.PING
    ws = _WS([_Message(text, b"a"), _Message(WSMsgType.BINARY, b"b"), _Message(ping), _Message(text, b"c")])
    queued = _parsed_queue(ws)
    take = _queued_data_reader(ws, queued)
    frames = [b"first"]
    await take(frames, 100)
    assert frames == [b"first", b"a", b"b"] and queued[0][0].type is ping  # the ping is left for receive()
    queued.popleft()
    await take(frames, 4)
    assert frames == [b"first", b"a", b"b", b"c"] and not queued
    ws = _WS([_Message(text, b"x")] * 5)
    frames = []
    await _queued_data_reader(ws, _parsed_queue(ws))(frames, 3)
    assert len(frames) == 3 and len(ws._reader._buffer) == 2  # the limit: the rest is the next batch

    class Unexpected:  # another aiohttp: the queue holds something else, or there is none
        _reader = type("R", (), {"_buffer": deque([b"raw"]), "read": _Reader.read})()

    frames = []
    await _queued_data_reader(Unexpected, _parsed_queue(Unexpected))(frames, 10)
    assert frames == [] and len(Unexpected._reader._buffer) == 1
    assert _queued_data_reader(object(), ()) is None


async def _tick(buffer: Buffer) -> None:
    """The daemon's flush tick: seals the flushes the journal held back until the next frame."""
    while True:
        await asyncio.sleep(0.02)
        buffer.flush_due()


async def test_a_send_on_a_socket_the_server_closed_is_a_disconnect_not_a_crash(registry, tmp_path):
    """Frames and a ping wait in aiohttp's queue while the reader waits for buffer room, and the
    server goes away meanwhile. The pong then fails on the closed transport: that is a lost
    connection like any other (reconnect, a gap on record), not an error that ends the collector
    (and with it the daemon), and every frame that had arrived is journaled and buffered."""
    from aiohttp import web

    sessions: list[int] = []
    first_gone = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        sessions.append(len(sessions))
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        sub = msgspec.json.decode((await ws.receive()).data)
        await ws.send_bytes(msgspec.json.encode({**sub, "status": "success"}))
        if len(sessions) == 1:
            for number in range(100):
                data = {"block_number": number, "pad": "x" * 400}
                frame = {"chain_id": 1, "dataset_id": "0101", "is_reorg": False, "data": data}
                await ws.send_bytes(msgspec.json.encode(frame))
            await ws.ping(b"are you there")
            await asyncio.sleep(0.1)
            assert request.transport is not None
            request.transport.close()  # gone without a close frame, as after a crash or a pong timeout
            first_gone.set()
        else:
            await ws.receive()  # until the client leaves
        return ws

    app = web.Application()
    app.router.add_get("/v1/evm/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    journal = Journal(tmp_path)
    journal.open()
    try:
        policy = FlushPolicy(max_rows=50, max_bytes=10_000, max_age=0.05, max_pending_bytes=3_000)
        config = blockdb_config(f"ws://127.0.0.1:{port}/v1/evm/", BLOCKS, idle_timeout=30)
        col, buffer = collector(registry, config, KEY, policy=policy, journal=journal)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.congested, what="congestion")
        await asyncio.wait_for(first_gone.wait(), 5)
        await asyncio.sleep(0.1)  # the client sees the EOF while its reader still waits
        assert col.stats.keepalives == 0  # the ping is still queued, unanswered
        drain = Drain(buffer)
        ticker = asyncio.create_task(_tick(buffer))
        await eventually(lambda: col.stats.connects == 2, timeout=3, what="a reconnect")
        await eventually(lambda: buffer.received.get("blockdb_blocks", 0) == 100, what="every block")
        assert not task.done() and col.stats.keepalives == 1
        await col.stop()
        await asyncio.wait_for(task, 5)
        ticker.cancel()
        await drain.close()
    finally:
        journal.close()
        await runner.cleanup()
    assert col.stats.state == "stopped" and col.stats.reconnects == 1
    assert drain.rows["blockdb_blocks"] == 100
    (gap,) = drain.values["gaps"]
    assert (gap["subscription"], gap["kind"]) == ("blocks", "disconnected")
    journaled = [r for seg in segment_files(tmp_path) for r in read_records(seg) if r.kind is Kind.FRAME]
    assert sum(b'"block_number"' in r.payload for r in journaled) == 100


async def _stalled(
    registry: Registry, emu: BlockDBEmulator, idle_timeout: float, **kwargs: Any
) -> tuple[Collector, Buffer, asyncio.Task[None]]:
    """A collector whose buffer is full and not drained: its reader waits for room."""
    policy = FlushPolicy(max_rows=50, max_bytes=10_000, max_age=0.05, max_pending_bytes=20_000)
    config = blockdb_config(emu.url, ALL, idle_timeout=idle_timeout)
    col, buffer = collector(registry, config, KEY, policy=policy, **kwargs)
    task = asyncio.create_task(col.run())
    await eventually(lambda: buffer.congested, what="congestion")
    return col, buffer, task


async def test_a_reader_paused_by_backpressure_is_not_taken_for_a_dead_link(registry):
    """The writer is slow for longer than idle_timeout while the server keeps sending (and
    pinging): no reconnect, no gap, and every frame sent arrives."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.005, txs_per_block=2, max_blocks=300, ping_interval=0.1)
    await emu.start()
    try:
        col, buffer, task = await _stalled(registry, emu, idle_timeout=0.3)
        await asyncio.sleep(1.0)  # more than three idle timeouts without a read
        await _release_and_expect_every_row(col, task, buffer, emu, blocks=300)
    finally:
        await emu.stop()


async def _release_and_expect_every_row(col, task, buffer, emu, *, blocks: int) -> None:
    """A collector still on its first connection after a pause for buffer room: the buffer is
    drained, and every row the emulator sends (`blocks` blocks) arrives, with no gap."""
    assert col.stats.connects == 1 and buffer.congested
    drain = Drain(buffer)
    await eventually(lambda: emu.blocks_produced >= blocks, timeout=10, what="all blocks")
    await eventually(lambda: sum(buffer.received.values()) >= sum(emu.sent.values()), what="every row")
    await col.stop()
    await asyncio.wait_for(task, 5)
    await drain.close()
    assert col.stats.connects == 1 and col.stats.last_error == ""
    assert sum(drain.rows.values()) == sum(emu.sent.values())
    assert "gaps" not in drain.values


async def test_client_pings_do_not_end_a_connection_paused_by_backpressure(registry):
    """aiohttp's heartbeat pinged after ping_interval without a socket read and closed the socket
    when no pong came within half of it: during a pause for buffer room its full queue stops the
    socket's reads, so the pong is never read; the socket was closed, the frames aiohttp held were
    dropped, and the gap began only when reading resumed. The watchdog's pings count the pause as
    life, as its idle timeout does: nothing is lost."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.002, txs_per_block=3, max_blocks=600)
    await emu.start()
    try:
        policy = FlushPolicy(max_rows=50, max_bytes=10_000, max_age=0.05, max_pending_bytes=20_000)
        config = blockdb_config(emu.url, ALL, ping_interval=0.1, idle_timeout=5.0)
        col, buffer = collector(registry, config, KEY, policy=policy)
        task = asyncio.create_task(col.run())
        await eventually(lambda: buffer.congested, what="congestion")
        await asyncio.sleep(1.0)  # ten ping intervals without a read
        await _release_and_expect_every_row(col, task, buffer, emu, blocks=600)
    finally:
        await emu.stop()


async def test_a_ping_nothing_answers_gives_a_quiet_link_up_before_the_idle_timeout(registry, emulator):
    """As aiohttp's heartbeat did: a ping after ping_interval of silence, and the link given up
    when nothing answers it within half of ping_interval, long before idle_timeout."""
    col, buffer = collector(
        registry, blockdb_config(emulator.url, BLOCKS, ping_interval=0.2, idle_timeout=30), KEY
    )
    task = asyncio.create_task(col.run())
    await eventually(lambda: buffer.received.get("blockdb_blocks", 0) >= 2, what="blocks")
    emulator.go_silent(3.0)
    await eventually(lambda: col.stats.connects == 2, timeout=2, what="reconnect after an unanswered ping")
    assert "no pong within 0.1 s" in col.stats.last_error
    await col.stop()
    await asyncio.wait_for(task, 10)


async def test_a_dead_link_is_still_detected_once_a_paused_reader_resumes(registry):
    """Silence is counted from when reading resumes: a link that died during the pause is given
    up idle_timeout after it, not at once and not never."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.005, txs_per_block=2, ping_interval=0.1)
    await emu.start()
    try:
        col, buffer, task = await _stalled(registry, emu, idle_timeout=0.4)
        emu.go_silent(10.0)
        await asyncio.sleep(0.8)
        assert col.stats.connects == 1
        resumed = time.monotonic()
        drain = Drain(buffer)  # the reader resumes; the link has been silent since before the pause
        await eventually(lambda: col.stats.connects == 2, timeout=5, what="a reconnect after the silence")
        # Not at once: the silence counts from the resume (a bound that load can only lengthen).
        assert time.monotonic() - resumed >= 0.4
        assert "no frame" in col.stats.last_error
        await col.stop()
        await asyncio.wait_for(task, 5)
        await drain.close()
    finally:
        await emu.stop()


async def test_stop_during_a_backpressure_pause_ends_the_collector(registry):
    emu = BlockDBEmulator(key=KEY, block_interval=0.005, txs_per_block=2, ping_interval=0.1)
    await emu.start()
    try:
        col, _, task = await _stalled(registry, emu, idle_timeout=0.3, close_timeout=0.3)
        await asyncio.sleep(0.5)
        await col.stop()
        await asyncio.wait_for(task, 2)
    finally:
        await emu.stop()
    assert col.stats.state == "stopped" and col.stats.connects == 1


class _Gate:
    """The shared buffer as one quiet collector sees it while another provider's flood fills it:
    congested until the test opens it."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.room = asyncio.Event()
        self.room.set()

    def add(self, rows: Any) -> None:
        self.buffer.add(rows)

    def reject(self, rejected: Any) -> None:
        self.buffer.reject(rejected)

    def gap(self, gap: Any, detected_at: int) -> None:
        self.buffer.gap(gap, detected_at)

    @property
    def congested(self) -> bool:
        return not self.room.is_set()

    async def wait_for_room(self) -> None:
        await self.room.wait()


async def test_server_pings_are_answered_while_the_reader_waits_for_buffer_room(registry):
    """CoinAPI pings every minute and drops a peer that does not pong. A quiet collector paused
    because another provider filled the buffer read nothing, so its pings, parsed and queued by
    aiohttp, went unanswered and the server dropped it: a reconnect and a gap for a stall not
    its own. The watchdog answers them meanwhile, each once."""
    async with CoinAPIEmulator(key=KEY, tick_interval=0.05, ping_interval=0.3, pong_timeout=1.5) as emu:
        subs = [{"name": "trades", "data_types": ["trade"], "symbols": ["COINBASE_"]}]
        col, buffer = collector(registry, provider_config("coinapi", emu.url, subs, idle_timeout=2.0), KEY)
        gate = col._sink = _Gate(buffer)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        try:
            await eventually(lambda: col.stats.subscriptions["trades"] == "active", what="trades active")
            gate.room.clear()
            await eventually(lambda: col._reading_since is None, what="the reader paused")
            await asyncio.sleep(3.0)  # two pong timeouts
            gate.room.set()
            await asyncio.sleep(0.5)
            assert col.stats.connects == 1 and emu.connections_total == 1 and not col.stats.last_error
        finally:
            await col.stop()
            await asyncio.wait_for(task, 10)
            await drain.close()
    assert "gaps" not in drain.values
    assert col._answered == []  # every ping answered while paused was read later, not answered twice


@pytest.mark.parametrize("stalled", [False, True])
async def test_a_connection_lost_during_a_backpressure_pause_is_a_gap_from_the_pause(registry, stalled):
    """The server cut the connection while the reader waited for buffer room: the close is read
    only once reading resumes (after what was queued before it), so the gap began then, and the
    time from the cut to the resume, when the server sent nothing, was on no gap. It starts when
    the pause began now: the cut came at some point after it. With `stalled`, the socket itself
    is full (aiohttp stops reading it), so even the cut is seen only after the backlog."""
    emu = BlockDBEmulator(key=KEY, block_interval=0.002 if stalled else 0.05, txs_per_block=3)
    await emu.start()
    try:
        col, buffer = collector(registry, blockdb_config(emu.url, BLOCKS, idle_timeout=5.0), KEY)
        gate = col._sink = _Gate(buffer)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions["blocks"] == "active", what="blocks active")
        await asyncio.sleep(0.3)
        gate.room.clear()
        await eventually(lambda: col._reading_since is None, what="the reader paused")
        paused_at = time.time_ns()
        await asyncio.sleep(0.5)
        cut_at = time.time_ns()
        await emu.drop_connections()
        await asyncio.sleep(1.0)
        gate.room.set()
        await eventually(lambda: col.stats.connects == 2, what="a reconnect")
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    finally:
        await emu.stop()
    (gap,) = drain.values["gaps"]
    assert gap["kind"] == "disconnected"
    assert paused_at - 0.2e9 < gap["started_at"] <= cut_at
