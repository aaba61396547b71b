"""Compaction merges closed partitions while every reader sees every row exactly once."""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections import Counter

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import ingest.compact as compact_module
from ingest import views
from ingest.compact import compact
from ingest.lake import Lake
from ingest.lake_query import register_lake_views
from ingest.manifest import MANIFEST_NAME, Manifest, ManifestError, is_compacted
from ingest.schema import Registry
from tests.lake_data import CLOSED, OPEN, flush_table, write_flush

pytest_plugins = ["tests.s3"]

INSTANCES = ("alpha", "beta")  # two daemons writing one lake
FILES, ROWS = 6, 5  # per instance and closed partition
TARGET = 25  # rows per merged file: 60 rows per partition -> 25 + 25 + 10


@pytest.fixture
def small(registry) -> Registry:
    return Registry({n: registry[n] for n in ("blockdb_transfers", "coinapi_trades")})


def populate(lake: Lake, registry: Registry, days=CLOSED) -> None:
    """FILES flushes of ROWS rows per instance, dataset and day, with journal positions per instance."""
    position: Counter[str] = Counter()
    for ds in registry.values():
        for day in days:
            for inst in INSTANCES:
                for i in range(FILES):
                    table = flush_table(ds, ROWS, day=day, tag=f"{inst}-{day}-{i}")
                    write_flush(lake, ds, table, instance=inst, first=position[inst] + 1)
                    position[inst] += ROWS


def counts(lake: Lake, registry: Registry, before: datetime.date | None = None) -> dict[str, tuple[int, int]]:
    """(rows, distinct tracing ids) per dataset through the DuckDB views, optionally before a day."""
    con = duckdb.connect()
    register_lake_views(con, registry, lake)
    cut = ""
    if before is not None:
        ns = int(datetime.datetime.combine(before, datetime.time(), datetime.UTC).timestamp()) * 10**9
        cut = f" WHERE epoch_ns(_received_at) < {ns}"
    sql = " UNION ALL ".join(
        f"SELECT '{n}', count(*), count(DISTINCT _tracing_id) FROM {n}{cut}" for n in registry
    )
    return {name: (rows, ids) for name, rows, ids in con.execute(sql).fetchall()}


def stored(lake: Lake, dataset: str, day: datetime.date) -> set[str]:
    """Every object physically in a partition, whatever readers make of it."""
    selector = pafs.FileSelector(lake.partition_dir(dataset, day), allow_not_found=True)
    return {i.base_name for i in lake.fs.get_file_info(selector)}


def per_partition() -> int:
    return len(INSTANCES) * FILES * ROWS


def expected(registry: Registry, days=CLOSED) -> dict[str, tuple[int, int]]:
    return {n: (len(days) * per_partition(),) * 2 for n in registry}


def assert_compacted(lake: Lake, registry: Registry) -> None:
    """Closed partitions hold only the manifest and ceil(rows / TARGET) merged files."""
    for ds in registry.values():
        for day in CLOSED:
            live = [f.base_name for f in lake.list_files(ds.name) if f"date={day}" in f.path]
            assert len(live) == math.ceil(per_partition() / TARGET) and all(map(is_compacted, live))
            assert stored(lake, ds.name, day) == {*live, MANIFEST_NAME}


def test_small_files_of_every_writer_are_merged_and_open_days_left_alone(any_lake, small):
    """Closed days shrink to full files; an open day's files and the journal positions are unchanged."""
    populate(any_lake, small)
    for ds in small.values():
        write_flush(any_lake, ds, flush_table(ds, 3, day=OPEN, tag="today"), instance="alpha", first=10**6)
    open_day = {n: stored(any_lake, n, OPEN) for n in small}
    positions = {n: any_lake.journal_positions(n) for n in small}

    report = compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0)

    partitions = len(small) * len(CLOSED)
    assert (report.files_before, report.files_after) == (partitions * FILES * 2, partitions * 3)
    assert report.rows == partitions * per_partition() and report.deleted == partitions * FILES * 2
    assert report.bytes_after > 0 and {p.merged for p in report.partitions} == {FILES * 2}
    assert_compacted(any_lake, small)
    assert {n: stored(any_lake, n, OPEN) for n in small} == open_day
    assert {n: any_lake.journal_positions(n) for n in small} == positions
    assert counts(any_lake, small) == {n: (rows + 3, rows + 3) for n, (rows, _) in expected(small).items()}

    again = compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0)
    assert (again.files_before, again.files_after, again.deleted) == (partitions * 3, partitions * 3, 0)
    assert {p.merged for p in again.partitions} == {0}
    assert_compacted(any_lake, small)


def test_a_late_file_is_visible_at_once_and_merged_with_the_partial_file_only(any_lake, small):
    """Full merged files are kept; a file arriving in a closed day joins the last, partial one."""
    populate(any_lake, small, days=CLOSED[:1])
    compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0)
    ds = small["blockdb_transfers"]
    full = {f.base_name for f in any_lake.list_files(ds.name)}
    write_flush(any_lake, ds, flush_table(ds, 7, day=CLOSED[0], tag="late"), instance="gamma", first=1)
    assert counts(any_lake, small)[ds.name] == (per_partition() + 7,) * 2

    report = compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0)
    mine = next(p for p in report.partitions if p.dataset == ds.name)
    assert (mine.files_before, mine.files_after, mine.merged, mine.rows) == (4, 3, 2, per_partition() + 7)
    assert len(full & {f.base_name for f in any_lake.list_files(ds.name)}) == 2
    assert counts(any_lake, small)[ds.name] == (per_partition() + 7,) * 2
    assert any_lake.journal_positions(ds.name)["gamma"] == 7


def test_columns_missing_from_old_files_and_unknown_to_this_schema_both_survive(tmp_path, small):
    """Old files gain nulls; a column a newer daemon declared is kept in the merged file."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path))
    ds = small["blockdb_transfers"]
    old = flush_table(ds, 2, day=CLOSED[0], tag="old").drop_columns(["_raw"])
    new = flush_table(ds, 3, day=CLOSED[0], tag="new").append_column("added_later", pa.array(["x"] * 3))
    write_flush(lake, ds, old, instance="alpha", seq=0)
    write_flush(lake, ds, new, instance="alpha", seq=1)
    compact(lake, small, instance="compactor", grace_seconds=0)
    (merged,) = lake.list_files(ds.name)
    table = lake.dataset(ds.name, ds.arrow_schema.append(pa.field("added_later", pa.string()))).to_table()
    assert sorted(table["added_later"].to_pylist(), key=str) == [None, None, "x", "x", "x"]
    assert table.num_rows == 5 and is_compacted(merged.base_name)


def test_older_than_moves_the_cutoff_earlier(tmp_path, small):
    """Only days before `older_than` are compacted."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path))
    populate(lake, small)
    report = compact(lake, small, instance="c", older_than=CLOSED[1], target_rows=TARGET, grace_seconds=0)
    assert {p.date for p in report.partitions} == {CLOSED[0]}
    assert not any(is_compacted(n) for n in stored(lake, "blockdb_transfers", CLOSED[1]))


def test_replaced_files_stay_until_their_grace_period_is_over(tmp_path, small):
    """Within the grace period the inputs stay on disk, hidden; a later run deletes them."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path))
    populate(lake, small, days=CLOSED[:1])
    first = compact(lake, small, instance="c", target_rows=TARGET, grace_seconds=600)
    assert first.deleted == 0 and len(stored(lake, "coinapi_trades", CLOSED[0])) == FILES * 2 + 3 + 1
    assert counts(lake, small) == expected(small, CLOSED[:1])
    # Engines globbing *.parquet see inputs and merged files alike; the live list is exact.
    glob = f"{lake.dataset_dir('coinapi_trades')}/*/*.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(2 * per_partition(),)]
    paths = [lake.file_uri(f.path) for f in lake.list_files("coinapi_trades")]
    assert pl.scan_parquet(paths).select(pl.len()).collect().item() == per_partition()

    later = compact(
        lake, small, instance="c", target_rows=TARGET, grace_seconds=600, clock=lambda: time.time() + 601
    )
    assert later.deleted == len(small) * FILES * 2
    assert {n: len(stored(lake, n, CLOSED[0])) for n in small} == {n: 3 + 1 for n in small}
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(per_partition(),)]


@pytest.mark.timeout(120)
def test_readers_and_writers_running_during_compaction_see_every_row_once(any_lake, small):
    """A reader counting in a loop always sees the exact total; a writer's open-day files stay."""
    populate(any_lake, small)
    want = expected(small)
    done = threading.Event()
    seen: list[dict[str, tuple[int, int]]] = []
    errors: list[BaseException] = []
    written: dict[str, list[str]] = {n: [] for n in small}

    def reader() -> None:
        while not done.is_set():
            try:
                seen.append(counts(any_lake, small, before=OPEN))
            except BaseException as exc:
                errors.append(exc)
                return

    def writer() -> None:
        i = 0
        while not done.is_set() and i < 200:
            for ds in small.values():
                table = flush_table(ds, 2, day=OPEN, tag=f"w-{i}")
                written[ds.name].append(write_flush(any_lake, ds, table, instance="live", seq=i))
            i += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        grace = 3.0  # well beyond one reader snapshot-and-query (0.3 s on S3 here), even under load
        compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=grace)
        time.sleep(grace + 0.2)
        report = compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=grace)
        assert report.deleted == len(small) * len(CLOSED) * FILES * 2
        time.sleep(0.3)  # a few reads after the deletions too
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    assert len(seen) >= 3 and all(s == want for s in seen), [s for s in seen if s != want][:3]
    assert_compacted(any_lake, small)
    for name, paths in written.items():
        assert {p.rpartition("/")[2] for p in paths} == stored(any_lake, name, OPEN)


@pytest.mark.parametrize("crash", ["writing merged files", "before the switch", "deleting inputs"])
def test_a_crash_at_any_step_leaves_exact_counts_and_a_rerun_finishes(any_lake, small, monkeypatch, crash):
    """Whatever step a compaction dies in, readers see every row once, and running it again completes."""
    populate(any_lake, small)
    calls = Counter()

    def failing(method: str, after: int):
        original = getattr(Lake, method)

        def wrapper(self, *args, **kwargs):
            calls[method] += 1
            if calls[method] > after:
                raise RuntimeError(f"crash {crash}")
            return original(self, *args, **kwargs)

        return wrapper

    if crash == "writing merged files":  # the second merged file of the first partition
        monkeypatch.setattr(Lake, "open_output", failing("open_output", 1))
    elif crash == "before the switch":
        monkeypatch.setattr("ingest.compact._publish", failing("open_output", -1))
    else:  # the switch is done, three inputs are deleted, then the process dies
        monkeypatch.setattr(Lake, "delete", failing("delete", 3))
    with pytest.raises(RuntimeError, match="crash"):
        compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0)
    assert counts(any_lake, small) == expected(small)

    monkeypatch.undo()
    compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0)
    assert counts(any_lake, small) == expected(small)
    assert_compacted(any_lake, small)


def test_a_stop_ends_the_run_mid_partition_and_the_next_run_finishes(any_lake, small, monkeypatch):
    """A daemon's stop must not wait for a day's merge: the run ends before its next row group,
    publishes nothing half-done, and the rerun merges everything."""
    populate(any_lake, small)
    stopping = threading.Event()
    original = Lake.open_output
    opened = Counter()

    def stop_at_the_second_output(self, path):  # type: ignore[no-untyped-def]
        opened["n"] += 1
        if opened["n"] == 2:
            stopping.set()  # as the daemon does on SIGTERM, while a partition is being merged
        return original(self, path)

    monkeypatch.setattr(Lake, "open_output", stop_at_the_second_output)
    report = compact(
        any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0, stopping=stopping
    )
    assert report.stopped and report.partitions == () and opened["n"] == 2
    assert counts(any_lake, small) == expected(small)
    for ds in small.values():
        for day in CLOSED:
            names = stored(any_lake, ds.name, day)
            assert not any(map(is_compacted, names)) and not any(n.endswith(".tmp") for n in names)
            assert MANIFEST_NAME not in names  # nothing published: the day is as it was

    again = compact(any_lake, small, instance="compactor", target_rows=TARGET, stopping=stopping)
    assert again.stopped and again.partitions == ()  # stopped before it began
    monkeypatch.undo()
    report = compact(any_lake, small, instance="compactor", target_rows=TARGET, grace_seconds=0)
    assert not report.stopped and report.rows == sum(rows for rows, _ in expected(small).values())
    assert counts(any_lake, small) == expected(small)
    assert_compacted(any_lake, small)


class _ManifestUploadsFail(pafs.FileSystemHandler):
    """An S3 file system whose manifest uploads fail (a PUT refused, a connection reset): the
    object in place stays, as S3 keeps it; everything else goes through."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self.fs = fs

    def get_type_name(self) -> str:
        return "failing-manifests"

    def equals(self, other: object) -> bool:
        return self is other

    def get_file_info(self, paths):  # type: ignore[no-untyped-def]
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):  # type: ignore[no-untyped-def]
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):  # type: ignore[no-untyped-def]
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):  # type: ignore[no-untyped-def]
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):  # type: ignore[no-untyped-def]
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def delete_file(self, path):  # type: ignore[no-untyped-def]
        self.fs.delete_file(path)

    def move(self, src, dest):  # type: ignore[no-untyped-def]
        self.fs.move(src, dest)

    def copy_file(self, src, dest):  # type: ignore[no-untyped-def]
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):  # type: ignore[no-untyped-def]
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):  # type: ignore[no-untyped-def]
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):  # type: ignore[no-untyped-def]
        if path.endswith(MANIFEST_NAME):
            raise OSError("simulated: PutObject failed (connection reset)")
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def normalize_path(self, path):  # type: ignore[no-untyped-def]
        return self.fs.normalize_path(path)


def test_a_failed_manifest_upload_on_s3_leaves_the_manifest_in_place(s3_lake, small):
    """The upload of a new manifest fails: the one in place still lists the merged files. Deleted
    after the failure (as a half-written new file is), it hid them, and the next run took them
    for strays and deleted them: the rows were gone for good."""
    lake, t0 = s3_lake, time.time()
    one = Registry({"coinapi_trades": small["coinapi_trades"]})
    populate(lake, one, days=CLOSED[:1])
    compact(lake, one, instance="c", target_rows=TARGET, clock=lambda: t0)
    compact(lake, one, instance="c", target_rows=TARGET, clock=lambda: t0 + 3700)  # originals deleted
    ds = one["coinapi_trades"]
    write_flush(lake, ds, flush_table(ds, ROWS, day=CLOSED[0], tag="late"), instance="gamma", first=1)
    failing = Lake(pafs.PyFileSystem(_ManifestUploadsFail(lake.fs)), lake.base, lake.uri, lake.endpoint)
    with pytest.raises(OSError, match="simulated"):
        compact(failing, one, instance="c", target_rows=TARGET, clock=lambda: t0 + 3800)
    total = per_partition() + ROWS
    assert MANIFEST_NAME in stored(lake, ds.name, CLOSED[0])
    assert counts(lake, one) == {ds.name: (total, total)}
    compact(lake, one, instance="c", target_rows=TARGET, clock=lambda: t0 + 8000)
    assert counts(lake, one) == {ds.name: (total, total)}


def test_a_second_compaction_of_a_local_lake_at_once_does_nothing(tmp_path, small):
    """Two at once (the daemon's and a cron job's) would each take the other's merged files for
    strays: the second finds the first at work and leaves the lake alone."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path / "lake"), str(tmp_path / "lake"))
    populate(lake, small)
    before = {(ds, day): stored(lake, ds, day) for ds in small for day in CLOSED}
    with compact_module._only_compactor(lake) as alone:  # the first, mid-run
        assert alone
        report = compact(lake, small, instance="c", target_rows=TARGET)
    assert report.busy and report.partitions == ()
    assert {(ds, day): stored(lake, ds, day) for ds in small for day in CLOSED} == before
    report = compact(lake, small, instance="c", target_rows=TARGET)  # once the first is done
    assert not report.busy and report.files_before > report.files_after
    assert counts(lake, small) == expected(small)


def test_every_writer_of_a_lake_is_known_also_without_journal_positions_and_after_a_merge(tmp_path, small):
    """Whether a lake holds another instance's rows decides what `query` reads (views.py): a
    writer whose files carry no journal positions (its journal off) was missed, and `query`
    answered from this instance's DuckDB file alone."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path / "lake"), str(tmp_path / "lake"))
    ds = small["coinapi_trades"]
    for i in range(3):
        write_flush(
            lake, ds, flush_table(ds, ROWS, day=CLOSED[0], tag=f"a{i}"), instance="alpha", first=1 + 5 * i
        )
        write_flush(lake, ds, flush_table(ds, ROWS, day=CLOSED[0], tag=f"b{i}"), instance="beta", seq=i)
    one = Registry({ds.name: ds})
    assert views._other_writers(lake, one, "alpha")
    assert lake.writers(ds.name) == {"alpha", "beta"}
    t0 = time.time()
    compact(lake, one, instance="gamma", target_rows=TARGET, grace_seconds=0, clock=lambda: t0)
    compact(lake, one, instance="gamma", target_rows=TARGET, grace_seconds=0, clock=lambda: t0 + 1)
    assert all(is_compacted(f.base_name) for f in lake.list_files(ds.name))  # the inputs are gone
    assert lake.writers(ds.name) == {"alpha", "beta"}
    assert views._other_writers(lake, one, "alpha") and views._other_writers(lake, one, "beta")


def test_a_partition_that_cannot_be_compacted_leaves_the_others_to_be(tmp_path, small):
    """An unreadable manifest (or a column of a conflicting type) fails its partition: the run
    still fails, but only once every other partition is done."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path / "lake"), str(tmp_path / "lake"))
    populate(lake, small)
    broken = (next(iter(small)), CLOSED[0])
    lake.write_bytes(f"{lake.partition_dir(*broken)}/{MANIFEST_NAME}", b"{not json")
    with pytest.raises(ManifestError):
        compact(lake, small, instance="c", target_rows=TARGET)
    others = [(name, day) for name in small for day in CLOSED if (name, day) != broken]
    assert len(others) == 2 * len(CLOSED) - 1
    for name, day in others:
        assert len(lake.read_manifest(lake.partition_dir(name, day)).outputs) == math.ceil(
            per_partition() / TARGET
        )


def test_a_merge_that_loses_rows_is_never_published(tmp_path, small, monkeypatch):
    """The merged files are counted against their inputs before the switch: a merge one row group
    short (a bug, a reader that stopped early) fails its partition and replaces nothing."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path / "lake"), str(tmp_path / "lake"))
    populate(lake, small)
    whole = compact_module._row_groups

    def one_group_short(*args, **kwargs):
        groups = list(whole(*args, **kwargs))
        assert len(groups) > 1
        return iter(groups[:-1])

    monkeypatch.setattr(compact_module, "_row_groups", one_group_short)
    with pytest.raises(compact_module.CompactionError, match="different number of rows"):
        compact(lake, small, instance="c", target_rows=TARGET, grace_seconds=0)
    assert counts(lake, small) == expected(small)
    for name in small:
        for day in CLOSED:
            assert not lake.read_manifest(lake.partition_dir(name, day)).outputs
            assert len(stored(lake, name, day)) >= len(INSTANCES) * FILES  # every input still there


def test_a_lake_wide_error_stops_the_run_at_once(tmp_path, small, monkeypatch):
    """The disk, S3's credentials or network fail every partition alike: no use trying them all."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path / "lake"), str(tmp_path / "lake"))
    populate(lake, small)
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args[2].path)
        raise OSError("simulated: the bucket cannot be reached")

    monkeypatch.setattr(compact_module, "_partition", unreachable)
    with pytest.raises(OSError, match="simulated"):
        compact(lake, small, instance="c", target_rows=TARGET)
    assert len(calls) == 1


def test_a_writer_an_older_manifest_left_out_is_known_from_its_replaced_files(tmp_path, small):
    """Manifests written before they kept journal-off writers name them only as replaced files."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path / "lake"), str(tmp_path / "lake"))
    ds = small["coinapi_trades"]
    for seq in (1, 2):
        write_flush(lake, ds, flush_table(ds, ROWS, day=CLOSED[0], tag=f"b{seq}"), instance="beta", seq=seq)
    one = Registry({ds.name: ds})
    t0 = time.time()
    for now in (t0, t0 + 101):  # merged, then the input deleted (and still listed as replaced)
        compact(lake, one, instance="gamma", target_rows=TARGET, grace_seconds=100, clock=lambda n=now: n)
    partition = lake.partition_dir(ds.name, CLOSED[0])
    assert all(map(is_compacted, stored(lake, ds.name, CLOSED[0]) - {MANIFEST_NAME}))
    manifest = lake.read_manifest(partition)
    older = Manifest(manifest.generation, manifest.writer, manifest.outputs, manifest.replaced, {})
    lake.write_bytes(f"{partition}/{MANIFEST_NAME}", older.to_json(), replace=True)
    assert lake.writers(ds.name) == {"beta"}


def test_a_merged_file_a_crash_left_half_written_is_deleted_after_the_grace(tmp_path, small):
    """The hidden temporary file of a merged file (a crash mid-write) goes once its grace is over."""
    lake = Lake(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path))
    populate(lake, small, days=CLOSED[:1])
    part = lake.partition_dir("coinapi_trades", CLOSED[0])
    lake.write_bytes(f"{part}/.crashed-compacted-{'0' * 16}-0000.parquet.0a1b2c3d.tmp", b"half a file")
    compact(lake, small, instance="c", target_rows=TARGET, grace_seconds=600, clock=lambda: time.time() + 601)
    assert not [n for n in stored(lake, "coinapi_trades", CLOSED[0]) if n.endswith(".tmp")]
