"""BlockDB's hex in the views: one 0x, lower-case, whether or not the server sent the prefix."""

from __future__ import annotations

import json
from pathlib import Path

from ingest.arrow_batch import build_table
from ingest.events import Rows
from ingest.schema import Registry
from ingest.sinks.duckdb import DuckDBSink
from ingest.views import connect_for_query

T0 = 1_762_992_000 * 10**9  # 2025-11-13T00:00:00Z
A, B, C = "ab" * 20, "cd" * 20, "ef" * 20  # addresses: 20 bytes


def _rows(dataset: str, *records: dict) -> list[Rows]:
    chunks = []
    for i, record in enumerate(records):
        rows = Rows("blockdb", dataset, "s", [json.dumps(record).encode()], T0 + i)
        rows.context = {"chain_id": 1}
        chunks.append(rows)
    return chunks


def test_hashes_and_addresses_get_one_0x_whether_or_not_it_was_sent(tmp_path: Path, registry: Registry):
    """The docs say bare hex (PROTOCOLS.md 2.6), but nothing enforces it: '0x' || x made
    '0x0x...' of a prefixed value, a hash no other provider's copy of the block matches."""
    time = "2025-11-13T00:00:00Z"
    blocks = _rows(
        "blockdb_blocks",
        {
            "block_number": 100,
            "block_hash": "0x" + "AA" * 32,
            "parent_block_hash": "99" * 32,
            "timestamp_utc": time,
        },
        {
            "block_number": 101,
            "block_hash": "BB" * 32,
            "parent_block_hash": "0X" + "aa" * 32,
            "timestamp_utc": time,
        },
    )
    transfer = {"block_number": 100, "block_time": time, "tx_index": 0, "log_index": 0, "amount_raw": "1"}
    transfers = _rows(
        "blockdb_transfers",
        {**transfer, "from_address": "0x" + A.upper(), "to_address": B, "token_address": "0x" + C},
        {**transfer, "log_index": 1, "from_address": A, "to_address": "0x" + B, "token_address": None},
    )
    swap = {"block_number": 100, "block_time": time, "tx_index": 0, "log_index": 2, "amount_in": "1"}
    swaps = _rows(
        "blockdb_swaps",
        {**swap, "pool_uid": "0x" + A + "00" * 12, "token_in": "0x" + B.upper(), "token_out": C},
        {**swap, "log_index": 3, "pool_uid": A.upper() + "00" * 12, "token_in": B, "token_out": "0x" + C},
    )
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    for dataset, chunks in (
        ("blockdb_blocks", blocks),
        ("blockdb_transfers", transfers),
        ("blockdb_swaps", swaps),
    ):
        sink.write(registry[dataset], build_table(registry[dataset], chunks).table, 0, 0)
    sink.close()
    con, _ = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    assert con.sql("SELECT number, hash, parent_hash FROM blocks_history ORDER BY 1").fetchall() == [
        (100, "0x" + "aa" * 32, "0x" + "99" * 32),
        (101, "0x" + "bb" * 32, "0x" + "aa" * 32),
    ]
    assert con.sql(
        'SELECT token, from_address, to_address FROM transfers_history ORDER BY "index"'
    ).fetchall() == [
        ("0x" + C, "0x" + A, "0x" + B),
        ("native", "0x" + A, "0x" + B),
    ]
    venue, pair = "0x" + A, f"0x{B}/0x{C}"
    assert con.sql("SELECT venue, instrument, base, quote FROM trades_history").fetchall() == [
        (venue, pair, "0x" + B, "0x" + C),
        (venue, pair, "0x" + B, "0x" + C),
    ]


def test_one_swap_sent_with_and_without_0x_is_one_trade(tmp_path: Path, registry: Registry):
    """The natural key compares the hex as the views show it, so a resend that spells the pool
    and tokens another way supersedes the first copy instead of counting twice."""
    swap = {"block_number": 100, "block_time": "2025-11-13T00:00:00Z", "tx_index": 0, "log_index": 2}
    first = {**swap, "pool_uid": A + "00" * 12, "token_in": B, "token_out": C, "amount_in": "1"}
    again = {**swap, "pool_uid": "0x" + A.upper() + "00" * 12, "token_in": "0x" + B, "token_out": "0X" + C}
    chunks = _rows("blockdb_swaps", first, {**again, "amount_in": "2"})
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    sink.write(registry["blockdb_swaps"], build_table(registry["blockdb_swaps"], chunks).table, 0, 0)
    sink.close()
    con, _ = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    assert con.sql("SELECT amount FROM trades").fetchall() == [("2",)]
