"""Time the daemon was not running is a `down` gap: after a clean stop, after kill -9, in coverage."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import duckdb
import pytest

from ingest.downtime import BEAT_SECONDS, Closed, Downtime, Hole
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.schema import load_registry
from ingest.views import connect_for_query
from tests import test_reconciliation as daemon_runs
from tests.helpers import Drain, blockdb_config, collector, eventually
from tests.test_recovery import KEY, config, spawn

SUBS = ("1:0101", "1:0102", "1:0304")  # the subscriptions of tests.test_recovery.config
SECOND = 1_000_000_000


def logged(capsys) -> str:
    """The log lines so far, wherever the log goes (stdout until a run configures it, then stderr)."""
    captured = capsys.readouterr()
    return captured.out + captured.err


# -- the state file ------------------------------------------------------------------------------


def test_the_state_keeps_each_providers_hole_for_what_is_still_configured(tmp_path):
    state = Downtime(tmp_path / "state" / "main.json")
    assert state.read({"blockdb": ("a",)}) == {}  # the first run: nothing was received before it
    closed = Closed("disconnected", 5, 7, ("a", "b"))
    state.write({"blockdb": Hole(10, ("a", "b"), closed), "gone": Hole(10, ("x",))}, now=10)
    # A provider no longer configured is left out, a subscription no longer configured too; the
    # hole the last run closed stays as it was (its gaps are history).
    assert state.read({"blockdb": ("a", "c")}) == {"blockdb": Hole(10, ("a",), closed)}


def test_an_unreadable_state_takes_its_time_as_the_end_of_the_last_run(tmp_path):
    """Not no gap at all: every configured subscription, since the file was last written."""
    path = tmp_path / "main.json"
    path.write_bytes(b'{"written_at": 1, "provid')
    os.utime(path, ns=(123 * SECOND, 123 * SECOND))
    holes = Downtime(path).read({"blockdb": ("a", "b"), "coinapi": ()})
    assert holes == {"blockdb": Hole(123 * SECOND, ("a", "b"))}
    # Readable, but with times no run writes: a hole from 1970 would be a gap of fifty years.
    after_the_write = Closed("down", 60, 300 * SECOND, ("a",))  # a closed hole ending after the file's time
    for since, closed in (
        (-5, None),
        (200 * SECOND, None),
        (50, Closed("down", 60, 40, ("a",))),
        (50, after_the_write),
    ):
        Downtime(path).write({"blockdb": Hole(since, ("a", "b"), closed)}, now=100 * SECOND)
        os.utime(path, ns=(123 * SECOND, 123 * SECOND))
        assert Downtime(path).read({"blockdb": ("a", "b")}) == {"blockdb": Hole(123 * SECOND, ("a", "b"))}


async def test_a_state_that_cannot_be_written_or_read_is_logged_not_fatal(tmp_path, capsys):
    """Logged once while it fails (not every beat), and once when it works again."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    state = Downtime(blocker / "main.json")
    calls = []
    beat = asyncio.create_task(state.keep(lambda now: calls.append(now) or {}, time.time_ns))
    await eventually(lambda: len(calls) >= 2, timeout=10, what="two beats")
    assert not beat.done()  # the failed writes were logged and the beat goes on
    assert logged(capsys).count("state file not written") == 1
    blocker.unlink()  # the disk has room again
    log: list[str] = []
    await eventually(
        lambda: log.append(logged(capsys)) or "state file written again" in "".join(log),
        timeout=10,
        what="the state written again",
    )
    beat.cancel()
    assert (blocker / "main.json").exists()
    assert Downtime(tmp_path).read({"blockdb": ("a",)}) == {}  # a directory: not readable
    assert "state file not read" in logged(capsys)


async def test_a_state_that_cannot_be_saved_does_not_fail_the_run(tmp_path, monkeypatch, capsys):
    """The file bounds a gap; the data matter more: a full disk at a beat or at the stop is logged."""
    async with BlockDBEmulator(key=daemon_runs.KEY, block_interval=0.01, txs_per_block=2) as emu:

        async def break_state(_daemon: object) -> None:  # stopped by its duration
            state = tmp_path / "data" / "state"
            await eventually(lambda: (state / "main.json").exists(), what="the first state")
            shutil.rmtree(state)
            state.write_text("a file where the state directory should be")

        blocks = [{"chain_id": 1, "dataset_id": "0101"}]
        providers = {"blockdb": {**daemon_runs.blockdb(emu.url), "subscriptions": blocks}}
        daemon = await daemon_runs.run(tmp_path, monkeypatch, providers, 2.5, during=break_state)
    assert daemon.collectors[0].stats.frames > 0
    assert logged(capsys).count("state file not written") == 1  # once, not at every beat


# -- the collector -------------------------------------------------------------------------------


async def test_a_resumed_collector_records_the_downtime_at_its_first_connect(registry):
    """The last run's hole becomes `down` gaps for the subscriptions it had (not one added since),
    the hole it closed last is recorded again, and the state is saved before the new gaps exist."""
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=2) as emu:
        subs = [{"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0304"}]
        saved: list[tuple[Hole | None, int]] = []
        col, buffer = collector(
            registry,
            blockdb_config(emu.url, subs),
            KEY,
            on_connect=lambda: saved.append((col.hole(time.time_ns()), len(drain_values()))),
        )
        drain = Drain(buffer)

        def drain_values() -> list[dict]:
            return [*drain.values.get("gaps", []), *buffer_gaps()]

        def buffer_gaps() -> list[dict]:
            pending = buffer._pending.get("gaps")  # not flushed yet
            return list(pending.values) if pending is not None else []

        since = time.time_ns() - 60 * SECOND
        closed = Closed("disconnected", since - 9 * SECOND, since - 8 * SECOND, ("1:0101", "1:0304"))
        col.resume(Hole(since, ("1:0101",), closed))
        before = time.time_ns()
        task = asyncio.create_task(col.run())
        await eventually(lambda: col.stats.frames > 3, what="frames")
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
    gaps = [(g["kind"], g["subscription"], g["started_at"], g["ended_at"]) for g in drain.values["gaps"]]
    down_end = gaps[-1][3]
    assert gaps == [
        ("disconnected", "1:0101", since - 9 * SECOND, since - 8 * SECOND),
        ("disconnected", "1:0304", since - 9 * SECOND, since - 8 * SECOND),
        ("down", "1:0101", since, down_end),
    ]
    assert before < down_end < time.time_ns()
    # Saved at the connect, before the down gap was recorded (only the two above existed), and
    # holding it: the connect's time, every subscription, the hole it closed.
    ((hole, gaps_then),) = saved
    assert gaps_then == 2
    assert hole == Hole(hole.since, ("1:0101", "1:0304"), Closed("down", since, down_end, ("1:0101",)))
    assert hole.since >= down_end
    # Stopped: not received since the socket closed.
    after = col.hole(time.time_ns())
    assert after is not None and down_end < after.since < time.time_ns()


# -- the daemon, crashed and stopped -------------------------------------------------------------


def _gaps(tmp_path: Path) -> list[tuple]:
    db = duckdb.connect(str(tmp_path / "data" / "ingest.duckdb"), read_only=True)
    try:
        return db.execute(
            "SELECT DISTINCT kind, subscription, epoch_ns(started_at), epoch_ns(ended_at) FROM gaps "
            "ORDER BY 3, 2"
        ).fetchall()
    finally:
        db.close()


async def test_downtime_between_runs_is_one_gap_per_subscription_after_a_crash_or_a_stop(tmp_path):
    """Three runs killed (-9) and one stopped (SIGTERM) before the last: each pause between two
    runs is one `down` gap per subscription, starting within a beat of the end of the run before
    (never after it) and ending before the next run received anything; coverage counts them."""
    emulator = BlockDBEmulator(key=KEY, block_interval=0.01, txs_per_block=5)
    url = await emulator.start()
    cfg = config(tmp_path, url)
    pauses: list[tuple[int, int, int]] = []  # (the run's connect seen, its end, the next start)
    try:
        for i in range(5):
            start = time.time_ns()
            if pauses:
                pauses[-1] = (*pauses[-1][:2], start)
            proc = spawn(cfg)
            connections = emulator.connections_total
            await eventually(lambda c=connections: emulator.connections_total > c, timeout=60, what="run")
            connected = time.time_ns()
            # Killed before the first beat, then long after it: the beat, not the connect, bounds it.
            await asyncio.sleep((0.5, 5.0, 0.5, 2.0, 1.0)[i])
            if i < 3:
                proc.kill()
                await asyncio.to_thread(proc.wait, 30)
            else:
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.to_thread(proc.communicate, timeout=60)
                assert proc.returncode == 0, err.decode()[-2000:]
            pauses.append((connected, time.time_ns(), 0))
            await eventually(lambda: not emulator.connections, what="the connection to close")
            await asyncio.sleep(0.3)  # the daemon is down
    finally:
        await emulator.stop()
    pauses.pop()  # the last run's end has no next start
    everything = _gaps(tmp_path)
    # The blocks made while the daemon was down are block gaps; nothing was lost within a run.
    assert {g[0] for g in everything} == {"down", "block"}
    gaps = [g for g in everything if g[0] == "down"]
    by_start: dict[int, list[tuple]] = {}
    for gap in gaps:
        by_start.setdefault(gap[2], []).append(gap)
    assert len(by_start) == len(pauses) == 4
    for (connected, ended, next_start), started_at in zip(pauses, sorted(by_start), strict=True):
        assert sorted(g[1] for g in by_start[started_at]) == list(SUBS)
        assert connected - SECOND < started_at < ended  # within the run before, never after its end
        assert ended - started_at < (BEAT_SECONDS + 0.7) * SECOND  # bounded by the beat
        (ended_at,) = {g[3] for g in by_start[started_at]}
        assert next_start < ended_at
    con, _ = connect_for_query(load_registry(), tmp_path / "data" / "ingest.duckdb", None)

    for i, ((_, _, next_start), started_at) in enumerate(zip(pauses, sorted(by_start), strict=True)):
        ended_at = by_start[started_at][0][3]
        # The next run received nothing before its down gap ended.
        first_after = con.execute(
            "SELECT min(epoch_ns(_received_at)) FROM blockdb_blocks WHERE epoch_ns(_received_at) > ?",
            [next_start],
        ).fetchall()[0][0]
        assert ended_at < first_after
        if i == 3:  # after a clean stop the gap starts when the socket closed: after the last row
            last_before = con.execute(
                "SELECT max(epoch_ns(_received_at)) FROM blockdb_blocks WHERE epoch_ns(_received_at) < ?",
                [next_start],
            ).fetchall()[0][0]
            assert last_before < started_at
    missing = con.execute("SELECT sum(seconds_missing) FROM coverage").fetchall()[0][0]
    assert missing == pytest.approx(sum(g[3] - g[2] for g in gaps) / SECOND)
