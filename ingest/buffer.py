"""Per-dataset buffers of raw records, flushed on rows, bytes or age, with bounded memory.

Per message the buffer only appends and counts; decoding and Arrow building happen in the
writer, a flush at a time, or, for a large flush, a part at a time while it fills (`on_part`).
Memory is bounded by `max_pending_bytes` over everything buffered, queued or being written:
above it, `congested` turns true and readers wait in `wait_for_room()`, so a slow sink slows
the sockets (and the provider's TCP window) instead of growing the heap.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ingest.config import FlushPolicy
from ingest.events import Gap, Rejected, Rows
from ingest.log import redact, redact_bytes
from ingest.schema import Registry

__all__ = [
    "CHUNK_OVERHEAD",
    "GAPS",
    "NEAR_FULL",
    "QUARANTINE",
    "RECORD_OVERHEAD",
    "REORGS",
    "Buffer",
    "Flush",
]

# What Python holds for a frame beyond its bytes (the Rows, its list, object headers), measured
# with tracemalloc: a 280-byte trade costs ~670. Counted, so max_pending_bytes bounds real memory.
CHUNK_OVERHEAD = 400
# And for each further record of the same Rows (a bytes object, its list slot, its position).
RECORD_OVERHEAD = 80

# Above this share of max_pending_bytes, sinks holding rows for a larger commit commit them now:
# waiting until the budget is full would stop the readers first (measured: BlockDB 83k -> 92k msg/s).
NEAR_FULL = 0.75

# A declined part (Buffer.on_part) is offered again after this many more records: a decode block.
_PART_RETRY_ROWS = 2048

QUARANTINE = "quarantine"
GAPS = "gaps"
REORGS = "reorgs"
_DERIVED = (QUARANTINE, REORGS, GAPS)  # datasets of rows the pipeline makes, not a provider


@dataclass(slots=True)
class Flush:
    """What the writer gets: every buffered record of one dataset, in arrival order."""

    dataset: str
    chunks: list[Rows] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)  # datasets the pipeline builds itself
    rows: int = 0
    nbytes: int = 0
    reason: str = ""
    first: int = 0  # journal positions covered (0: none journaled)
    last: int = 0
    # Its first records, already on their way to a table (what on_part's callback returned);
    # `chunks` holds the records after them.
    parts: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    chunks: list[Rows] = field(default_factory=list)
    parts: list[Any] = field(default_factory=list)
    to_part: int = 0  # records to take before offering `chunks` as a part (Buffer.on_part)
    values: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    since: float = 0.0
    first: int = 0
    last: int = 0
    day: int = 0  # the UTC day its rows were received on (ns // _DAY_NS)
    full: str = ""  # why it is due ("rows", "bytes"), sealed once its last frame is all in

    def takes(self, day: int, position: int) -> bool:
        """Whether a record received on `day` from the frame at `position` joins this flush: the
        same day, and, once full, only more of its last frame (see Buffer._full)."""
        return self.day == day and not (self.full and position != self.last)

    def cover(self, position: int) -> None:
        if position:
            if not self.first or position < self.first:
                self.first = position
            self.last = max(self.last, position)


_DAY_NS = 86_400 * 10**9


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class Buffer:
    """Collects Rows and Rejected events; hands Flushes to the writer through `next_flush()`."""

    def __init__(
        self, registry: Registry, policy: FlushPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self._policy = policy
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._ready: deque[Flush] = deque()
        self._has_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._outstanding = 0  # bytes buffered + queued + being written
        self._in_flight: dict[int, int] = {}  # id(flush) -> first journal position, until done()
        self._closed = False
        self._sealed: dict[str, int] = {}  # rows per dataset handed to the writer so far
        self._unfinished: dict[str, int] = {}  # of those, rows not yet in every sink (until done())
        self._max_rows, self._max_bytes = policy.max_rows, policy.max_bytes
        self._max_pending = policy.max_pending_bytes
        self._near_full_bytes = NEAR_FULL * policy.max_pending_bytes
        self._near = False  # at or above near full, as last told
        self._on_near_full: Callable[[], None] | None = None
        self._on_part: Callable[[str, list[Rows]], Any] | None = None
        # A quarter of a full flush, so that its seal leaves about that much to build; at least
        # a decode block, at most what adds no measurable work per row (16k-row parts: +0.1 us).
        self._part_rows = max(_PART_RETRY_ROWS, min(16384, policy.max_rows // 4))

    # -- producers (collectors) ------------------------------------------------------------------

    def add(self, rows: Rows) -> None:
        """Buffer one frame's records; flushes that dataset when it reaches max rows or bytes.

        Called once per frame: only appends and counts (the decoding is per flush).
        """
        pending = self._pending.get(rows.dataset)
        day = rows.received_at // _DAY_NS
        if pending is None or not pending.takes(day, rows.position):
            if rows.dataset not in self._registry:
                # A protocol naming an undeclared dataset is a bug, but the data is still kept.
                reason = f"no dataset named {rows.dataset!r}"
                provider, at, sub, name = rows.provider, rows.received_at, rows.subscription, rows.dataset
                positions = rows.positions or [rows.position] * len(rows.records)
                for rec, position in zip(rows.records, positions, strict=False):
                    # Its frame's position: the journal keeps the frame until this row is stored.
                    self.reject(Rejected(provider, rec, reason, at, sub, name, position))
                return
            pending = self._new_pending(rows.dataset, pending, day)
        records = rows.records
        n = len(records)
        if n == 1:
            nbytes = CHUNK_OVERHEAD + len(records[0])
        else:
            nbytes = CHUNK_OVERHEAD + RECORD_OVERHEAD * (n - 1) + sum(map(len, records))
        pending.chunks.append(rows)
        if rows.position:
            if not pending.first:  # frames arrive in journal order: the first one is the lowest
                pending.first = rows.position
            pending.last = rows.last_position
        pending.rows += n
        pending.nbytes += nbytes
        self._outstanding += nbytes
        if self._on_part is not None:
            pending.to_part -= n
            if pending.to_part <= 0:
                self._offer_part(rows.dataset, pending)
        if pending.rows >= self._max_rows or pending.nbytes >= self._max_bytes:
            self._full(rows.dataset, pending, "rows" if pending.rows >= self._max_rows else "bytes")
        if self._outstanding >= self._near_full_bytes and not self._near:  # the hot path: no call
            self._check_near_full()
        if self._outstanding >= self._max_pending:
            self._room.clear()

    def reject(self, rejected: Rejected) -> None:
        """Keep an unreadable frame for the quarantine table (a key a server echoed in it or in its
        reason masked)."""
        raw = redact_bytes(rejected.raw)
        row = {
            "provider": rejected.provider,
            "subscription": rejected.subscription,
            "target_dataset": rejected.dataset or None,
            "reason": redact(rejected.reason),  # reasons quote the server (an unknown type {kind!r})
            "received_at": rejected.received_at,
            "raw": raw,
            "position": rejected.position,
            # The same frame rejected again (a replay) gets the same id: readers count ids.
            "id": f"{rejected.provider}:{rejected.position}:{_digest(raw)}",
        }
        self._add_value(QUARANTINE, row, len(raw), rejected.position)

    def gap(self, gap: Gap, detected_at: int) -> None:
        """Record a hole in what was received."""
        row = {
            "provider": gap.provider,
            "subscription": gap.subscription,
            "kind": gap.kind,
            "stream": gap.stream,
            "started_at": gap.started_at,
            "ended_at": gap.ended_at,
            "expected": gap.expected,
            "received": gap.received,
            "detected_at": detected_at,
            "position": gap.position,
            "id": "|".join(
                map(str, (gap.provider, gap.subscription, gap.kind, gap.stream, gap.started_at, gap.expected))
            ),
        }
        self._add_value(GAPS, row, 100, gap.position)

    def reorg(self, row: dict[str, Any]) -> None:
        """Record a reorg (a row of the reorgs dataset, as ReorgTracker builds it)."""
        self._add_value(REORGS, row, 200, row.get("position", 0))

    def _add_value(self, dataset: str, row: dict[str, Any], nbytes: int, position: int) -> None:
        pending = self._pending.get(dataset)
        day = row[self._registry[dataset].received_column] // _DAY_NS
        if pending is None or not pending.takes(day, position):
            pending = self._new_pending(dataset, pending, day)
        pending.values.append(row)
        pending.cover(position)
        pending.rows += 1
        pending.nbytes += nbytes
        self._outstanding += nbytes
        self._check_near_full()
        if self._closed:  # the writer is draining: a late value must still reach it
            self._seal(dataset, "shutdown")
        elif pending.rows >= self._policy.max_rows:
            self._full(dataset, pending, "rows")

    def _new_pending(self, dataset: str, pending: _Pending | None, day: int) -> _Pending:
        """A new pending flush of the dataset for rows received on `day`; the one before (full, or
        of another day) is sealed first. A flush never spans two days: Parquet writes a flush of
        one day as one file, and a flush split over two could leave, after a crash between them,
        a file whose name marks the whole flush as stored."""
        if pending is not None:
            self._seal(dataset, pending.full or "day")
        new = self._pending[dataset] = _Pending(since=self._clock(), day=day, to_part=self._part_rows)
        return new

    def _full(self, dataset: str, pending: _Pending, reason: str) -> None:
        """A flush reached a limit: sealed now, or, while the journal numbers frames, when the
        next frame comes (or the next tick). One frame's records may come in several Rows (a
        Bitquery query of two cubes stored in one table); split over two flushes, the first one
        stored would mark the frame's position as held, and a crash before the second would lose
        the rest of the frame."""
        if pending.last:
            pending.full = reason
        else:
            self._seal(dataset, reason)

    @property
    def congested(self) -> bool:
        return not self._room.is_set()

    @property
    def near_full(self) -> bool:
        """Most of the memory budget is taken: what a sink holds should be committed and freed."""
        return self._outstanding >= self._near_full_bytes

    def on_part(self, callback: Callable[[str, list[Rows]], Any] | None) -> None:
        """Offer each part of a large flush to `callback(dataset, chunks)` as soon as it is in;
        what it returns (a future of its table) is kept in the flush's `parts`, and None declines.

        The writer builds a part while the rest of its flush arrives, so that the time from a seal
        to queryable rows is the build of about a part, not of the whole flush.
        """
        self._on_part = callback

    def _offer_part(self, dataset: str, pending: _Pending) -> None:
        assert self._on_part is not None
        part = self._on_part(dataset, pending.chunks)
        if part is None:  # not now: offered again, with more records, a little later
            pending.to_part = _PART_RETRY_ROWS
        else:
            # Its records stay counted at their own size until the flush is built (its table is
            # then counted instead): a built part is ~1.3 times that for trades, a few MB a flush.
            pending.parts.append(part)
            pending.chunks, pending.to_part = [], self._part_rows

    def on_near_full(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` each time the memory taken rises to near full (the writer's cue to
        commit what sinks hold), so that nothing has to poll for it."""
        self._on_near_full = callback

    def _check_near_full(self) -> None:
        """Note whether the memory taken is near full; tell the writer when it has just risen there."""
        if self._outstanding < self._near_full_bytes:
            self._near = False
        elif not self._near:
            self._near = True
            if self._on_near_full is not None:
                self._on_near_full()

    async def wait_for_room(self) -> None:
        """Wait until the memory taken is below max_pending_bytes.

        A reader waits between reads, so the frames it gave are whole: a full flush held for its
        last frame goes now; and when nothing is sealed or being written, everything buffered
        goes, since only a flush can free room (without the daemon's tick, as in an offline
        replay, the reader and the buffer would wait for each other).
        """
        if not self._room.is_set():
            idle = not self._in_flight
            for name, pending in list(self._pending.items()):
                if pending.full or idle:
                    self._seal(name, pending.full or "room")
        await self._room.wait()

    # -- timers and shutdown ---------------------------------------------------------------------

    def flush_due(self) -> None:
        """Seal every dataset whose oldest record waited max_age, or that is full; called on a short tick."""
        now = self._clock()
        for name, pending in list(self._pending.items()):
            if pending.full:
                self._seal(name, pending.full)
            elif now - pending.since >= self._policy.max_age:
                self._seal(name, "age")

    def due_in(self) -> float | None:
        """Seconds until flush_due() has something to seal (0: now); None while nothing is buffered."""
        if not self._pending:
            return None
        if any(p.full for p in self._pending.values()):
            return 0.0
        oldest = min(p.since for p in self._pending.values())
        return max(0.0, oldest + self._policy.max_age - self._clock())

    def flush_all(self, reason: str = "shutdown") -> None:
        for name in list(self._pending):
            self._seal(name, reason)

    def close(self) -> None:
        """Seal everything; next_flush() returns None once the queue is empty."""
        self.flush_all()
        self._closed = True
        self._has_ready.set()

    # -- the consumer (writer) -------------------------------------------------------------------

    async def next_flush(self) -> Flush | None:
        while not self._ready:
            if self._closed:
                return None
            self._has_ready.clear()
            await self._has_ready.wait()
        return self._ready.popleft()

    def done(self, flush: Flush) -> None:
        """The writer finished with a flush: its bytes no longer count against the limit."""
        if id(flush) in self._in_flight:
            del self._in_flight[id(flush)]
            self._unfinished[flush.dataset] -= flush.rows
        self._outstanding -= flush.nbytes
        self._update_room()

    def resize(self, flush: Flush, nbytes: int) -> None:
        """The writer holds `nbytes` for this flush now (its table instead of its records)."""
        self._outstanding += nbytes - flush.nbytes
        flush.nbytes = nbytes
        self._update_room()

    def _update_room(self) -> None:
        self._check_near_full()
        if self._outstanding >= self._max_pending:
            self._room.clear()
        else:
            self._room.set()

    def low_water(self, next_position: int) -> int:
        """The oldest journal position not yet in every sink: segments wholly below it can go."""
        firsts = [p.first for p in self._pending.values() if p.first]
        firsts.extend(f for f in self._in_flight.values() if f)
        return min(firsts, default=next_position)

    @property
    def received(self) -> dict[str, int]:
        """Rows accepted per dataset so far (sealed plus still buffered), for metrics."""
        out = dict(self._sealed)
        for name, pending in self._pending.items():
            out[name] = out.get(name, 0) + pending.rows
        return out

    @property
    def buffered_rows(self) -> dict[str, int]:
        return {name: p.rows for name, p in self._pending.items()}

    @property
    def unwritten_rows(self) -> dict[str, int]:
        """Rows received but not yet in every sink: buffered, queued, being written, or held for
        DuckDB's next commit (`duckdb_commit_seconds`). With `rows_written`, what `received` holds."""
        out = {name: n for name, n in self._unfinished.items() if n}
        for name, pending in self._pending.items():
            out[name] = out.get(name, 0) + pending.rows
        return out

    @property
    def queued_rows(self) -> int:
        return sum(f.rows for f in self._ready)

    @property
    def outstanding_bytes(self) -> int:
        return self._outstanding

    def take_derived(self) -> list[Flush]:
        """The rows the pipeline derived (quarantine, reorgs, gaps), queued or not, as flushes for
        the writer now, ahead of the queue.

        The writer stores them before the flush it built them from: once a sink holds that flush, a
        replay skips its frames without decoding them, so nothing would derive these rows again.
        """
        taken = [f for f in self._ready if f.dataset in _DERIVED]
        if taken:
            self._ready = deque(f for f in self._ready if f.dataset not in _DERIVED)
        taken += [self._sealed_flush(name, "derived") for name in _DERIVED if name in self._pending]
        return taken

    def _seal(self, name: str, reason: str) -> None:
        self._ready.append(self._sealed_flush(name, reason))
        self._has_ready.set()

    def _sealed_flush(self, name: str, reason: str) -> Flush:
        """A dataset's pending rows as a flush, counted as sealed and in flight until done()."""
        p = self._pending.pop(name)
        self._sealed[name] = self._sealed.get(name, 0) + p.rows
        self._unfinished[name] = self._unfinished.get(name, 0) + p.rows
        flush = Flush(name, p.chunks, p.values, p.rows, p.nbytes, reason, p.first, p.last, p.parts)
        self._in_flight[id(flush)] = p.first
        return flush
