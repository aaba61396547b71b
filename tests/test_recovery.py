"""Nothing lost, nothing doubled: journal replay after crashes, per-sink idempotence, offline replay.

What the daemon "received" is what its journal holds after a kill (read from disk before the
restart), plus, for the last run that stops cleanly, everything the emulator sent it. The store
must hold each of those messages exactly once, in DuckDB and in Parquet.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

import ingest.app
from ingest.app import Daemon
from ingest.buffer import Buffer
from ingest.config import FlushPolicy, load_config
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.errors import Fatal
from ingest.events import Rows
from ingest.journal import Journal, Kind, Record
from ingest.metrics import Metrics
from ingest.protocols.blockdb import DATASETS, GENERIC_DATASET
from ingest.reorgs import recent_blocks_sql
from ingest.replay import journal_records
from ingest.sinks.duckdb import DuckDBSink
from ingest.sinks.parquet import ParquetSink
from ingest.views import connect_for_query
from ingest.writer import Writer
from tests.helpers import eventually

KEY = "recovery-key-1234567"
TABLES = ("blockdb_blocks", "blockdb_transactions", "blockdb_transfers")


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "ingest.toml"
    subs = "".join(
        f'\n[[providers.blockdb.subscriptions]]\nchain_id = 1\ndataset_id = "{d}"\n'
        for d in ("0101", "0102", "0304")
    )
    path.write_text(f"""
[storage]
data_dir = "{tmp_path / "data"}"

[flush]
max_rows = 2000
max_age_seconds = 0.1

[providers.blockdb]
url = "{url}"
auth = {{ env = "BLOCKDB_API_KEY" }}
{subs}""")
    return path


def spawn(cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "BLOCKDB_API_KEY": KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", "run", "--config", str(cfg), "--no-live", "--log-format", "json"],
        cwd=cfg.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def journaled(journal_dir: Path) -> dict[int, tuple[str, str]]:
    """position -> (dataset, tracing id) of every update the journal on disk holds."""
    out = {}
    for record in journal_records([journal_dir]):
        if record.kind is Kind.FRAME and b'"data"' in record.payload:
            msg = json.loads(record.payload)
            out[record.position] = (
                DATASETS.get(msg["dataset_id"], GENERIC_DATASET),
                msg["data"]["_tracing_id"],
            )
    return out


def stored(tmp_path: Path) -> tuple[Counter, Counter]:
    sql = " UNION ALL ".join(f"SELECT _dataset, _tracing_id FROM {t}" for t in TABLES)
    db = duckdb.connect(str(tmp_path / "data" / "ingest.duckdb"), read_only=True)
    in_db = Counter(db.execute(sql).fetchall())
    db.close()
    from ingest.schema import load_registry

    con, _ = connect_for_query(load_registry(), None, str(tmp_path / "data" / "parquet"))
    return in_db, Counter(con.execute(sql).fetchall())


@pytest.mark.timeout(300)  # 21 daemon starts: ~100 s here, longer beside other work
async def test_kill_9_at_twenty_random_moments_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(2026)
    emulator = BlockDBEmulator(
        key=KEY, block_interval=0.01, txs_per_block=40, reorg_every=13, record_log=True
    )
    url = await emulator.start()
    cfg = config(tmp_path, url)
    journal_dir = tmp_path / "data" / "journal" / "main"
    received: dict[int, tuple[str, str]] = {}
    try:
        for _ in range(20):
            proc = spawn(cfg)
            connections = emulator.connections_total
            await eventually(
                lambda c=connections: emulator.connections_total > c, timeout=60, what="the daemon"
            )
            await asyncio.sleep(rng.uniform(0.1, 1.5))
            proc.kill()  # SIGKILL: no flush, no goodbye
            await asyncio.to_thread(proc.wait, 30)
            received.update(journaled(journal_dir))  # what it had received, from its own journal
            await eventually(lambda: not emulator.connections, what="the dead connection to close")
        mark = len(emulator.sent_log)
        proc = spawn(cfg)
        connections = emulator.connections_total
        await eventually(
            lambda c=connections: emulator.connections_total > c, timeout=60, what="the last run"
        )
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        last_run = [(DATASETS.get(d, GENERIC_DATASET), t) for _, d, t, _ in emulator.sent_log[mark:]]
    finally:
        await emulator.stop()
    expected = Counter(received.values()) + Counter(last_run)
    assert sum(expected.values()) >= 20_000  # enough to cross flushes, segments and reorgs on any machine
    in_db, in_parquet = stored(tmp_path)
    assert in_db == expected  # every message received, exactly once
    assert in_parquet == expected
    assert list(journal_dir.glob("*.seg")) == []  # a clean stop leaves nothing to replay


def transfer_rows(n: int, start: int = 1) -> list[Rows]:
    return [
        Rows(
            "blockdb",
            "blockdb_transfers",
            "t",
            [json.dumps({"block_number": i, "tx_index": 0, "log_index": i, "_tracing_id": f"t{i}"}).encode()],
            1_763_000_000_000_000_000 + i,
            {"chain_id": 1},
            position=i,
        )
        for i in range(start, start + n)
    ]


def open_sinks(registry, tmp_path: Path, **duckdb: Any) -> list:
    sinks = [
        ParquetSink(str(tmp_path / "parquet"), "main"),
        DuckDBSink(tmp_path / "db.duckdb", instance="main", **duckdb),
    ]
    for sink in sinks:
        sink.open(registry.values())
    return sinks


async def write_all(
    registry, tmp_path: Path, rows: list[Rows], *, max_rows: int = 7, seeded: bool = False
) -> None:
    """Rows through the writer into both sinks, then a clean stop; `seeded`: the reorg tracker
    starts from the blocks stored, as the daemon's does."""
    sinks = open_sinks(registry, tmp_path)
    buffer = Buffer(registry, FlushPolicy(max_rows=max_rows, max_age=60))
    writer = Writer(registry, buffer, sinks, Metrics())
    if seeded:
        writer.reorgs.seed(sinks[1].read(recent_blocks_sql("blockdb_blocks")))
    task = asyncio.create_task(writer.run())
    for r in rows:
        buffer.add(r)
    buffer.close()
    await asyncio.wait_for(task, 10)
    for sink in sinks:
        sink.close()


def counts(registry, tmp_path: Path) -> tuple[int, int]:
    sql = "SELECT count(*) FROM blockdb_transfers"
    db, _ = connect_for_query(registry, tmp_path / "db.duckdb", None)
    pq, _ = connect_for_query(registry, None, str(tmp_path / "parquet"))
    return db.execute(sql).fetchone()[0], pq.execute(sql).fetchone()[0]


async def test_replaying_what_the_sinks_hold_writes_nothing_again(registry, tmp_path):
    await write_all(registry, tmp_path, transfer_rows(20))
    await write_all(registry, tmp_path, transfer_rows(20))  # the same journal, replayed in full
    assert counts(registry, tmp_path) == (20, 20)
    await write_all(registry, tmp_path, transfer_rows(30))  # the replay plus ten new frames
    assert counts(registry, tmp_path) == (30, 30)


async def test_a_crash_between_the_parquet_file_and_the_duckdb_commit(registry, tmp_path):
    """Parquet got a flush DuckDB did not: the replay fills in DuckDB only."""
    await write_all(registry, tmp_path, transfer_rows(14))
    db = duckdb.connect(str(tmp_path / "db.duckdb"))
    db.execute("DELETE FROM blockdb_transfers WHERE _tracing_id IN ('t8','t9','t10','t11','t12','t13','t14')")
    db.execute("UPDATE _ingest_positions SET position = 7 WHERE dataset = 'blockdb_transfers'")
    db.close()
    assert counts(registry, tmp_path) == (7, 14)
    await write_all(registry, tmp_path, transfer_rows(14))
    assert counts(registry, tmp_path) == (14, 14)


async def test_replay_verb_ingests_journal_segments_and_captures(tmp_path):
    emulator = BlockDBEmulator(key=KEY, block_interval=0.01, txs_per_block=5, record_log=True)
    url = await emulator.start()
    try:
        cfg = config(tmp_path, url)
        proc = spawn(cfg)
        await eventually(lambda: emulator.blocks_produced >= 20, timeout=60, what="blocks")
        proc.kill()
        await asyncio.to_thread(proc.wait, 30)
    finally:
        await emulator.stop()
    journal_dir = tmp_path / "data" / "journal" / "main"
    frames = journaled(journal_dir)
    # Backfill into a second, empty store with the same config but other paths.
    other = tmp_path / "other"
    other.mkdir()
    cfg2 = other / "ingest.toml"
    cfg2.write_text(cfg.read_text().replace(str(tmp_path / "data"), str(other / "data")))
    run = subprocess.run(
        [sys.executable, "-m", "ingest", "replay", str(journal_dir), "--config", str(cfg2)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BLOCKDB_API_KEY": KEY},
    )
    assert run.returncode == 0, run.stderr
    assert (
        f"replayed {sum(1 for r in journal_records([journal_dir]) if r.kind is Kind.FRAME):,} frames"
        in run.stdout
    )
    assert stored(other)[0] == Counter(frames.values())
    # A capture of raw frames (one per line) needs to be told its provider.
    capture = other / "capture.jsonl"
    lines = [
        r.payload for r in journal_records([journal_dir]) if r.kind is Kind.FRAME and b'"data"' in r.payload
    ]
    capture.write_bytes(b"\n".join(lines[:5]) + b"\n")
    bad = subprocess.run(
        [sys.executable, "-m", "ingest", "replay", str(capture), "--config", str(cfg2)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--provider" in bad.stderr
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest",
            "replay",
            str(capture),
            "--provider",
            "blockdb",
            "--config",
            str(cfg2),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "replayed 5 frames into 5 rows" in ok.stdout


def blocks(bad_at: int | None = None) -> list[Rows]:
    """Four BlockDB blocks, journal positions 1-4: height 2 comes again with another hash (a
    reorg, closed by block 3 on top of it); `bad_at`: that one's number is no number (quarantined)."""
    chain = [(1, 1, "a", "0"), (2, 2, "b", "a"), (3, 2, "d", "a"), (4, 3, "c", "d")]
    return [
        Rows(
            "blockdb",
            "blockdb_blocks",
            "blocks",
            [
                json.dumps(
                    {
                        "block_number": "five" if position == bad_at else number,
                        "block_hash": block_hash * 64,
                        "parent_block_hash": parent * 64,
                        "timestamp_utc": "2025-11-11T18:42:15.123Z",
                        "_tracing_id": f"t{position}",
                    }
                ).encode()
            ],
            1_763_000_000_000_000_000 + position,
            {"chain_id": 1},
            position=position,
        )
        for position, number, block_hash, parent in chain
    ]


async def test_rows_derived_from_a_flush_survive_a_crash_right_after_it_was_stored(registry, tmp_path):
    """A record the schema refused, and the reorg its flush showed, are rows the writer derives
    while building it. A kill -9 right after the flush is stored in both sinks must not lose them:
    the replay skips frames every sink holds, so they are stored before it, never after."""
    frames = blocks(bad_at=1)  # quarantined: the reorg at height 2 is still seen
    crashed = open_sinks(registry, tmp_path, commit_rows=1)  # DuckDB commits at once
    buffer, metrics = Buffer(registry, FlushPolicy(max_rows=4, max_age=60)), Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, crashed, metrics).run())
    for rows in frames:
        buffer.add(rows)
    buffer.flush_due()
    await eventually(lambda: metrics.dataset("blockdb_blocks").rows_written == 3, what="the blocks stored")
    await eventually(lambda: crashed[1].checkpoint("blockdb_blocks") == 4, what="DuckDB's commit")
    writer.cancel()  # kill -9: nothing more is written, nothing is closed
    await asyncio.gather(writer, return_exceptions=True)
    crashed[1]._con.close()

    await write_all(registry, tmp_path, frames, max_rows=4, seeded=True)  # the restart: a replay
    for path, root in ((tmp_path / "db.duckdb", None), (None, str(tmp_path / "parquet"))):
        con, _ = connect_for_query(registry, path, root)
        assert con.execute("SELECT count(*) FROM blockdb_blocks").fetchone()[0] == 3
        quarantined = con.execute("SELECT position, target_dataset FROM quarantine").fetchall()
        assert quarantined == [(1, "blockdb_blocks")]
        assert con.execute("SELECT first_height, depth FROM reorgs").fetchall() == [(2, 1)]


async def test_the_replay_verb_sees_a_reorg_of_a_height_stored_before(tmp_path):
    """`replay` starts its reorg tracker from the store, as the daemon does: else the replaced
    hash, stored by an earlier run, is unknown to it and the reorg row is never derived."""
    cfg = load_config(config(tmp_path, "ws://127.0.0.1:9/"))

    def block(position: int, number: int, block_hash: str, parent: str) -> Record:
        data = {"block_number": number, "block_hash": block_hash * 64, "parent_block_hash": parent * 64,
                "timestamp_utc": "2025-11-11T18:42:15.123Z", "_tracing_id": f"t{position}"}  # fmt: skip
        frame = {"chain_id": 1, "dataset_id": "0101", "is_reorg": False, "data": data}
        return Record(
            position, 1_763_000_000_000_000_000 + position, Kind.FRAME, "blockdb", json.dumps(frame).encode()
        )

    await Daemon(cfg).ingest_offline([block(1, 1, "a", "0"), block(2, 2, "b", "a")])
    await Daemon(cfg).ingest_offline([block(3, 2, "d", "a"), block(4, 3, "c", "d")])
    data = tmp_path / "data"
    for path, root in ((data / "ingest.duckdb", None), (None, str(data / "parquet"))):
        con, _ = connect_for_query(Daemon(cfg).registry, path, root)
        assert con.execute("SELECT first_height, depth FROM reorgs").fetchall() == [(2, 1)]


async def test_a_start_that_fails_leaves_the_journal_to_the_next(tmp_path, monkeypatch):
    """A sink that cannot open stops the start; the journal's lock goes with it, so a second try in
    the same process (a test, a notebook) is refused for its own reason, not as a second daemon."""
    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    cfg = load_config(config(tmp_path, "ws://127.0.0.1:9/"))
    (tmp_path / "data" / "ingest.duckdb").mkdir(parents=True)  # DuckDB cannot open a directory
    for _ in range(2):
        with pytest.raises(Fatal, match=r"cannot open .* for writing"):
            await Daemon(cfg).run(duration=0.1)


async def test_no_journal_segment_goes_while_the_replay_has_not_read_it(tmp_path, monkeypatch):
    """The journal's sync task releases segments below the buffer's low water; during the
    start-up replay, the segments not read yet are in no buffer, so with the buffer empty (the
    replay waiting for room, or not started) the low water would let every one of them go."""
    async with BlockDBEmulator(key=KEY, block_interval=0.05, txs_per_block=2) as emulator:
        monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
        daemon = Daemon(load_config(config(tmp_path, emulator.url)))
        assert daemon.journal is not None
        # A crashed run's journal: 300 frames in many small segments, none of them stored.
        crashed = Journal(daemon.journal.directory, segment_bytes=4096, write_bytes=1024)
        crashed.open()
        for i in range(300):
            update = {"block_number": i, "tx_index": 0, "log_index": i, "_tracing_id": f"crashed-{i}"}
            frame = {"chain_id": 1, "dataset_id": "0304", "is_reorg": False, "data": update}
            crashed.append(Kind.FRAME, "blockdb", 1_763_000_000_000_000_000 + i, json.dumps(frame).encode())
        crashed.close()
        assert len(list(daemon.journal.directory.glob("*.seg"))) > 10

        replay, metrics_server = ingest.app.replay, daemon._metrics_server

        async def release_then(call: Any, *args: Any) -> Any:
            # What the sync task may do at any moment: the start-up before the replay is slow (a
            # metrics host that takes long to resolve), or the replay waits for room.
            daemon.journal.release(daemon._journal_low_water())
            return await call(*args)

        monkeypatch.setattr(daemon, "_metrics_server", lambda: release_then(metrics_server))
        monkeypatch.setattr(ingest.app, "replay", lambda *args: release_then(replay, *args))
        await daemon.run(duration=1.0)
    db = duckdb.connect(str(tmp_path / "data" / "ingest.duckdb"), read_only=True)
    sql = "SELECT count(DISTINCT _tracing_id) FROM blockdb_transfers WHERE _tracing_id LIKE 'crashed-%'"
    assert db.execute(sql).fetchone()[0] == 300
    db.close()


async def test_a_journal_whose_disk_fills_stops_the_daemon_with_everything_received_stored(
    tmp_path, monkeypatch
):
    """The journal's writes fail (ENOSPC) for good: the frames being read have no copy on disk,
    so the daemon stops as on a signal, stores what it buffered in both sinks, and says why
    (Fatal, not a traceback of its task group). It used to die at once, losing the buffer."""
    import errno

    import ingest.journal

    write_all = ingest.journal._write_all
    full = False

    def until_full(fd: int, pieces: list[bytes]) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, pieces)

    monkeypatch.setattr(ingest.journal, "_write_all", until_full)
    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    emulator = BlockDBEmulator(key=KEY, block_interval=0.01, txs_per_block=20, record_log=True)
    url = await emulator.start()
    try:
        daemon = Daemon(load_config(config(tmp_path, url)))
        task = asyncio.create_task(daemon.run(duration=30))
        await eventually(lambda: len(emulator.sent_log) > 500, what="frames")
        full = True
        with pytest.raises(Fatal, match=r"the journal .* could not be written .*No space left"):
            await asyncio.wait_for(task, 20)
        await eventually(lambda: not emulator.connections, what="the connection to close")
    finally:
        await emulator.stop()
    sent = Counter((DATASETS.get(d, GENERIC_DATASET), t) for _, d, t, _ in emulator.sent_log)
    in_db, in_parquet = stored(tmp_path)
    assert in_db == sent and in_parquet == sent
    assert list((tmp_path / "data" / "journal" / "main").glob("*.seg")) == []  # all of it stored
