"""The SQL views over stored rows: which versions of an event count, and which rows are distinct."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from ingest.arrow_batch import build_table, values_table
from ingest.buffer import Buffer, FlushPolicy
from ingest.events import Rows
from ingest.reorgs import ReorgTracker
from ingest.replay import capture_records
from ingest.sinks.duckdb import DuckDBSink
from ingest.views import connect_for_query

T0 = 1_762_992_000 * 10**9  # 2025-11-13T00:00:00Z


def store(registry, tmp_path: Path, dataset: str, chunks: list[Rows]):
    """The chunks built and stored by the DuckDB sink; a connection to query the views with."""
    return store_all(registry, tmp_path, {dataset: chunks})


def store_all(registry, tmp_path: Path, parts: dict[str, list[Rows]]):
    """Each dataset's chunks built and stored by the DuckDB sink; a connection to query with."""
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    for dataset, chunks in parts.items():
        sink.write(registry[dataset], build_table(registry[dataset], chunks).table, 0, 0)
    sink.close()
    con, _ = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    return con


def blockdb_transfer(received_at: int, *, reorg: bool = False, **record) -> Rows:
    base = {"block_number": 100, "tx_index": 0, "block_time": "2025-11-13T00:00:00Z", "amount_raw": "1"}
    rows = Rows("blockdb", "blockdb_transfers", "t", [json.dumps(base | record).encode()], received_at)
    rows.context, rows.is_reorg = {"chain_id": 1}, reorg
    return rows


def test_a_transfer_without_a_log_index_and_a_log_without_a_trace_are_two_events(tmp_path, registry):
    """concat_ws skips NULLs: the natural keys (tx 0, no log, trace '0') and (tx 0, log 0, no
    trace) both read 1|100|0|0, and `transfers` kept one of two real transfers."""
    internal = blockdb_transfer(T0, trace_address="0", amount_raw="5", _tracing_id="internal")
    erc20 = blockdb_transfer(T0 + 1, log_index=0, amount_raw="7", _tracing_id="erc20")
    con = store(registry, tmp_path, "blockdb_transfers", [internal, erc20])
    assert con.sql("SELECT tracing_id, amount_raw FROM transfers ORDER BY 1").fetchall() == [
        ("erc20", "7"),
        ("internal", "5"),
    ]


def test_on_equal_receive_times_a_correction_flagged_as_a_reorg_is_the_newer_version(tmp_path, registry):
    """An event and its correction in one socket read share a receive time."""
    old = blockdb_transfer(T0, log_index=3, amount_raw="1", _tracing_id="old")
    new = blockdb_transfer(T0, reorg=True, log_index=3, amount_raw="2", _tracing_id="new")
    for order in ([old, new], [new, old]):
        con = store(registry, tmp_path / str(id(order)), "blockdb_transfers", order)
        assert con.sql("SELECT tracing_id, amount_raw FROM transfers").fetchall() == [("new", "2")]


def test_coinapi_trades_without_a_uuid_are_never_merged_and_with_one_counted_once(tmp_path, registry):
    def trade(i: int, uuid: str | None) -> bytes:
        record = {"type": "trade", "symbol_id": "BITSTAMP_SPOT_BTC_USD", "sequence": i, "price": 100 + i}
        record |= {"time_exchange": f"2026-01-01T00:00:0{i}Z", "size": 1, "taker_side": "BUY"}
        return json.dumps(record | ({"uuid": uuid} if uuid else {})).encode()

    records = [trade(0, None), trade(1, None), trade(2, "u-2"), trade(2, "u-2")]
    rows = Rows("coinapi", "coinapi_trades", "btc", records, T0, {"connection": 1})
    con = store(registry, tmp_path, "coinapi_trades", [rows])
    assert con.sql("SELECT price FROM trades ORDER BY 1").fetchall() == [("100",), ("101",), ("102",)]


def test_no_account_update_is_final_before_a_root_is_seen(tmp_path, registry):
    record = {"context": {"slot": 500}, "value": {"lamports": 1, "owner": "o"}}
    context = {"pubkey": "Acc1", "commitment": "confirmed"}
    rows = Rows("helius", "solana_account_updates", "acc", [json.dumps(record).encode()], T0, context)
    con = store(registry, tmp_path, "solana_account_updates", [rows])
    assert con.sql("SELECT pubkey, final FROM solana_accounts").fetchall() == [("Acc1", False)]


def test_a_transaction_seen_at_two_commitments_is_one_row_at_the_higher(tmp_path, registry):
    def tx(slot: int, index: int, err: object = None) -> bytes:
        meta = {
            "err": err,
            "fee": 5000,
            "computeUnitsConsumed": 150,
            "preBalances": [9, 1],
            "postBalances": [4, 1],
        }
        result = {"transaction": {"meta": meta}, "signature": "Sig1", "slot": slot, "transactionIndex": index}
        return json.dumps(result).encode()

    rows = [
        Rows("helius", "solana_transactions", "tx", [tx(500, 3)], T0, {"commitment": "processed"}),
        Rows("helius", "solana_transactions", "tx", [tx(500, 3)], T0 + 10**9, {"commitment": "finalized"}),
        Rows("helius", "solana_roots", "roots", [b'{"root": 500}'], T0, {"commitment": None}),
    ]
    query = (
        "SELECT signature, slot, transaction_index, err, fee, commitment, final"
        " FROM solana_transactions_by_signature"
    )
    con = store(registry, tmp_path, "solana_transactions", rows[:1])
    assert con.sql(query).fetchall() == [("Sig1", 500, 3, None, 5000, "processed", False)]  # no root yet
    con.close()
    con = store(registry, tmp_path, "solana_transactions", rows[1:2])
    assert con.sql("SELECT count(*) FROM solana_transactions").fetchall() == [(2,)]
    # Received at finalized: final, whether a root was seen or not (no rootSubscribe at all, say).
    assert con.sql(query).fetchall() == [("Sig1", 500, 3, None, 5000, "finalized", True)]
    con.close()
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    sink.write(registry["solana_roots"], build_table(registry["solana_roots"], rows[2:]).table, 0, 0)
    sink.close()
    con, _ = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    assert con.sql(query).fetchall() == [("Sig1", 500, 3, None, 5000, "finalized", True)]


def test_the_highest_commitment_seen_wins_whatever_the_order_received(tmp_path, registry):
    """One account update and one transaction at finalized, then (a resend, a slower subscription)
    at confirmed and processed: one row each, at finalized, final."""
    account = json.dumps({"context": {"slot": 500}, "value": {"lamports": 1, "owner": "o"}}).encode()
    meta = {"err": None, "fee": 5000, "computeUnitsConsumed": 1, "preBalances": [], "postBalances": []}
    tx = {"transaction": {"meta": meta}, "signature": "Sig1", "slot": 500, "transactionIndex": 0}
    parts: dict[str, list[Rows]] = {"solana_account_updates": [], "solana_transactions": []}
    for i, commitment in enumerate(("finalized", "confirmed", "processed")):
        at = T0 + i * S
        parts["solana_account_updates"].append(
            Rows(
                "helius",
                "solana_account_updates",
                "acc",
                [account],
                at,
                {"pubkey": "Acc1", "commitment": commitment},
            )
        )
        parts["solana_transactions"].append(
            Rows(
                "helius",
                "solana_transactions",
                "tx",
                [json.dumps(tx).encode()],
                at,
                {"commitment": commitment},
            )
        )
    con = store_all(registry, tmp_path, parts)
    assert con.sql("SELECT pubkey, commitment, final FROM solana_accounts").fetchall() == [
        ("Acc1", "finalized", True)
    ]
    assert con.sql(
        "SELECT signature, commitment, final FROM solana_transactions_by_signature"
    ).fetchall() == [("Sig1", "finalized", True)]


def test_solana_slots_one_connections_roots_passed_over_are_never_final(tmp_path, registry):
    """A node notifies every slot it roots, in order: between two roots one connection received,
    the slots were never rooted (an abandoned fork). Between connections, or from rows stored
    without a connection id, nothing is known: there the rule is slot <= root."""

    def roots(connection: int | None, *numbers: int, subscription: str = "roots") -> list[Rows]:
        context = {"commitment": None, "connection": connection}
        return [
            Rows("helius", "solana_roots", subscription, [b'{"root": %d}' % n], T0, context) for n in numbers
        ]

    root_rows = [
        *roots(7, 100, 101, 104),  # 102-103 passed over
        *roots(8, 110, 112),  # 105-109 lie between two connections: unknown; 111 passed over
        *roots(9, 101, 104, subscription="roots_again"),  # the same range seen twice: merged
        *roots(None, 112, 120),  # stored before connection ids were kept: proves nothing
        *roots(10, 120, 121, 125),  # 122-124 passed over
        *roots(11, 130, 135),  # the node dropped root 132 for this slow reader...
        *roots(12, 130, 132, 135),  # ...which another connection received: 132 is rooted
    ]

    def account(slot: int) -> Rows:
        record = {"context": {"slot": slot}, "value": {"lamports": slot, "owner": "o"}}
        context = {"pubkey": f"Acc{slot}", "commitment": "processed"}
        return Rows("helius", "solana_account_updates", "acc", [json.dumps(record).encode()], T0, context)

    def transaction(slot: int) -> Rows:
        meta = {"err": None, "fee": 5000, "computeUnitsConsumed": 150, "preBalances": [], "postBalances": []}
        result = {
            "transaction": {"meta": meta},
            "signature": f"Sig{slot}",
            "slot": slot,
            "transactionIndex": 0,
        }
        record = json.dumps(result).encode()
        return Rows("helius", "solana_transactions", "tx", [record], T0, {"commitment": "processed"})

    slots = (102, 104, 105, 111, 113, 123, 126, 131, 132, 133, 135)
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    for dataset, chunks in (
        ("solana_roots", root_rows),
        ("solana_account_updates", [account(n) for n in slots]),
        ("solana_transactions", [transaction(n) for n in slots]),
    ):
        sink.write(registry[dataset], build_table(registry[dataset], chunks).table, 0, 0)
    sink.close()
    db, _ = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    assert db.sql("SELECT first_slot, last_slot FROM solana_unrooted ORDER BY 1").fetchall() == [
        (102, 103),
        (111, 111),
        (122, 124),
        (131, 131),
        (133, 134),
    ]
    want = [
        (102, False),  # passed over by one connection's roots: an abandoned fork
        (104, True),  # rooted
        (105, True),  # between two connections: unknown, at or below the root, final as before
        (111, False),
        (113, True),  # between roots stored without a connection id: unknown
        (123, False),
        (126, True),  # between connections again
        (131, False),
        (132, True),  # a root was seen for it: rooted, whatever another connection missed
        (133, False),
        (135, True),  # the highest root's own slot: at or below it
    ]
    assert db.sql("SELECT slot, final FROM solana_accounts ORDER BY 1").fetchall() == want
    assert db.sql("SELECT slot, final FROM solana_transactions_by_signature ORDER BY 1").fetchall() == want


def test_a_duckdb_file_from_before_a_column_was_declared_is_queryable(tmp_path, registry):
    """A daemon adds a new column when it opens the file; until then (an upgrade, an archived
    store) queries read it as nulls, as from Parquet files written before it."""
    con = duckdb.connect(str(tmp_path / "ingest.duckdb"))
    for ds in registry.values():
        con.execute(ds.create_table_sql())
    con.execute("ALTER TABLE solana_roots DROP COLUMN connection")
    con.execute(
        "INSERT INTO solana_roots (root, _provider, _subscription)"
        " VALUES (100, 'helius', 'r'), (104, 'helius', 'r')"
    )
    con.close()
    db, _ = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    assert db.sql("SELECT root, connection FROM solana_roots ORDER BY 1").fetchall() == [
        (100, None),
        (104, None),
    ]
    assert db.sql("SELECT count(*) FROM solana_unrooted").fetchall() == [(0,)]  # proves nothing
    assert db.sql("SELECT count(*) FROM coverage").fetchall() == [(0,)]  # the views after it exist too


def test_a_captures_frames_are_stamped_in_order_so_later_frames_are_the_newer_versions(tmp_path):
    capture = tmp_path / "capture.txt"
    capture.write_bytes(b'{"a":1}\n\n{"a":2}\r\n{"a":3}\n')
    records = list(capture_records(capture, "blockdb"))
    assert [r.payload for r in records] == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
    times = [r.received_at for r in records]
    assert times == sorted(set(times)) and times[0] > T0  # distinct, increasing, not 1970


def test_a_pending_transfer_is_history_not_a_canonical_transfer(tmp_path, registry):
    """A mempool stream's transfer may never be mined, and once mined it is a row of its own
    (another block, another identity): counted in `transfers`, it was one transfer twice, or one
    that never happened. Pending DEX trades likewise stay out of `trades`."""

    def tron(mempool: bool, received_at: int) -> Rows:
        block = {} if mempool else {"Number": "70000000", "Hash": "0000b1", "Time": "2025-11-13T00:00:03Z"}
        record = {"Block": block, "Transaction": {"Hash": "ab12"}}
        record["Transfer"] = {
            "Amount": "5",
            "Sender": "TAbc",
            "Receiver": "TXyz",
            "Currency": {"SmartContract": "TR7"},
        }
        rows = Rows("bitquery", "bitquery_tron_transfers", "tron", [json.dumps(record).encode()], received_at)
        rows.context = {"network": "tron", "mempool": mempool}
        return rows

    con = store(registry, tmp_path, "bitquery_tron_transfers", [tron(True, T0), tron(False, T0 + 10**9)])
    history = con.sql("SELECT block_number, pending FROM transfers_history ORDER BY received_at").fetchall()
    assert history == [(None, True), (70000000, False)]
    assert con.sql("SELECT block_number, amount FROM transfers").fetchall() == [(70000000, "5")]


S = 10**9


def blockdb_block(
    received_at: int, block_hash: str, *, reorg: bool = False, number: int = 100, parent: str = "99" * 32
) -> Rows:
    record = {"block_number": number, "block_hash": block_hash, "parent_block_hash": parent}
    record |= {"timestamp_utc": "2025-11-13T00:00:00Z", "_tracing_id": f"block-{number}-{block_hash[:4]}"}
    rows = Rows("blockdb", "blockdb_blocks", "b", [json.dumps(record).encode()], received_at)
    rows.context, rows.is_reorg = {"chain_id": 1}, reorg
    return rows


def bitquery_block(received_at: int, number: int, block_hash: str, parent: str) -> Rows:
    record = {
        "Block": {
            "Number": str(number),
            "Hash": block_hash,
            "ParentHash": parent,
            "Time": "2025-11-13T00:00:00Z",
        }
    }
    rows = Rows("bitquery", "bitquery_evm_blocks", "blocks", [json.dumps(record).encode()], received_at)
    rows.context = {"network": "eth", "mempool": False}
    return rows


def bitquery_transfer(
    received_at: int, block_hash: str, tx: str, amount: str, *, mempool: bool = False
) -> Rows:
    record = {"Block": {"Number": "100", "Hash": block_hash, "Time": "2025-11-13T00:00:00Z"}}
    record |= {"Transaction": {"Hash": tx}, "Log": {"Index": 0}}
    record["Transfer"] = {
        "Amount": amount,
        "Sender": "0x1",
        "Receiver": "0x2",
        "Currency": {"SmartContract": "0xc"},
    }
    rows = Rows(
        "bitquery",
        "bitquery_evm_transfers",
        "mempool" if mempool else "transfers",
        [json.dumps(record).encode()],
        received_at,
    )
    rows.context = {"network": "eth", "mempool": mempool}
    return rows


def test_a_blockdb_transfer_a_reorg_removed_leaves_transfers(tmp_path, registry):
    """BlockDB's transfers carry no block hash, and a reorg that removes one sends nothing for it
    (PROTOCOLS.md 2.10): one received before its height's correction is of the old branch."""
    con = store_all(
        registry,
        tmp_path,
        {
            "blockdb_blocks": [
                blockdb_block(T0, "aa" * 32),
                blockdb_block(T0 + 5 * S, "bb" * 32, reorg=True),
            ],
            "blockdb_transfers": [
                blockdb_transfer(T0, tx_index=0, amount_raw="1", _tracing_id="a0"),
                blockdb_transfer(T0, tx_index=1, amount_raw="2", _tracing_id="a1"),  # not on the new branch
                blockdb_transfer(T0 + 5 * S, reorg=True, tx_index=0, amount_raw="3", _tracing_id="b0"),
                blockdb_transfer(T0 + 6 * S, tx_index=2, amount_raw="4", _tracing_id="b2"),  # sent after it
            ],
        },
    )
    assert con.sql("SELECT hash FROM blocks").fetchall() == [("0x" + "bb" * 32,)]
    assert con.sql("SELECT tracing_id, amount_raw FROM transfers ORDER BY 1").fetchall() == [
        ("b0", "3"),
        ("b2", "4"),
    ]
    assert con.execute("SELECT count(*) FROM transfers_history").fetchone() == (4,)


@pytest.mark.parametrize(
    ("blocks", "transfers", "canonical"),
    [
        pytest.param(
            # 100a is replaced by 100b (its child 101 names it); then 100a comes again (a resend
            # after a reconnect), and a lagging transfers stream sends one more of the old branch.
            [(0, 100, "0xa", "0x9"), (1, 100, "0xb", "0x9"), (2, 101, "0xb1", "0xb"), (3, 100, "0xa", "0x9")],
            [(2, "0xb", "0xt1", "5"), (4, "0xa", "0xt0", "7")],
            "0xb",
            id="a late resend of a replaced block",
        ),
        pytest.param(
            # Bitquery's default `trigger_on: all` pushes branch blocks too: u100 comes after 101,
            # which was built on a100.
            [(0, 100, "0xa", "0x9"), (1, 101, "0xa1", "0xa"), (2, 100, "0xu", "0x9")],
            [(1, "0xa", "0xt1", "5"), (2, "0xu", "0xt2", "7")],
            "0xa",
            id="a side-branch block",
        ),
    ],
)
def test_the_height_keeps_the_block_the_chain_was_built_on(tmp_path, registry, blocks, transfers, canonical):
    """Neither replaces the height's block in any canonical view, nor brings its transfers in."""
    con = store_all(
        registry,
        tmp_path,
        {
            "bitquery_evm_blocks": [bitquery_block(T0 + at * S, n, h, parent) for at, n, h, parent in blocks],
            "bitquery_evm_transfers": [
                bitquery_transfer(T0 + at * S, h, tx, amount) for at, h, tx, amount in transfers
            ],
        },
    )
    child = "0xb1" if canonical == "0xb" else "0xa1"
    for view in ("blocks", "block_hashes"):
        assert con.sql(f"SELECT number, hash FROM {view} ORDER BY number").fetchall() == [
            (100, canonical),
            (101, child),
        ]
    kept = [(h, amount) for _, h, _, amount in transfers if h == canonical]
    assert con.sql("SELECT block_hash, amount FROM transfers").fetchall() == kept


def test_a_hash_sent_again_as_a_correction_is_a_reorg_back(tmp_path, registry):
    con = store_all(
        registry,
        tmp_path,
        {
            "blockdb_blocks": [
                blockdb_block(T0, "aa" * 32),
                blockdb_block(T0 + 1 * S, "bb" * 32, reorg=True),
                blockdb_block(T0 + 2 * S, "aa" * 32, reorg=True),
            ]
        },
    )
    assert con.sql("SELECT hash, is_reorg FROM blocks").fetchall() == [("0x" + "aa" * 32, True)]


@pytest.mark.parametrize("pending_hash", ["", "0xp"], ids=["empty header", "another hash"])
def test_a_pending_row_neither_hides_a_transfer_nor_announces_a_hash(tmp_path, registry, pending_hash):
    """A mempool row's block context has no hash yet (Bitquery sends ""), and a pending row names
    no block even where it carries a hash: received after the block, such a row at the height
    changes neither the height's hash nor its transfers."""
    con = store_all(
        registry,
        tmp_path,
        {
            "bitquery_evm_blocks": [bitquery_block(T0, 100, "0xb", "0x9")],
            "bitquery_evm_transfers": [
                bitquery_transfer(T0 + S, "0xb", "0xt1", "5"),
                bitquery_transfer(T0 + 2 * S, pending_hash, "0xt2", "9", mempool=True),
            ],
        },
    )
    assert con.sql("SELECT number, hash FROM block_hashes").fetchall() == [(100, "0xb")]
    assert con.sql("SELECT block_hash, amount FROM transfers").fetchall() == [("0xb", "5")]
    assert con.sql("SELECT block_hash, pending FROM transfers_history ORDER BY received_at").fetchall() == [
        ("0xb", False),
        (pending_hash or None, True),
    ]


def test_two_versions_of_a_height_in_one_read_give_one_answer_whatever_the_stored_order(tmp_path, registry):
    """Equal times, neither a correction: the lower hash, in either stored order."""
    answers = set()
    for i, order in enumerate((["0xa", "0xb"], ["0xb", "0xa"])):
        chunks = [bitquery_block(T0, 100, h, "0x9") for h in order]
        con = store(registry, tmp_path / str(i), "bitquery_evm_blocks", chunks)
        answers.add(
            (
                con.execute("SELECT hash FROM blocks").fetchone(),
                con.execute("SELECT hash FROM block_hashes").fetchone(),
            )
        )
    assert answers == {(("0xa",), ("0xa",))}


def test_on_equal_receive_times_a_block_correction_is_the_heights_block(tmp_path, registry):
    """A block and a correction to another hash in one read: the correction wins over the lower
    hash, and of the corrected hash's two versions `blocks` keeps the flagged one."""
    bb = "0x" + "bb" * 32
    for i, flagged_first in enumerate((True, False)):
        versions = [blockdb_block(T0, "bb" * 32, reorg=True), blockdb_block(T0, "bb" * 32)]
        blocks = [blockdb_block(T0, "aa" * 32), *(versions if flagged_first else versions[::-1])]
        con = store(registry, tmp_path / str(i), "blockdb_blocks", blocks)
        assert con.sql("SELECT hash FROM block_hashes").fetchall() == [(bb,)]
        assert con.sql("SELECT hash, is_reorg FROM blocks").fetchall() == [(bb, True)]
        assert con.execute("SELECT count(*) FROM blocks_history").fetchone() == (3,)


def test_blockdb_rows_in_the_same_read_as_a_block_correction(tmp_path, registry):
    """A -> B -> C, C half a second after B. A correction received with B's block correction (at
    the time C's replaced) is of a replaced branch; an unflagged row received with C's correction
    is not received before it: both boundaries are the README's ("at or before", "before")."""
    con = store_all(
        registry,
        tmp_path,
        {
            "blockdb_blocks": [
                blockdb_block(T0, "aa" * 32),
                blockdb_block(T0 + 2 * S, "bb" * 32, reorg=True),
                blockdb_block(T0 + 2 * S + S // 2, "cc" * 32, reorg=True),
            ],
            "blockdb_transfers": [
                blockdb_transfer(T0 + 2 * S, reorg=True, tx_index=1, amount_raw="2", _tracing_id="b1"),
                blockdb_transfer(
                    T0 + 2 * S + S // 2, reorg=True, tx_index=0, amount_raw="3", _tracing_id="c0"
                ),
                blockdb_transfer(T0 + 2 * S + S // 2, tx_index=2, amount_raw="4", _tracing_id="c2"),
            ],
        },
    )
    assert con.sql("SELECT tracing_id, amount_raw FROM transfers ORDER BY 1").fetchall() == [
        ("c0", "3"),
        ("c2", "4"),
    ]


def test_erc1155_batch_items_of_one_log_are_distinct_transfers(tmp_path, registry):
    """A TransferBatch log sends one row per token id, all at one (block, tx, log) key."""
    items = [blockdb_transfer(T0, log_index=7, token_id=str(i), _tracing_id=f"x{i}") for i in (1, 2)]
    con = store(registry, tmp_path, "blockdb_transfers", items)
    assert con.sql("SELECT tracing_id FROM transfers ORDER BY 1").fetchall() == [("x1",), ("x2",)]


def test_a_block_gap_settled_by_a_late_block_across_an_hour_counts_in_coverage(tmp_path, registry):
    """Blocks 99 and 102 before an hour ends, 100 just after it; 101 never comes. The gap's end
    (102's receipt) is before its start (100's): it still counts, once."""
    hour = T0 + 3600 * S
    gaps: list = []
    tracker = ReorgTracker(lambda _row: None, lambda gap, at: gaps.append((gap, at)))
    table = pa.table(
        {
            "_provider": ["bitquery"] * 3,
            "network": ["eth"] * 3,
            "block_number": pa.array([99, 102, 100], pa.int64()),
            "block_hash": ["0xa99", "0xa102", "0xa100"],
            "block_parent_hash": ["0xa98", "0xa101", "0xa99"],
            "_subscription": ["blocks"] * 3,
            "_received_at": pa.array([hour - 10 * S, hour - S, hour + S], pa.timestamp("ns", "UTC")),
            "_is_reorg": [False] * 3,
        }
    )
    tracker.observe("bitquery_evm_blocks", table, pa.array([1, 2, 3], pa.int64()))
    tracker.close()
    [(gap, detected_at)] = gaps
    assert gap.ended_at < gap.started_at
    buffer = Buffer(registry, FlushPolicy())
    buffer.gap(gap, detected_at)
    [flush] = buffer.take_derived()
    sink = DuckDBSink(tmp_path / "ingest.duckdb")
    sink.open(registry.values())
    sink.write(registry["gaps"], values_table(registry["gaps"], flush.values), 0, 0)
    sink.close()
    con, _ = connect_for_query(registry, tmp_path / "ingest.duckdb", None)
    assert con.execute("SELECT sum(block_gaps) FROM coverage").fetchone() == (1,)


def test_a_correction_newer_than_the_block_above_it_is_the_heights_block(tmp_path, registry):
    """BlockDB corrects 100 after 101 (built on the old 100) was sent: the correction is newer
    than 101's word on its parent."""
    child = blockdb_block(T0 + S, "cc" * 32, number=101, parent="aa" * 32)
    blocks = [blockdb_block(T0, "aa" * 32), child, blockdb_block(T0 + 5 * S, "bb" * 32, reorg=True)]
    con = store_all(registry, tmp_path, {"blockdb_blocks": blocks})
    assert con.sql("SELECT number, hash FROM blocks ORDER BY number").fetchall() == [
        (100, "0x" + "bb" * 32),
        (101, "0x" + "cc" * 32),
    ]


def test_a_blockdb_correction_sent_again_drops_no_new_row(tmp_path, registry):
    """BlockDB re-sends recent updates after a reconnect, the correction among them: rows of the
    new branch received in between do not look old for it."""
    con = store_all(
        registry,
        tmp_path,
        {
            "blockdb_blocks": [
                blockdb_block(T0, "aa" * 32),
                blockdb_block(T0 + 5 * S, "bb" * 32, reorg=True),
                blockdb_block(T0 + 20 * S, "bb" * 32, reorg=True),  # re-sent after a reconnect
            ],
            "blockdb_transfers": [
                blockdb_transfer(T0, tx_index=1, amount_raw="2", _tracing_id="a1"),  # old branch
                blockdb_transfer(T0 + 6 * S, tx_index=3, amount_raw="5", _tracing_id="b3"),
            ],
        },
    )
    assert con.sql("SELECT tracing_id FROM transfers ORDER BY 1").fetchall() == [("b3",)]


def blockdb_swap(received_at: int, *, reorg: bool = False, **record) -> Rows:
    base = {"block_number": 100, "tx_index": 0, "block_time": "2025-11-13T00:00:00Z", "amount_in": "1"}
    base |= {"pool_uid": "ab" * 32, "token_in": "cd" * 20, "token_out": "ef" * 20}
    rows = Rows("blockdb", "blockdb_swaps", "s", [json.dumps(base | record).encode()], received_at)
    rows.context, rows.is_reorg = {"chain_id": 1}, reorg
    return rows


def bitquery_dex_trade(
    received_at: int, block_hash: str, tx: str, amount: str, *, mempool: bool = False
) -> Rows:
    block = {} if mempool else {"Number": "100", "Hash": block_hash, "Time": "2025-11-13T00:00:00Z"}
    record = {"Block": block, "Transaction": {"Hash": tx}, "Log": {"Index": 0}}
    record["Trade"] = {"Buy": {"Amount": amount, "Price": 1.5}, "Sell": {"Amount": "1"}}
    rows = Rows("bitquery", "bitquery_evm_dex_trades", "dex", [json.dumps(record).encode()], received_at)
    rows.context = {"network": "eth", "mempool": mempool}
    return rows


def test_trades_keep_the_canonical_branch_and_leave_pending_and_superseded_rows_out(tmp_path, registry):
    """`trades` applies the rules `transfers` does. Bitquery: a trade in a replaced block, and a
    pending one, are left out. BlockDB: a swap received before its height's block correction is of
    the old branch; of a swap and its correction received in one read, the correction counts."""
    for i, correction_first in enumerate((True, False)):
        same_read = [
            blockdb_swap(T0 + 5 * S, reorg=True, tx_index=0, amount_in="3", _tracing_id="b0"),
            blockdb_swap(T0 + 5 * S, tx_index=0, amount_in="9", _tracing_id="b0 unflagged"),
        ]
        con = store_all(
            registry,
            tmp_path / str(i),
            {
                "bitquery_evm_blocks": [
                    bitquery_block(T0, 100, "0xa", "0x9"),
                    bitquery_block(T0 + S, 100, "0xb", "0x9"),
                    bitquery_block(T0 + 2 * S, 101, "0xb1", "0xb"),
                ],
                "bitquery_evm_dex_trades": [
                    bitquery_dex_trade(T0, "0xa", "0xt1", "5"),
                    bitquery_dex_trade(T0 + S, "0xb", "0xt2", "7"),
                    bitquery_dex_trade(T0 + 3 * S, "", "0xt3", "8", mempool=True),
                ],
                "blockdb_blocks": [
                    blockdb_block(T0, "aa" * 32),
                    blockdb_block(T0 + 5 * S, "bb" * 32, reorg=True),
                ],
                "blockdb_swaps": [
                    blockdb_swap(T0, tx_index=1, amount_in="2", _tracing_id="a1"),  # not on the new branch
                    *(same_read if correction_first else same_read[::-1]),
                    blockdb_swap(T0 + 6 * S, tx_index=2, amount_in="4", _tracing_id="b2"),
                ],
            },
        )
        assert con.sql(
            "SELECT provider, tracing_id, amount FROM trades WHERE provider = 'blockdb' ORDER BY 2"
        ).fetchall() == [
            ("blockdb", "b0", "3"),
            ("blockdb", "b2", "4"),
        ]
        assert con.sql("SELECT block_hash, amount FROM trades WHERE provider = 'bitquery'").fetchall() == [
            ("0xb", "7")
        ]
        assert con.execute("SELECT count(*) FROM trades_history").fetchone() == (7,)


@pytest.mark.parametrize("last", ["cc" * 32, "aa" * 32], ids=["to a third branch", "back to the first"])
def test_a_height_reorged_twice_keeps_only_the_last_branchs_rows(tmp_path, registry, last):
    """A, then B (corrected, 3 rows), then `last` (corrected, 2 rows): B's third row is of a
    replaced branch though flagged as a correction, and nothing at its key supersedes it. Every
    correction was exempt from the cutoff, so `transfers` and `trades` kept it beside the last
    branch's rows. The last branch's second row comes just ahead of its block's correction
    (BlockDB keeps no order between datasets): a correction sent after B's, it is kept."""
    rows: dict[str, list[Rows]] = {"blockdb_blocks": [], "blockdb_transfers": [], "blockdb_swaps": []}
    for at, block_hash, n, branch in ((0, "aa" * 32, 2, "a"), (2, "bb" * 32, 3, "b"), (4, last, 2, "c")):
        reorg = at > 0
        rows["blockdb_blocks"].append(blockdb_block(T0 + at * S, block_hash, reorg=reorg))
        for i in range(n):
            received_at = T0 + at * S - (S // 2 if branch == "c" and i == 1 else 0)
            record = {"tx_index": i, "log_index": 0, "_tracing_id": f"{branch}{i}"}
            amount = f"{at}{i}"
            rows["blockdb_transfers"].append(
                blockdb_transfer(received_at, reorg=reorg, amount_raw=amount, **record)
            )
            rows["blockdb_swaps"].append(blockdb_swap(received_at, reorg=reorg, amount_in=amount, **record))
    con = store_all(registry, tmp_path, rows)
    assert con.sql("SELECT hash FROM blocks").fetchall() == [("0x" + last,)]
    assert con.sql("SELECT tracing_id, amount_raw FROM transfers ORDER BY 1").fetchall() == [
        ("c0", "40"),
        ("c1", "41"),
    ]
    assert con.sql("SELECT tracing_id, amount FROM trades ORDER BY 1").fetchall() == [
        ("c0", "40"),
        ("c1", "41"),
    ]


def test_rows_sent_after_their_blocks_correction_leave_with_their_branch(tmp_path, registry):
    """A -> B -> C two seconds apart, each branch's rows a tenth of a second after its block's
    correction (block first, then its rows): B's row at a key C has not is of a replaced branch."""
    late = S // 10
    con = store_all(
        registry,
        tmp_path,
        {
            "blockdb_blocks": [
                blockdb_block(T0, "aa" * 32),
                blockdb_block(T0 + 2 * S, "bb" * 32, reorg=True),
                blockdb_block(T0 + 4 * S, "cc" * 32, reorg=True),
            ],
            "blockdb_transfers": [
                blockdb_transfer(T0, tx_index=0, amount_raw="1", _tracing_id="a0"),
                blockdb_transfer(T0 + 2 * S + late, reorg=True, tx_index=0, amount_raw="2", _tracing_id="b0"),
                blockdb_transfer(T0 + 2 * S + late, reorg=True, tx_index=1, amount_raw="3", _tracing_id="b1"),
                blockdb_transfer(T0 + 4 * S + late, reorg=True, tx_index=0, amount_raw="4", _tracing_id="c0"),
            ],
        },
    )
    assert con.sql("SELECT tracing_id, amount_raw FROM transfers").fetchall() == [("c0", "4")]


def test_a_height_reorged_back_and_forth_keeps_rows_sent_since_its_block_came_back(tmp_path, registry):
    """A, B, A again, B again (each flagged): A's row sent after A came back is of a replaced
    branch, though received after B was first sent as a correction."""
    con = store_all(
        registry,
        tmp_path,
        {
            "blockdb_blocks": [
                blockdb_block(T0, "aa" * 32),
                blockdb_block(T0 + 2 * S, "bb" * 32, reorg=True),
                blockdb_block(T0 + 4 * S, "aa" * 32, reorg=True),
                blockdb_block(T0 + 6 * S, "bb" * 32, reorg=True),
            ],
            "blockdb_transfers": [
                blockdb_transfer(T0, tx_index=0, amount_raw="1", _tracing_id="a0"),
                blockdb_transfer(T0 + 2 * S, reorg=True, tx_index=0, amount_raw="2", _tracing_id="b0"),
                blockdb_transfer(T0 + 3 * S, tx_index=1, amount_raw="3", _tracing_id="b1"),
                blockdb_transfer(T0 + 4 * S, reorg=True, tx_index=0, amount_raw="1", _tracing_id="a0 again"),
                blockdb_transfer(T0 + 5 * S, tx_index=2, amount_raw="4", _tracing_id="a2"),
                blockdb_transfer(T0 + 6 * S, reorg=True, tx_index=0, amount_raw="2", _tracing_id="b0 again"),
                blockdb_transfer(T0 + 6 * S, reorg=True, tx_index=1, amount_raw="3", _tracing_id="b1 again"),
                blockdb_transfer(T0 + 7 * S, tx_index=3, amount_raw="5", _tracing_id="b3"),
            ],
        },
    )
    assert con.sql("SELECT tracing_id FROM transfers ORDER BY 1").fetchall() == [
        ("b0 again",),
        ("b1 again",),
        ("b3",),
    ]
