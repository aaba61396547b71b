"""ReorgTracker on hand-made block streams: exact reorg and gap rows, in order and out of order."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ingest.events import Gap
from ingest.reorgs import _LATE, ReorgTracker

Block = tuple[int, str, str]  # number, hash, parent hash
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
        "old_hashes": old,
        "new_hashes": new,
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


def test_a_height_later_than_the_window_does_not_undo_or_repeat_its_gap():
    blocks = [*chain(100, 100), *chain(102, 102 + _LATE), *chain(101, 101)]
    assert feed(blocks) == ([], [gap(101, 102, 1, 2)])


def test_a_reorg_delivered_in_order_is_one_rehash_row():
    old = chain(100, 102)
    new = chain(101, 103, "b", fork=101)
    reorgs, gaps = feed([*old, *new])
    assert gaps == []
    assert reorgs == [reorg(101, ["a101", "a102"], ["b101", "b102"], "rehash", 4)]


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


def test_a_parent_claim_the_block_itself_contradicts_takes_the_block_hash():
    old = chain(100, 101)
    child = (102, "0xb102", "0xb101")
    parent = (101, "0xc101", "0xa100")  # the block at 101 is not the one its child named
    reorgs, _ = feed([*old, child, parent, (103, "0xb103", "0xb102")])
    assert reorgs == [reorg(101, ["a101"], ["c101"], "parent", 3)]


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
