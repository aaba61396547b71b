"""Both sinks get the same rows with the declared types; Parquet files are atomic and readable everywhere."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from ingest.arrow_batch import build_table, values_table
from ingest.buffer import QUARANTINE, Buffer
from ingest.config import FlushPolicy
from ingest.errors import Fatal
from ingest.events import Rows
from ingest.schema import Column, ColumnType, Dataset
from ingest.sinks import duckdb as duckdb_sink
from ingest.sinks.duckdb import RAW, ROW_GROUP_ROWS, DuckDBSink
from ingest.sinks.parquet import ParquetSink, dataset_glob
from ingest.views import connect_for_query

DAY = 86_400 * 10**9
T0 = 1_762_992_000 * 10**9  # 2025-11-13T00:00:00Z


def transfers(registry, n: int, start_ns: int = T0, step_ns: int = 10**9) -> pa.Table:
    chunks = [
        Rows(
            "blockdb",
            "blockdb_transfers",
            "eth_transfers",
            [
                json.dumps(
                    {
                        "block_number": 100 + i,
                        "tx_index": i,
                        "amount_raw": str(10**30 + i),
                        "block_time": "2025-11-13T00:00:00Z",
                        "_tracing_id": f"t{i}",
                    }
                ).encode()
            ],
            start_ns + i * step_ns,
            {"chain_id": 1},
        )
        for i in range(n)
    ]
    return build_table(registry["blockdb_transfers"], chunks).table


def repeated_transfers(registry, n: int) -> pa.Table:
    """n rows: the same 1000 transfers over and over (a whole row group or more, cheaply)."""
    return pa.concat_tables([transfers(registry, 1000)] * (n // 1000 + 1)).slice(0, n)


def row_group_sizes(con, table: str) -> list[int]:
    """Rows in each of a table's DuckDB row groups, in order."""
    sql = f"SELECT row_group_id, max(count) FROM pragma_storage_info('{table}') GROUP BY 1 ORDER BY 1"
    return [n for _, n in con.execute(sql).fetchall()]


def test_parquet_files_are_partitioned_atomic_and_readable_by_every_engine(tmp_path, registry):
    ds = registry["blockdb_transfers"]
    sink = ParquetSink(str(tmp_path / "parquet"), "main")
    sink.open([ds])
    table = transfers(registry, 50)
    (path,) = sink.write(ds, table, 0, 0)
    assert path.startswith(str(tmp_path / "parquet" / "dataset=blockdb_transfers" / "date=2025-11-13"))
    assert path.endswith(".parquet") and os.path.exists(path)
    assert glob.glob(str(tmp_path / "**" / "*.tmp"), recursive=True) == []
    pattern = dataset_glob(str(tmp_path / "parquet"), ds.name)
    assert duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchone()[0] == 50
    assert pl.scan_parquet(pattern).select(pl.len()).collect().item() == 50
    assert (
        pads.dataset(
            str(tmp_path / "parquet" / "dataset=blockdb_transfers"), partitioning="hive"
        ).count_rows()
        == 50
    )
    read = pads.dataset(path).to_table()
    assert read.schema.equals(ds.arrow_schema)
    assert read["amount_raw"].to_pylist() == [str(10**30 + i) for i in range(50)]


def test_a_flush_spanning_midnight_is_split_by_day(tmp_path, registry):
    ds = registry["blockdb_transfers"]
    sink = ParquetSink(str(tmp_path), "main")
    sink.open([ds])
    paths = sink.write(ds, transfers(registry, 4, start_ns=T0 - 2 * 10**9 + DAY, step_ns=10**9), 0, 0)
    assert sorted(os.path.basename(os.path.dirname(p)) for p in paths) == [
        "date=2025-11-13",
        "date=2025-11-14",
    ]


def test_file_names_never_collide_across_writes_and_sinks(tmp_path, registry):
    ds = registry["blockdb_transfers"]
    a, b = ParquetSink(str(tmp_path), "main"), ParquetSink(str(tmp_path), "main")
    a.open([ds])
    paths = [a.write(ds, transfers(registry, 2), 0, 0)[0] for _ in range(3)] + [
        b.write(ds, transfers(registry, 2), 0, 0)[0]
    ]
    assert len(set(paths)) == 4


def test_failed_write_leaves_no_file(tmp_path, registry, monkeypatch):
    ds = registry["blockdb_transfers"]
    sink = ParquetSink(str(tmp_path), "main")
    sink.open([ds])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("ingest.lake.pq.write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        sink.write(ds, transfers(registry, 3), 0, 0)
    assert [p for p in glob.glob(str(tmp_path / "**" / "*"), recursive=True) if os.path.isfile(p)] == []


def test_duckdb_table_matches_the_declaration_and_holds_the_rows(tmp_path, registry):
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    ds = registry["blockdb_transfers"]
    sink.write(ds, transfers(registry, 20), 0, 0)
    sink.write(ds, transfers(registry, 5), 0, 0)
    sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'blockdb_transfers'"
        ).fetchall()
    )
    assert types["_received_at"] == "TIMESTAMPTZ_NS"  # nanoseconds, as in Parquet
    assert types["amount_raw"] == "VARCHAR" and types["amount_raw_f64"] == "DOUBLE"
    assert types["block_number"] == "BIGINT"
    assert con.execute("SELECT count(*), count(DISTINCT _tracing_id) FROM blockdb_transfers").fetchone() == (
        25,
        20,
    )
    assert con.execute(
        "SELECT amount_raw FROM blockdb_transfers WHERE _tracing_id = 't7' LIMIT 1"
    ).fetchone() == (str(10**30 + 7),)


@pytest.mark.parametrize("keep_raw", [False, True])
def test_duckdb_keeps_the_raw_json_only_when_asked(tmp_path, registry, keep_raw):
    ds = registry["blockdb_transfers"]
    table = transfers(registry, 3)
    sink = DuckDBSink(tmp_path / "ingest.duckdb", keep_raw=keep_raw)
    sink.open(registry.values())
    sink.write(ds, table, 1, 3)
    sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    columns = [row[0] for row in con.execute("DESCRIBE blockdb_transfers").fetchall()]
    assert ("_raw" in columns) is keep_raw
    assert len(columns) == len(ds.arrow_schema) - (not keep_raw)
    if keep_raw:
        assert [r for (r,) in con.execute("SELECT _raw FROM blockdb_transfers").fetchall()] == table[
            "_raw"
        ].to_pylist()
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(3,)]


@pytest.mark.parametrize(
    ("dataset", "context"),
    [
        ("blockdb_generic", {"chain_id": 1, "dataset_id": "0999"}),
        ("bitquery_generic", {"network": "eth", "mempool": False}),
        ("coinapi_generic", {"connection": 1}),  # typed columns to find records by, content in _raw
    ],
)
def test_generic_datasets_keep_raw_in_duckdb_as_it_is_their_payload(tmp_path, registry, dataset, context):
    ds = registry[dataset]
    record = b'{"type": "exrate", "anything": [1, 2], "_tracing_id": "g1"}'
    table = build_table(ds, [Rows(ds.provider, ds.name, "s", [record], T0, context)])
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    sink.write(ds, table.table, 1, 1)
    sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute(f"SELECT _raw FROM {dataset}").fetchall() == [(record.decode(),)]


def test_a_table_made_with_raw_still_takes_rows_without_it(tmp_path, registry):
    ds = registry["blockdb_transfers"]
    for keep_raw in (True, False):  # a file from a daemon that kept _raw, reopened by one that does not
        sink = DuckDBSink(tmp_path / "ingest.duckdb", keep_raw=keep_raw)
        sink.open(registry.values())
        sink.write(ds, transfers(registry, 2), 0, 0)
        sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute("SELECT count(_raw), count(*) FROM blockdb_transfers").fetchall() == [(2, 4)]


def test_a_file_an_earlier_daemon_wrote_is_appended_to_and_stays_readable(tmp_path, registry):
    """The sink attaches the file with its own row group size; a file written with DuckDB's
    default (by an earlier daemon, or by hand) is appended to as is, and readers that open it
    plainly see every row and the views."""
    ds = registry["blockdb_transfers"]
    path = tmp_path / "ingest.duckdb"
    with duckdb.connect(str(path)) as con:  # as an earlier daemon left it
        con.execute(ds.create_table_sql((RAW,)))
        con.register("earlier", transfers(registry, 1000).drop_columns([RAW]))
        con.execute(f"INSERT INTO {ds.name} BY NAME SELECT * FROM earlier")
    sink = DuckDBSink(path)
    sink.open(registry.values())
    sink.write(ds, repeated_transfers(registry, ROW_GROUP_ROWS), 1, 1000)  # a row group: committed at once
    sink.close()
    con = duckdb.connect(str(path), read_only=True)
    assert row_group_sizes(con, ds.name) == [1000, ROW_GROUP_ROWS]
    assert con.execute(f"SELECT count(*) FROM {ds.name}").fetchall() == [(1000 + ROW_GROUP_ROWS,)]
    # The view counts each event once: the same 1000 transfers, sent again and again.
    assert con.execute("SELECT count(*) FROM transfers").fetchall() == [(1000,)]


def test_both_sinks_read_back_identically_through_the_query_views(tmp_path, registry):
    """`query` over the DuckDB file and over the Parquet files sees the same rows and types.

    Only `_raw` differs: the lake keeps it, DuckDB by default does not.
    """
    ds = registry["blockdb_transfers"]
    table = transfers(registry, 30)
    for sink in (ParquetSink(str(tmp_path / "parquet"), "main"), DuckDBSink(tmp_path / "ingest.duckdb")):
        sink.open(registry.values())
        sink.write(ds, table, 0, 0)
        sink.close()
    via_db, src_db = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    via_pq, src_pq = connect_for_query(registry, None, str(tmp_path / "parquet"))
    assert (src_db, src_pq) == ("duckdb", "parquet")
    sql = "SELECT * FROM blockdb_transfers ORDER BY _tracing_id"
    a, b = via_db.sql(sql).to_arrow_table(), via_pq.sql(sql).to_arrow_table().drop_columns(["_raw"])
    assert a.schema.equals(b.schema)
    assert a.equals(b)
    # a dataset with no files yet is an empty view with the same columns, not an error
    assert via_pq.execute("SELECT count(*) FROM blockdb_blocks").fetchone() == (0,)


def test_a_column_added_to_the_declaration_is_added_to_the_table(tmp_path, registry):
    base = registry["blockdb_generic"]
    first = DuckDBSink(tmp_path / "db.duckdb")
    first.open(registry.values())
    first.close()
    grown = Dataset(
        name=base.name,
        provider=base.provider,
        description="",
        envelope=base.envelope,
        columns=(*base.columns, Column("extra", ColumnType.INT64, ("extra",))),
    )
    sink = DuckDBSink(tmp_path / "db.duckdb")
    sink.open([grown if d.name == base.name else d for d in registry.values()])
    sink.close()
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    cols = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'blockdb_generic'"
        ).fetchall()
    ]
    assert "extra" in cols


class FailingInsert:
    """A DuckDB connection whose next INSERT into a data table fails (a full disk, say)."""

    def __init__(self, con, error: duckdb.Error | None = None) -> None:
        self.con = con
        self.error = error or duckdb.IOException("No space left on device")
        self.fail = True

    def execute(self, sql, *args):
        if self.fail and sql.startswith('INSERT INTO "'):
            self.fail = False
            raise self.error
        return self.con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_duckdb_holds_rows_until_a_row_group_and_a_failed_commit_is_retried_whole(tmp_path, registry):
    ds = registry["blockdb_transfers"]
    sink = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=5)
    sink.open(registry.values())
    sink.write(ds, transfers(registry, 3), 1, 3)
    assert sink.holding and sink.checkpoint(ds.name) == 0 and sink.commit_due_in() is not None
    sink._con = FailingInsert(sink._con)
    with pytest.raises(duckdb.IOException):
        sink.write(ds, transfers(registry, 3, start_ns=T0 + DAY), 4, 6)  # 6 held: commits, fails
    assert sink.holding and sink.checkpoint(ds.name) == 0
    sink.write(ds, transfers(registry, 3, start_ns=T0 + DAY), 4, 6)  # the writer's retry
    assert not sink.holding and sink.checkpoint(ds.name) == 6 and sink.commit_due_in() is None
    sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(6,)]
    assert con.execute("SELECT position FROM _ingest_positions").fetchall() == [(6,)]


def test_a_failed_first_commit_leaves_nothing_held(tmp_path, registry):
    ds = registry["blockdb_transfers"]
    sink = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=3)
    sink.open(registry.values())
    sink._con = FailingInsert(sink._con)
    with pytest.raises(duckdb.IOException):
        sink.write(ds, transfers(registry, 3), 1, 3)  # a full batch at once: commits, fails
    assert not sink.holding and sink.commit_due_in() is None
    sink.commit()  # nothing to do, and no error from an empty batch
    sink.write(ds, transfers(registry, 3), 1, 3)  # the writer's retry
    assert sink.checkpoint(ds.name) == 3
    sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(3,)]


def generic_rows(registry, n: int, size: int) -> pa.Table:
    """Rows of a generic dataset (its `_raw`, kept in DuckDB) of about `size` bytes each."""
    ds = registry["blockdb_generic"]
    records = [
        json.dumps({"data": f"{i:08d}" * (size // 8), "_tracing_id": f"g{i}"}).encode() for i in range(n)
    ]
    chunk = Rows("blockdb", ds.name, "s", records, T0, {"chain_id": 1, "dataset_id": "0999"})
    return build_table(ds, [chunk]).table


def test_a_commit_that_runs_out_of_memory_is_made_with_a_higher_limit(tmp_path, registry):
    """Large values (account data, generic rows) can need more than DuckDB's usual memory."""
    ds = registry["blockdb_generic"]
    limit = 16 << 20
    sink = DuckDBSink(tmp_path / "ingest.duckdb", memory_limit=limit, commit_rows=10**6)
    sink.open(registry.values())
    table = generic_rows(registry, 400, 100_000)  # 40 MB of 100 kB values: too much at 16 MB
    sink.write(ds, table, 1, 400)
    probe = duckdb.connect(str(tmp_path / "probe.duckdb"))
    probe.execute(f"SET memory_limit = '{limit}B'")
    probe.register("big", table)
    probe.execute("CREATE TABLE t AS SELECT * FROM big LIMIT 0")
    with pytest.raises(duckdb.OutOfMemoryException):  # what one try at the usual limit meets
        probe.execute("INSERT INTO t SELECT * FROM big")
    sink.commit()
    assert not sink.holding and sink.checkpoint(ds.name) == 400
    assert sink._con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "16.0 MiB"
    sink.write(ds, generic_rows(registry, 3, 100), 401, 403)  # and it goes on at the usual limit
    sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), sum(length(_raw)) FROM blockdb_generic").fetchone() == (
        403,
        sum(map(len, table["_raw"].to_pylist()))
        + sum(map(len, generic_rows(registry, 3, 100)["_raw"].to_pylist())),
    )
    assert con.execute("SELECT position FROM _ingest_positions").fetchall() == [(403,)]


class FatalAfterCommit:
    """A connection whose next COMMIT makes the rows durable, then fails as a checkpoint that
    follows it can ("reopen the database instance to recover")."""

    def __init__(self, con) -> None:
        self.con = con

    def execute(self, sql, *args):
        result = self.con.execute(sql, *args)
        if sql == "COMMIT":
            raise duckdb.FatalException(
                "Transaction COMMIT succeeded and is durable, but the autocheckpoint failed"
            )
        return result

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_a_fatal_error_stops_the_sink_and_a_restart_stores_nothing_twice(tmp_path, registry):
    """DuckDB's instance is unusable after a fatal error (reusing it crashed a soak run): the sink
    stops with a clear error; a restart learns from the committed positions what is in."""
    ds = registry["blockdb_transfers"]
    sink = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=10**6)
    sink.open(registry.values())
    sink.write(ds, transfers(registry, 3), 1, 3)
    sink._con = FatalAfterCommit(sink._con)
    with pytest.raises(Fatal, match="start the daemon again"):
        sink.commit()
    with pytest.raises(Fatal):  # the writer's retry meets the same answer, not a crash
        sink.commit()
    sink.close()  # nothing left to do with a closed instance
    restarted = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=10**6)
    restarted.open(registry.values())
    assert restarted.checkpoint(ds.name) == 3  # the commit was durable: a replay skips frames 1-3
    restarted.write(ds, transfers(registry, 2, start_ns=T0 + DAY), 4, 5)
    restarted.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(5,)]
    assert con.execute("SELECT position FROM _ingest_positions").fetchall() == [(5,)]


def test_a_fatal_error_before_the_rows_were_in_leaves_them_to_the_restart(tmp_path, registry):
    ds = registry["blockdb_transfers"]
    sink = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=10**6)
    sink.open(registry.values())
    sink.write(ds, transfers(registry, 3), 1, 3)
    sink._con = FailingInsert(sink._con, duckdb.FatalException("database has been invalidated"))
    with pytest.raises(Fatal):
        sink.commit()
    restarted = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=10**6)
    restarted.open(registry.values())
    assert restarted.checkpoint(ds.name) == 0  # not in: the journal replays frames 1-3
    restarted.write(ds, transfers(registry, 3), 1, 3)
    restarted.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(3,)]


def test_a_sinks_fatal_error_ends_the_daemon_with_that_error_not_a_traceback(monkeypatch, tmp_path):
    """The daemon's task group wraps what stopped it; the CLI says it as any fatal error, exit 1."""
    import argparse

    import ingest.app
    from ingest import cli
    from ingest.config import parse_config

    class StoppedByDuckDB(ingest.app.Daemon):
        async def run(self, **kw):
            raise ExceptionGroup("daemon", [Fatal("DuckDB failed and must be reopened")])

    monkeypatch.setattr(ingest.app, "Daemon", StoppedByDuckDB)
    provider = {
        "kind": "coinapi",
        "url": "ws://127.0.0.1:9/",
        "subscriptions": [{"name": "t", "data_types": ["trade"]}],
    }
    config = parse_config(
        {"storage": {"data_dir": str(tmp_path)}, "providers": {"c": provider}}, base=tmp_path
    )
    args = argparse.Namespace(log_format="json", no_live=True, duration=1, config=None)
    with pytest.raises(Fatal, match="must be reopened"):  # main() prints it: "error: ..." and 1
        cli._run_daemon(config, args, "json")


def duckdb_cached_bytes(con) -> int:
    return con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]


def test_duckdb_hands_back_the_blocks_a_commit_cached(tmp_path, registry):
    """DuckDB keeps what a commit wrote cached up to its memory limit, which the daemon pays in
    RSS between commits; the sink evicts it after each commit and keeps the limit."""
    ds = registry["blockdb_transfers"]
    table = transfers(registry, 50_000)
    probe = duckdb.connect(str(tmp_path / "probe.duckdb"))
    probe.execute("SET memory_limit = '128MB'")
    probe.execute(ds.create_table_sql(("_raw",)))
    probe.register("batch", table.drop_columns(["_raw"]))
    probe.execute(f"INSERT INTO {ds.name} BY NAME SELECT * FROM batch")
    assert duckdb_cached_bytes(probe) > 12 << 20  # what a commit leaves behind, untouched

    sink = DuckDBSink(tmp_path / "ingest.duckdb", commit_rows=50_000)
    sink.open(registry.values())
    sink.write(ds, table, 1, 50_000)
    assert not sink.holding
    assert duckdb_cached_bytes(sink._con) <= 4 << 20
    assert sink._con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "128.0 MiB"
    assert sink._con.execute("SELECT current_setting('threads')").fetchone()[0] == 1  # see _one_thread
    # The blocks' memory stays for the next commit (see _keep_blocks): evicted, not handed back.
    assert sink._con.execute("SELECT current_setting('block_allocator_memory')").fetchone()[0] == "64.0 MiB"
    sink.close()
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), sum(block_number) FROM blockdb_transfers").fetchone() == (
        50_000,
        sum(range(100, 50_100)),
    )


READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("reading", flush=True)
time.sleep(1.5)
"""


def test_duckdb_is_opened_again_after_many_rows_waiting_for_a_reader_that_took_the_file(
    tmp_path, registry, monkeypatch
):
    """DuckDB keeps the metadata of every row group it appended in memory for as long as the
    connection lives (RSS grows ~0.8 MB a million rows), so the sink opens the file again every
    `reopen_rows`; a reader that takes the file in that moment is waited for, nothing fails."""
    ds = registry["blockdb_transfers"]
    path = tmp_path / "ingest.duckdb"
    sink = DuckDBSink(path, commit_rows=3, reopen_rows=6, lock_wait=0.1)
    sink.open(registry.values())
    first = sink._con
    sink.write(ds, transfers(registry, 3), 1, 3)
    assert sink._con is first

    readers = []
    real_attach = duckdb_sink._attach

    def a_reader_comes_first(database):
        if not readers:  # in the moment between close and open, a `query` takes the file
            reader = subprocess.Popen([sys.executable, "-c", READER, str(database)], stdout=subprocess.PIPE)
            assert reader.stdout.readline() == b"reading\n"
            readers.append(reader)
        return real_attach(database)

    monkeypatch.setattr(duckdb_sink, "_attach", a_reader_comes_first)
    sink.write(ds, transfers(registry, 3, start_ns=T0 + DAY), 4, 6)  # 6 rows: opened again
    assert len(readers) == 1 and readers[0].wait(timeout=10) == 0  # waited past lock_wait
    assert sink._con is not first and sink.checkpoint(ds.name) == 6
    assert sink._con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "128.0 MiB"
    assert sink._con.execute("SELECT current_setting('block_allocator_memory')").fetchone()[0] == "64.0 MiB"
    sink.write(ds, transfers(registry, 3, start_ns=T0 + 2 * DAY), 7, 9)
    sink.close()
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(9,)]
    assert con.execute("SELECT position FROM _ingest_positions").fetchall() == [(9,)]


class FailingAfterCommit:
    """A connection on which what the sink does once the rows are in fails: setting the memory
    limit, or closing to open the file again."""

    def __init__(self, con) -> None:
        self.con = con

    def execute(self, sql, *args):
        if sql.startswith("SET memory_limit"):
            raise duckdb.IOException("injected")
        return self.con.execute(sql, *args)

    def close(self):
        self.con.close()
        raise duckdb.IOException("No space left on device")

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_a_failure_after_the_rows_are_in_never_makes_the_writer_store_them_twice(tmp_path, registry):
    """The writer makes a failed write again whole: so once a commit is in, what follows it
    (handing memory back) must not fail the write, and a failed reopen is fatal, not retried."""
    ds = registry["blockdb_transfers"]
    path = tmp_path / "ingest.duckdb"
    sink = DuckDBSink(path, commit_rows=3, reopen_rows=6)
    sink.open(registry.values())
    sink._con = FailingAfterCommit(sink._con)
    sink.write(ds, transfers(registry, 3), 1, 3)  # in; the memory limit cannot be set: a warning
    assert not sink.holding and sink.checkpoint(ds.name) == 3
    with pytest.raises(Fatal, match="nothing is lost"):
        sink.write(ds, transfers(registry, 3, start_ns=T0 + DAY), 4, 6)  # in; the reopen fails
    assert not sink.holding and sink.checkpoint(ds.name) == 6
    restarted = DuckDBSink(path)
    restarted.open(registry.values())
    assert restarted.checkpoint(ds.name) == 6  # a replay skips frames 1-6
    restarted.close()
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(6,)]


def test_duckdb_leaves_row_groups_as_commits_wrote_them(tmp_path, registry):
    """A commit past a whole row group writes its rows straight to the file in row groups of the
    sink's size, the last one partial; DuckDB's checkpoint (at each reopen and at close) would
    merge the partial ones by rewriting them, which costs more CPU than the inserts did. The
    sink turns that off."""
    ds = registry["blockdb_transfers"]
    per_commit = 2 * ROW_GROUP_ROWS + 1000  # two whole row groups and a partial one
    rows = repeated_transfers(registry, per_commit)
    path = tmp_path / "ingest.duckdb"
    sink = DuckDBSink(path, reopen_rows=per_commit + 1)
    sink.open(registry.values())
    sink.write(ds, rows, 1, 1000)
    sink.write(ds, rows, 1001, 2000)  # past reopen_rows: closed (a checkpoint) and opened again
    sink.close()  # a checkpoint again
    con = duckdb.connect(str(path), read_only=True)
    per_commit_groups = [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 1000]  # as written, and left so
    assert row_group_sizes(con, "blockdb_transfers") == per_commit_groups * 2
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchall() == [(2 * per_commit,)]
    assert con.execute("SELECT position FROM _ingest_positions").fetchall() == [(2000,)]


def test_derived_rows_of_the_same_positions_never_replace_each_other(tmp_path, registry):
    """Quarantine rows are not in journal order: a frame's reject when received and another of its
    records rejected at the build can make two flushes of the same positions. Named by positions
    alone, the second file replaced the first; a replay of the same rows still gives one file."""
    quarantine = registry["quarantine"]

    def rejected(reason: str) -> pa.Table:
        row = {"provider": "bitquery", "reason": reason, "received_at": 1, "raw": b"x", "position": 7}
        return values_table(quarantine, [row | {"id": f"bitquery:7:{reason}"}])

    sink = ParquetSink(str(tmp_path), "main")
    sink.open([quarantine])
    sink.write(quarantine, rejected("unreadable frame"), 7, 7)
    sink.write(quarantine, rejected("schema: block_number"), 7, 7)
    sink.write(quarantine, rejected("schema: block_number"), 7, 7)  # a replay: the same file
    reasons = pads.dataset(glob.glob(dataset_glob(str(tmp_path), "quarantine"))).to_table()["reason"]
    assert sorted(reasons.to_pylist()) == ["schema: block_number", "unreadable frame"]


def test_rows_committed_after_running_out_of_memory_are_stored_once_even_if_the_limit_cannot_be_reset(
    tmp_path, registry
):
    """A commit out of memory is tried again at a higher limit; setting the limit back down can
    fail too (DuckDB cannot evict down to it), after the rows are in. That must not read as a
    failed write: the writer would write the rows a second time."""
    limit = 16 << 20
    dataset = registry["blockdb_generic"]
    records = [json.dumps({"data": f"{i:08d}" * 12_500, "_tracing_id": f"g{i}"}).encode() for i in range(400)]
    chunk = Rows("blockdb", dataset.name, "s", records, 1, {"chain_id": 1, "dataset_id": "0999"}, position=1)
    table = build_table(dataset, [chunk]).table
    sink = DuckDBSink(tmp_path / "ingest.duckdb", memory_limit=limit, commit_rows=400)
    sink.open(registry.values())
    real = sink._set_memory_limit
    calls: list[int] = []

    def set_memory_limit(value: int) -> None:
        calls.append(value)
        if value == limit and len(calls) == 2:  # raised past the limit once, now set back: fails
            raise duckdb.OutOfMemoryException("Failed to change memory limit")
        real(value)

    sink._set_memory_limit = set_memory_limit
    sink.write(dataset, table, 1, 1)  # commits at once (commit_rows): must not raise
    assert calls[0] > limit and sink.checkpoint(dataset.name) == 1
    # Read on the sink's connection: its checkpoint at close would not fit these rows in 16 MB.
    stored = sink._con.sql(f"SELECT count(*), count(DISTINCT _tracing_id) FROM {dataset.name}").fetchall()[0]
    assert stored == (400, 400)


async def test_quarantine_keeps_its_target_dataset_under_hive_partitioning(tmp_path, registry):
    """The lake's directories are dataset=<name>/date=<day>: DuckDB (which detects hive partitions
    by default) and polars replace a file's column of either name with the directory's value, so
    no declared column may be called so, or quarantine rows would all read `quarantine`."""
    buf = Buffer(registry, FlushPolicy(max_age=60))
    buf.add(Rows("blockdb", "no_such_table", "s", [b"{1}"], T0, position=7))
    buf.close()
    flush = await buf.next_flush()
    sink = ParquetSink(str(tmp_path), "main")
    sink.open([registry[QUARANTINE]])
    sink.write(registry[QUARANTINE], values_table(registry[QUARANTINE], flush.values), 7, 7)
    pattern = dataset_glob(str(tmp_path), QUARANTINE)
    reads = [
        duckdb.sql(f"SELECT * FROM read_parquet('{pattern}')").to_arrow_table(),
        pl.scan_parquet(pattern, hive_partitioning=True).collect().to_arrow(),
    ]
    assert [t["target_dataset"].to_pylist() for t in reads] == [["no_such_table"]] * 2
    reserved = {"dataset", "date"}
    assert not [(d.name, c) for d in registry.values() for c in d.arrow_schema.names if c in reserved]
