"""Raw records -> Arrow tables by the declared schema: types, exactness, envelope columns, quarantine."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa

from ingest.arrow_batch import build_table
from ingest.events import Rows

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
    assert row["transfer_type"] == "2"
    assert row["block_time"] == datetime(2025, 11, 11, 18, 42, 15, 123000, tzinfo=UTC)
    assert row["_event_time"] == row["block_time"]
    assert row["_tracing_id"] == row["_dedup_key"] == "0304aa"
    assert row["_provider"] == "blockdb" and row["_subscription"] == "eth_transfers"
    assert row["_dataset"] == "blockdb_transfers"
    assert json.loads(row["_raw"]) == TRANSFER
    assert result.table["_received_at"].type == pa.timestamp("ns", tz="UTC")
    assert result.table["_received_at"].cast(pa.int64()).to_pylist() == [1_700_000_000_000_001_000]


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
