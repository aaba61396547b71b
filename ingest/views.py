"""SQL views from sql/*.sql, and a query connection that works whether or not the daemon runs.

DuckDB allows one writing process or many readers, never both. So a query does not open the
database file while a daemon writes it: it binds one view per dataset to the Parquet files
(which the daemon publishes atomically, a flush at a time) and applies the same sql/ views on top.
With no daemon running it reads the database file instead, attached read-only. The Parquet
views go through the lake (ingest.lake_query), so they work on S3 and honour compaction.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from ingest.chains import chain_macro_sql
from ingest.errors import Fatal
from ingest.lake import Lake, open_lake
from ingest.lake_query import register_lake_views
from ingest.schema import RAW, Dataset, Registry, quote_ident, quote_literal

__all__ = ["SQL_DIR", "QuerySource", "apply_views", "connect_for_query"]

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def apply_views(con: duckdb.DuckDBPyConnection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Run sql/*.sql in file-name order; each file holds CREATE OR REPLACE VIEW statements."""
    applied = []
    con.execute("SET TimeZone = 'UTC'")  # hours and dates in views are UTC, whatever the host says
    con.execute(chain_macro_sql())
    for path in sorted(sql_dir.glob("*.sql")):
        con.execute(path.read_text())
        applied.append(path.stem)
    return applied


def _empty_view(ds: Dataset) -> str:
    """A typed view with no rows, for a dataset that has nothing stored yet."""
    cols = ", ".join(f"CAST(NULL AS {t}) AS {quote_ident(n)}" for n, t in ds.duckdb_columns())
    return f"CREATE OR REPLACE VIEW {quote_ident(ds.name)} AS SELECT {cols} WHERE false"


def _other_writers(lake: Lake, registry: Registry, instance: str) -> bool:
    """Whether any dataset of the lake holds files another instance wrote (or compaction merged)."""
    return any(lake.writers(ds.name) - {instance} for ds in registry.values())


class QuerySource:
    DUCKDB = "duckdb"
    PARQUET = "parquet"


def connect_for_query(
    registry: Registry,
    duckdb_path: Path | None,
    parquet_root: str | Lake | None,
    *,
    instance: str | None = None,
) -> tuple[duckdb.DuckDBPyConnection, str]:
    """An in-memory connection whose dataset views read the database file or the Parquet files.

    The database file holds what this instance stored; the lake, what every daemon writing it
    stored. So the file is read only while the lake holds no other instance's rows: otherwise an
    answer would change with whether this daemon is running (the file is locked while it runs).
    """
    con = duckdb.connect(":memory:")
    source = None
    lake = None
    if parquet_root is not None:
        lake = parquet_root if isinstance(parquet_root, Lake) else open_lake(parquet_root)
    shared = lake is not None and instance is not None and _other_writers(lake, registry, instance)
    if duckdb_path is not None and duckdb_path.exists() and not shared:
        try:
            con.execute(f"ATTACH {quote_literal(str(duckdb_path))} AS store (READ_ONLY)")
            source = QuerySource.DUCKDB
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():  # not a DuckDB file, or one it cannot read
                raise Fatal(f"cannot read {duckdb_path}: {exc}") from None
            if parquet_root is None:
                raise Fatal(
                    f"{duckdb_path} is being written by a daemon and the Parquet sink is off: nothing "
                    "can be read until it stops (set storage.parquet = true to query while it runs)"
                ) from None
    if source == QuerySource.DUCKDB:
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'store'"
            ).fetchall()
        }
        stored: dict[str, set[str]] = {}
        for table, column in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'store'"
        ).fetchall():
            stored.setdefault(table, set()).add(column)
        for ds in registry.values():
            if ds.name in tables:
                # A column declared since the file was written (a daemon adds it when it opens the
                # file) reads as nulls, as in Parquet files written before it. `_raw` is left to the
                # lake by design (sinks/duckdb.py), not missing.
                missing = [
                    f", CAST(NULL AS {t}) AS {quote_ident(n)}"
                    for n, t in ds.duckdb_columns(exclude=(RAW,))
                    if n not in stored.get(ds.name, set())
                ]
                con.execute(
                    f"CREATE VIEW {quote_ident(ds.name)} AS "
                    f"SELECT *{''.join(missing)} FROM store.main.{quote_ident(ds.name)}"
                )
            else:
                con.execute(_empty_view(ds))
    elif lake is not None:
        source = QuerySource.PARQUET
        # Through the lake (local or S3, no DuckDB extension), honouring compaction manifests.
        register_lake_views(con, registry, lake)
    else:
        raise Fatal(f"no data yet: {duckdb_path} does not exist (run the daemon first)")
    apply_views(con)
    return con, source
