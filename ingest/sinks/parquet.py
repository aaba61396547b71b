"""Parquet sink: dataset=<name>/date=<YYYY-MM-DD>/ partitions, zstd, one atomic file per flush.

Written through pyarrow's filesystem layer so a bucket URI works where a directory does. A file
appears under its final name only once complete (temporary name, then move), so a reader never
sees half a file; the temporary suffix is not *.parquet, so globs skip it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ingest.schema import Dataset

__all__ = ["ParquetSink", "dataset_glob"]

# <instance>-<first position>-<last position>.parquet (20 digits each)
_NAME = re.compile(r"^(?P<instance>[a-z][a-z0-9_]*)-(?P<first>\d{20})-(?P<last>\d{20})\.parquet$")


def dataset_glob(root: str, dataset: str) -> str:
    """The glob that reads every file of a dataset (what views and notebooks use)."""
    return f"{root.rstrip('/')}/dataset={dataset}/*/*.parquet"


class ParquetSink:
    name = "parquet"

    def __init__(self, root: str, instance: str, *, compression: str = "zstd") -> None:
        if "://" in root:
            self._fs, self._root = pafs.FileSystem.from_uri(root)
            self._local = isinstance(self._fs, pafs.LocalFileSystem)
        else:
            self._fs, self._root, self._local = pafs.LocalFileSystem(), os.path.abspath(root), True
        self.root = root
        self._instance = instance
        self._compression = compression
        # Rows with no journal position (journal off) still need names that never collide.
        self._run = time.time_ns()
        self._seq = itertools.count()
        self._checkpoints: dict[str, int] = {}

    def open(self, datasets: Iterable[Dataset]) -> None:
        for ds in datasets:
            directory = f"{self._root}/dataset={ds.name}"
            self._fs.create_dir(directory, recursive=True)
            self._checkpoints[ds.name] = self._stored_up_to(directory)

    def _stored_up_to(self, directory: str) -> int:
        """The highest journal position in this instance's file names: a file exists whole or not.

        Temporary files of this instance are what a crash left mid-write: never published, removed.
        """
        selector = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
        best = 0
        for info in self._fs.get_file_info(selector):
            if info.base_name.endswith(".parquet.tmp") and info.base_name.startswith(f"{self._instance}-"):
                self._fs.delete_file(info.path)
                continue
            match = _NAME.match(info.base_name)
            if match and match["instance"] == self._instance:
                best = max(best, int(match["last"]))
        return best

    def checkpoint(self, dataset: str) -> int:
        return self._checkpoints.get(dataset, 0)

    def write(self, dataset: Dataset, table: pa.Table, first: int, last: int) -> list[str]:
        if last:  # deterministic from the journal: a replay of the same frames has the same name
            stem = f"{self._instance}-{first:020d}-{last:020d}"
        else:
            stem = f"{self._instance}-r{self._run}-{next(self._seq):08d}"
        days = pc.floor_temporal(table[dataset.received_column], unit="day")
        unique = pc.unique(days).to_pylist()
        if len(unique) == 1:  # the usual case: one flush, one day
            paths = [self._write_file(dataset, table, unique[0].date().isoformat(), stem)]
        else:
            paths = []
            for day in sorted(unique):
                part = table.filter(pc.equal(days, pa.scalar(day, days.type)))
                paths.append(self._write_file(dataset, part, day.date().isoformat(), stem))
        if last > self._checkpoints.get(dataset.name, 0):
            self._checkpoints[dataset.name] = last
        return paths

    def _write_file(self, dataset: Dataset, table: pa.Table, day: str, stem: str) -> str:
        directory = f"{self._root}/dataset={dataset.name}/date={day}"
        self._fs.create_dir(directory, recursive=True)
        path = f"{directory}/{stem}.parquet"
        tmp = path + ".tmp"
        try:
            with self._fs.open_output_stream(tmp) as out:
                pq.write_table(table, out, compression=self._compression)
            if self._local:
                _fsync(tmp)  # the rename below must not publish a file whose bytes are not on disk
            self._fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError, pa.ArrowException):  # best effort: the error below matters
                self._fs.delete_file(tmp)
            raise
        return path

    def close(self) -> None:
        pass


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
