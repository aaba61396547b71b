"""BlockDB protocol on the shared driver against the emulator on 127.0.0.1: plan refusals and liveness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ingest.auth import build_target
from ingest.buffer import Buffer
from ingest.config import FlushPolicy, parse_config
from ingest.driver import Collector
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.metrics import ProviderStats
from ingest.protocols.blockdb import BlockDBProtocol
from tests.helpers import Drain, blockdb_config, collector, eventually

KEY = "blockdb-collector-key-7"
SUBS = [
    {"name": "blocks", "chain_id": 1, "dataset_id": "0101"},
    {"name": "transfers", "chain_id": 1, "dataset_id": "0304"},
]


async def test_forbidden_dataset_fails_only_its_subscription(registry):
    """A plan without 0304: that subscription is reported failed with the plan it needs, while 0101
    keeps delivering on the same connection and the collector never stops or reconnects."""
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=3, plan=["0101"]) as emu:
        col, buffer = collector(registry, blockdb_config(emu.url, SUBS), KEY)
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(
            lambda: col.stats.subscriptions.get("transfers", "").startswith("failed"), what="refusal"
        )
        first = buffer.received.get("blockdb_blocks", 0)
        await eventually(
            lambda: buffer.received.get("blockdb_blocks", 0) >= first + 5, what="blocks after refusal"
        )
        assert not task.done()
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
        refused = col.stats.subscriptions["transfers"]
        assert "FORBIDDEN" in refused and "required plan: pro" in refused
        assert col.stats.subscriptions["blocks"] == "active"
        assert col.stats.state == "stopped" and col.stats.connects == 1
        assert drain.rows["blockdb_blocks"] == emu.sent[(1, "0101")] >= 5
        assert "blockdb_transfers" not in drain.rows and emu.sent[(1, "0304")] == 0


def test_config_defaults_give_blockdb_client_pings(tmp_path: Path):
    """A config that names no ping_interval gets the protocol's (doc 2.5: the server's is undocumented)."""
    doc = {"providers": {"blockdb": {"url": "emulator", "subscriptions": [SUBS[0]]}}}
    (provider,) = parse_config(doc, base=tmp_path).providers
    assert provider.ping_interval == BlockDBProtocol.default_ping_interval > 0
    assert provider.idle_timeout == BlockDBProtocol.default_idle_timeout


def _scaled(idle: float) -> float:
    """The default ping interval, scaled to a test-sized idle timeout."""
    return idle * BlockDBProtocol.default_ping_interval / BlockDBProtocol.default_idle_timeout


@contextlib.asynccontextmanager
async def quiet_link(registry, idle: float) -> AsyncIterator[tuple[BlockDBEmulator, Collector]]:
    """A collector subscribed to a stream that sends nothing (no block, no server ping) and a
    server that tolerates the idle subscriber; pings at the default ratio to `idle`. Stopped after."""
    async with BlockDBEmulator(key=KEY, block_interval=3600, ping_interval=0, idle_timeout=60) as emu:
        config = blockdb_config(emu.url, SUBS[:1], idle_timeout=idle, ping_interval=_scaled(idle))
        col, _ = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions.get("blocks") == "active", what="subscribed")
        yield emu, col
        await col.stop()
        await asyncio.wait_for(task, 10)


async def test_quiet_stream_without_server_pings_stays_connected(registry):
    """No data and no server pings (their period is undocumented): the client's own pings, at the
    default ratio to the idle timeout, keep a healthy quiet link from being taken for dead."""
    idle = 0.6
    async with quiet_link(registry, idle) as (_, col):
        frames, keepalives = col.stats.frames, col.stats.keepalives
        await asyncio.sleep(idle * 4)
        assert col.stats.connects == 1 and col.stats.last_error == ""
        assert col.stats.frames == frames  # nothing but liveness arrived
        assert col.stats.keepalives - keepalives >= 4  # the pongs to our pings


async def test_dead_link_is_detected_within_the_idle_timeout(registry):
    """A half-open link (nothing crosses it, pongs included) is cut once a ping goes unanswered."""
    idle = 2.0
    async with quiet_link(registry, idle) as (emu, col):
        loop = asyncio.get_running_loop()
        emu.go_silent(10.0)
        started = loop.time()
        await eventually(lambda: col.stats.last_error != "", timeout=5, what="the dead link noticed")
        assert loop.time() - started < idle
        # The watchdog's ping: the missing pong, not the idle timer ("no frame for ...").
        assert "no pong within" in col.stats.last_error


async def test_a_rate_limited_subscription_goes_again_when_the_server_said_not_at_the_next_tick(registry):
    """RATE_LIMIT_EXCEEDED with retry_after_seconds ~1 (doc 2.4): the subscribe goes again once
    that has passed (the watchdog wakes for it), not at the next keep-alive tick 20 s on, during
    which the stream's rows would be lost (nothing is buffered while unsubscribed, doc 2.6)."""
    subs = [*SUBS[:1], {"name": "txs", "chain_id": 1, "dataset_id": "0102"}]
    async with BlockDBEmulator(key=KEY, block_interval=0.1, txs_per_block=2, subscribe_limit=(1, 1.0)) as emu:
        config = blockdb_config(emu.url, subs)
        assert config.keepalive_interval == 20.0
        col, buffer = collector(registry, config, KEY)
        drain = Drain(buffer)
        started = time.monotonic()
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions.get("txs") == "active", timeout=15, what="txs")
        waited = time.monotonic() - started
        await eventually(lambda: drain.rows["blockdb_transactions"] > 0, what="txs rows")
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    assert emu.rate_limited == 1  # asked again once, and not before the server's wait
    assert 1.0 <= waited < 3.0
    assert col.stats.connects == 1


class _StuckDue(BlockDBProtocol):
    """Says something is due (`due`) that keepalive() never acts on; counts the keepalive() calls."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls = 0
        self.due: int | None = None

    def next_due(self) -> int | None:
        return self.due

    def keepalive(self) -> None:
        self.calls += 1
        super().keepalive()


async def test_a_due_time_the_protocol_does_not_act_on_runs_keepalive_once(registry):
    """The watchdog calls keepalive() once per due time: one left in the past cannot spin it."""
    async with BlockDBEmulator(key=KEY, block_interval=0.1) as emu:
        config = blockdb_config(emu.url, SUBS[:1])
        protocol = _StuckDue(config.name, list(config.subscriptions))
        buffer = Buffer(registry, FlushPolicy(max_rows=100, max_age=0.05))
        target = build_target(config.url, config.auth, KEY)
        col = Collector(config, protocol, target, buffer, ProviderStats(config.name))
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.subscriptions.get("blocks") == "active", what="subscribed")
        protocol.due = time.time_ns() - 10**9
        await asyncio.sleep(2.5)
        assert protocol.calls == 1  # the 20 s periodic call has not come either
        protocol.due = time.time_ns() + 3 * 10**8  # a new one: run once it has come
        await eventually(lambda: protocol.calls == 2, timeout=2, what="the new due time")
        await asyncio.sleep(1.5)
        assert protocol.calls == 2
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
