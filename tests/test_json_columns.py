"""Arrow's JSON reader of a flush's payload leaves: what it reads, what it learns, what it leaves
to msgspec. That its tables equal msgspec's, row for row and reject for reject, is the property
test in test_arrow_batch.py (run with each reader)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ingest import arrow_batch, json_columns
from ingest.arrow_batch import build_table
from ingest.events import Rows
from ingest.json_columns import JsonColumns
from ingest.schema import ColumnType

from .test_arrow_batch import BITQUERY_TRANSFER, TRANSFER, _check_against_reference, rows

NUMBER = ("Block", "Number")
NAME = ("Transfer", "Currency", "Name")


def transfer(number, name="Ethereum") -> bytes:
    record = json.loads(json.dumps(BITQUERY_TRANSFER))
    del record["metrics"]  # a JSON column with a value: only msgspec keeps its text
    record["Transfer"]["AmountInUSD"] = "12.5"  # exact numbers as strings, as Bitquery sends them
    record["Block"]["Number"] = number
    record["Transfer"]["Currency"]["Name"] = name
    return json.dumps(record).encode()


def bitquery(*records: bytes) -> list[Rows]:
    context = {"network": "eth", "mempool": False}
    return [Rows("bitquery", "bitquery_evm_transfers", "s", list(records), 1_000, context, position=1)]


@pytest.fixture
def only_arrow(monkeypatch):
    """Fail the test if a flush is read by msgspec; a fresh reader per dataset."""
    arrow_batch._json_columns.cache_clear()
    monkeypatch.setattr(arrow_batch, "_read_payload", lambda *a, **k: pytest.fail("read by msgspec"))
    yield
    arrow_batch._json_columns.cache_clear()


def test_nested_records_are_read_by_arrow_and_learn_integers_sent_as_strings(registry, only_arrow):
    """Bitquery sends Block.Number as a string: the first flush learns it, the next needs no retry."""
    ds = registry["bitquery_evm_transfers"]
    _check_against_reference(ds, bitquery(transfer("21000000"), transfer("21000001", "Ether é")))
    reader = arrow_batch._json_columns(ds)
    assert reader._wire[NUMBER] == pa.string() and reader._wire[NAME] == pa.string()
    table = build_table(ds, bitquery(transfer("7"), transfer("-8"))).table
    assert table["block_number"].to_pylist() == [7, -8]
    # A provider that changes its mind is learnt again, once per leaf and flush.
    assert build_table(ds, bitquery(transfer(9), transfer(10))).table["block_number"].to_pylist() == [9, 10]
    assert reader._wire[NUMBER] == pa.int64()


def test_flat_records_stay_with_msgspec(registry):
    """BlockDB's flat records cost msgspec less CPU than Arrow's reader (the reason is in arrow_batch)."""
    arrow_batch._json_columns.cache_clear()
    assert not arrow_batch._json_columns(registry["blockdb_transfers"]).usable
    assert arrow_batch._json_columns(registry["bitquery_evm_transfers"]).usable


@pytest.mark.parametrize(
    ("case", "records"),
    [
        ("numbers sent both ways in one flush", [transfer(1), transfer("2")]),
        ("an integer string msgspec would not read", [transfer("007")]),
        ("an integer beyond int64", [transfer("9999999999999999999")]),
        ("a JSON column with a value", [transfer(1).replace(b"{", b'{"metrics": {"n": 1}, ', 1)]),
        (
            "a JSON column with a string (its quotes are its text)",
            [transfer(1).replace(b"{", b'{"metrics": "x", ', 1)],
        ),
        ("an exact number sent as a number", [transfer(1).replace(b'"12.5"', b"12.5")]),
        ("a record over two lines", [transfer(1).replace(b", ", b",\n", 1)]),
        ("a null record", [transfer(1), b"null"]),
        ("a null record alone (Arrow's reader crashes on it)", [b"null"]),
        ("two objects in one record", [transfer(1) + transfer(2)]),
        ("invalid UTF-8 (Arrow's reader patches it)", [transfer(1).replace(b"Ethereum", b"Eth\xffer")]),
        ("an escaped surrogate", [transfer(1).replace(b"Ethereum", rb"Eth\ud83d\ude00")]),
    ],
)
def test_what_arrow_cannot_read_as_msgspec_does_goes_to_msgspec(registry, monkeypatch, case, records):
    arrow_batch._json_columns.cache_clear()
    monkeypatch.setattr(json_columns, "_BACKOFF", 0)
    reader = arrow_batch._json_columns(registry["bitquery_evm_transfers"])
    assert reader.read(records) is None, case
    _check_against_reference(registry["bitquery_evm_transfers"], bitquery(*records))
    arrow_batch._json_columns.cache_clear()


def test_a_flush_arrow_cannot_read_sends_the_next_ones_to_msgspec_for_a_while(monkeypatch):
    monkeypatch.setattr(json_columns, "_BACKOFF", 2)
    reader = JsonColumns({("a", "b"): ColumnType.DECIMAL_TEXT})
    good = [b'{"a": {"b": "1.5"}}']
    assert reader.read([b'{"a": {"b": 1.5}}']) is None  # a number where exact text is needed
    assert reader.read(good) is None and reader.read(good) is None
    read = reader.read(good)
    assert read is not None and read.leaves[("a", "b")].to_pylist() == ["1.5"]
    assert read.records.to_pylist() == [good[0].decode()]


@pytest.mark.parametrize(
    "number", ["1" + "0" * 400, "1.7976931348623159e308", "-1.8e308", "NaN", "-Infinity"]
)
def test_a_double_arrow_reads_as_non_finite_goes_to_msgspec(monkeypatch, number):
    """Arrow reads a number beyond a double as inf (and NaN, Infinity, which are no JSON, as
    numbers), where msgspec rejects the record: such a flush is msgspec's to read."""
    monkeypatch.setattr(json_columns, "_BACKOFF", 0)
    reader = JsonColumns({("a", "b"): ColumnType.FLOAT64})
    finite = [b'{"a": {"b": 1.5}}', b'{"a": {"b": 1.7976931348623157e308}}', b'{"a": null}']
    read = reader.read(finite)
    assert read is not None and read.leaves[("a", "b")].to_pylist() == [1.5, 1.7976931348623157e308, None]
    assert reader.read([*finite, b'{"a": {"b": %s}}' % number.encode()]) is None


def test_slices_and_a_type_learnt_in_a_later_slice(monkeypatch):
    """A leaf first seen as a string in the second slice: the flush is read again from the start,
    so every slice has the same types; one leaf sent both ways in a flush is msgspec's to read."""
    monkeypatch.setattr(json_columns, "_SLICE", 2)
    monkeypatch.setattr(json_columns, "_BACKOFF", 0)
    reader = JsonColumns({("n",): ColumnType.INT64, ("t",): ColumnType.TEXT})
    records = [b'{"t": "x"}', b'{"n": null}', b'{"n": "4", "t": "y"}', b'{"n": "-5"}', b"{}"]
    read = reader.read(records)
    assert read is not None
    assert read.leaves[("n",)].to_pylist() == [None, None, 4, -5, None]
    assert read.leaves[("t",)].to_pylist() == ["x", None, "y", None, None]
    assert reader.read([b'{"n": 1}', b'{"n": 2}', b'{"n": "3"}']) is None
    assert reader.read([b'{"n": 1, "t": 2}', b'{"n": 2, "t": true}']) is None  # t: a number, then a bool
    read = reader.read([b'{"n": 1, "t": 2}', b'{"n": 2, "t": 3}'])
    assert read is not None and read.leaves[("t",)].to_pylist() == ["2", "3"]  # TEXT: a number's digits


@pytest.mark.parametrize("name", ["bitquery_evm_transfers", "coinapi_trades"])
def test_a_flush_of_many_slices_keeps_them_and_builds_what_msgspec_would(
    registry, monkeypatch, only_arrow, name
):
    """Columns stay in the slices Arrow read (no copy of the flush while the slices are held), and
    the table is the row-by-row reference's: split columns, derived ids, the raw text."""
    monkeypatch.setattr(arrow_batch, "_ARROW_JSON_FLAT", True)  # CoinAPI's flat records too
    monkeypatch.setattr(json_columns, "_SLICE", 4)
    ds = registry[name]
    if name == "coinapi_trades":
        records = [
            json.dumps({"symbol_id": f"EX{i % 3}_SPOT_B_Q{i % 2}", "uuid": f"u{i}", "price": "1.5"}).encode()
            for i in range(10)
        ]
        chunks = [Rows("coinapi", ds.name, "s", records, 1_000, {"connection": 1}, position=1)]
    else:
        chunks = bitquery(*(transfer(str(21_000_000 + i), f"Token {i}") for i in range(10)))
    read = arrow_batch._json_columns(ds).read(chunks[0].records)
    assert read is not None and read.records.num_chunks == 3
    assert read.records.to_pylist() == [r.decode() for r in chunks[0].records]
    _check_against_reference(ds, chunks)


def test_unreadable_datasets_never_try(registry):
    """A tracing id at the path of a column of another type would be read two ways: not this reader."""
    assert not JsonColumns({}).usable
    reader = JsonColumns({("a",): ColumnType.BINARY})
    assert not reader.usable and reader.read([b'{"a": 1}']) is None
    arrow_batch._json_columns.cache_clear()
    assert not arrow_batch._json_columns(registry["blockdb_transfers"]).usable  # flat
    assert build_table(registry["blockdb_transfers"], rows(TRANSFER)).table.num_rows == 1
