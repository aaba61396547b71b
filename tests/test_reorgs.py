"""ReorgTracker on hand-made block streams: exact reorg and gap rows, in order and out of order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ingest.events import Gap
from ingest.reorgs import _LATE, ReorgTracker, recent_blocks_sql
from ingest.schema import load_registry
from ingest.sinks.duckdb import DuckDBSink

Block = tuple[int, str, str] | tuple[int, str, str, bool]  # number, hash, parent hash[, is_reorg]
SECOND = 1_000_000_000


def _table(blocks: list[Block], start: int) -> pa.Table:
    n = len(blocks)
    return pa.table(
        {
            "_provider": ["bitquery"] * n,
            "network": ["eth"] * n,
            "block_number": pa.array([b[0] for b in blocks], pa.int64()),
            "block_hash": [b[1] for b in blocks],
            "block_parent_hash": [b[2] for b in blocks],
            "_subscription": ["s"] * n,
            "_received_at": pa.array([SECOND * (start + i + 1) for i in range(n)], pa.timestamp("ns", "UTC")),
            "_is_reorg": [len(b) > 3 and b[3] for b in blocks],
        }
    )


def feed(blocks: list[Block], batch: int = 1) -> tuple[list[dict[str, Any]], list[Gap]]:
    """Blocks in this order, `batch` to a table; block i is received at second i + 1, position i + 1."""
    reorgs: list[dict[str, Any]] = []
    gaps: list[Gap] = []
    tracker = ReorgTracker(reorgs.append, lambda gap, _at: gaps.append(gap))
    for start in range(0, len(blocks), batch):
        part = blocks[start : start + batch]
        positions = pa.array(range(start + 1, start + len(part) + 1), pa.int64())
        tracker.observe("bitquery_evm_blocks", _table(part, start), positions)
    tracker.close()
    return reorgs, gaps


def chain(first: int, last: int, branch: str = "a", fork: int | None = None) -> list[Block]:
    """Blocks first..last of `branch`; below `fork` (if given) their parents are on branch a."""
    out = []
    for n in range(first, last + 1):
        parent_branch = "a" if fork is not None and n - 1 < fork else branch
        out.append((n, f"0x{branch}{n}", f"0x{parent_branch}{n - 1}"))
    return out


def reorg(first: int, old: list[str], new: list[str], how: str, at: int) -> dict[str, Any]:
    return {
        "provider": "bitquery",
        "chain": "eth",
        "first_height": first,
        "last_height": first + len(old) - 1,
        "depth": len(old),
        "old_hashes": ["0x" + h for h in old],
        "new_hashes": ["0x" + h for h in new],
        "detected_at": at * SECOND,
        "how": how,
        "id": f"bitquery|eth|{first}|{new[0]}",
        "position": at,
    }


def gap(expected: int, received: int, started: int, ended: int) -> Gap:
    """A block gap: heights expected..received-1 missing, between blocks received at those seconds."""
    return Gap("bitquery", "s", "block", started * SECOND, ended * SECOND, "eth", expected, received, ended)


def by_number(blocks: list[Block], *numbers: int) -> list[Block]:
    index = {b[0]: b for b in blocks}
    return [index[n] for n in numbers]


def test_an_in_order_chain_is_neither_reorg_nor_gap():
    assert feed(chain(100, 200)) == ([], [])
    assert feed(chain(100, 200), batch=7) == ([], [])


def test_a_block_received_twice_is_nothing():
    a = chain(100, 102)
    assert feed([a[0], a[1], a[1], a[2]]) == ([], [])


def test_heights_out_of_order_and_filled_later_are_no_gap():
    a = chain(100, 103)
    assert feed(by_number(a, 100, 102, 101, 103)) == ([], [])
    # filled later, but within _LATE heights of the highest seen
    late = [*chain(100, 100), *chain(102, 100 + _LATE), *chain(101, 101)]
    assert feed(late) == ([], [])


def test_a_real_hole_is_one_gap_reported_once():
    blocks = [*chain(100, 101), *chain(103, 103 + 2 * _LATE)]  # 102 never comes
    assert feed(blocks) == ([], [gap(102, 103, 2, 3)])
    assert feed(blocks, batch=10) == ([], [gap(102, 103, 2, 3)])
    # the stream ends before the hole is _LATE heights behind: close() reports it, once
    assert feed([*chain(100, 101), *chain(103, 105)]) == ([], [gap(102, 103, 2, 3)])


def test_a_hole_filled_in_part_is_what_stays_missing():
    blocks = [*chain(100, 100), *chain(105, 106), *chain(102, 102)]  # 101, 103 and 104 never come
    assert feed(blocks) == ([], [gap(101, 102, 1, 4), gap(103, 105, 4, 2)])


def test_a_missing_height_is_a_gap_only_once_the_stream_is_32_heights_past_it():
    """The README's 32, written out (the tests above take the window from the module): 101
    arriving while the head is 133 fills its hole; once the head is 134, it is a gap."""
    assert feed([*chain(100, 100), *chain(102, 133), *chain(101, 101)]) == ([], [])
    assert feed([*chain(100, 100), *chain(102, 134), *chain(101, 101)]) == ([], [gap(101, 102, 1, 2)])


def test_a_height_later_than_the_window_does_not_undo_or_repeat_its_gap():
    blocks = [*chain(100, 100), *chain(102, 102 + _LATE), *chain(101, 101)]
    assert feed(blocks) == ([], [gap(101, 102, 1, 2)])


def test_a_reorg_delivered_in_order_is_one_rehash_row():
    """b101 alone could be a side branch (a102 names a101); b102 replaces a102, whose height has
    no child yet, and its parent b101 follows: the reorg is found at b102, one row."""
    old = chain(100, 102)
    new = chain(101, 103, "b", fork=101)
    reorgs, gaps = feed([*old, *new])
    assert gaps == []
    assert reorgs == [reorg(101, ["a101", "a102"], ["b101", "b102"], "rehash", 5)]


def test_a_side_branch_block_is_no_reorg():
    """Bitquery's default `trigger_on: all` pushes branch blocks too: u101 came after a102,
    which names a101, and no block was built on it."""
    reorgs, gaps = feed([*chain(100, 102), (101, "0xu101", "0xa100"), *chain(103, 103)])
    assert (reorgs, gaps) == ([], [])


def test_a_branch_that_overtakes_after_looking_like_a_side_branch_is_one_reorg():
    """b101 and b102 came while a102 and a103 named the a branch; b103 replaces the head, and
    the parents the b blocks named, seen before, replace the heights below it down to the fork."""
    old = chain(100, 103)
    new = chain(101, 104, "b", fork=101)
    reorgs, gaps = feed([*old, *new])
    assert gaps == []
    assert reorgs == [reorg(101, ["a101", "a102", "a103"], ["b101", "b102", "b103"], "rehash", 7)]


def test_a_child_before_its_parent_is_one_reorg_row():
    old = chain(100, 101)
    new = chain(101, 103, "b", fork=101)
    reorgs, gaps = feed([*old, *by_number(new, 102, 101, 103)])
    assert gaps == []
    assert reorgs == [reorg(101, ["a101"], ["b101"], "parent", 3)]
    assert len({r["id"] for r in reorgs}) == len(reorgs)


def test_a_deeper_reorg_delivered_tip_first_is_one_row():
    old = chain(100, 103)
    new = chain(101, 105, "b", fork=101)
    reorgs, gaps = feed([*old, *by_number(new, 104, 101, 102, 103, 105)])
    assert gaps == []
    assert reorgs == [reorg(101, ["a101", "a102", "a103"], ["b101", "b102", "b103"], "parent", 5)]


def test_a_parent_replaced_but_never_seen_is_still_a_reorg():
    old = chain(100, 101)
    new = chain(102, 103, "b", fork=101)  # b101 itself never arrives
    reorgs, _ = feed([*old, *new])
    assert reorgs == [reorg(101, ["a101"], ["b101"], "parent", 3)]


def test_a_block_its_childs_parent_contradicts_is_a_side_branch():
    old = chain(100, 101)
    child = (102, "0xb102", "0xb101")
    sibling = (101, "0xc101", "0xa100")  # not the block 102 was built on
    reorgs, _ = feed([*old, child, sibling, (103, "0xb103", "0xb102")])
    assert reorgs == [reorg(101, ["a101"], ["b101"], "parent", 3)]


def test_two_reorgs_apart_are_two_rows():
    blocks = [
        *chain(100, 102),
        *chain(102, 105, "b", fork=102),
        (105, "0xc105", "0xb104"),
        (106, "0xc106", "0xc105"),
    ]
    reorgs, gaps = feed(blocks)
    assert gaps == []
    assert reorgs == [
        reorg(102, ["a102"], ["b102"], "rehash", 4),
        reorg(105, ["b105"], ["c105"], "rehash", 8),
    ]


def test_heights_waiting_to_be_settled_stay_bounded():
    reorgs: list[dict[str, Any]] = []
    gaps: list[Gap] = []
    tracker = ReorgTracker(reorgs.append, lambda gap, _at: gaps.append(gap))
    blocks = chain(100, 1100)[::2]  # every other height missing: 500 one-height holes
    for start in range(0, len(blocks), 50):
        part = blocks[start : start + 50]
        positions = pa.array(range(start + 1, start + len(part) + 1), pa.int64())
        tracker.observe("bitquery_evm_blocks", _table(part, start), positions)
        assert all(len(state.pending) <= _LATE for state in tracker._chains.values())
    tracker.close()
    assert reorgs == [] and [(g.expected, g.received) for g in gaps] == [
        (n, n + 1) for n in range(101, 1100, 2)
    ]


# -- across a restart: the tracker seeded from the store ------------------------------------------


def _stored(
    tmp_path: Path, blocks: list[tuple[int, str, int, bool] | tuple[int, str, int, bool, str]]
) -> pa.Table:
    """What `recent_blocks_sql` reads back from a real DuckDB store holding these Bitquery blocks
    (number, hash, received at second, is_reorg[, parent hash])."""
    path = tmp_path / "store.duckdb"
    sink = DuckDBSink(path)
    sink.open(load_registry().values())  # the tables as the daemon makes them
    sink.close()
    with duckdb.connect(str(path)) as con:
        con.executemany(
            "INSERT INTO bitquery_evm_blocks (_provider, network, block_number, block_hash, _received_at,"
            " _is_reorg, block_parent_hash) VALUES ('bitquery', 'eth', ?, ?, make_timestamp_ns(?), ?, ?)",
            [(b[0], b[1], b[2] * SECOND, b[3], b[4] if len(b) > 4 else None) for b in blocks],
        )
    sink.open(load_registry().values())
    try:
        return sink.read(recent_blocks_sql("bitquery_evm_blocks"))
    finally:
        sink.close()


def seeded_feed(
    stored: pa.Table, blocks: list[Block], settled: bool = True
) -> tuple[list[dict[str, Any]], list[Gap]]:
    """The tracker seeded with `stored`, then fed `blocks` one a table, block i received at second
    100 + i + 1 with journal position i + 1."""
    reorgs: list[dict[str, Any]] = []
    gaps: list[Gap] = []
    tracker = ReorgTracker(reorgs.append, lambda gap, _at: gaps.append(gap))
    tracker.seed(stored, settled=settled)
    for i, block in enumerate(blocks):
        positions = pa.array([i + 1], pa.int64())
        tracker.observe("bitquery_evm_blocks", _table([block], 100 + i), positions)
    tracker.close()
    return reorgs, gaps


def seeded(stored: pa.Table) -> ReorgTracker:
    tracker = ReorgTracker(lambda _row: None, lambda _gap, _at: None)
    tracker.seed(stored)
    return tracker


def test_the_store_seeds_each_of_its_last_heights_with_the_hash_the_views_give_it(tmp_path):
    stored = _stored(
        tmp_path,
        [(n, f"0xa{n}", n - 99, False) for n in range(100, 111)]
        + [(110, "0xb110", 20, True), (109, "0xc109", 21, False)]  # replaced later: the newest wins
        + [(110, "0xd110", 20, False)],  # a tie on receive time: the correction's hash is the newer one
    )
    state = seeded(stored)._chains[("bitquery", "eth")]
    assert sorted(state.hashes) == list(range(100, 111))
    assert (state.hashes[109], state.hashes[110]) == ("c109", "b110")
    # Settled as of the head's first receipt; the stream last heard at its last.
    assert (state.head, state.settled, state.settled_at, state.last_at) == (
        110,
        110,
        11 * SECOND,
        20 * SECOND,
    )


def test_the_store_gives_only_the_last_remembered_heights(tmp_path):
    stored = _stored(tmp_path, [(n, f"0xa{n}", 1, False) for n in range(1, 1001)])
    # The README's 512 written out: with the module's constant the test followed any change of it.
    assert sorted(stored["number"].to_pylist()) == list(range(1001 - 512, 1001))


def test_a_side_branch_block_stored_last_is_no_reorg_after_a_restart(tmp_path):
    """The store holds a100, a101 built on it, and the side block u100 received last: seeded as
    live, 100 is a100, so a101 sent again (a resend, a replay) replaces nothing."""
    stored = _stored(
        tmp_path,
        [
            (100, "0xa100", 1, False, "0xa99"),
            (101, "0xa101", 2, False, "0xa100"),
            (100, "0xu100", 3, False, "0xa99"),
        ],
    )
    assert seeded(stored)._chains[("bitquery", "eth")].hashes[100] == "a100"
    reorgs, _ = seeded_feed(stored, [(101, "0xa101", "0xa100"), (102, "0xa102", "0xa101")])
    assert reorgs == []


def test_a_reorg_of_a_height_stored_before_a_restart_is_one_row(tmp_path):
    stored = _stored(tmp_path, [(n, f"0xa{n}", n - 99, False) for n in range(100, 111)])
    # After the restart the provider's new branch replaces 109 and 110: the child comes first.
    reorgs, gaps = seeded_feed(stored, [(111, "0xb111", "0xb110"), (110, "0xb110", "0xb109")])
    assert reorgs == [{**reorg(109, ["a109", "a110"], ["b109", "b110"], "parent", 101), "position": 1}]
    assert gaps == []


def test_heights_missed_while_the_daemon_was_down_are_one_gap(tmp_path):
    stored = _stored(tmp_path, [(n, f"0xa{n}", n - 99, False) for n in range(100, 111)])
    after = chain(120, 120 + _LATE)
    reorgs, gaps = seeded_feed(stored, after)
    assert reorgs == []
    # From the last stored block (received at second 11) to the first after the restart (second 101).
    assert gaps == [Gap("bitquery", "s", "block", 11 * SECOND, 101 * SECOND, "eth", 111, 120, 1)]


def test_a_gap_after_a_restart_starts_at_the_first_receipt_of_the_stored_head(tmp_path):
    """The head height received twice (a resend): the gap starts at its first receipt, as it would
    have live, so a gap derived again by a replay keeps its id."""
    stored = _stored(
        tmp_path, [(n, f"0xa{n}", n - 99, False) for n in range(100, 111)] + [(110, "0xa110", 50, False)]
    )
    _, gaps = seeded_feed(stored, chain(120, 120 + _LATE))
    assert [(g.started_at, g.expected, g.received) for g in gaps] == [(11 * SECOND, 111, 120)]


def test_a_store_behind_another_sink_gives_hashes_but_no_gap(tmp_path):
    stored = _stored(tmp_path, [(n, f"0xa{n}", n - 99, False) for n in range(100, 111)])
    reorgs, gaps = seeded_feed(stored, chain(120, 120 + _LATE), settled=False)
    assert (reorgs, gaps) == ([], [])
    # The hashes still count: a stored height replaced after the restart is a reorg.
    reorgs, _ = seeded_feed(stored, [(111, "0xb111", "0xb110"), (110, "0xb110", "0xa109")], settled=False)
    assert [(r["first_height"], r["depth"]) for r in reorgs] == [(110, 1)]


def test_a_replay_of_stored_blocks_ends_where_the_store_is(tmp_path):
    """After a crash the journal replays frames some sink lacks, blocks the store holds among them.
    Here the store holds 110's reorg (b110): the replayed old branch (a110, then b110 again)
    cancels out, and a reorg after the replay still counts."""
    stored = _stored(
        tmp_path, [(n, f"0xa{n}", n - 99, False) for n in range(100, 110)] + [(110, "0xb110", 12, True)]
    )
    replay = [(110, "0xa110", "0xa109"), (110, "0xb110", "0xa109"), (111, "0xb111", "0xb110")]
    assert seeded_feed(stored, replay) == ([], [])
    after = [*replay, (111, "0xc111", "0xb110"), (112, "0xc112", "0xc111")]
    reorgs, _ = seeded_feed(stored, after)
    assert [(r["first_height"], r["old_hashes"], r["new_hashes"]) for r in reorgs] == [
        (111, ["0xb111"], ["0xc111"])
    ]


def test_a_late_resend_of_a_replaced_block_is_no_reorg_back():
    """After 100a/101a were replaced by the b branch, 100a comes again (a resend after a
    reconnect, a lagging stream): it replaces nothing, so no second reorg and no hash flip."""
    blocks = [
        *chain(100, 101),
        *chain(100, 102, "b", fork=100),
        (100, "0xa100", "0xa99"),
        (103, "0xb103", "0xb102"),
    ]
    reorgs, gaps = feed(blocks)
    assert reorgs == [reorg(100, ["a100", "a101"], ["b100", "b101"], "rehash", 4)]
    assert gaps == []


def test_a_late_resend_of_a_replaced_tip_is_no_reorg_back():
    """The replaced block is the tip (no child names either hash yet): its resend, unflagged,
    is still no reorg back, and the branch built on the new hash extends it."""
    blocks = [*chain(100, 101), (101, "0xb101", "0xa100"), (101, "0xa101", "0xa100")]
    blocks += [(102, "0xb102", "0xb101")]
    reorgs, gaps = feed(blocks)
    assert reorgs == [reorg(101, ["a101"], ["b101"], "rehash", 3)]
    assert gaps == []


def test_a_replaced_hash_sent_again_as_a_correction_is_a_reorg_back():
    blocks = [*chain(100, 101), (101, "0xb101", "0xa100"), (102, "0xb102", "0xb101")]
    blocks += [(101, "0xa101", "0xa100", True), (102, "0xa102", "0xa101", True), (103, "0xa103", "0xa102")]
    reorgs, _ = feed(blocks)
    assert reorgs == [
        reorg(101, ["a101"], ["b101"], "rehash", 3),
        reorg(101, ["b101", "b102"], ["a101", "a102"], "rehash", 5),
    ]
