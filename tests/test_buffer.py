"""Buffer: flush thresholds (rows, bytes, age), order, and backpressure when sinks fall behind."""

from __future__ import annotations

import asyncio
import json

import pytest

from ingest.buffer import CHUNK_OVERHEAD, QUARANTINE, RECORD_OVERHEAD, Buffer
from ingest.config import FlushPolicy
from ingest.events import Gap, Rejected, Rows
from ingest.log import forget_secret, register_secret


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def block(n: int, size: int = 10) -> Rows:
    return Rows("blockdb", "blockdb_blocks", "s", [b"{" + b" " * (size - 2) + b"}"], n)


async def test_flushes_at_max_rows(registry):
    buf = Buffer(registry, FlushPolicy(max_rows=3, max_age=60))
    for i in range(7):
        buf.add(block(i))
    first, second = await buf.next_flush(), await buf.next_flush()
    assert (first.rows, first.reason, second.rows) == (3, "rows", 3)
    assert [c.received_at for c in first.chunks + second.chunks] == list(range(6))
    assert buf.buffered_rows == {"blockdb_blocks": 1}


async def test_flushes_at_max_bytes(registry):
    frame = 30 + CHUNK_OVERHEAD  # a frame counts with what Python holds for it beyond its bytes
    buf = Buffer(registry, FlushPolicy(max_rows=1000, max_bytes=3 * frame + 10, max_age=60))
    for i in range(10):
        buf.add(block(i, size=30))
    flush = await buf.next_flush()
    assert (flush.rows, flush.nbytes, flush.reason) == (4, 4 * frame, "bytes")


async def test_flushes_on_age(registry):
    clock = Clock()
    buf = Buffer(registry, FlushPolicy(max_rows=1000, max_age=1.0), clock=clock)
    buf.add(block(1))
    clock.now = 0.5
    buf.add(block(2))
    buf.flush_due()
    assert buf.queued_rows == 0
    clock.now = 1.0
    buf.flush_due()
    flush = await buf.next_flush()
    assert (flush.rows, flush.reason) == (2, "age")


def test_due_in_is_when_the_oldest_record_reaches_max_age(registry):
    """The daemon's tick sleeps until then, so an age flush is sealed on time, not a period late."""
    clock = Clock()
    buf = Buffer(registry, FlushPolicy(max_rows=3, max_age=1.0), clock=clock)
    assert buf.due_in() is None  # nothing buffered: nothing will be due
    clock.now = 2.0
    buf.add(block(1))
    clock.now = 2.75
    buf.add(Rows("blockdb", "blockdb_transactions", "s", [b"{}"], 2))
    assert buf.due_in() == 0.25  # the oldest dataset's
    clock.now = 3.5
    assert buf.due_in() == 0.0  # overdue
    buf.flush_due()
    assert buf.due_in() == 0.25 and buf.queued_rows == 1  # the other is due when it is a second old
    clock.now = 3.75
    buf.flush_due()
    assert buf.due_in() is None and buf.queued_rows == 2
    for n in range(3):  # a journaled flush that is full waits for the rest of its last frame
        rows = block(n)
        rows.position = 10
        buf.add(rows)
    assert buf.buffered_rows == {"blockdb_blocks": 3} and buf.due_in() == 0.0  # sealed at the next tick


async def test_a_large_flush_is_offered_a_part_at_a_time_while_it_fills(registry):
    """Its parts go to the writer as they are in (in order, each record once), so a seal leaves
    only the rest to build; a part the writer declines is offered again a decode block later."""
    buf = Buffer(registry, FlushPolicy(max_rows=10_000, max_age=60))  # parts of a quarter: 2,500
    offered: list[list[int]] = []
    answers = iter([None, "part 1", "part 2", None])

    def take(dataset: str, chunks: list[Rows]) -> str | None:
        assert dataset == "blockdb_blocks"
        offered.append([c.received_at for c in chunks])
        return next(answers)

    buf.on_part(take)
    for i in range(10_000):
        buf.add(block(i))
    flush = await buf.next_flush()
    assert (flush.rows, flush.reason) == (10_000, "rows")
    # Declined at 2,500 records, taken at 4,548 and 7,048, declined at 9,548: the next offer would
    # have come 2,048 records on, after the flush was full.
    assert [len(o) for o in offered] == [2500, 2500 + 2048, 2500, 2500]
    assert flush.parts == ["part 1", "part 2"]
    rest = [c.received_at for c in flush.chunks]
    assert [*offered[1], *offered[2], *rest] == list(range(10_000))  # every record once, in order
    assert flush.nbytes == 10_000 * (CHUNK_OVERHEAD + 10)  # counted as before: a part is still in memory
    buf.on_part(None)
    for i in range(10_000):
        buf.add(block(i))
    assert (await buf.next_flush()).parts == [] and len(offered) == 4  # no taker: built whole


async def test_datasets_are_flushed_separately(registry):
    buf = Buffer(registry, FlushPolicy(max_rows=2, max_age=60))
    buf.add(block(1))
    buf.add(Rows("blockdb", "blockdb_transfers", "t", [b"{}"], 2))
    buf.add(block(3))
    flush = await buf.next_flush()
    assert flush.dataset == "blockdb_blocks" and flush.rows == 2
    assert buf.buffered_rows == {"blockdb_transfers": 1}


async def test_readers_wait_when_too_much_is_outstanding(registry):
    """Above max_pending_bytes readers block until the writer reports flushes done."""
    frame = 10 + CHUNK_OVERHEAD
    policy = FlushPolicy(max_rows=2, max_bytes=4 * frame, max_age=60, max_pending_bytes=5 * frame)
    buf = Buffer(registry, policy)
    for i in range(5):
        buf.add(block(i))
    assert buf.congested
    waiter = asyncio.create_task(buf.wait_for_room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    flush = await buf.next_flush()
    buf.done(flush)
    await asyncio.wait_for(waiter, 1)
    assert not buf.congested and buf.outstanding_bytes == 3 * frame


async def test_unknown_dataset_and_rejects_go_to_quarantine(registry):
    buf = Buffer(registry, FlushPolicy(max_age=60))
    buf.add(Rows("blockdb", "no_such_table", "s", [b"{1}", b"{2}"], 5))
    buf.reject(Rejected("blockdb", b"junk", "unreadable frame: x", 6))
    buf.close()
    flush = await buf.next_flush()
    assert flush.dataset == QUARANTINE
    assert [r["raw"] for r in flush.values] == [b"{1}", b"{2}", b"junk"]
    assert "no dataset named" in flush.values[0]["reason"]
    assert await buf.next_flush() is None


async def test_records_of_an_undeclared_dataset_keep_their_frames_in_the_journal(registry):
    buf = Buffer(registry, FlushPolicy(max_age=60))
    buf.add(Rows("blockdb", "no_such_table", "s", [b"{1}"], 5, position=7))
    run = Rows("blockdb", "no_such_table", "s", [b"{2}"], 5, position=8)
    run.join(b"{3}", 9)  # a run of frames of one read: each record keeps its own frame's position
    buf.add(run)
    assert buf.low_water(10) == 7  # frame 7 is only in memory: the journal must keep it
    buf.close()
    flush = await buf.next_flush()
    assert [(r["position"], r["target_dataset"]) for r in flush.values] == [
        (7, "no_such_table"),
        (8, "no_such_table"),
        (9, "no_such_table"),
    ]
    assert (flush.first, flush.last) == (7, 9)


async def test_derived_rows_are_taken_ahead_of_the_queue(registry):
    buf = Buffer(registry, FlushPolicy(max_rows=1, max_age=60))
    buf.add(Rows("blockdb", "blockdb_transfers", "s", [b"{}"], 5, position=1))
    buf.reject(Rejected("blockdb", b"junk", "x", 6, position=2))
    buf.flush_due()  # both full (max_rows 1): queued
    buf.gap(Gap("blockdb", "s", "block", 1, 2, "1", 5, 9, 3), 7)  # pending
    taken = buf.take_derived()
    assert [(f.dataset, f.first) for f in taken] == [(QUARANTINE, 2), ("gaps", 3)]
    assert buf.low_water(10) == 1  # taken, not done: they still hold their frames
    for f in taken:
        buf.done(f)
    assert buf.low_water(10) == 1
    assert (await buf.next_flush()).dataset == "blockdb_transfers"  # the queue keeps the rest
    assert buf.take_derived() == []


async def test_close_seals_everything_and_late_rejects_still_flush(registry):
    buf = Buffer(registry, FlushPolicy(max_age=60))
    buf.add(block(1))
    buf.close()
    assert (await buf.next_flush()).rows == 1
    buf.reject(Rejected("blockdb", b"late", "r", 7))
    assert (await buf.next_flush()).dataset == QUARANTINE
    assert await buf.next_flush() is None


def test_near_full_comes_before_the_readers_have_to_wait(registry):
    frame = 10 + CHUNK_OVERHEAD
    policy = FlushPolicy(max_rows=100, max_bytes=100 * frame, max_age=60, max_pending_bytes=4 * frame)
    buf = Buffer(registry, policy)
    for i in range(2):
        buf.add(block(i))
    assert not buf.near_full and not buf.congested
    buf.add(block(2))  # 3 of 4 frames' worth: near full, readers still read
    assert buf.near_full and not buf.congested
    buf.add(block(3))
    assert buf.near_full and buf.congested


async def test_the_writer_is_told_each_time_the_memory_rises_to_near_full(registry):
    frame = 10 + CHUNK_OVERHEAD
    policy = FlushPolicy(max_rows=3, max_bytes=100 * frame, max_age=60, max_pending_bytes=4 * frame)
    buf = Buffer(registry, policy)
    told: list[int] = []
    buf.on_near_full(lambda: told.append(buf.outstanding_bytes))
    buf.add(block(0))
    buf.add(block(1))
    assert told == []
    buf.add(block(2))  # 3 of 4 frames' worth, and a flush of 3 rows: told once
    buf.add(block(3))
    assert told == [3 * frame]
    buf.done(await buf.next_flush())  # back below near full
    assert not buf.near_full
    buf.add(block(4))
    buf.add(block(5))
    assert told == [3 * frame, 3 * frame]  # risen again: told again
    buf.on_near_full(None)


async def test_a_rows_of_several_frames_counts_each_record_and_covers_each_frame(registry):
    buf = Buffer(registry, FlushPolicy(max_rows=100, max_age=60))
    run = Rows("blockdb", "blockdb_blocks", "b", [b"{}", b"{1}", b"{12}"], 1, position=3, positions=[3, 4, 6])
    buf.add(run)
    assert buf.outstanding_bytes == CHUNK_OVERHEAD + 2 * RECORD_OVERHEAD + 2 + 3 + 4
    assert buf.low_water(next_position=100) == 3
    buf.close()
    flush = await buf.next_flush()
    assert (flush.rows, flush.first, flush.last) == (3, 3, 6)


async def test_a_frames_records_stay_in_one_flush_when_a_limit_falls_inside_it(registry):
    """One frame may give several Rows of one table (a Bitquery query of two cubes stored in the
    generic table). Split over two flushes, the first stored marks the frame's position as held,
    and a crash before the second loses the rest of the frame."""

    def part(position: int, n: int) -> Rows:
        rows = Rows("bitquery", "bitquery_generic", "q", [b"{}"] * n, 1)
        rows.position = position
        return rows

    buf = Buffer(registry, FlushPolicy(max_rows=3, max_age=60))
    buf.add(part(7, 3))  # reaches max_rows: more of frame 7 may follow
    assert buf.queued_rows == 0
    buf.add(part(7, 2))  # frame 7's second cube: the same flush
    buf.add(part(8, 1))  # the next frame: frame 7 is complete, its flush sealed
    first = await buf.next_flush()
    assert (first.rows, first.first, first.last, first.reason) == (5, 7, 7, "rows")
    assert buf.buffered_rows == {"bitquery_generic": 1}
    buf.add(part(8, 2))  # full again; no next frame comes: the tick seals it
    buf.flush_due()
    second = await buf.next_flush()
    assert (second.rows, second.first, second.last, second.reason) == (3, 8, 8, "rows")


async def test_the_rejects_of_one_frame_share_a_flush_too(registry):
    buf = Buffer(registry, FlushPolicy(max_rows=2, max_age=60))
    for position, reason in ((3, "a"), (3, "b"), (3, "c"), (4, "d")):
        buf.reject(Rejected("bitquery", b"x", reason, 1, "q", position=position))
    flush = await buf.next_flush()
    assert (flush.dataset, [v["reason"] for v in flush.values], flush.first, flush.last) == (
        QUARANTINE,
        ["a", "b", "c"],
        3,
        3,
    )


async def test_a_reader_waiting_for_room_releases_a_full_flush_held_for_its_last_frame(registry):
    """Without the daemon's tick (an offline replay), a full flush held for more of its last frame
    and a reader waiting for room would wait for each other."""
    frame = 10 + CHUNK_OVERHEAD
    buf = Buffer(registry, FlushPolicy(max_rows=2, max_age=60, max_pending_bytes=2 * frame))
    for position in (1, 2):
        rows = block(position)
        rows.position = position
        buf.add(rows)
    assert buf.congested and buf.queued_rows == 0  # full, held for more of frame 2
    waiting = asyncio.create_task(buf.wait_for_room())
    flush = await asyncio.wait_for(buf.next_flush(), 1)
    assert (flush.rows, flush.last) == (2, 2)
    buf.done(flush)
    await asyncio.wait_for(waiting, 1)


async def test_a_reader_waiting_for_room_with_nothing_in_flight_releases_what_is_buffered(registry):
    """Datasets each below every limit can fill the memory together; without a tick (an offline
    replay) nothing would seal them, and the reader would wait for good."""
    frame = 10 + CHUNK_OVERHEAD
    buf = Buffer(registry, FlushPolicy(max_rows=100, max_age=60, max_pending_bytes=2 * frame))
    buf.add(block(1))
    buf.add(Rows("blockdb", "blockdb_transfers", "t", [b"{" + b" " * 8 + b"}"], 2))
    assert buf.congested and buf.queued_rows == 0
    waiting = asyncio.create_task(buf.wait_for_room())
    flushes = [await asyncio.wait_for(buf.next_flush(), 1) for _ in range(2)]
    assert sorted((f.dataset, f.reason) for f in flushes) == [
        ("blockdb_blocks", "room"),
        ("blockdb_transfers", "room"),
    ]
    for flush in flushes:
        buf.done(flush)
    await asyncio.wait_for(waiting, 1)


async def test_a_key_a_server_echoed_in_a_quarantined_frame_is_masked(registry):
    """Quarantine keeps frames as received, but no secret goes to a file: an echoed hello, say."""
    key = "echoed-key-51c9e7"
    register_secret(key)
    try:
        buf = Buffer(registry, FlushPolicy(max_age=60))
        buf.reject(
            Rejected("coinapi", b'{"type":"hellox","apikey":"echoed-key-51c9e7"}', "unknown", 5, position=3)
        )
        buf.close()
        (row,) = (await buf.next_flush()).values
    finally:
        forget_secret(key)
    assert row["raw"] == b'{"type":"hellox","apikey":"***"}'


@pytest.mark.parametrize(
    "echoed",
    [
        b'{"error":"bad key Zm9vYmFy\\/c2VjcmV0+a2V5=caf\\u00e9"}',  # '/' escaped, non-ASCII as \u (PHP)
        b'{"error":"bad key Zm9vYmFy\\/c2VjcmV0+a2V5=caf\\u00E9"}',  # the same, upper-case hex (Jackson)
        '{"error":"bad key Zm9vYmFy/c2VjcmV0+a2V5=café"}'.encode(),  # as is, UTF-8
    ],
)
async def test_a_key_a_server_echoed_json_escaped_or_in_the_reason_is_masked(registry, echoed):
    """A JSON encoder may write a key's '/' as '\\/' and its non-ASCII as \\uXXXX; a protocol's
    reason may quote the server (an unknown message type): neither goes to the table unmasked."""
    key = "Zm9vYmFy/c2VjcmV0+a2V5=café"
    register_secret(key)
    try:
        buf = Buffer(registry, FlushPolicy(max_age=60))
        kind = json.loads(echoed)["error"]  # as the protocol read it
        buf.reject(Rejected("coinapi", echoed, f"unknown message type {kind!r}", 5, position=3))
        buf.close()
        (row,) = (await buf.next_flush()).values
    finally:
        forget_secret(key)
    assert row["raw"] == b'{"error":"bad key ***"}'
    assert row["reason"] == "unknown message type 'bad key ***'"
