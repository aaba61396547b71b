"""DuckDB views over the lake with no DuckDB extension: each view scans a registered pyarrow dataset.

DuckDB reads S3 only through its httpfs extension, which is downloaded on first use and cannot be
here. pyarrow's S3 client can, and DuckDB scans a registered pyarrow dataset natively (projection
and filter pushdown included). Each dataset gets a hidden source `_lake_<name>` and a view that
casts every declared column to the DuckDB table's exact type, in the table's column order.

A registered dataset is a snapshot of the files live when it was built: call
`register_lake_views` again before a query to see files published since, and do not reuse a
snapshot for longer than the compaction grace period (ingest/compact.py), after which replaced
files may be deleted under it.
"""

from __future__ import annotations

import duckdb

from ingest.lake import Lake
from ingest.schema import Dataset, Registry, quote_ident

__all__ = ["lake_view_sql", "refresh_lake_views", "register_lake_views", "source_name"]


def source_name(dataset: str) -> str:
    """The name the pyarrow dataset is registered under on the connection."""
    return f"_lake_{dataset}"


def lake_view_sql(ds: Dataset) -> str:
    """`CREATE OR REPLACE VIEW` for one dataset over its registered source, typed as the table."""
    cols = ", ".join(f"CAST({quote_ident(n)} AS {t}) AS {quote_ident(n)}" for n, t in ds.duckdb_columns())
    return (
        f"CREATE OR REPLACE VIEW {quote_ident(ds.name)} AS "
        f"SELECT {cols} FROM {quote_ident(source_name(ds.name))}"
    )


def refresh_lake_views(con: duckdb.DuckDBPyConnection, registry: Registry, lake: Lake) -> None:
    """Point the existing views at a fresh snapshot of the lake (the views themselves stay)."""
    for ds in registry.values():
        # Registering under a taken name replaces the object; the view binds it at query time.
        con.register(source_name(ds.name), lake.dataset(ds.name, ds.arrow_schema))


def register_lake_views(con: duckdb.DuckDBPyConnection, registry: Registry, lake: Lake) -> None:
    """One view per dataset over the lake's live files; a dataset without files gives an empty view.

    Calling it again refreshes the snapshot (see the module docstring). The sql/ views go on top
    afterwards, as over the DuckDB tables (`ingest.views.apply_views`).
    """
    refresh_lake_views(con, registry, lake)
    for ds in registry.values():
        con.execute(lake_view_sql(ds))
