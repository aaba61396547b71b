"""BlockDB protocol on the shared driver against the emulator on 127.0.0.1: plan refusals and liveness."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from ingest.config import parse_config
from ingest.driver import Collector
from ingest.emulators.blockdb import BlockDBEmulator
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
        # aiohttp's heartbeat: the missing pong, not the idle timer ("no frame for ...").
        assert "ServerTimeoutError" in col.stats.last_error
