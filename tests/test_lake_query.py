"""DuckDB views over the lake, local or S3, with the tables' exact types and every row once."""

from __future__ import annotations

import datetime
import threading

import duckdb
import pytest

from ingest.lake import open_lake
from ingest.lake_query import register_lake_views
from ingest.schema import Registry
from ingest.sinks.parquet import ParquetSink
from ingest.views import apply_views
from tests.lake_data import CLOSED, flush_table, today, write_flush

pytest_plugins = ["tests.s3"]


def count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    """The one value of a query, fetched whole (DuckDB 2 refuses new work beside an open result)."""
    return con.execute(sql).fetchall()[0][0]


def table_types(registry: Registry) -> dict[str, list[tuple[str, str]]]:
    """Column names and types of the DuckDB sink's tables, created from the same declarations."""
    con = duckdb.connect()
    out = {}
    for ds in registry.values():
        con.execute(ds.create_table_sql())
        out[ds.name] = [(r[0], r[1]) for r in con.execute(f'DESCRIBE "{ds.name}"').fetchall()]
    return out


def test_views_have_the_tables_columns_and_types_even_when_empty(any_lake, registry):
    """Every dataset gets a view typed like its DuckDB table, and the sql/ views apply on top."""
    ds = registry["blockdb_transfers"]
    write_flush(any_lake, ds, flush_table(ds, 2, day=CLOSED[0], tag="t"), instance="main", seq=0)
    con = duckdb.connect()
    register_lake_views(con, registry, any_lake)
    assert apply_views(con)
    expected = table_types(registry)
    for name in registry:
        got = [(r[0], r[1]) for r in con.execute(f'DESCRIBE "{name}"').fetchall()]
        assert got == expected[name], name
    assert count(con, "SELECT count(*) FROM gaps") == 0


def test_two_datasets_are_counted_and_read_back(any_lake, registry):
    """Rows written for two datasets over two days come back with their values."""
    transfers, trades = registry["blockdb_transfers"], registry["coinapi_trades"]
    for seq, (ds, day, n) in enumerate(
        [(transfers, CLOSED[0], 5), (transfers, CLOSED[1], 7), (trades, CLOSED[1], 3)]
    ):
        write_flush(
            any_lake, ds, flush_table(ds, n, day=day, tag=f"{ds.name}-{day}"), instance="main", seq=seq
        )
    con = duckdb.connect()
    register_lake_views(con, registry, any_lake)
    assert count(con, "SELECT count(*) FROM blockdb_transfers") == 12
    day_ns = int(datetime.datetime.combine(CLOSED[1], datetime.time(), datetime.UTC).timestamp()) * 10**9
    assert con.execute(
        "SELECT _tracing_id, epoch_ns(_received_at) FROM coinapi_trades ORDER BY _received_at"
    ).fetchall() == [(f"coinapi_trades-{CLOSED[1]}-{i}", day_ns + i * 10**9) for i in range(3)]
    per_day = con.execute(
        "SELECT CAST(_received_at AS DATE) AS d, count(*) FROM blockdb_transfers GROUP BY d ORDER BY d"
    ).fetchall()
    assert per_day == [(CLOSED[0], 5), (CLOSED[1], 7)]


def test_registering_again_sees_files_published_since(any_lake, registry):
    """A view reads the snapshot it was given; registering again picks up new files."""
    ds = registry["blockdb_transfers"]
    con = duckdb.connect()
    register_lake_views(con, registry, any_lake)
    assert count(con, "SELECT count(*) FROM blockdb_transfers") == 0
    write_flush(any_lake, ds, flush_table(ds, 4, day=CLOSED[0], tag="late"), instance="main", seq=0)
    assert count(con, "SELECT count(*) FROM blockdb_transfers") == 0
    register_lake_views(con, registry, any_lake)
    assert count(con, "SELECT count(*) FROM blockdb_transfers") == 4


@pytest.mark.timeout(60)
def test_two_daemons_write_one_lake_and_every_row_is_read_once(tmp_path, registry):
    """Two ParquetSinks with different instance names write concurrently; no file collides."""
    root = str(tmp_path / "lake")
    ds = registry["blockdb_transfers"]
    flushes, rows = 20, 25
    sinks = {name: ParquetSink(root, name) for name in ("alpha", "beta")}
    start = threading.Barrier(len(sinks))

    def daemon(name: str) -> None:
        sink = sinks[name]
        sink.open([ds])
        start.wait(timeout=10)
        for i in range(flushes):  # each daemon numbers its own journal positions
            sink.write(
                ds, flush_table(ds, rows, day=today(), tag=f"{name}-{i}"), i * rows + 1, (i + 1) * rows
            )

    threads = [threading.Thread(target=daemon, args=(n,)) for n in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    lake = open_lake(root)
    files = lake.list_files(ds.name)
    assert len(files) == len(sinks) * flushes
    assert {f.base_name.split("-")[0] for f in files} == set(sinks)
    assert lake.journal_positions(ds.name) == {name: flushes * rows for name in sinks}
    con = duckdb.connect()
    register_lake_views(con, registry, lake)
    [(total, distinct)] = con.execute(
        "SELECT count(*), count(DISTINCT _tracing_id) FROM blockdb_transfers"
    ).fetchall()
    assert total == distinct == len(sinks) * flushes * rows
