"""Writer: a table per flush to every sink, bad records to quarantine, failing sinks retried."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import threading
import time

import duckdb

from ingest.arrow_batch import build_table, table_bytes
from ingest.buffer import NEAR_FULL, Buffer
from ingest.config import FlushPolicy
from ingest.events import Rejected, Rows
from ingest.metrics import Metrics
from ingest.sinks.duckdb import DuckDBSink
from ingest.sinks.parquet import ParquetSink
from ingest.views import connect_for_query
from ingest.writer import Writer
from tests.helpers import eventually


def block(n: int) -> Rows:
    record = {
        "block_number": n,
        "block_hash": f"h{n}",
        "timestamp_utc": "2025-11-11T18:42:15.123Z",
        "_tracing_id": f"t{n}",
    }
    return Rows(
        "blockdb",
        "blockdb_blocks",
        "blocks",
        [json.dumps(record).encode()],
        1_763_000_000_000_000_000 + n,
        {"chain_id": 1},
    )


class FlakySink:
    """Fails its first `failures` writes, then records what it gets."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.rows: list[int] = []

    def open(self, datasets) -> None:
        pass

    def checkpoint(self, dataset) -> int:
        return 0

    def write(self, dataset, table, first, last) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise OSError("No space left on device")
        self.rows.extend(table.column("block_number").to_pylist())
        return []

    holding = False

    def commit_due_in(self):
        return None

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_good_rows_reach_both_sinks_and_bad_ones_the_quarantine(tmp_path, registry):
    buffer = Buffer(registry, FlushPolicy(max_rows=1000, max_age=60))
    sinks = [ParquetSink(str(tmp_path / "parquet"), "main"), DuckDBSink(tmp_path / "ingest.duckdb")]
    for sink in sinks:
        sink.open(registry.values())
    metrics = Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, sinks, metrics).run())
    for n in range(5):
        buffer.add(block(n))
    buffer.add(Rows("blockdb", "blockdb_blocks", "blocks", [b'{"block_number": "five"}'], 7, {"chain_id": 1}))
    buffer.reject(Rejected("blockdb", b"\xff\xfe not json", "unreadable frame: invalid utf-8", 8, "blocks"))
    buffer.close()
    await asyncio.wait_for(writer, 10)
    for sink in sinks:
        sink.close()

    for path, root in ((tmp_path / "ingest.duckdb", None), (None, str(tmp_path / "parquet"))):
        con, _ = connect_for_query(registry, path, root)
        assert con.sql("SELECT block_number FROM blockdb_blocks ORDER BY 1").fetchall() == [
            (n,) for n in range(5)
        ]
        quarantined = con.sql(
            "SELECT provider, subscription, target_dataset, reason, raw FROM quarantine ORDER BY reason"
        ).fetchall()
        assert [(q[0], q[1], q[2]) for q in quarantined] == [
            ("blockdb", "blocks", "blockdb_blocks"),
            ("blockdb", "blocks", None),
        ]
        assert "block_number" in quarantined[0][3] and quarantined[1][3].startswith("unreadable frame")
        assert quarantined[0][4] == b'{"block_number": "five"}' and quarantined[1][4] == b"\xff\xfe not json"
    assert metrics.dataset("blockdb_blocks").rows_written == 5
    assert sum(metrics.quarantined.values()) == 2


async def test_a_failing_sink_is_retried_and_keeps_order_and_every_row(registry):
    buffer = Buffer(registry, FlushPolicy(max_rows=3, max_age=60))
    flaky = FlakySink(failures=3)
    metrics = Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, [flaky], metrics, retry_max=0.05).run())
    for n in range(9):
        buffer.add(block(n))
    buffer.close()
    await asyncio.wait_for(writer, 10)
    assert flaky.rows == list(range(9))
    assert metrics.sink_errors == 3
    assert metrics.sink_failures == {}  # well again once a write went through


async def test_a_sink_that_keeps_failing_is_shown_failing_until_it_recovers(registry):
    """/health and the live view read `sink_failures`: since when, how many tries, the last error."""
    buffer = Buffer(registry, FlushPolicy(max_rows=3, max_age=60))
    flaky = FlakySink(failures=1000)
    metrics = Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, [flaky], metrics, retry_max=0.02).run())
    before = time.monotonic()
    for n in range(3):
        buffer.add(block(n))
    await eventually(lambda: metrics.sink_errors >= 3, 5, "failures")
    failure = metrics.sink_failures["flaky"]
    assert before <= failure.since <= time.monotonic() and failure.attempts == metrics.sink_errors
    assert failure.error == "OSError: No space left on device"
    flaky.failures = 0  # the disk has room again
    buffer.close()
    await asyncio.wait_for(writer, 10)
    assert flaky.rows == [0, 1, 2] and metrics.sink_failures == {}


async def test_flushes_stored_at_the_first_try_leave_no_garbage_in_reference_cycles(registry):
    """The daemon collects cycles only on a clock (tuning.collect_cycles): garbage in cycles at
    every flush would pile up in between (tenacity's retrying state did, ~40 objects a write)."""
    buffer = Buffer(registry, FlushPolicy(max_rows=2, max_age=60))
    sink = FlakySink(failures=0)
    writer = asyncio.create_task(Writer(registry, buffer, [sink], Metrics()).run())
    buffer.add(block(0))
    buffer.add(block(1))
    await eventually(lambda: sink.rows == [0, 1], 5, "the first flush")  # its thread and tasks made
    gc.collect()
    gc.disable()
    try:
        for n in range(2, 102, 2):
            buffer.add(block(n))
            buffer.add(block(n + 1))
            await eventually(lambda: len(sink.rows) == n + 2, 5, "the flush")  # noqa: B023
        garbage = gc.collect()
    finally:
        gc.enable()
    buffer.close()
    await asyncio.wait_for(writer, 10)
    assert sink.rows == list(range(102))
    assert garbage == 0


async def test_outstanding_bytes_hold_while_a_sink_fails(registry):
    """Until the failing sink succeeds, the flush's bytes still count: readers stay paused."""
    buffer = Buffer(registry, FlushPolicy(max_rows=2, max_bytes=100, max_age=60, max_pending_bytes=150))
    flaky = FlakySink(failures=1000)
    writer = asyncio.create_task(Writer(registry, buffer, [flaky], Metrics(), retry_max=0.01).run())
    for n in range(4):
        buffer.add(block(n))
    await asyncio.sleep(0.2)
    assert buffer.congested and flaky.rows == []
    flaky.failures = 0
    await asyncio.wait_for(buffer.wait_for_room(), 5)
    buffer.close()
    await asyncio.wait_for(writer, 10)
    assert flaky.rows == [0, 1, 2, 3]


class ThreadNotingSink(FlakySink):
    """Notes the thread of every write and commit."""

    def __init__(self, name: str) -> None:
        super().__init__(failures=0)
        self.name = name
        self.threads: list[str] = []
        self.os_names: set[str] = set()

    def write(self, dataset, table, first, last) -> list[str]:
        self.threads.append(threading.current_thread().name)
        self.os_names.add(os_thread_name())
        return super().write(dataset, table, first, last)


def os_thread_name() -> str:
    """The calling thread's name as the OS shows it (top -H); "" where there is no /proc."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


async def test_the_build_and_each_sink_keep_one_thread_of_their_own(registry, monkeypatch):
    """So each stage's large allocations reuse one heap (glibc's are per thread) flush after flush."""
    import ingest.writer as writer_module

    build_threads: list[str] = []
    build_os_names: set[str] = set()
    real_build = writer_module._build_table

    def noting_build(dataset, chunks):
        build_threads.append(threading.current_thread().name)
        build_os_names.add(os_thread_name())
        return real_build(dataset, chunks)

    monkeypatch.setattr(writer_module, "_build_table", noting_build)
    buffer = Buffer(registry, FlushPolicy(max_rows=2, max_age=60))
    sinks = [ThreadNotingSink("a"), ThreadNotingSink("b")]
    writer = Writer(registry, buffer, sinks, Metrics())
    task = asyncio.create_task(writer.run())
    for n in range(12):
        buffer.add(block(n))
        await asyncio.sleep(0)
    buffer.close()
    await asyncio.wait_for(task, 10)
    assert sinks[0].rows == sinks[1].rows == list(range(12))
    assert len(build_threads) == len(sinks[0].threads) == len(sinks[1].threads) == 6
    stages = [set(build_threads), set(sinks[0].threads), set(sinks[1].threads)]
    assert all(len(threads) == 1 for threads in stages)  # one thread per stage, every flush
    assert len(set.union(*stages)) == 3  # and no two stages share one
    assert threading.main_thread().name not in set.union(*stages)
    assert not writer._threads  # shut down with the writer
    if os.path.exists("/proc/self/task"):  # and the OS knows each by its stage (top -H, profile --threads)
        assert (build_os_names, sinks[0].os_names, sinks[1].os_names) == (
            {"ingest-build"},
            {"ingest-a"},
            {"ingest-b"},
        )


def positioned(n: int) -> Rows:
    rows = block(n)
    rows.position = n
    return rows


async def until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_rows_duckdb_holds_keep_their_journal_frames_until_it_commits(tmp_path, registry):
    """Parquet has every flush at once; DuckDB commits a larger batch later, and until then the
    flushes stay in flight: the journal keeps their frames and they do not count as written."""
    buffer = Buffer(registry, FlushPolicy(max_rows=2, max_age=60))
    parquet = ParquetSink(str(tmp_path / "parquet"), "main")
    db = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=5, commit_seconds=60)
    for sink in (parquet, db):
        sink.open(registry.values())
    metrics = Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, [parquet, db], metrics).run())
    for n in range(1, 5):
        buffer.add(positioned(n))
    buffer.flush_due()  # the daemon's tick: a full flush is sealed once its last frame is all in
    await until(lambda: metrics.files_written == 2)  # two flushes of two rows, each its own file
    assert len(metrics.recent_files) == 2 and all(map(os.path.exists, metrics.recent_files))
    assert db.holding and db.checkpoint("blockdb_blocks") == 0
    assert buffer.low_water(next_position=100) == 1  # frame 1 on are still needed
    assert metrics.dataset("blockdb_blocks").rows_written == 0  # not durable in both sinks yet

    buffer.add(positioned(5))
    buffer.add(positioned(6))  # the third flush takes DuckDB to 6 held rows: it commits
    buffer.flush_due()
    await until(lambda: metrics.dataset("blockdb_blocks").rows_written == 6)
    assert not db.holding and db.checkpoint("blockdb_blocks") == 6
    assert buffer.low_water(next_position=100) == 100
    buffer.close()
    await asyncio.wait_for(writer, 10)
    db.close()
    rows = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True).sql(
        "SELECT block_number FROM blockdb_blocks ORDER BY 1"
    )
    assert rows.fetchall() == [(n,) for n in range(1, 7)]


def _duckdb_holding_two_rows(tmp_path, registry, budget):
    """A writer to DuckDB alone, which holds commits for a minute, given a flush of two rows; the
    memory budget is `budget(bytes DuckDB holds of that flush)`."""
    table = build_table(registry["blockdb_blocks"], [positioned(1), positioned(2)]).table
    held = table_bytes(table.drop_columns(["_raw"]))  # what DuckDB holds of it
    buffer = Buffer(registry, FlushPolicy(max_rows=2, max_age=60, max_pending_bytes=budget(held)))
    db = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=1000, commit_seconds=60)
    db.open(registry.values())
    metrics = Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, [db], metrics).run())
    buffer.add(positioned(1))
    buffer.add(positioned(2))
    buffer.flush_due()
    return buffer, db, metrics, writer, held


async def test_held_rows_are_committed_once_the_memory_budget_is_nearly_taken(tmp_path, registry):
    """DuckDB would hold these rows for a minute, but they take most of max_pending_bytes: they
    are committed now, before the readers have to stop for memory only a commit frees."""
    buffer, db, metrics, writer, _ = _duckdb_holding_two_rows(
        tmp_path, registry, lambda held: int(held / (NEAR_FULL + 0.05))
    )
    await until(lambda: metrics.dataset("blockdb_blocks").rows_written == 2, timeout=5)
    assert db.checkpoint("blockdb_blocks") == 2 and not db.holding
    assert buffer.outstanding_bytes == 0 and not buffer.near_full
    buffer.close()
    await asyncio.wait_for(writer, 10)
    db.close()


async def test_held_rows_are_committed_when_other_records_fill_the_memory_budget(tmp_path, registry):
    """DuckDB holds a flush for a minute and its lane is idle; records still buffered for another
    flush then take the memory past near full: the lane is told, and commits without waiting."""
    buffer, db, metrics, writer, held = _duckdb_holding_two_rows(tmp_path, registry, lambda held: 4 * held)
    await until(lambda: db.holding and buffer.outstanding_bytes <= held)
    await asyncio.sleep(0.2)
    assert db.holding and metrics.dataset("blockdb_blocks").rows_written == 0  # held, not due
    big = block(3)
    big.records = [big.records[0][:-1] + b', "pad": "' + b"x" * (3 * held) + b'"}']
    buffer.add(big)  # one row of the next flush, not sealed: only its bytes count
    assert buffer.near_full
    await until(lambda: metrics.dataset("blockdb_blocks").rows_written == 2, timeout=5)
    assert db.checkpoint("blockdb_blocks") == 2 and not db.holding
    buffer.close()
    await asyncio.wait_for(writer, 10)
    db.close()
    rows = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True).sql(
        "SELECT block_number FROM blockdb_blocks ORDER BY 1"
    )
    assert rows.fetchall() == [(1,), (2,), (3,)]


async def test_once_every_sink_has_a_flush_only_what_sinks_hold_counts_against_memory(tmp_path, registry):
    """Parquet is done with the table and DuckDB holds it without `_raw`: the buffer counts the
    bytes DuckDB keeps, not the whole table, so readers are not held back by memory already freed."""
    buffer = Buffer(registry, FlushPolicy(max_rows=2, max_age=60))
    parquet = ParquetSink(str(tmp_path / "parquet"), "main")
    db = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=1000, commit_seconds=60)
    for sink in (parquet, db):
        sink.open(registry.values())
    metrics = Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, [parquet, db], metrics).run())
    buffer.add(positioned(1))
    buffer.add(positioned(2))
    buffer.flush_due()
    await until(lambda: metrics.files_written == 1 and db.holding)
    table = build_table(registry["blockdb_blocks"], [positioned(1), positioned(2)]).table
    await until(lambda: buffer.outstanding_bytes == db.held_bytes)
    assert db.held_bytes == table_bytes(table.drop_columns(["_raw"])) < table_bytes(table)
    buffer.close()
    await asyncio.wait_for(writer, 10)  # the end commits what DuckDB holds: nothing counts any more
    assert buffer.outstanding_bytes == 0 and not db.holding
    assert metrics.dataset("blockdb_blocks").rows_written == 2
    db.close()


async def test_held_rows_are_committed_when_they_are_old_enough_and_at_the_end(tmp_path, registry):
    buffer = Buffer(registry, FlushPolicy(max_rows=2, max_age=60))
    db = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=1000, commit_seconds=0.2)
    db.open(registry.values())
    metrics = Metrics()
    writer = asyncio.create_task(Writer(registry, buffer, [db], metrics).run())
    buffer.add(positioned(1))
    buffer.add(positioned(2))
    buffer.flush_due()
    await until(lambda: metrics.dataset("blockdb_blocks").rows_written == 2)  # by age, no more data
    assert db.checkpoint("blockdb_blocks") == 2
    buffer.add(positioned(3))
    buffer.close()  # the last, partial batch is committed before run() returns
    await asyncio.wait_for(writer, 10)
    assert db.checkpoint("blockdb_blocks") == 3 and not db.holding
    assert metrics.dataset("blockdb_blocks").rows_written == 3
    db.close()


async def test_a_flush_never_spans_two_days_so_a_crash_between_files_loses_nothing(tmp_path, registry):
    """Parquet partitions by the day rows were received and names a file by its flush's journal
    positions: a flush over midnight written as two files, cut by a crash after the first, left a
    name claiming the whole flush and the second day's rows never reached Parquet. The buffer cuts
    at midnight instead, so each file holds the positions its name says."""
    midnight = 1_763_078_400 * 10**9  # 2025-11-14 00:00 UTC
    frames = []
    for i, received_at in enumerate((midnight - 2, midnight - 1, midnight, midnight + 1)):
        rows = block(i)
        frames.append(
            Rows(rows.provider, rows.dataset, rows.subscription, rows.records, received_at, rows.context)
        )
        frames[-1].position = 11 + i
    root = str(tmp_path / "parquet")
    sink = ParquetSink(root, "main")
    sink.open(registry.values())
    written, crashed = [], threading.Event()
    real_write_file = sink._write_file

    def write_file_then_crash(*args):
        if written:  # the process dies before a second file: nothing more is written
            crashed.set()
            raise RuntimeError("killed")
        written.append(real_write_file(*args))
        return written[-1]

    sink._write_file = write_file_then_crash
    buffer = Buffer(registry, FlushPolicy(max_rows=1000, max_age=60))
    for rows in frames:
        buffer.add(rows)
    buffer.close()
    writer = asyncio.create_task(Writer(registry, buffer, [sink], Metrics()).run())
    while not crashed.is_set():
        await asyncio.sleep(0.01)
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    (path,) = written
    assert "date=2025-11-13" in path and path.endswith(
        "main-00000000000000000011-00000000000000000012.parquet"
    )
    restarted = ParquetSink(root, "main")
    restarted.open(registry.values())
    assert restarted.checkpoint("blockdb_blocks") == 12  # a replay hands it positions 13 and 14


class RecordingSink(FlakySink):
    """Records each dataset's rows (block numbers, or journal positions), holding frames up to
    `stored` already (as after a crash, when the journal is replayed)."""

    def __init__(self, stored: int) -> None:
        super().__init__(failures=0)
        self.stored = stored
        self.by_dataset: dict[str, list[int]] = {}

    def checkpoint(self, dataset) -> int:
        return self.stored

    def write(self, dataset, table, first, last) -> list[str]:
        column = "block_number" if "block_number" in table.column_names else "position"
        self.by_dataset.setdefault(dataset.name, []).extend(table.column(column).to_pylist())
        return []


async def test_a_flush_built_a_part_at_a_time_stores_each_row_once_in_order(registry, monkeypatch):
    """Parts are built while their flush fills (while the builder is idle); the flush's table is
    theirs and its rest's, in order, with a bad record of a part quarantined, and frames a sink
    already holds not even decoded."""
    import ingest.writer as writer_module

    built: list[int] = []  # records handed to each build
    real_build = writer_module._build_table

    def noting_build(dataset, chunks):
        built.append(len(chunks))
        return real_build(dataset, chunks)

    monkeypatch.setattr(writer_module, "_build_table", noting_build)
    buffer = Buffer(registry, FlushPolicy(max_rows=8192, max_age=60))  # parts of 2,048 records
    sink = RecordingSink(stored=1000)
    writer = asyncio.create_task(Writer(registry, buffer, [sink], Metrics()).run())
    await asyncio.sleep(0)  # the writer takes parts from now on
    for n in range(1, 10_001):
        if n == 3000:
            rows = Rows(
                "blockdb",
                "blockdb_blocks",
                "blocks",
                [b'{"block_number": "x"}'],
                1_763_000_000_000_000_000 + n,
                {"chain_id": 1},
            )
            rows.position = n
        else:
            rows = positioned(n)
        buffer.add(rows)
        if n % 256 == 0:
            await asyncio.sleep(0.002)  # frames come over time: the builder is idle between
    buffer.close()
    await asyncio.wait_for(writer, 30)
    assert sink.by_dataset["blockdb_blocks"] == [n for n in range(1001, 10_001) if n != 3000]
    assert sink.by_dataset["quarantine"] == [3000]
    assert len(built) > 2 and max(built) <= 2048 + 2048  # parts, not two whole flushes
    assert sum(built) == 9000  # frames 1..1000, which the sink holds, were not decoded


async def test_no_part_is_built_while_the_builder_is_busy(registry, monkeypatch):
    """At full speed the builder is always busy and a seal waits for it anyway: parts would only
    add their per-row work and memory, so a busy builder declines them and the flush is built whole."""
    import ingest.writer as writer_module

    built: list[int] = []
    release = threading.Event()
    real_build = writer_module._build_table

    def slow_first_build(dataset, chunks):
        built.append(len(chunks))
        if len(built) == 1:
            release.wait(10)
        return real_build(dataset, chunks)

    monkeypatch.setattr(writer_module, "_build_table", slow_first_build)
    buffer = Buffer(registry, FlushPolicy(max_rows=8192, max_age=60))
    sink = RecordingSink(stored=0)
    writer = asyncio.create_task(Writer(registry, buffer, [sink], Metrics()).run())
    await asyncio.sleep(0)  # the writer takes parts from now on
    for n in range(1, 8193):
        buffer.add(positioned(n))
        if n % 256 == 0:
            await asyncio.sleep(0.002)
    assert built == [2048]  # the first part; every later offer met a busy builder
    release.set()
    buffer.close()
    await asyncio.wait_for(writer, 30)
    assert built == [2048, 8192 - 2048] and sink.by_dataset["blockdb_blocks"] == list(range(1, 8193))


async def test_rows_and_journal_positions_stay_together_across_parts(registry):
    """After a crash, each sink gets only what it lacks, by each row's journal position: a flush
    joined from parts must keep every row's position beside it (two sinks, two checkpoints)."""
    buffer = Buffer(registry, FlushPolicy(max_rows=8192, max_age=60))
    behind, ahead = RecordingSink(stored=1500), RecordingSink(stored=5000)
    ahead.name = "ahead"
    writer = Writer(registry, buffer, [behind, ahead], Metrics())
    offers: list[object] = []
    build_part = writer._build_part

    def noting(name: str, chunks: list[Rows]) -> object:
        offers.append(build_part(name, chunks))
        return offers[-1]

    writer._build_part = noting  # type: ignore[method-assign]
    task = asyncio.create_task(writer.run())
    await asyncio.sleep(0)
    for n in range(1, 8193):
        buffer.add(positioned(n))
        if n % 256 == 0:
            await asyncio.sleep(0.002)
    buffer.close()
    await asyncio.wait_for(task, 30)
    assert sum(part is not None for part in offers) >= 2  # the flush was built in parts
    assert behind.by_dataset["blockdb_blocks"] == list(range(1501, 8193))
    assert ahead.by_dataset["blockdb_blocks"] == list(range(5001, 8193))


async def test_a_writer_cancelled_during_a_sink_write_ends(registry):
    """The daemon cancels the writer when another task fails: the write in progress is not retried
    as if the sink had failed, and the writer ends."""

    class SlowSink(FlakySink):
        def write(self, dataset, table, first, last) -> list[str]:
            time.sleep(0.3)
            return super().write(dataset, table, first, last)

    buffer = Buffer(registry, FlushPolicy(max_rows=100, max_age=60))
    metrics = Metrics()
    task = asyncio.create_task(
        Writer(registry, buffer, [SlowSink(failures=0)], metrics, retry_max=0.05).run()
    )
    await asyncio.sleep(0)
    for n in range(1, 101):
        buffer.add(block(n))
    await asyncio.sleep(0.1)  # the sink is writing
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:  # it went on as if the sink had failed: let it end before the test fails
        buffer.close()
        await asyncio.wait({task}, timeout=5)
    assert done and task.cancelled() and metrics.sink_errors == 0
