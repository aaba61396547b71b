"""DuckDB computes the envelope columns that only repeat others (Dataset.duckdb_computed) instead
of storing them: read back, they are exactly what the Arrow build gives, and tables an earlier
version made, with the columns stored, go on taking them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.arrow_batch import build_table
from ingest.events import Rows
from ingest.schema import Column, ColumnType, Dataset, Registry
from ingest.sinks.duckdb import RAW, DuckDBSink

ENVELOPE_IDS = ["_tracing_id", "_dedup_key"]


def test_which_columns_each_dataset_computes(registry):
    computed = {name: sorted(ds.duckdb_computed()) for name, ds in registry.items()}
    # CoinAPI's tracing id is its uuid column, and its key: both repeat the uuid.
    assert computed["coinapi_trades"] == ["_dedup_key", "_tracing_id"]
    assert registry["coinapi_trades"].duckdb_computed()["_tracing_id"] == '"uuid"'
    # A tracing id the provider sends is stored; the dedup key is it, or the integer/text key.
    assert computed["blockdb_transfers"] == ["_dedup_key"]
    # A derived tracing id is stored (it is a hash); the dedup key is always it.
    assert computed["bitquery_evm_transfers"] == ["_dedup_key"]
    assert registry["bitquery_evm_transfers"].duckdb_computed()["_dedup_key"] == '"_tracing_id"'
    # No natural key: the dedup key hashes the record's bytes, which SQL cannot redo.
    assert computed["blockdb_generic"] == []
    # Rows the pipeline builds itself have no such columns.
    assert computed["quarantine"] == computed["gaps"] == computed["reorgs"] == []


def test_a_key_whose_text_the_two_would_write_differently_is_stored(registry):
    base = registry["blockdb_blocks"]
    timed = Dataset(
        name="timed",
        provider="blockdb",
        description="",
        envelope=base.envelope,
        columns=(Column("at", ColumnType.TIMESTAMP, ("at",)), Column("n", ColumnType.INT64, ("n",))),
        tracing_id=("_tracing_id",),
        key=("n", "at"),  # Arrow writes a timestamp's text with "Z", DuckDB with "+00"
    )
    assert timed.duckdb_computed() == {}


def _record(ds: Dataset, values: dict[str, Any]) -> bytes:
    """A JSON record holding `values` (by column name, None: left out) at their payload paths."""
    record: dict[str, Any] = {}
    columns = {c.name: c for c in ds.columns}
    for name, value in values.items():
        if value is None:
            continue
        path = ds.tracing_id if name == "_tracing" else columns[name].path
        node = record
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return json.dumps(record).encode()


_TEXT = st.text(alphabet=st.sampled_from('ab|Z_0 é\\"'), max_size=6)
_VALUES = {
    ColumnType.INT64: st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ColumnType.STRING: _TEXT,
}


def _rows(ds: Dataset) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Records with each key column and the tracing id present or missing, the chain id (a
    context column) sometimes absent from the envelope."""
    columns = {c.name: c for c in ds.columns}
    fields = {k: st.none() | _VALUES[columns[k].type] for k in ds.key if not columns[k].context}
    if ds.tracing_id and ds.tracing_column is None:
        fields["_tracing"] = st.none() | _TEXT
    context = {c.name: st.none() | _VALUES[c.type] for c in ds.context_columns}
    return st.lists(
        st.fixed_dictionaries({**fields, "_context": st.fixed_dictionaries(context)}), max_size=12
    )


def _built(ds: Dataset, rows: list[dict[str, Any]]) -> pa.Table:
    chunks = []
    for i, row in enumerate(rows):
        values = {k: v for k, v in row.items() if k != "_context"}
        context = {k: v for k, v in row["_context"].items() if v is not None}
        chunks.append(Rows(ds.provider, ds.name, "s", [_record(ds, values)], 10**18 + i, context))
    return build_table(ds, chunks).table


@pytest.mark.parametrize("name", ["coinapi_trades", "blockdb_transfers", "blockdb_swaps"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_duckdb_computes_exactly_what_the_build_gives(name, data, registry: Registry):
    ds = registry[name]
    rows = data.draw(_rows(ds))
    table = _built(ds, rows).append_column("_n", pa.array(range(len(rows)), pa.int64()))
    computed = ds.duckdb_computed()
    assert computed
    con = duckdb.connect()
    con.execute(ds.create_table_sql((RAW,), computed))
    con.execute(f'ALTER TABLE "{name}" ADD COLUMN _n BIGINT')
    con.register("stored", table.drop_columns([RAW, *computed]))
    con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM stored')
    read = con.execute(f'SELECT {", ".join(ENVELOPE_IDS)} FROM "{name}" ORDER BY _n').fetchall()
    assert read == list(zip(*(table[c].to_pylist() for c in ENVELOPE_IDS), strict=True))


def _trades(registry: Registry, n: int) -> pa.Table:
    ds = registry["coinapi_trades"]
    records = [
        json.dumps({"symbol_id": "X_SPOT_A_B", "uuid": f"u{i}" if i % 3 else None, "price": "1.5"}).encode()
        for i in range(n)
    ]
    return build_table(ds, [Rows("coinapi", ds.name, "s", records, 10**18, {"connection": 1})]).table


def _ids(table: pa.Table) -> list[tuple]:
    """Each row's uuid and the two ids, as built (in an order that needs no row order)."""
    return sorted(zip(*(table[c].to_pylist() for c in ["uuid", *ENVELOPE_IDS]), strict=True), key=str)


def _read_back(path: Path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT uuid, _tracing_id, _dedup_key FROM coinapi_trades").fetchall()
    return sorted(rows, key=str)


def test_the_sink_stores_only_what_the_table_does_not_compute(tmp_path, registry):
    table = _trades(registry, 30)
    sink = DuckDBSink(tmp_path / "new.duckdb")
    sink.open(registry.values())
    sink.write(registry["coinapi_trades"], table, 1, 1)
    sink.close()
    assert _read_back(tmp_path / "new.duckdb") == _ids(table)
    with duckdb.connect(str(tmp_path / "new.duckdb"), read_only=True) as con:
        generated = con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'coinapi_trades' AND is_generated = 'ALWAYS' ORDER BY 1"
        ).fetchall()
    assert generated == [("_dedup_key",), ("_tracing_id",)]


def test_a_table_an_earlier_version_made_goes_on_storing_the_columns(tmp_path, registry):
    ds = registry["coinapi_trades"]
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # as a daemon before computed columns left it
        con.execute(ds.create_table_sql((RAW,)))
    table = _trades(registry, 30)
    sink = DuckDBSink(path)
    sink.open(registry.values())
    sink.write(ds, table, 1, 1)
    sink.close()
    assert _read_back(path) == _ids(table)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'coinapi_trades' AND is_generated = 'ALWAYS'"
        ).fetchone() == (0,)
