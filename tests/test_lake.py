"""A lake on local disk or S3: opened from a root, files published whole, listed and read back."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ingest.errors import ConfigError
from ingest.lake import dictionary_columns, open_lake
from ingest.manifest import MANIFEST_NAME, Manifest, ManifestError
from ingest.sinks.parquet import ParquetSink
from tests.lake_data import CLOSED, OPEN, flush_table, write_flush

pytest_plugins = ["tests.s3"]


def test_a_local_root_becomes_an_absolute_base(tmp_path, monkeypatch):
    """Relative directories and file:// URIs both name a local lake by its absolute path."""
    monkeypatch.chdir(tmp_path)
    lake = open_lake("data/parquet/")
    assert lake.local and lake.base == lake.uri == str(tmp_path / "data" / "parquet")
    assert open_lake(f"file://{tmp_path}/x").base == str(tmp_path / "x")
    assert lake.dataset_dir("gaps") == f"{lake.base}/dataset=gaps"


def test_an_s3_root_keeps_bucket_and_prefix_and_no_secret(s3_server):
    """The S3 lake shows its URI and endpoint; the keys in the environment appear nowhere."""
    lake = s3_server.lake("bucket", "some/prefix")
    assert (lake.base, lake.uri, lake.local) == ("bucket/some/prefix", "s3://bucket/some/prefix", False)
    assert lake.endpoint == s3_server.endpoint
    shown = repr(lake) + str(lake) + repr(lake.fs)
    assert s3_server.secret_key not in shown and s3_server.access_key not in shown


@pytest.mark.parametrize(
    ("root", "kwargs", "message"),
    [
        ("s3://AKIAX:hunter2@bucket/p", {}, "no user, password or query"),
        ("s3://bucket/p?secret_key=hunter2", {}, "no user, password or query"),
        ("s3://bucket/p", {"endpoint": "http://127.0.0.1:9000"}, "plain http"),
        ("s3://bucket/p", {"endpoint": "ftp://host"}, "https://host:port"),
        ("gs://bucket/p", {}, "expected a directory or s3://"),
        ("/tmp/x", {"endpoint": "minio:9000"}, "only an s3:// lake"),
    ],
)
def test_bad_roots_are_config_errors_that_never_echo_a_key(root, kwargs, message):
    """A root with credentials in it is refused without repeating them; so is plain http."""
    with pytest.raises(ConfigError, match=message) as info:
        open_lake(root, **kwargs)
    assert "hunter2" not in str(info.value) and "AKIAX" not in str(info.value)


def test_files_are_listed_and_read_with_the_declared_schema(any_lake, registry):
    """Only finished *.parquet files count; a file lacking a later column reads it as null."""
    ds = registry["blockdb_transfers"]
    write_flush(any_lake, ds, flush_table(ds, 3, day=CLOSED[0], tag="a"), instance="main", seq=0)
    write_flush(any_lake, ds, flush_table(ds, 2, day=CLOSED[1], tag="b"), instance="main", seq=1)
    old = flush_table(ds, 4, day=CLOSED[1], tag="old").drop_columns(["_raw", "amount_raw_f64"])
    write_flush(any_lake, ds, old, instance="main", seq=2)
    part = any_lake.partition_dir(ds.name, CLOSED[1])
    any_lake.write_bytes(f"{part}/main-r1-00000009.parquet.tmp", b"half a file")
    any_lake.write_bytes(f"{part}/.hidden.parquet", b"not data")

    files = any_lake.list_files(ds.name)
    assert [f.base_name for f in files] == [
        "main-r1-00000000.parquet",
        "main-r1-00000001.parquet",
        "main-r1-00000002.parquet",
    ]
    assert all(f.size and f.size > 0 for f in files)
    table = any_lake.dataset(ds.name, ds.arrow_schema).to_table()
    assert table.schema.remove(table.schema.get_field_index("date")).equals(ds.arrow_schema)
    assert table.num_rows == 9
    by_id = dict(zip(table["_tracing_id"].to_pylist(), table["date"].to_pylist(), strict=True))
    assert by_id["a-0"] == CLOSED[0] and by_id["old-3"] == CLOSED[1]
    old_rows = table.filter(pa.compute.starts_with(table["_tracing_id"], "old-"))
    assert old_rows["_raw"].null_count == 4


def test_recent_reads_take_the_last_dates_with_files_only(any_lake, registry):
    """The reorg tracker's start-up read over a Parquet-only store: the last two dates that have
    files, however far back (here, one date in 2200 and one in 2025), never the older ones."""
    ds = registry["blockdb_blocks"]
    for seq, (day, tag) in enumerate([(CLOSED[0], "oldest"), (CLOSED[1], "older"), (OPEN, "newest")]):
        write_flush(any_lake, ds, flush_table(ds, 2, day=day, tag=tag), instance="main", seq=seq)
    # A later date where a crash left only a temporary file: no date of rows.
    later = any_lake.partition_dir(ds.name, OPEN.replace(day=2))
    any_lake.write_bytes(f"{later}/main-r1-00000009.parquet.tmp", b"half a file")
    recent = any_lake.dataset(ds.name, ds.arrow_schema, last_days=2).to_table()
    assert sorted(recent["_tracing_id"].to_pylist()) == ["newest-0", "newest-1", "older-0", "older-1"]
    sink = ParquetSink(any_lake, "main")
    sink.open([ds])
    read = sink.read_recent(ds, "SELECT _tracing_id, _received_at FROM blockdb_blocks ORDER BY 1", days=1)
    assert read["_tracing_id"].to_pylist() == ["newest-0", "newest-1"]
    received = read.schema.field("_received_at").type  # typed as the table: TIMESTAMP_NS WITH TIME ZONE
    assert pa.types.is_timestamp(received) and received.unit == "ns" and received.tz is not None


def test_a_dataset_without_files_is_empty_but_typed(any_lake, registry):
    """Reading a dataset nothing was written to gives no rows, not an error."""
    ds = registry["gaps"]
    assert any_lake.list_files(ds.name) == []
    assert any_lake.dataset(ds.name, ds.arrow_schema).to_table().num_rows == 0


def test_a_failed_write_publishes_nothing(any_lake):
    """An error while streaming leaves neither the file nor a temporary one behind."""
    path = f"{any_lake.base}/dataset=x/date=2025-11-13/main-1-00000000.parquet"
    with pytest.raises(RuntimeError, match="disk full"), any_lake.open_output(path) as out:
        out.write(b"PAR1" * 1000)
        raise RuntimeError("disk full")
    selector = pafs.FileSelector(any_lake.base, recursive=True, allow_not_found=True)
    assert [i.path for i in any_lake.fs.get_file_info(selector) if i.type == pafs.FileType.File] == []


def test_an_unreadable_manifest_stops_readers_instead_of_guessing(any_lake, registry):
    """Guessing the live set could count rows twice, so a damaged manifest is a fatal error."""
    ds = registry["blockdb_transfers"]
    write_flush(any_lake, ds, flush_table(ds, 1, day=CLOSED[0], tag="a"), instance="main", seq=0)
    any_lake.write_bytes(f"{any_lake.partition_dir(ds.name, CLOSED[0])}/{MANIFEST_NAME}", b"{not json")
    with pytest.raises(ManifestError, match="unreadable manifest"):
        any_lake.list_files(ds.name)


def test_a_manifest_read_cut_short_by_a_concurrent_replace_is_read_again(any_lake, registry):
    """On S3 a manifest replaced between sizing and reading it reads back torn: a second read
    sees one whole version. The damaged-manifest error above still stands for one that stays bad."""
    ds = registry["blockdb_transfers"]
    write_flush(any_lake, ds, flush_table(ds, 1, day=CLOSED[0], tag="a"), instance="main", seq=0)
    partition = any_lake.partition_dir(ds.name, CLOSED[0])
    whole = Manifest(generation=3, writer="compactor")
    any_lake.write_bytes(f"{partition}/{MANIFEST_NAME}", whole.to_json())
    opened = []
    real_open = any_lake.fs.open_input_stream

    class TornOnce:
        def open_input_stream(self, path):
            opened.append(path)
            if len(opened) == 1:
                return pa.BufferReader(whole.to_json()[:-7])
            return real_open(path)

    lake = dataclasses.replace(any_lake, fs=TornOnce())
    assert lake.read_manifest(partition) == whole
    assert len(opened) == 2


def test_s3_errors_do_not_carry_the_keys(s3_server):
    """A request that fails (no such bucket) reports the failure, not the credentials."""
    lake = s3_server.lake("no-such-bucket-here")
    with pytest.raises(OSError) as info:
        lake.atomic_write(f"{lake.base}/f.parquet", pa.table({"a": [1]}))
    assert s3_server.secret_key not in str(info.value) and s3_server.access_key not in str(info.value)


def test_only_text_columns_with_few_values_are_dictionary_encoded(tmp_path):
    n = 4000
    table = pa.table(
        {
            "exchange": pa.array(["BINANCE", "COINBASE"] * (n // 2)),
            "uuid": pa.array([f"id-{i}" for i in range(n)]),
            "price": pa.array([float(i) for i in range(n)]),
        }
    )
    assert dictionary_columns(table) == ["exchange"]
    lake = open_lake(str(tmp_path))
    lake.atomic_write(f"{lake.uri}/t.parquet", table)
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(3)}
    assert any("DICTIONARY" in e for e in encodings["exchange"])
    assert not any("DICTIONARY" in e for e in encodings["uuid"])
    assert pq.read_table(tmp_path / "t.parquet").equals(table)


def test_a_file_being_written_is_invisible_to_engines_reading_the_directory(tmp_path, registry):
    """pyarrow (and Spark, Hive) read every file of a directory except hidden ones (`.`, `_`): a
    flush or merged file mid-write, or left by a crash, must not break or join such a read."""
    lake = open_lake(str(tmp_path / "parquet"))
    ds = registry["blockdb_transfers"]
    write_flush(lake, ds, flush_table(ds, 3, day=CLOSED[0], tag="a"), instance="main", seq=0)
    part = lake.partition_dir(ds.name, CLOSED[0])
    with lake.open_output(f"{part}/main-r1-00000001.parquet") as out:
        out.write(b"PAR1 half a file")
        out.flush()
        readers = pads.dataset(lake.dataset_dir(ds.name), format="parquet", partitioning="hive")
        assert readers.count_rows() == 3
    assert [f.base_name for f in lake.list_files(ds.name)] == [
        "main-r1-00000000.parquet",
        "main-r1-00000001.parquet",
    ]


def test_a_restart_removes_its_own_crashed_writes_only(tmp_path, registry):
    """A daemon's start removes the temporary files its crashed flushes left (hidden, or named as
    an earlier version did); another writer's, and a compaction's that may be at work, stay."""
    lake = open_lake(str(tmp_path / "parquet"))
    ds = registry["blockdb_transfers"]
    part = lake.partition_dir(ds.name, CLOSED[0])
    left = [
        ".main-r1-00000001.parquet.0a1b2c3d.tmp",
        "main-r1-00000002.parquet.0a1b2c3d.tmp",
        ".other-r1-00000001.parquet.0a1b2c3d.tmp",
        f".main-compacted-{'0' * 16}-0000.parquet.0a1b2c3d.tmp",
    ]
    for name in left:
        lake.write_bytes(f"{part}/{name}", b"half a file")
    ParquetSink(lake, "main").open([ds])
    selector = pafs.FileSelector(part)
    assert sorted(i.base_name for i in lake.fs.get_file_info(selector)) == sorted(left[2:])
