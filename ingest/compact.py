"""Compaction: merge the small files of closed date partitions, with every row visible exactly once.

Design (the same on local disk and on S3, which has no atomic multi-file rename):

1. Merged files are written under recognisable names, `<instance>-compacted-<hash>-<n>.parquet`
   (the hash is over the input file names). Readers that honour the manifest ignore such a file
   until a manifest lists it, so writing them changes nothing a reader sees.
2. The switch is one atomic write of the partition's `_manifest.json` (an S3 PUT, or a local
   rename): it lists the merged files as live and the inputs as replaced. A reader through
   `Lake.list_files`/`Lake.dataset` takes plain files not replaced plus the listed merged files,
   so before the write it reads the inputs, after it the merged files, never both or neither.
3. Replaced files are deleted only `grace_seconds` after the switch (on a later run), so a reader
   that took its snapshot just before the switch can still read them; their manifest entries are
   dropped another grace period after deletion. A query must therefore finish within the grace
   period of the snapshot it reads (refresh views per query).

Crash safety: a crash before (2) leaves unlisted merged files (ignored; a rerun with the same
inputs rewrites them under the same names, and strays are deleted once older than the grace
period); a crash after (2) leaves replaced files that are hidden and deleted by the next run.
Files arriving later in a closed partition (another daemon, a replayed journal) are simply not
replaced, so they stay visible and are merged next time. Merged files are read back and their
row count checked before the switch. Run one compactor per lake: two at once never show a row
twice (the last manifest wins and the loser's files stay unlisted), but the later one can drop
entries the other just added, so it re-reads the manifest and gives up if it changed.

Engines that glob `*.parquet` without the manifest see a merged partition twice between the
switch and the deletion of its inputs; give them `Lake.list_files()` instead.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import structlog

from ingest.errors import IngestError
from ingest.file_lock import Lock, try_lock
from ingest.lake import Lake, Partition, temp_target
from ingest.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    Output,
    Replaced,
    compacted_name,
    is_compacted,
)
from ingest.schema import Dataset, Registry

__all__ = ["CompactionError", "CompactionReport", "PartitionReport", "compact"]

log = structlog.get_logger("ingest.compact")
ROW_GROUP_ROWS = 128 * 1024
_LOCK = "_compaction.lock"  # at a local lake's root, held (flock) by the compaction at work


class CompactionError(IngestError):
    """A merged file does not hold what its inputs held; nothing was published."""


class _Stopped(Exception):
    """The run was asked to stop (compact's `stopping`)."""


# What one partition's files or manifest can be at fault for; anything else (the disk, S3's
# credentials or network) would fail every partition alike, so it stops the run at once.
_OF_ONE_PARTITION = (ManifestError, CompactionError, pa.ArrowInvalid, pa.ArrowTypeError)


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """One closed partition: the live files before and after this run."""

    dataset: str
    date: datetime.date
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_after: int
    merged: int = 0  # files merged this run; 0 when the partition was already compact
    deleted: int = 0  # replaced files deleted this run (their grace period over)


@dataclass(frozen=True, slots=True)
class CompactionReport:
    partitions: tuple[PartitionReport, ...]
    busy: bool = False  # another compaction was at work on this (local) lake: nothing was done
    stopped: bool = False  # asked to stop: the partitions not reported are left for the next run

    @property
    def files_before(self) -> int:
        return sum(p.files_before for p in self.partitions)

    @property
    def files_after(self) -> int:
        return sum(p.files_after for p in self.partitions)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def bytes_before(self) -> int:
        return sum(p.bytes_before for p in self.partitions)

    @property
    def bytes_after(self) -> int:
        return sum(p.bytes_after for p in self.partitions)

    @property
    def deleted(self) -> int:
        return sum(p.deleted for p in self.partitions)


def compact(
    lake: Lake,
    registry: Registry,
    *,
    instance: str,
    older_than: datetime.date | None = None,
    target_rows: int = 1_000_000,
    grace_seconds: float = 3600.0,
    clock: Callable[[], float] = time.time,
    stopping: threading.Event | None = None,
) -> CompactionReport:
    """Merge every closed partition's files into files of at most `target_rows` rows.

    A partition is closed once its UTC day is over; `older_than` moves that cut-off earlier,
    never later. Files of every writer are merged. Idempotent: a rerun finishes what a crashed
    run left and changes nothing in a compact lake, except deleting files whose grace is over.
    Once `stopping` is set the run ends at the next row group: a daemon's stop must not wait for
    a day's merge, and a partition left unpublished is as a crash leaves it.
    """
    if target_rows < 1:
        raise ValueError("target_rows must be positive")
    cutoff = datetime.datetime.fromtimestamp(clock(), datetime.UTC).date()
    if older_than is not None:
        cutoff = min(cutoff, older_than)
    reports = []
    with _only_compactor(lake) as alone:
        if not alone:
            return CompactionReport((), busy=True)
        failed: list[Exception] = []
        stop = stopping or threading.Event()
        for ds in registry.values():
            for part in lake.partitions(ds.name):
                if part.date >= cutoff:
                    continue
                try:
                    report = _partition(lake, ds, part, instance, target_rows, grace_seconds, clock, stop)
                except _Stopped:
                    return CompactionReport(tuple(reports), stopped=True)
                except _OF_ONE_PARTITION as exc:  # the others go on: each has a manifest of its own
                    log.error("compaction of a partition failed", partition=part.path, exc_info=exc)
                    failed.append(exc)
                else:
                    reports.append(report)
        if failed:  # after the rest is done: the run still fails, as it did
            if len(failed) > 1:
                failed[0].add_note(f"{len(failed) - 1} more partitions failed (logged)")
            raise failed[0]
    return CompactionReport(tuple(reports))


@contextlib.contextmanager
def _only_compactor(lake: Lake) -> Iterator[bool]:
    """Whether this run has the lake to itself (a lock file at its root, local lakes only).

    Two runs at once (the daemon's and a cron job's, or two cron runs that overlap) would each
    take the other's fresh merged files for strays once the grace is over. S3 has no lock to
    take: one compactor per bucket prefix (README).
    """
    if not lake.local:
        yield True
        return
    lake.fs.create_dir(lake.base, recursive=True)
    fd, lock = try_lock(f"{lake.base}/{_LOCK}")
    try:
        # A file system without locks: as before, one compactor by config.
        yield lock is not Lock.BUSY
    finally:
        os.close(fd)  # releases the lock


def _partition(
    lake: Lake,
    ds: Dataset,
    part: Partition,
    instance: str,
    target_rows: int,
    grace: float,
    clock: Callable[[], float],
    stopping: threading.Event,
) -> PartitionReport:
    if stopping.is_set():
        raise _Stopped
    manifest = lake.read_manifest(part.path) if part.has_manifest else Manifest()
    before = lake.live_files(part, manifest)
    # A merged file already full is left as it is: a late file must not rewrite a whole day.
    full = {n for n, o in manifest.outputs.items() if o.rows >= target_rows}
    inputs = [f for f in before if f.base_name not in full]
    rows_kept = sum(manifest.outputs[f.base_name].rows for f in before if f.base_name in full)
    after, merged = before, 0
    if len(inputs) >= 2:
        metas = [_footer(lake, f) for f in inputs]
        rows_in = sum(m.num_rows for m in metas)
        # Columns a newer writer declared are kept, even if this compactor's schemas lack them.
        schema = pa.unify_schemas([ds.arrow_schema, *(m.schema.to_arrow_schema() for m in metas)])
        outputs = _write_outputs(lake, part, schema, inputs, instance, target_rows, stopping)
        if sum(o.rows for o in outputs.values()) != rows_in:
            raise CompactionError(f"{part.path}: merged files hold a different number of rows")
        published = _publish(lake, part, manifest, instance, inputs, outputs, clock())
        if published is not None:
            manifest, merged = published, len(inputs)
            after = lake.live_files(part, manifest)
        rows = rows_in + rows_kept
    else:
        rows = rows_kept + sum(
            manifest.outputs[f.base_name].rows
            if f.base_name in manifest.outputs
            else _footer(lake, f).num_rows
            for f in inputs
        )
    deleted = _collect(lake, part, manifest, instance, grace, clock())
    report = PartitionReport(
        ds.name, part.date, len(before), len(after), rows, _size(before), _size(after), merged, deleted
    )
    if merged or deleted:
        log.info(
            "compacted",
            dataset=ds.name,
            date=part.date.isoformat(),
            files_before=len(before),
            files_after=len(after),
            rows=rows,
            merged=merged,
            deleted=deleted,
        )
    return report


def _footer(lake: Lake, info: pafs.FileInfo) -> pq.FileMetaData:
    """A file's Parquet footer; the size from the listing saves a request per file on S3."""
    fragment = pads.ParquetFileFormat().make_fragment(info.path, filesystem=lake.fs, file_size=info.size)
    metadata: pq.FileMetaData = fragment.metadata
    return metadata


def _size(files: Iterable[pafs.FileInfo]) -> int:
    return sum(f.size or 0 for f in files)


def _write_outputs(
    lake: Lake,
    part: Partition,
    schema: pa.Schema,
    inputs: list[pafs.FileInfo],
    instance: str,
    target_rows: int,
    stopping: threading.Event,
) -> dict[str, Output]:
    """Stream the inputs into files of `target_rows` rows; each checked back from its footer."""
    fmt = pads.ParquetFileFormat()
    source = pads.FileSystemDataset(
        [fmt.make_fragment(f.path, filesystem=lake.fs, file_size=f.size) for f in inputs],
        schema,
        fmt,
        lake.fs,
    )
    names = [f.base_name for f in inputs]
    groups = _row_groups(source.to_batches(), target_rows, min(target_rows, ROW_GROUP_ROWS))
    outputs: dict[str, Output] = {}
    try:
        for index, tables in itertools.groupby(groups, key=lambda g: g[0]):
            name = compacted_name(instance, names, index)
            path = f"{part.path}/{name}"
            rows = 0
            with lake.open_output(path) as out, pq.ParquetWriter(out, schema, compression="zstd") as writer:
                for _, table in tables:
                    if stopping.is_set():  # the file being written is dropped by open_output
                        raise _Stopped
                    writer.write_table(table, row_group_size=table.num_rows)
                    rows += table.num_rows
            info = lake.fs.get_file_info(path)
            if _footer(lake, info).num_rows != rows:
                raise CompactionError(f"{path}: wrote {rows} rows, the footer says otherwise")
            outputs[name] = Output(rows, info.size or 0)
    except _Stopped:  # files no manifest lists would be strays to a plain glob until the next run
        for name in outputs:
            lake.delete(f"{part.path}/{name}")
        raise
    return outputs


def _row_groups(
    batches: Iterable[pa.RecordBatch], target_rows: int, group_rows: int
) -> Iterator[tuple[int, pa.Table]]:
    """(output index, table of at most group_rows rows), never crossing an output's boundary."""
    buf: list[pa.RecordBatch] = []
    buffered = index = in_output = 0
    for batch in batches:
        while batch.num_rows:
            room = min(group_rows - buffered, target_rows - in_output - buffered)
            buf.append(batch.slice(0, room))
            buffered += min(room, batch.num_rows)
            batch = batch.slice(room)
            if buffered == group_rows or in_output + buffered == target_rows:
                yield index, pa.Table.from_batches(buf)
                in_output, buf, buffered = in_output + buffered, [], 0
                if in_output == target_rows:
                    index, in_output = index + 1, 0
    if buf:
        yield index, pa.Table.from_batches(buf)


def _publish(
    lake: Lake,
    part: Partition,
    read: Manifest,
    instance: str,
    inputs: list[pafs.FileInfo],
    outputs: dict[str, Output],
    now: float,
) -> Manifest | None:
    """The switch: one atomic manifest write. None if another compactor published meanwhile."""
    current = lake.read_manifest(part.path)
    if current.generation != read.generation:
        log.warning("manifest changed during compaction; skipped", partition=part.path)
        return None
    gone = {f.base_name for f in inputs}
    live = {n: o for n, o in read.outputs.items() if n not in gone} | outputs
    replaced = dict(read.replaced) | {n: Replaced(now) for n in gone if n not in outputs}
    manifest = read.publish(instance, outputs=live, replaced=replaced)
    lake.write_bytes(f"{part.path}/{MANIFEST_NAME}", manifest.to_json(), replace=True)
    return manifest


def _is_leftover(name: str, manifest: Manifest) -> bool:
    """A merged file no manifest lists, or the temporary file of one (a crash mid-write)."""
    if (target := temp_target(name)) is not None:
        return is_compacted(target)
    return is_compacted(name) and name not in manifest.outputs and name not in manifest.replaced


def _collect(lake: Lake, part: Partition, manifest: Manifest, instance: str, grace: float, now: float) -> int:
    """Delete replaced files and stray merged files older than the grace period."""
    due = [n for n, r in manifest.replaced.items() if r.deleted_at is None and r.replaced_at + grace <= now]
    for name in due:  # a crash here: the next run deletes them again (a missing file is fine)
        lake.delete(f"{part.path}/{name}")
    replaced = {
        n: Replaced(r.replaced_at, now) if n in due else r
        for n, r in manifest.replaced.items()
        if r.deleted_at is None or r.deleted_at + grace > now
    }
    # Re-read first: overwriting a manifest another compactor just published would unlist its files.
    if replaced != manifest.replaced and lake.read_manifest(part.path).generation == manifest.generation:
        updated = manifest.publish(instance, outputs=dict(manifest.outputs), replaced=replaced)
        lake.write_bytes(f"{part.path}/{MANIFEST_NAME}", updated.to_json(), replace=True)
    strays = [
        info
        for name, info in part.files.items()
        if _is_leftover(name, manifest) and (info.mtime_ns or 0) / 1e9 + grace <= now
    ]
    for info in strays:  # left by a crash before the switch, or by a compactor that lost a race
        lake.delete(info.path)
    return len(due) + len(strays)
