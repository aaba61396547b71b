"""Parquet sink: dataset=<name>/date=<YYYY-MM-DD>/ partitions, zstd, one atomic file per flush.

Written through the Lake (pyarrow's filesystem layer), so an s3:// root works where a directory
does. A file appears under its final name only once complete (local: temporary name, fsync,
rename; S3: one PUT), so a reader never sees half a file. The name carries the writer's instance
and the journal positions it holds, which is how a restarted daemon knows what it stored.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import time
from collections.abc import Iterable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from ingest.lake import Lake, open_lake, temp_target
from ingest.lake_query import lake_view_sql, source_name
from ingest.manifest import is_compacted
from ingest.schema import Dataset

__all__ = ["ParquetSink", "dataset_glob"]


def _digest(table: pa.Table) -> str:
    """A short hash of a (small) table's content: equal rows, equal names."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.blake2b(sink.getvalue(), digest_size=6).hexdigest()


def dataset_glob(root: str, dataset: str) -> str:
    """The glob that reads every file of a local dataset (compaction aside: see lake.list_files)."""
    return f"{root.rstrip('/')}/dataset={dataset}/*/*.parquet"


class ParquetSink:
    name = "parquet"

    def __init__(self, root: str | Lake, instance: str, *, compression: str = "zstd") -> None:
        self._lake = root if isinstance(root, Lake) else open_lake(root)
        self.root = self._lake.uri
        self._instance = instance
        self._compression = compression
        # Rows with no journal position (journal off) still need names that never collide.
        self._run = time.time_ns()
        self._seq = itertools.count()
        self._checkpoints: dict[str, int] = {}

    def open(self, datasets: Iterable[Dataset]) -> None:
        lake = self._lake
        for ds in datasets:
            if lake.local:  # S3 has neither directories nor temporary files
                lake.fs.create_dir(lake.dataset_dir(ds.name), recursive=True)
                self._remove_own_temp_files(ds.name)
            # From file names, and from manifests for files a compaction merged away.
            self._checkpoints[ds.name] = lake.journal_positions(ds.name).get(self._instance, 0)

    def _remove_own_temp_files(self, dataset: str) -> None:
        """What a crash left mid-write: never published, so never read; removed."""
        selector = pafs.FileSelector(self._lake.dataset_dir(dataset), recursive=True, allow_not_found=True)
        for info in self._lake.fs.get_file_info(selector):
            target = temp_target(info.base_name)
            # A merged file's is a compaction's (maybe at work now, as this instance): it cleans up its own.
            if target and target.startswith(f"{self._instance}-") and not is_compacted(target):
                self._lake.delete(info.path)

    def checkpoint(self, dataset: str) -> int:
        return self._checkpoints.get(dataset, 0)

    def read_recent(self, dataset: Dataset, sql: str, *, days: int = 2) -> pa.Table:
        """`sql` over the dataset's files of its last `days` dates (a view named as the dataset,
        typed as its DuckDB table), as Arrow: start-up reads of recent rows, without scanning
        every file of a lake that may hold years. Every writer's files, not only this one's."""
        con = duckdb.connect(config={"memory_limit": "128MB", "threads": 1})
        try:
            con.register(
                source_name(dataset.name),
                self._lake.dataset(dataset.name, dataset.arrow_schema, last_days=days),
            )
            con.execute(lake_view_sql(dataset))
            return con.sql(sql).to_arrow_table()
        finally:
            con.close()

    def write(self, dataset: Dataset, table: pa.Table, first: int, last: int) -> list[str]:
        if last:  # deterministic from the journal: a replay of the same frames has the same name
            stem = f"{self._instance}-{first:020d}-{last:020d}"
            if dataset.kind == "values":
                # Rows the pipeline derives (quarantine, gaps, reorgs) are not in journal order: two
                # flushes of them can cover the same positions (a frame's reject when received and
                # another of its records at the build), and the second would replace the first.
                stem += f"-{_digest(table)}"
        else:
            stem = f"{self._instance}-r{self._run}-{next(self._seq):08d}"
        days = pc.floor_temporal(table[dataset.received_column], unit="day")
        unique = pc.unique(days).to_pylist()
        if len(unique) == 1:  # the usual case: one flush, one day
            paths = [self._write_file(dataset, table, unique[0].date(), stem)]
        else:  # not from the daemon, whose buffer never lets a flush span two days (Buffer._new_pending)
            paths = []
            for day in sorted(unique):
                part = table.filter(pc.equal(days, pa.scalar(day, days.type)))
                paths.append(self._write_file(dataset, part, day.date(), stem))
        if last > self._checkpoints.get(dataset.name, 0):
            self._checkpoints[dataset.name] = last
        return paths

    def _write_file(self, dataset: Dataset, table: pa.Table, day: datetime.date, stem: str) -> str:
        path = f"{self._lake.partition_dir(dataset.name, day)}/{stem}.parquet"
        self._lake.atomic_write(path, table, compression=self._compression)
        return self._lake.file_uri(path)

    holding = False  # every write is a complete, renamed file

    def commit_due_in(self) -> float | None:
        return None

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass
