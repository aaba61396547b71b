"""The live view and summary render what the metrics hold."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from pathlib import Path

import duckdb
from rich.console import Console
from structlog.testing import capture_logs

from ingest import summary
from ingest.app import RunResult
from ingest.arrow_batch import build_table
from ingest.buffer import Buffer
from ingest.config import Config, FlushPolicy, parse_config
from ingest.events import Rows
from ingest.live import LiveView, progress_logger
from ingest.log import forget_secret, register_secret
from ingest.metrics import Metrics, SinkFailure
from ingest.sinks.duckdb import DuckDBSink

from .test_arrow_batch import TRANSFER, rows


def test_live_view_shows_each_dataset_and_provider(registry):
    metrics = Metrics()
    buffer = Buffer(registry, FlushPolicy(max_age=60))
    for i in range(7):
        buffer.add(Rows("blockdb", "blockdb_blocks", "s", [b"{}"], i))
    metrics.dataset("blockdb_blocks").rows_written = 5
    metrics.dataset("blockdb_blocks").last_event_time = 1_762_886_535_123_000_000
    p = metrics.provider("blockdb")
    p.state, p.connects, p.display_url = "connected", 3, "wss://h/?api_key=***"
    p.subscriptions = {"a": "active", "b": "failed: x", "c": "silent"}
    console = Console(record=True, width=200)
    console.print(LiveView(metrics, buffer, console).render())
    text = console.export_text()
    assert "blockdb_blocks" in text and "2025-11-11 18:42:15" in text
    cells = [c.strip() for c in next(ln for ln in text.splitlines() if "blockdb_blocks" in ln).split("│")]
    assert cells[1:7] == [
        "blockdb_blocks",
        "0",
        "7",
        "5",
        "7",
        "0",
    ]  # rows/s, rows, written, buffered, reorgs
    provider = [c.strip() for c in next(ln for ln in text.splitlines() if "connected" in ln).split("│")]
    assert provider[1:7] == ["blockdb", "connected", "wss://h/?api_key=***", "0", "2", "1/3 active, 1 silent"]
    assert "failing" not in text

    metrics.sink_failures["duckdb"] = SinkFailure(time.monotonic() - 42.2, "IOException: [Errno 28] full", 5)
    console = Console(record=True, width=200)
    console.print(LiveView(metrics, buffer, console).render())
    text = console.export_text()
    assert "duckdb writes failing for 42 s (5 tries), retried: IOException: [Errno 28] full" in text


def transfers_config(tmp_path: Path) -> Config:
    """One BlockDB transfers subscription, its store in tmp_path (DuckDB only)."""
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path), "parquet": False},
            "providers": {
                "blockdb": {
                    "url": "wss://api.blockdb.io/v1/evm/",
                    "auth": {"env": "BLOCKDB_API_KEY"},
                    "subscriptions": [{"chain_id": 1, "dataset_id": "0304"}],
                }
            },
        },
        base=tmp_path,
    )


def test_the_end_of_run_summary_reads_the_store_back_within_a_memory_limit(registry, tmp_path, monkeypatch):
    """The summary scans every table: at DuckDB's default limit (80% of RAM) those scans filled its
    cache, and after a long run were the daemon's peak RSS. It still counts every row."""
    config = transfers_config(tmp_path)
    ds = registry["blockdb_transfers"]
    sink = DuckDBSink(config.storage.duckdb_path)
    sink.open(registry.values())
    table = build_table(ds, rows(*({**TRANSFER, "tx_index": i} for i in range(3)))).table
    sink.write(ds, table, 1, 3)
    sink.commit()
    sink.close()
    limits = []
    status_table = summary.status_table

    def spy(con, registry, source):
        limits.append(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])
        return status_table(con, registry, source)

    monkeypatch.setattr(summary, "status_table", spy)
    out = io.StringIO()
    metrics = Metrics()
    metrics.provider("blockdb").subscriptions = {"1:0304": "active"}
    result = RunResult(metrics, {ds.name: 3})
    summary.print_summary(result, config, registry, Console(file=out, width=200))
    assert limits == ["128.0 MiB"] and "not delivering" not in out.getvalue()
    register_secret("bdb-key-7f3a")  # a server that quotes the key in its refusal: masked here too
    failed = "failed: [FORBIDDEN] for bdb-key-7f3a"
    metrics.provider("blockdb").subscriptions.update({"1:0101": "silent", "1:0701": failed})
    out = io.StringIO()
    summary.print_summary(result, config, registry, Console(file=out, width=200))
    forget_secret("bdb-key-7f3a")
    assert (
        "subscriptions not delivering: blockdb/1:0101 (silent); blockdb/1:0701 (failed: [FORBIDDEN] for ***)"
        in (out.getvalue())
    )
    stored = [line.split("│") for line in out.getvalue().splitlines() if "2025-11-11" in line]
    assert [(cells[1].strip(), cells[2].strip()) for cells in stored] == [("blockdb_transfers", "3")]


def test_after_a_journal_replay_the_summary_does_not_call_a_mismatch_a_loss(registry, tmp_path):
    """The rows a start-up replay re-derived count as stored this run: beside what the emulator
    sent this run they differ, which is no loss (each sink skipped what it held)."""
    config = transfers_config(tmp_path)

    def printed(replayed: int) -> str:
        metrics = Metrics()
        metrics.provider("blockdb")
        metrics.rows_by_provider["blockdb"] = 120
        metrics.replayed_frames = replayed
        out = io.StringIO()
        result = RunResult(metrics, {"blockdb_transfers": 120}, {"blockdb": 100})
        summary.print_summary(result, config, registry, Console(file=out, width=200))
        return out.getvalue()

    assert "100 records != stored" in printed(0)
    after = printed(20)
    assert "!= stored" not in after and "100 records (stored counts the replay too)" in after
    assert "include 20 frames replayed from the journal" in after


def test_status_counts_each_derived_row_once(registry):
    """Quarantine and gap rows written again by a journal replay share an id and count once."""
    con = duckdb.connect()
    for ds in registry.values():
        con.execute(ds.create_table_sql())
    for reason, row_id in [("malformed: x", "q1"), ("malformed: x", "q1"), ("unknown_type: y", "q2")]:
        con.execute(
            "INSERT INTO quarantine (provider, reason, received_at, raw, id) "
            "VALUES ('coinapi', ?, now(), 'x', ?)",
            [reason, row_id],
        )
    for kind, gap_id in [("disconnected", "g1"), ("disconnected", "g1"), ("sequence", "g2")]:
        con.execute(
            "INSERT INTO gaps (provider, kind, started_at, ended_at, id) "
            "VALUES ('coinapi', ?, TIMESTAMP '2026-01-01 10:00:00', TIMESTAMP '2026-01-01 10:00:02', ?)",
            [kind, gap_id],
        )
    out = io.StringIO()
    Console(file=out, width=300).print(summary.status_table(con, registry, "test"))
    text = out.getvalue()
    assert "quarantined frames: coinapi malformed: 1, coinapi unknown_type: 1" in text
    assert "gaps: coinapi disconnected: 1 (2.0 s), coinapi sequence: 1 (2.0 s)" in text


async def test_the_first_progress_line_already_gives_a_rate(registry):
    """Without a baseline taken at the start, the first line said 0 rows/s, and a run shorter
    than two intervals never said anything else."""
    buffer = Buffer(registry, FlushPolicy(max_rows=10**6, max_age=60))
    with capture_logs() as logs:
        task = asyncio.create_task(progress_logger(Metrics(), buffer, every=0.2))
        await asyncio.sleep(0)  # it starts: the baseline, before any row
        for i in range(50):
            buffer.add(Rows("blockdb", "blockdb_blocks", "s", [b"{}"], i))
        # Until its first line, however late a loaded machine runs it (a fixed sleep was a race).
        async with asyncio.timeout(10):
            while not any(e["event"] == "progress" for e in logs):
                await asyncio.sleep(0.02)
        task.cancel()
    (line,) = [e for e in logs if e["event"] == "progress"]
    assert line["rows"] == {"blockdb_blocks": 50} and line["rows_per_s"] > 0


async def test_live_view_counts_rows_being_written_as_buffered_so_rows_add_up(registry):
    """Rows the writer had taken but not yet committed to every sink (DuckDB commits every
    duckdb_commit_seconds, 5 s) showed neither as written nor as buffered: mid-run, half a
    dataset's rows seemed to be nowhere (rows 1,395, written 681, buffered 14)."""
    metrics = Metrics()
    buffer = Buffer(registry, FlushPolicy(max_age=60))
    for i in range(7):
        buffer.add(Rows("blockdb", "blockdb_blocks", "s", [b"{}"], i + 1))
    buffer.flush_all()
    flush = await buffer.next_flush()  # the writer has it: built, written, waiting for the commit
    buffer.add(Rows("blockdb", "blockdb_blocks", "s", [b"{}"], 8))

    def cells() -> list[str]:
        console = Console(record=True, width=200)
        console.print(LiveView(metrics, buffer, console).render())
        line = next(ln for ln in console.export_text().splitlines() if "blockdb_blocks" in ln)
        return [c.strip() for c in line.split("│")][3:6]  # rows, written, buffered

    assert cells() == ["8", "0", "8"]
    buffer.done(flush)  # committed in every sink
    metrics.dataset("blockdb_blocks").rows_written = 7
    assert cells() == ["8", "7", "1"]


async def test_the_live_views_last_frame_shows_the_run_as_it_ended(registry):
    """The view is cancelled once the daemon has drained; its last frame, up to 0.5 s older, stayed
    on screen above the summary with rows still 'buffered' that the summary had as written."""
    metrics = Metrics()
    buffer = Buffer(registry, FlushPolicy(max_age=60))
    buffer.add(Rows("blockdb", "blockdb_blocks", "s", [b"{}"], 1))
    console = Console(record=True, width=200, file=io.StringIO())
    task = asyncio.create_task(LiveView(metrics, buffer, console).run())
    await asyncio.sleep(0.05)
    buffer.flush_all()
    buffer.done(await buffer.next_flush())
    metrics.dataset("blockdb_blocks").rows_written = 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    last = console.export_text().rstrip().splitlines()
    row = next(ln for ln in reversed(last) if "blockdb_blocks" in ln)
    assert [c.strip() for c in row.split("│")][3:6] == ["1", "1", "0"]
