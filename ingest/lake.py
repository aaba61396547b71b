"""The Parquet lake: a local directory or an S3 prefix, as one pyarrow filesystem and a base path.

Layout (what ParquetSink writes): `<base>/dataset=<name>/date=<YYYY-MM-DD>/<file>.parquet`, plus
a `_manifest.json` in partitions that were compacted (see ingest/compact.py). `list_files` and
`dataset` apply the manifest, so a reader through them sees every row once, during and after a
compaction.

Publishing a file: on local disk a hidden temporary name, fsync, then rename (and the directory fsynced,
so the rename survives a crash). S3 has no rename (a move is copy + delete) but needs none: a PUT,
like a multipart upload at its completion, is atomic (the object appears whole or not at all), and
S3 reads, lists and overwrites are strongly consistent. So on S3 the final key is written
directly, from a buffer serialised beforehand so that an encoding error never starts an upload.

Credentials for S3 come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, or the AWS config files and instance roles), read by pyarrow's S3 client; the
Lake holds none, so its repr, logs and errors cannot show them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ingest.errors import ConfigError
from ingest.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    is_compacted,
    is_data_file,
    journal_range,
    writer_of,
)

__all__ = ["Lake", "Partition", "open_lake", "temp_target"]

PARTITION_FIELD = "date"
_MANIFEST_RETRIES = 2  # reads again of a manifest that came back torn (see read_manifest)


@dataclass(frozen=True, slots=True)
class Partition:
    """One date directory of a dataset as listed: its files by name, and whether it has a manifest."""

    date: datetime.date
    path: str
    files: dict[str, pafs.FileInfo]
    has_manifest: bool


@dataclass(frozen=True, slots=True)
class Lake:
    """Where the Parquet files live; every path below is inside `fs` (no scheme)."""

    fs: pafs.FileSystem = field(repr=False)
    base: str
    uri: str  # for display and for other engines: s3://bucket/prefix or an absolute directory
    endpoint: str | None = None

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def dataset_dir(self, name: str) -> str:
        return f"{self.base}/dataset={name}"

    def partition_dir(self, name: str, day: datetime.date) -> str:
        return f"{self.dataset_dir(name)}/{PARTITION_FIELD}={day.isoformat()}"

    def file_uri(self, path: str) -> str:
        """A path from `list_files` as other engines (DuckDB, polars, Spark) take it."""
        return path if self.local else f"s3://{path}"

    # -- reading ---------------------------------------------------------------------------------

    def partitions(self, dataset: str) -> list[Partition]:
        """Every date directory of a dataset, with what a single recursive listing found in it."""
        root = self.dataset_dir(dataset)
        found: dict[str, dict[str, pafs.FileInfo]] = {}
        for info in self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type != pafs.FileType.File:
                continue
            parent, _, name = info.path.rpartition("/")
            if parent.rpartition("/")[0] == root:
                found.setdefault(parent, {})[name] = info
        parts = []
        for path, files in sorted(found.items()):
            key, _, value = path.rpartition("/")[2].partition("=")
            try:
                day = datetime.date.fromisoformat(value)
            except ValueError:
                continue  # not a partition ParquetSink writes
            if key == PARTITION_FIELD:
                parts.append(Partition(day, path, files, MANIFEST_NAME in files))
        return parts

    def read_manifest(self, partition_path: str) -> Manifest:
        path = f"{partition_path}/{MANIFEST_NAME}"
        retries = _MANIFEST_RETRIES
        while True:
            try:
                with self.fs.open_input_stream(path) as src:
                    data = src.read()
            except FileNotFoundError:
                return Manifest()
            try:
                return Manifest.from_json(data, path)
            except ManifestError:
                # On S3 pyarrow sizes the object, then reads it: a manifest replaced in between
                # reads back cut short (seen with a compaction publishing while a reader reads).
                # A fresh read sees one whole version; one that stays unreadable is really bad.
                if not retries:
                    raise
                retries -= 1

    def live_files(self, partition: Partition, manifest: Manifest | None = None) -> list[pafs.FileInfo]:
        """The files of one partition a reader must read, the manifest (read unless given) applied."""
        if manifest is None:
            manifest = self.read_manifest(partition.path) if partition.has_manifest else Manifest()
        out = []
        for name in manifest.visible(partition.files):
            info = partition.files.get(name)
            if info is None:  # published after the listing: the manifest knows its size
                info = pafs.FileInfo(
                    f"{partition.path}/{name}", type=pafs.FileType.File, size=manifest.outputs[name].bytes
                )
            out.append(info)
        return out

    def list_files(self, dataset: str) -> list[pafs.FileInfo]:
        """Every live `*.parquet` file of a dataset: never temporary, replaced or unpublished files."""
        return [info for part in self.partitions(dataset) for info in self.live_files(part)]

    def dataset(self, name: str, schema: pa.Schema, *, last_days: int | None = None) -> pads.Dataset:
        """The live files read with `schema` (columns a file lacks read as nulls), plus `date`;
        with `last_days`, only those of the last so many dates that have files.

        A snapshot: files published later need a new call. Built from the listing's sizes, so
        opening a file costs no extra request.
        """
        fmt = pads.ParquetFileFormat()
        with_date = PARTITION_FIELD not in schema.names
        full = schema.append(pa.field(PARTITION_FIELD, pa.date32())) if with_date else schema
        fragments = []
        parts = self.partitions(name)  # oldest date first
        if last_days:  # dates with live files: not one where a crash left only a temporary file
            parts = [p for p in parts if any(n.endswith(".parquet") for n in p.files)][-last_days:]
        for part in parts:
            where = pc.field(PARTITION_FIELD) == pa.scalar(part.date, pa.date32())
            for info in self.live_files(part):
                fragments.append(
                    fmt.make_fragment(
                        info.path,
                        filesystem=self.fs,
                        partition_expression=where if with_date else None,
                        file_size=info.size,
                    )
                )
        return pads.FileSystemDataset(fragments, full, fmt, self.fs)

    def journal_positions(self, dataset: str) -> dict[str, int]:
        """Per writer instance, the highest journal position stored in this dataset.

        Read from the names of the files present and from the manifests, which keep the
        positions of the files compaction merged and deleted.
        """
        best: dict[str, int] = {}
        for part in self.partitions(dataset):
            found = [journal_range(name) for name in part.files]
            spans = [(s[0], s[2]) for s in found if s is not None]
            if part.has_manifest:
                spans += self.read_manifest(part.path).positions.items()
            for instance, last in spans:
                best[instance] = max(best.get(instance, 0), last)
        return best

    def writers(self, dataset: str) -> set[str]:
        """Every instance whose rows this dataset holds: the writer each file's name starts with
        (journal positions or not: derived rows', a journal-off run's), and for files compaction
        merged, the writers its manifests keep."""
        found: set[str] = set()
        for part in self.partitions(dataset):
            found.update(writer_of(n) for n in part.files if is_data_file(n) and not is_compacted(n))
            if part.has_manifest:
                manifest = self.read_manifest(part.path)
                # positions names every writer since manifests kept them all; the replaced files
                # name those an older manifest left out, until their grace is over.
                found.update(manifest.positions)
                found.update(writer_of(n) for n in manifest.replaced if not is_compacted(n))
        return found

    # -- writing ---------------------------------------------------------------------------------

    def atomic_write(self, path: str, table: pa.Table, *, compression: str = "zstd") -> int:
        """Publish a Parquet file whole or not at all; returns its size in bytes."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=compression, use_dictionary=dictionary_columns(table))
        data = sink.getvalue()
        self.write_bytes(path, data)
        return int(data.size)

    def write_bytes(self, path: str, data: bytes | pa.Buffer, *, replace: bool = False) -> None:
        """Publish a small object atomically (a manifest, a serialised file).

        `replace`: the key holds an object readers depend on (a manifest). On S3 a failed upload
        leaves that one in place, so nothing is deleted after an error: deleting it would hide
        every file it lists, and let the next compaction take them for strays.
        """
        if replace and not self.local:
            with self.fs.open_output_stream(path) as out:  # whole bytes in hand: one upload
                out.write(data)
            return
        with self.open_output(path) as out:
            out.write(data)

    @contextlib.contextmanager
    def open_output(self, path: str) -> Iterator[pa.NativeFile]:
        """A stream whose bytes appear under `path` only once the block ends without error.

        On S3 the object is streamed to its key and appears when the upload completes. pyarrow
        cannot abort an upload, so after an error the partial object is deleted (best effort):
        callers that stream large files must publish them only through a manifest.
        """
        if not self.local:
            try:
                with self.fs.open_output_stream(path) as out:
                    yield out
            except BaseException:
                self.delete(path)
                raise
            return
        directory, _, name = path.rpartition("/")
        self.fs.create_dir(directory, recursive=True)
        # Hidden and not *.parquet: listings and globs skip it, and so do engines that read a
        # whole directory (pyarrow, Spark), which would otherwise fail on the half-written file.
        tmp = f"{directory}/.{name}.{secrets.token_hex(4)}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as out:
                yield out
            _fsync(tmp)  # the rename must not publish a file whose bytes are not on disk
            self.fs.move(tmp, path)
            _fsync(directory)  # and the rename itself must survive a crash
        except BaseException:
            self.delete(tmp)
            raise

    def delete(self, path: str) -> None:
        """Delete a file; one already gone is fine (a rerun after a crash deletes it again)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)


def temp_target(name: str) -> str | None:
    """The file name a temporary file of `open_output` stands for (hidden, or unhidden as an
    earlier version named it); None for any other name."""
    if not name.endswith(".tmp"):
        return None
    return name.removeprefix(".").rpartition(".")[0].rpartition(".")[0]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_lake(
    root: str, *, endpoint: str | None = None, region: str | None = None, allow_http: bool = False
) -> Lake:
    """A Lake for a local directory (or file:// URI) or `s3://bucket/prefix`.

    Args:
        root: where the lake is.
        endpoint: an S3-compatible server instead of AWS, `https://host:port` or `host:port`.
        region: the bucket's region; None lets the AWS SDK decide (environment, config files).
        allow_http: permit a plain-http endpoint (a local test server); refused otherwise.
    """
    split = urlsplit(root)
    if split.scheme in ("", "file"):
        if endpoint is not None:
            raise ConfigError("storage.endpoint: only an s3:// lake has an endpoint")
        path = os.path.abspath(split.path if split.scheme else root).rstrip("/") or "/"
        return Lake(pafs.LocalFileSystem(), path, path)
    if split.scheme != "s3":
        raise ConfigError(
            f"storage.parquet: expected a directory or s3://bucket/prefix, got {split.scheme}://"
        )
    if split.username is not None or split.password is not None or split.query or split.fragment:
        # Said without echoing the URI: what sits there is likely a key.
        raise ConfigError(
            "storage.parquet: an s3:// root takes no user, password or query; credentials come "
            "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the endpoint from storage.endpoint"
        )
    bucket, prefix = split.netloc, split.path.strip("/")
    if not bucket:
        raise ConfigError("storage.parquet: s3:// needs a bucket name")
    scheme, host = "https", None
    if endpoint is not None:
        ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if ep.scheme not in ("http", "https") or not ep.netloc or ep.username or ep.password:
            raise ConfigError("storage.endpoint: expected https://host:port or host:port")
        if ep.scheme == "http" and not allow_http:
            raise ConfigError(
                "storage.endpoint: plain http sends the data unencrypted; set storage.allow_http = true "
                "for a local test server"
            )
        scheme, host = ep.scheme, ep.netloc
    fs = pafs.S3FileSystem(region=region, endpoint_override=host, scheme=scheme)
    base = f"{bucket}/{prefix}" if prefix else bucket
    return Lake(fs, base, f"s3://{base}", f"{scheme}://{host}" if host else None)


def dictionary_columns(table: pa.Table, sample: int = 1000) -> list[str]:
    """Text columns worth dictionary-encoding: few distinct values among the first rows.

    pyarrow tries a dictionary on every column and falls back on each unique one (ids, hashes,
    `_raw`), which costs a fifth of the write; sampling first makes the write ~25% faster and
    the file smaller.
    """
    out = []
    for f in table.schema:
        if pa.types.is_string(f.type) or pa.types.is_binary(f.type):
            head = table[f.name].slice(0, sample)
            if pc.count_distinct(head).as_py() <= len(head) // 4:
                out.append(f.name)
    return out
