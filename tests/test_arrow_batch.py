"""Raw records -> Arrow tables by the declared schema: types, exactness, envelope columns, quarantine."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import arrow_batch, json_columns
from ingest.arrow_batch import _plan, build_table, table_bytes
from ingest.errors import ConfigError
from ingest.events import Rows
from ingest.schema import APPROX_SUFFIX, Column, ColumnType, Dataset, load_registry

TRANSFER = {
    "block_number": 21000000,
    "block_time": "2025-11-11T18:42:15.123Z",
    "tx_index": 4,
    "log_index": 11,
    "trace_address": None,
    "from_address": "28c6c06298d514db089934071355e5743bf21d60",
    "to_address": "dfd5293d8e347dfe59e90efd55b2956a1343963d",
    "token_address": "dac17f958d2ee523a2206206994597c13d831ec7",
    "amount_raw": "340282366920938463463374607431768211457",
    "amount_adj": "340282366920938463463374607431.768211457",
    "token_id": None,
    "transfer_type": 2,
    "_tracing_id": "0304aa",
    "_is_reorg": False,
}


@pytest.fixture(params=["arrow-json", "msgspec"])
def reader(request, monkeypatch):
    """Each reader of a flush's records: Arrow's JSON reader (trying every flush, a few records a
    slice, so slices and relearning happen in small flushes) or only msgspec."""
    cached = arrow_batch._json_columns
    cached.cache_clear()
    if request.param == "arrow-json":
        monkeypatch.setattr(arrow_batch, "_ARROW_JSON_FLAT", True)  # every dataset, not only nested
        monkeypatch.setattr(json_columns, "_BACKOFF", 0)
        monkeypatch.setattr(json_columns, "_SLICE", 3)
    else:
        monkeypatch.setattr(arrow_batch, "_json_columns", lambda dataset: json_columns.JsonColumns({}))
    yield request.param
    cached.cache_clear()


def rows(
    *records: dict | bytes, dataset="blockdb_transfers", is_reorg=False, received_at=1_700_000_000_000_001_000
):
    return [
        Rows(
            provider="blockdb",
            dataset=dataset,
            subscription="eth_transfers",
            records=[r if isinstance(r, bytes) else json.dumps(r).encode()],
            received_at=received_at + 1000 * i,
            context={"chain_id": 1, "dataset_id": "0304"},
            is_reorg=is_reorg,
        )
        for i, r in enumerate(records)
    ]


def test_columns_follow_the_declaration_and_keep_values_exact(registry):
    """Big integers keep every digit as text beside a double; times are UTC nanoseconds."""
    ds = registry["blockdb_transfers"]
    result = build_table(ds, rows(TRANSFER))
    assert result.rejected == []
    assert result.table.schema == ds.arrow_schema
    row = result.table.to_pylist()[0]
    assert row["chain_id"] == 1
    assert row["amount_raw"] == "340282366920938463463374607431768211457"  # > 2**128
    assert row["amount_raw_f64"] == float("340282366920938463463374607431768211457")
    assert row["amount_adj"] == "340282366920938463463374607431.768211457"
    assert row["transfer_type"] == "erc20"  # the code sent, stored as its name
    assert row["block_time"] == datetime(2025, 11, 11, 18, 42, 15, 123000, tzinfo=UTC)
    assert row["_event_time"] == row["block_time"]
    assert row["_tracing_id"] == row["_dedup_key"] == "0304aa"
    assert row["_provider"] == "blockdb" and row["_subscription"] == "eth_transfers"
    assert row["_dataset"] == "blockdb_transfers"
    assert json.loads(row["_raw"]) == TRANSFER
    assert result.table["_received_at"].type == pa.timestamp("ns", tz="UTC")
    assert result.table["_received_at"].cast(pa.int64()).to_pylist() == [1_700_000_000_000_001_000]


def test_transfer_type_codes_and_names_are_stored_as_names(registry, reader):
    """BlockDB 0304's transfer_type comes as the integer code (WSS page) or the name (catalogue),
    PROTOCOLS.md 2.8: both are stored as the name, so one type has one spelling; a code the
    enumeration does not list is kept as its digits, not rejected."""
    sent = [0, 1, 2, 3, 4, "erc20", "native_tx", "2", 7, "erc4626", None]
    records = [{**TRANSFER, "tx_index": i, "transfer_type": t} for i, t in enumerate(sent)]
    result = build_table(registry["blockdb_transfers"], rows(*records))
    assert result.rejected == []
    assert result.table["transfer_type"].to_pylist() == [
        "native_tx", "native_internal", "erc20", "erc721", "erc1155",
        "erc20", "native_tx", "erc20", "7", "erc4626", None,
    ]  # fmt: skip
    assert [json.loads(r)["transfer_type"] for r in result.table["_raw"].to_pylist()] == sent  # as sent


def test_an_enum_is_declared_on_text_columns_only(tmp_path):
    (tmp_path / "_envelope.toml").write_text("")
    column = '[[columns]]\nname = "kind"\ntype = "int64"\nenum = { "0" = "a" }\n'
    (tmp_path / "d.toml").write_text('name = "d"\n' + column)
    with pytest.raises(ConfigError, match=r"d.toml.columns\[0\].enum"):
        load_registry(tmp_path)
    (tmp_path / "d.toml").write_text('name = "d"\n' + column.replace("int64", "text").replace('"a"', "1"))
    with pytest.raises(ConfigError, match=r"enum.0: expected the non-empty text"):
        load_registry(tmp_path)


def test_numbers_as_json_numbers_stay_exact(registry):
    """An amount sent as a bare JSON number larger than any float keeps all its digits."""
    raw = json.dumps(TRANSFER).replace(
        '"340282366920938463463374607431768211457"', "340282366920938463463374607431768211457"
    )
    row = build_table(registry["blockdb_transfers"], rows(raw.encode())).table.to_pylist()[0]
    assert row["amount_raw"] == "340282366920938463463374607431768211457"


def test_numbers_sent_as_strings_are_accepted(registry):
    """Providers send some integers as strings (PROTOCOLS.md 2.6): they are read as integers."""
    row = build_table(
        registry["blockdb_transfers"], rows({**TRANSFER, "block_number": "21000000"})
    ).table.to_pylist()[0]
    assert row["block_number"] == 21000000


def test_reorg_flag_is_the_envelope_or_the_payload(registry):
    ds = registry["blockdb_transfers"]
    plain = build_table(ds, rows(TRANSFER)).table["_is_reorg"].to_pylist()
    envelope = build_table(ds, rows(TRANSFER, is_reorg=True)).table["_is_reorg"].to_pylist()
    payload = build_table(ds, rows({**TRANSFER, "_is_reorg": True})).table["_is_reorg"].to_pylist()
    assert (plain, envelope, payload) == ([False], [True], [True])


def test_dedup_key_falls_back_to_the_natural_key(registry):
    record = {k: v for k, v in TRANSFER.items() if k != "_tracing_id"}
    row = build_table(registry["blockdb_transfers"], rows(record)).table.to_pylist()[0]
    assert row["_tracing_id"] is None
    assert row["_dedup_key"] == "1|21000000|4|11|"


def test_dedup_key_mixes_tracing_ids_and_natural_keys_row_by_row(registry):
    """Where every row has a tracing id the key shares its buffers; one row without makes the key
    of that row its natural key, the others still their tracing ids."""
    ds = registry["blockdb_transfers"]
    whole = build_table(ds, rows(TRANSFER, {**TRANSFER, "_tracing_id": "0304bb"})).table
    assert whole["_dedup_key"].to_pylist() == ["0304aa", "0304bb"]
    shared = whole.select(["_dedup_key", "_tracing_id"])
    assert table_bytes(shared) == table_bytes(whole.select(["_tracing_id"]))
    untraced = {k: v for k, v in TRANSFER.items() if k != "_tracing_id"}
    mixed = build_table(ds, rows(TRANSFER, untraced)).table
    assert mixed["_dedup_key"].to_pylist() == ["0304aa", "1|21000000|4|11|"]


def test_table_bytes_counts_buffers_columns_share_once():
    text = pa.array(["x" * 40] * 100)
    table = pa.table({"a": text, "b": text, "n": pa.array(range(100), pa.int64())})
    text_bytes = sum(b.size for b in text.buffers() if b is not None)  # offsets and characters
    assert table_bytes(table) == text_bytes + 800 < table.nbytes
    assert table_bytes(table.select(["b", "n"])) == table_bytes(table)
    assert table_bytes(table.slice(0, 10)) == table_bytes(table)  # a slice keeps its buffers whole


def test_bad_records_are_isolated_and_the_rest_is_kept(registry):
    """Only the records the schema cannot take are rejected, each with its reason and bytes."""
    good = [{**TRANSFER, "tx_index": i, "_tracing_id": f"id{i}"} for i in range(100)]
    bad_type = {**TRANSFER, "block_number": "not a number"}
    bad_time = {**TRANSFER, "block_time": "yesterday"}
    bad_amount = {**TRANSFER, "amount_raw": {"nested": 1}}
    records = [*good[:30], bad_type, *good[30:60], bad_time, *good[60:], bad_amount, b"[1,2]", b"{broken"]
    result = build_table(registry["blockdb_transfers"], rows(*records))
    assert result.table.column("tx_index").to_pylist() == list(range(100))  # order kept
    assert len(result.rejected) == 5
    reasons = [r.reason for r in result.rejected]
    assert "block_number" in reasons[0]
    assert "yesterday" in reasons[1]
    assert result.rejected[3].raw == b"[1,2]"
    assert all(r.dataset == "blockdb_transfers" and r.provider == "blockdb" for r in result.rejected)


def test_new_fields_are_kept_in_raw_without_failing(registry):
    record = {**TRANSFER, "brand_new_field": {"x": [1, 2]}}
    result = build_table(registry["blockdb_transfers"], rows(record))
    assert result.rejected == []
    assert json.loads(result.table["_raw"][0].as_py())["brand_new_field"] == {"x": [1, 2]}


def test_missing_fields_are_null(registry):
    result = build_table(registry["blockdb_blocks"], rows({"block_number": 5}, dataset="blockdb_blocks"))
    row = result.table.to_pylist()[0]
    assert row["block_number"] == 5 and row["block_hash"] is None and row["timestamp_utc"] is None


def test_generic_dataset_keeps_the_payload_and_context(registry):
    result = build_table(
        registry["blockdb_generic"], rows({"open": "1.5", "_tracing_id": "0404ff"}, dataset="blockdb_generic")
    )
    row = result.table.to_pylist()[0]
    assert (row["chain_id"], row["dataset_id"], row["_tracing_id"]) == (1, "0304", "0404ff")
    assert json.loads(row["_raw"]) == {"open": "1.5", "_tracing_id": "0404ff"}


def test_timestamps_without_offset_are_read_as_utc(registry):
    record = {**TRANSFER, "block_time": "2025-11-11T18:42:15"}
    row = build_table(registry["blockdb_transfers"], rows(record)).table.to_pylist()[0]
    assert row["block_time"] == datetime(2025, 11, 11, 18, 42, 15, tzinfo=UTC)


def solana_logs(*values: bytes) -> list[Rows]:
    """One frame of solana_logs records whose `err` (a JSON column) is each value's JSON text."""
    records = [
        b'{"context": {"slot": 9}, "value": {"signature": "s%d", "err": %s, "logs": []}}' % (i, v)
        for i, v in enumerate(values)
    ]
    return [Rows("helius", "solana_logs", "s", records, 1_000, {"commitment": "confirmed"}, position=1)]


def test_json_columns_keep_each_value_as_its_json_text(registry, reader):
    """A JSON string keeps its quotes and escapes (Solana's `"BlockhashNotFound"` error), so that
    json.loads gives back what was sent, a string as a string; JSON null is SQL NULL."""
    sent = [
        b"null",
        b'"BlockhashNotFound"',
        b'"[1, 2]"',
        b'"null"',
        rb'"a\"b\u00e9"',
        b'{"InstructionError": [0, {"Custom": 1}]}',
        b"[1, 2]",
        b"-1.50",
        b"true",
    ]
    result = build_table(registry["solana_logs"], solana_logs(*sent))
    assert result.rejected == []
    stored = result.table["err"].to_pylist()
    assert stored == [
        None,
        '"BlockhashNotFound"',
        '"[1, 2]"',
        '"null"',
        '"a\\"b\\u00e9"',
        '{"InstructionError": [0, {"Custom": 1}]}',
        "[1, 2]",
        "-1.50",
        "true",
    ]
    assert [json.loads(s) for s in stored[1:5]] == ["BlockhashNotFound", "[1, 2]", "null", 'a"bé']


def test_json_column_text_is_read_by_kernels_and_invalid_utf8_is_rejected(registry, monkeypatch):
    """Valid text never goes value by value through Python; a value that is not UTF-8 rejects its
    record alone, with the error the per-row code gives."""
    calls = []
    per_row = arrow_batch._json_text
    monkeypatch.setattr(arrow_batch, "_json_text", lambda values: calls.append(1) or per_row(values))
    good = build_table(registry["solana_logs"], solana_logs(b'"x"', b"null", b"{}"))
    assert good.table["err"].to_pylist() == ['"x"', None, "{}"] and calls == []
    bad = build_table(registry["solana_logs"], solana_logs(b'"x"', b'"\xff"', b"1"))
    assert bad.table["err"].to_pylist() == ['"x"', "1"]
    assert [r.reason.split(":")[0] for r in bad.rejected] == ["UnicodeDecodeError"]


def test_a_json_column_of_the_envelope_holds_each_values_json_text(registry):
    """Context values are Python values, not JSON text: a JSON context column encodes them."""
    base = registry["solana_logs"]
    ds = Dataset(
        "t", "helius", "", (*base.columns, Column("extra", ColumnType.JSON, context=True)), base.envelope
    )
    chunks = solana_logs(b"null", b"null")
    chunks = [
        Rows("helius", "t", "s", [record], 1, {"extra": value}, position=1)
        for record, value in zip(chunks[0].records, ["x", {"k": [1, None]}], strict=True)
    ]
    assert build_table(ds, chunks).table["extra"].to_pylist() == ['"x"', '{"k":[1,null]}']


@pytest.mark.parametrize(
    ("payload", "envelope", "expected"),
    [
        ({}, False, False),  # no payload flag: the envelope's
        ({"_is_reorg": None}, False, False),
        ({"_is_reorg": False}, False, False),
        ({"_is_reorg": True}, False, True),
        ({}, True, True),
        ({"_is_reorg": None}, True, True),
        ({"_is_reorg": False}, True, True),
    ],
)
def test_a_payload_without_a_reorg_flag_is_not_a_reorg_unless_the_envelope_says_so(
    registry, reader, payload, envelope, expected
):
    record = {k: v for k, v in TRANSFER.items() if k != "_is_reorg"} | payload
    table = build_table(registry["blockdb_transfers"], rows(record, is_reorg=envelope)).table
    assert table["_is_reorg"].to_pylist() == [expected]
    generic = {"open": "1.5", "_tracing_id": "0404ff"} | payload  # BlockDB datasets without a table
    table = build_table(
        registry["blockdb_generic"], rows(generic, dataset="blockdb_generic", is_reorg=envelope)
    )
    assert table.table["_is_reorg"].to_pylist() == [expected]


DEX_TRADE = {
    "Block": {"Number": "21000000", "Hash": "0xab", "Time": "2025-11-11T18:42:15Z"},
    "Transaction": {"Hash": "0x38"},
    "Log": {"Index": 3},
    "Trade": {"Buy": {"Amount": "1.5", "Price": 2.5}, "Sell": {"Amount": "2", "Price": 0.4}},
}


@pytest.mark.parametrize("price", ["1" + "0" * 400, "1.7976931348623159e308", "-1e309"])
def test_a_double_out_of_range_is_rejected_by_either_reader(registry, reader, price):
    """msgspec rejects a number beyond a double, which Arrow's JSON reader would read as inf: that
    flush goes to msgspec, so the record is rejected whichever reader the flush first met."""
    good = json.dumps(DEX_TRADE).encode()
    bad = good.replace(b'"Price": 2.5', b'"Price": ' + price.encode())
    chunks = [Rows("bitquery", "bitquery_evm_dex_trades", "s", [good, bad, good], 1_000, {"network": "eth"})]
    result = build_table(registry["bitquery_evm_dex_trades"], chunks)
    assert result.table["trade_buy_price"].to_pylist() == [2.5, 2.5]
    assert [(r.raw, r.reason) for r in result.rejected] == [
        (bad, "ValidationError: Number out of range - at `$[0].Trade.Buy.Price`")
    ]


# --- The columnar build against the obvious row-by-row one, for hostile records -------------------------

REGISTRY = load_registry()
RECORD_DATASETS = sorted(name for name, ds in REGISTRY.items() if ds.kind == "records")
# Private-use characters standing for bytes json.dumps cannot write: replaced once a record is encoded.
INVALID_UTF8, ESCAPED_2 = "\ue000", "\ue001"
MARKERS = {INVALID_UTF8: b"\xff\xfe", ESCAPED_2: b"\\u0032"}

_texts = st.text(max_size=6) | st.sampled_from(
    ["", "a\\b", 'q"q', "\x00\x1f", "é€😀", "null", "1" + ESCAPED_2]
)
_digits = st.sampled_from(["1.5", "-0", "1e5", "12" + ESCAPED_2, "0.000000000000000000001", "1" * 30])
_numbers = st.integers() | st.floats(allow_nan=False) | st.integers(-(10**40), 10**40).map(str) | _digits
_scalars = st.none() | st.booleans() | _numbers | _texts
_json = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(_texts, c, max_size=3), max_leaves=6
)
_int64 = st.integers(-(2**63), 2**63 - 1)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_times = st.sampled_from(
    ["2025-11-11T18:42:15.123456789Z", "2025-11-11T18:42:15", "2025-11-11 18:42:15+02:00"]
)
# What each type takes, including the odd but valid (numbers as strings, huge integers, escapes)...
_VALID = {
    ColumnType.INT64: _int64 | _int64.map(str),
    ColumnType.FLOAT64: _finite | st.integers(-(2**53), 2**53),
    ColumnType.BOOL: st.booleans(),
    ColumnType.STRING: _texts,
    ColumnType.TEXT: st.booleans() | _numbers | _texts,
    ColumnType.TIMESTAMP: _times,
    ColumnType.BIGINT_TEXT: st.integers(-(10**40), 10**40)
    | st.integers().map(str)
    | st.just("12" + ESCAPED_2),
    ColumnType.DECIMAL_TEXT: st.integers() | _finite | _digits,
    ColumnType.JSON: _json,
    ColumnType.LIST_STRING: st.lists(_texts, max_size=3),
}
# The values Arrow's JSON reader can read as msgspec does, each column sent one way in a flush, so
# that many flushes go that way: exact numbers as strings, JSON columns null or absent.
_ARROW_READABLE = {
    ColumnType.INT64: (_int64, _int64.map(str)),
    ColumnType.FLOAT64: (_finite,),
    ColumnType.BOOL: (st.booleans(),),
    ColumnType.STRING: (_texts,),
    ColumnType.TEXT: (_texts, _int64, st.booleans()),
    ColumnType.TIMESTAMP: (_times,),
    ColumnType.BIGINT_TEXT: (st.integers(-(10**40), 10**40).map(str),),
    ColumnType.DECIMAL_TEXT: (_digits,),
    ColumnType.JSON: (st.none(),),
    ColumnType.LIST_STRING: (st.lists(_texts, max_size=3),),
}
# ... and, now and then, anything at all.
_ANY = st.none() | st.booleans() | _numbers | _texts | _times | _json | st.just("x" + INVALID_UTF8)
_CONTEXT = {ColumnType.INT64: _int64, ColumnType.STRING: _texts, ColumnType.BOOL: st.booleans()}


def _encode(record: dict, ascii_only: bool, compact: bool, indent: int | None = None) -> bytes:
    separators = (",", ":") if compact else None
    text = json.dumps(record, ensure_ascii=ascii_only, separators=separators, indent=indent)
    data = text.encode()
    for marker, raw in MARKERS.items():
        data = data.replace(marker.encode(), raw).replace(f"\\u{ord(marker):04x}".encode(), raw)
    return data


@st.composite
def _record(draw, ds: Dataset, wire: dict[tuple[str, ...], st.SearchStrategy] | None) -> bytes:
    """A record with the dataset's paths, each present or not, typed or hostile; parents null or absent.
    With `wire`, each leaf's values come from there (what Arrow's JSON reader can read)."""
    leaves = {c.path: _VALID[c.type] for c in ds.payload_columns} if wire is None else dict(wire)
    if ds.tracing_id:
        leaves.setdefault(ds.tracing_id, _texts | st.integers())
    if ds.reorg_flag:
        leaves.setdefault(ds.reorg_flag, st.booleans())
    hostile = draw(st.integers(0, 3)) == 0  # most records are valid, so most rows are compared
    record: dict = {}
    for path, values in leaves.items():
        kind = draw(st.integers(0, 9))
        if kind == 0:
            continue  # absent
        node = record
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        node[path[-1]] = None if kind == 1 else draw(_ANY if hostile and kind == 2 else values)
    for path in {p[:i] for p in leaves for i in range(1, len(p))}:
        if draw(st.integers(0, 9)) == 0:
            parent = record
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent.get(key), dict) else {}
            parent[path[-1]] = None if draw(st.booleans()) else {}  # a null or empty parent object
    indent = draw(st.sampled_from([None] * 9 + [1]))  # records over several lines, now and then
    data = _encode(record, draw(st.booleans()), draw(st.booleans()), indent)
    odd = [b"{broken", b"[1,2]", b"null", b'{"a":"\\q"}', b"{}{}", b"{}\n{}", b'{"a":"\\ud800"}']
    return draw(st.sampled_from([data] * 60 + odd))


@st.composite
def _flush(draw) -> tuple[Dataset, list[Rows]]:
    ds = REGISTRY[draw(st.sampled_from(RECORD_DATASETS))]
    shared = {c.name: draw(_CONTEXT[c.type]) for c in ds.context_columns}
    wire = None
    if draw(st.booleans()):  # each column sent one way for the whole flush, as providers do
        wire = {c.path: draw(st.sampled_from(_ARROW_READABLE[c.type])) for c in ds.payload_columns}
        if ds.tracing_id:
            wire.setdefault(ds.tracing_id, draw(st.sampled_from([_texts, _int64])))
    chunks = []
    for position in range(draw(st.integers(0, 6))):
        records = draw(st.lists(_record(ds, wire), max_size=4))
        hostile = draw(st.integers(0, 9)) == 0
        context = {c.name: draw(_ANY if hostile else _CONTEXT[c.type]) for c in ds.context_columns}
        chunks.append(
            Rows(
                provider=draw(st.sampled_from(["p", "q"])),
                dataset=ds.name,
                subscription="s",
                records=records,
                received_at=draw(st.integers(0, 2**62)),
                context=shared if draw(st.booleans()) else context,
                is_reorg=draw(st.booleans()),
                raw=[b" " + r for r in records] if draw(st.integers(0, 4)) == 0 else None,  # re-keyed
                position=position + 1,
            )
        )
    return ds, chunks


def _reference(ds: Dataset, chunks: list[Rows]) -> tuple[list[dict], list[tuple[bytes, str]], list[int]]:
    """Row by row, the obvious way: the rows build_table must give, and the records it must reject
    with the error each meets first."""
    rows, rejected, positions = [], [], []
    for ch in chunks:
        for i, record in enumerate(ch.records):
            original = (ch.raw or ch.records)[i]
            try:
                rows.append(_reference_row(ds, ch, record, original))
                positions.append(ch.position)
            except Exception as exc:  # any error: the record is quarantined
                rejected.append((original, f"{type(exc).__name__}: {exc}"[:500]))
    return rows, rejected, positions


def _reference_row(ds: Dataset, ch: Rows, record: bytes, original: bytes) -> dict:
    plan = _plan(ds)  # the generated msgspec types: msgspec's validation is the spec here
    obj = plan.decoder.decode(b"[" + record + b"]")[0]

    def get(path: tuple[str, ...]):
        value = obj
        for i in range(len(path)):
            value = None if value is None else getattr(value, plan.attrs[path[: i + 1]])
        return value

    def as_text(name: str) -> str:
        value = row[name]
        return (
            ""
            if value is None
            else pa.array([value], ds.arrow_schema.field(name).type).cast(pa.string())[0].as_py()
        )

    row: dict = {}
    for col in ds.columns:
        if col.split is None:
            row.update(_reference_value(col, ch.context.get(col.name) if col.context else get(col.path)))
    for col in ds.columns:
        if col.split is not None:
            source, part = col.split
            text = row[source]
            piece = None if text is None else (text + "___").split("_", 3)[part]
            piece = piece.rstrip("_") if piece is not None and part == 3 else piece
            row[col.name] = piece or None
    if ds.tracing_id:
        tracing = get(ds.tracing_id)
        tracing = None if tracing is None else str(tracing)
    elif ds.identity:
        key = "|".join(as_text(k) for k in ds.identity)
        data = original if key == "|" * (len(ds.identity) - 1) else key.encode()
        tracing = hashlib.blake2b(data, digest_size=16).hexdigest()
    else:
        tracing = None
    reorg = ch.is_reorg
    if ds.reorg_flag:
        flag = pa.array([get(ds.reorg_flag)], pa.bool_())[0].as_py()
        reorg = ch.is_reorg or flag is True  # an absent or null payload flag: the envelope's
    if tracing is not None:
        dedup = tracing
    elif ds.key:
        dedup = "|".join(as_text(k) for k in ds.key)
    else:
        dedup = hashlib.blake2b(record, digest_size=16).hexdigest()
    row.update(
        _provider=ch.provider,
        _dataset=ds.name,
        _subscription=ch.subscription,
        _received_at=ch.received_at,
        _event_time=row[ds.event_time] if ds.event_time else None,
        _tracing_id=tracing,
        _is_reorg=reorg,
        _dedup_key=dedup,
        _raw=pa.array([original], pa.binary()).cast(pa.string())[0].as_py(),
    )
    return row


def _reference_value(col: Column, value) -> dict:
    if col.type is ColumnType.TIMESTAMP:
        text = pa.array([value], pa.string())
        try:
            ts = pc.cast(text, pa.timestamp("ns", tz="UTC"))
        except pa.ArrowInvalid:
            ts = pc.assume_timezone(pc.cast(text, pa.timestamp("ns")), "UTC")
        return {col.name: ts.cast(pa.int64())[0].as_py()}
    if col.type is ColumnType.JSON:  # the value's JSON text as written: a string keeps its quotes
        raw = b"null" if value is None else bytes(value)
        return {col.name: None if raw == b"null" else raw.decode()}
    if col.type in (ColumnType.BIGINT_TEXT, ColumnType.DECIMAL_TEXT):
        raw = b"null" if value is None else bytes(value)
        if raw == b"null":
            text = None
        elif raw[:1] == b'"':
            text = msgspec.json.decode(raw, type=str) if b"\\" in raw else raw[1:-1].decode()
        elif raw[:1] in (b"{", b"[", b"t", b"f"):
            raise ValueError(f"expected a number, got {raw[:40]!r}")
        else:
            text = raw.decode()
        approx = pc.cast(pa.array([text], pa.string()), pa.float64())[0].as_py()
        return {col.name: text, col.name + APPROX_SUFFIX: approx}
    if col.type is ColumnType.TEXT and value is not None and type(value) is not str:
        value = msgspec.json.encode(value).decode()
    if col.enum:
        value = dict(col.enum).get(value, value)  # a declared code as its name
    return {col.name: pa.array([value], col.arrow_type)[0].as_py()}


def _plain(rows: list[dict]) -> list[dict]:
    """NaN made comparable (NaN != NaN)."""
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]


def _check_against_reference(ds: Dataset, chunks: list[Rows]) -> None:
    result = build_table(ds, chunks)
    rows, rejected, positions = _reference(ds, chunks)
    table = result.table
    assert table.schema == ds.arrow_schema
    times = [f.name for f in ds.arrow_schema if pa.types.is_timestamp(f.type)]
    plain = table.drop_columns(times).to_pylist()
    for name in times:
        for row, t in zip(plain, table[name].cast(pa.int64()).to_pylist(), strict=True):
            row[name] = t
    assert _plain(plain) == _plain(rows)
    assert [(r.raw, r.reason) for r in result.rejected] == rejected
    assert result.positions.to_pylist() == positions


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],  # same patch each time
)
@given(_flush())
def test_columnar_build_equals_the_row_by_row_reference(monkeypatch, reader, flush):
    """Escapes, unicode, invalid UTF-8, nulls, absent and null parents, huge and string-typed numbers,
    shared and per-frame context, several records per frame, blocks: the same rows, the same rejects,
    whichever reader (msgspec, or Arrow's JSON reader where it can) reads the flush."""
    monkeypatch.setattr(arrow_batch, "_BLOCK", 3)  # several decode blocks even in small flushes
    _check_against_reference(*flush)


BITQUERY_TRANSFER = {
    "Block": {"Number": "21000000", "Hash": "0xab", "Time": "2025-11-11T18:42:15Z"},
    "Transaction": {"Hash": "0x38", "From": "0xfa", "To": "0x0a", "Index": "1", "Value": "0.5"},
    "Log": {"Index": 0},
    "Call": {"Index": 1},
    "Transfer": {
        "Amount": "8720074.799519106804256097",
        "AmountInUSD": 12.5,
        "Sender": "0x0a",
        "Receiver": "0x8f",
        "Type": "call",
        "Currency": {
            "Symbol": "ETH",
            "Name": "Ethereum",
            "SmartContract": "0x",
            "Decimals": 18,
            "Native": True,
        },
    },
    "metrics": {"count": 2, "note": 'é "b" \\ end'},
}


def _with(record: dict, path: str, value) -> bytes:
    out = json.loads(json.dumps(record))
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    return json.dumps(out).encode()


def test_hostile_values_match_the_reference(registry, monkeypatch):
    """The vectorised paths and their per-row fallbacks, one case each, against the reference."""
    monkeypatch.setattr(arrow_batch, "_BLOCK", 4)
    base = json.dumps(BITQUERY_TRANSFER).encode()
    records = [
        base,
        base.replace(b'"Amount": "8720074.799519106804256097"', rb'"Amount": "\u0031\u0032.5"'),  # "12.5"
        _with(BITQUERY_TRANSFER, "Transfer.Amount", 10**40),  # a bare number beyond any float's digits
        _with(BITQUERY_TRANSFER, "Transfer.Amount", {"nested": 1}),  # not a number: rejected
        _with(BITQUERY_TRANSFER, "Transfer.Amount", True),  # not a number: rejected
        _with(BITQUERY_TRANSFER, "Transfer.Amount", "twelve"),  # text that is no number: rejected
        _with(BITQUERY_TRANSFER, "Transfer", None),  # a null parent: every transfer column null
        _with(BITQUERY_TRANSFER, "Transfer.Currency", None),
        _with(BITQUERY_TRANSFER, "Transfer.Type", 3),  # text sent as a number
        _with(BITQUERY_TRANSFER, "metrics", [1, "é", None, {"k": "\u2028"}]),
        _with(BITQUERY_TRANSFER, "metrics", "just text"),
        _with(BITQUERY_TRANSFER, "Block.Number", "not a number"),  # rejected by the decoder
        base.replace(b'"Amount": "8720074', b'"Amount": "\xff8720074'),  # invalid UTF-8 in raw text: rejected
        base.replace(b'"Sender": "0x0a"', rb'"Sender": "0x\u00e9\n"'),  # escapes in a string column
        json.dumps({}).encode(),  # nothing selected: the derived id hashes the record itself
        json.dumps({"metrics": None}).encode(),
    ]
    eth, bsc = {"network": "eth", "mempool": False}, {"network": "bsc", "mempool": True}
    chunks = [
        Rows("bitquery", "bitquery_evm_transfers", "s", records[:5], 1_000, eth),
        Rows("bitquery", "bitquery_evm_transfers", "s", [], 2_000, eth),
        Rows("bitquery", "bitquery_evm_transfers", "t", records[5:], 3_000, bsc),
    ]
    _check_against_reference(registry["bitquery_evm_transfers"], chunks)
    reasons = [r.reason for r in build_table(registry["bitquery_evm_transfers"], chunks).rejected]
    assert [r.split(":")[0] for r in reasons] == [
        "ValueError",
        "ValueError",
        "ArrowInvalid",
        "ValidationError",
        "UnicodeDecodeError",
    ]


def test_a_valid_flush_is_built_in_one_pass(registry, monkeypatch):
    """Many frames, several records each, several decode blocks: no record is retried alone."""
    monkeypatch.setattr(arrow_batch, "_BLOCK", 3)
    monkeypatch.setattr(arrow_batch, "_split", lambda chunks: pytest.fail("the flush was bisected"))
    ds = registry["blockdb_transfers"]
    context = {"chain_id": 1, "dataset_id": "0304"}
    chunks = [
        Rows(
            "blockdb",
            ds.name,
            "s",
            [json.dumps({**TRANSFER, "tx_index": i * 10 + j}).encode() for j in range(i)],
            1_000 + i,
            context if i % 2 else {"chain_id": i},
            is_reorg=i == 3,
            position=i,
        )
        for i in range(8)
    ]
    _check_against_reference(ds, chunks)


def test_a_frame_with_fewer_originals_than_records_loses_no_record(registry):
    """A protocol bug (raw shorter than records) must not crash the writer: the rows are kept."""
    ds = registry["blockdb_blocks"]
    records = [json.dumps({"block_number": n, "_tracing_id": f"t{n}"}).encode() for n in (1, 2)]
    rows = Rows("blockdb", ds.name, "s", records, 1, {"chain_id": 1}, raw=[b'{"original": 1}'])
    result = build_table(ds, [rows])
    assert result.table["block_number"].to_pylist() == [1, 2] and not result.rejected
    assert result.table["_raw"].to_pylist() == [r.decode() for r in records]


def test_a_run_of_frames_in_one_rows_keeps_each_records_frame(registry):
    """One Rows for a run of frames of one read: each row and each rejected record keeps the
    journal position of its own frame, and the table equals the one built frame by frame."""
    records = [{**TRANSFER, "tx_index": i, "_tracing_id": f"id{i}"} for i in range(4)]
    records[2] = {**TRANSFER, "block_number": "not a number"}
    encoded = [json.dumps(r).encode() for r in records]
    per_frame = rows(*encoded, received_at=7)
    for chunk, position in zip(per_frame, (5, 6, 8, 9), strict=True):
        chunk.received_at, chunk.position = 7, position
    run = Rows(
        "blockdb", "blockdb_transfers", "eth_transfers", list(encoded), 7, per_frame[0].context,
        position=5, positions=[5, 6, 8, 9],
    )  # fmt: skip
    merged, single = (
        build_table(registry["blockdb_transfers"], [run]),
        build_table(registry["blockdb_transfers"], per_frame),
    )
    assert merged.table.equals(single.table)
    assert merged.positions.to_pylist() == single.positions.to_pylist() == [5, 6, 9]
    ((rejected,), (expected,)) = merged.rejected, single.rejected
    assert rejected == expected and rejected.position == 8


@pytest.mark.parametrize("name", ["dataset", "date"])
def test_a_column_may_not_take_a_partition_keys_name(tmp_path, name):
    """Hive-partitioned readers would show the lake directory's value in its place."""
    (tmp_path / "_envelope.toml").write_text("")
    (tmp_path / "d.toml").write_text(f'name = "d"\n[[columns]]\nname = "{name}"\ntype = "string"\n')
    with pytest.raises(ConfigError, match=r"d.toml.columns\[0\].name: .* partition key"):
        load_registry(tmp_path)


def test_a_drift_in_most_records_is_quarantined_without_bisecting_down_to_each(registry, reader, monkeypatch):
    """Records msgspec refuses alone are rejected at once and the others built as one table: the
    same table, rejects and positions as bisection, which built tables of every size down to each
    bad record (~0.7 ms a record: a 50k-row flush of a changed field type took half a minute)."""
    ds = registry["blockdb_transfers"]
    drifted = {**TRANSFER, "block_number": {"number": 21000000}}  # a field's type changed
    good = [{**TRANSFER, "tx_index": i, "_tracing_id": f"id{i}"} for i in range(40)]
    mixes = {
        "every record": [drifted] * 60,
        "most records": [r for g in good[:20] for r in (drifted, g, drifted)],
        "and a value only Arrow refuses": [*good[:5], drifted, {**TRANSFER, "block_time": "now"}, drifted],
        "and not JSON": [drifted, b"{broken", *good[:3], b"[1,2]"],
    }
    for name, records in mixes.items():
        chunks = rows(*records)
        for i, chunk in enumerate(chunks):
            chunk.position = 100 + i
        fast, slow = build_table(ds, chunks), build_table(ds, chunks, screen=False)
        assert fast.table.equals(slow.table), name
        assert fast.positions.equals(slow.positions), name
        assert fast.rejected == slow.rejected and fast.rejected, name

    builds = 0
    build = arrow_batch._build

    def counted(*args):
        nonlocal builds
        builds += 1
        return build(*args)

    monkeypatch.setattr(arrow_batch, "_build", counted)
    result = build_table(ds, rows(*[r for g in good for r in (drifted, g)]))
    assert len(result.rejected) == 40 and result.table.num_rows == 40
    assert builds <= 2 + (40 if reader == "arrow-json" else 0)  # bisection: ~200
