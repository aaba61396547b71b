"""Lake test data: tables shaped like a dataset's flushes, written where ParquetSink puts them."""

from __future__ import annotations

import datetime

import pyarrow as pa

from ingest.lake import Lake
from ingest.schema import Dataset

CLOSED = (datetime.date(2025, 11, 13), datetime.date(2025, 11, 14))  # long over, so closed
# A day that is not over, as today is, but stays so while a test runs: with today's date, a
# test crossing midnight UTC would see its "open" files compacted as yesterday's.
OPEN = datetime.date(2200, 1, 1)


def today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def flush_table(ds: Dataset, n: int, *, day: datetime.date, tag: str) -> pa.Table:
    """`n` rows received on `day`, tracing ids `<tag>-<i>`; every other column null."""
    start = int(datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()) * 10**9
    values = {
        ds.received_column: pa.array([start + i * 10**9 for i in range(n)], pa.timestamp("ns", "UTC")),
        "_tracing_id": pa.array([f"{tag}-{i}" for i in range(n)]),
        "_provider": pa.array([ds.provider] * n),
        "_dataset": pa.array([ds.name] * n),
    }
    return pa.table(
        [values.get(f.name, pa.nulls(n, f.type)) for f in ds.arrow_schema], schema=ds.arrow_schema
    )


def write_flush(
    lake: Lake, ds: Dataset, table: pa.Table, *, instance: str, seq: int = 0, first: int | None = None
) -> str:
    """Publish one flush under ParquetSink's name for it.

    With `first`, the journal form <instance>-<first>-<last>.parquet (last = first + rows - 1);
    without, the form of a sink with no journal, <instance>-r1-<seq>.parquet.
    """
    day = table[ds.received_column][0].as_py().date()
    if first is None:
        name = f"{instance}-r1-{seq:08d}.parquet"
    else:
        name = f"{instance}-{first:020d}-{first + table.num_rows - 1:020d}.parquet"
    path = f"{lake.partition_dir(ds.name, day)}/{name}"
    lake.atomic_write(path, table)
    return path
