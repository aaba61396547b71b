"""Consumes flushes: builds the Arrow table and writes every sink, off the event loop.

Work per flush, not per message: one decode, one table, one append per sink. A large flush is
built a part at a time while it fills (Buffer.on_part), so its seal leaves only its last part to
build, and the time to queryable rows does not grow with the flush. A builder turns flushes into
tables in order; each sink then has its own lane, a queue it stores in that same
order, so a slow sink (DuckDB committing a large batch) delays neither the building nor the
other sink (the Parquet files readers query while the daemon runs). Building and storing run in
worker threads (pyarrow and DuckDB release the GIL, so the second core does real work), one
thread per stage: glibc gives each thread its own heap, and a stage whose large allocations
always land in the same heap reuses the memory it freed last flush. Spread over a shared pool,
every heap ends up holding every stage's freed blocks (measured: ~60-90 MB lower peak RSS).

A flush is finished, and the buffer lets its journal frames go, only once every sink has made
its rows durable: a sink may hold rows to commit them in larger batches (DuckDB), and they count
against the buffer's memory limit until then. A failing sink is retried with backoff and the
flush keeps its place, so nothing is dropped; meanwhile the memory limit makes the readers wait.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from ingest.arrow_batch import BuildResult, build_table, joined, table_bytes, values_table
from ingest.buffer import GAPS, QUARANTINE, Buffer, Flush
from ingest.errors import Fatal
from ingest.events import Rows
from ingest.metrics import Metrics, SinkFailure
from ingest.os_threads import name_os_thread
from ingest.reorgs import ReorgTracker
from ingest.schema import Dataset, Registry
from ingest.sinks.base import Sink

__all__ = ["Writer"]

log = structlog.get_logger("ingest.writer")

_BUILD = "build"  # the stage that turns flushes into tables; each sink is a stage of its own

T = TypeVar("T")


@dataclass(slots=True)
class _Built:
    """A flush turned into a table, on its way through every sink's lane."""

    flush: Flush
    dataset: Dataset
    counts: _Counts
    # What each sink still lacks of it (all of it, but in a replay); a lane lets go of its table
    # once written, so a sink holding rows for a later commit holds only its own columns.
    per_sink: dict[Sink, pa.Table | None]
    started: float
    nbytes: int = 0
    waiting: int = 0  # sinks that have not made it durable yet
    unwritten: int = 0  # sinks that have not been handed it yet
    retained: int = 0  # bytes of it that sinks hold for a later commit


@dataclass(frozen=True, slots=True)
class _Counts:
    """What the metrics learn from a table, taken when it is built."""

    rows: int
    by_provider: dict[str, int]
    reorg_rows: int
    latest_event: int | None

    @classmethod
    def of(cls, table: pa.Table) -> _Counts:
        names, n = table.column_names, table.num_rows
        by_provider: dict[str, int] = {}
        reorgs, latest = 0, None
        if n and "_provider" in names:
            by_provider = {i["values"]: i["counts"] for i in pc.value_counts(table["_provider"]).to_pylist()}
        if n and "_is_reorg" in names:
            reorgs = pc.sum(table["_is_reorg"].cast(pa.int64())).as_py() or 0
        if n and "_event_time" in names:
            latest = pc.max(table["_event_time"]).cast(pa.int64()).as_py()
        return cls(n, by_provider, reorgs, latest)


class _Pressure:
    """Queued to each sink holding rows when the buffer's memory rises to near full: commit now."""


_PRESSURE = _Pressure()


@dataclass(slots=True)
class _Lane:
    """One sink's queue of tables, and those it holds uncommitted."""

    sink: Sink
    queue: asyncio.Queue[_Built | _Pressure | None] = field(default_factory=asyncio.Queue)
    held: list[_Built] = field(default_factory=list)


class Writer:
    def __init__(
        self,
        registry: Registry,
        buffer: Buffer,
        sinks: Sequence[Sink],
        metrics: Metrics,
        *,
        retry_max: float = 10.0,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self._buffer = buffer
        self._sinks = list(sinks)
        self._metrics = metrics
        self._retry_max = retry_max
        self._before_write = before_write
        self.reorgs = ReorgTracker(buffer.reorg, buffer.gap)
        self._threads: dict[object, ThreadPoolExecutor] = {}  # stage -> its one thread
        self._builds = 0  # builds handed to the build thread and not finished

    async def run(self) -> None:
        """Write flushes in order until the buffer is closed and drained, and every sink committed."""
        lanes = [_Lane(sink) for sink in self._sinks]

        def press() -> None:
            for lane in lanes:
                if lane.sink.holding:
                    lane.queue.put_nowait(_PRESSURE)

        self._buffer.on_near_full(press)
        self._buffer.on_part(self._build_part)
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in lanes:
                    tg.create_task(self._drain(lane), name=f"writer-{lane.sink.name}")
                await self._build_all(lanes)
        finally:
            self._buffer.on_near_full(None)
            self._buffer.on_part(None)
            for pool in self._threads.values():
                pool.shutdown(wait=False)  # idle by now, or finishing a call nobody awaits
            self._threads.clear()

    async def _in_thread(self, stage: object, call: Callable[..., T], *args: Any) -> T:
        """Run `call(*args)` on the thread of `stage` (the build, or a sink), made on first use."""
        return await self._submit(stage, call, *args)

    def _submit(self, stage: object, call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        pool = self._threads.get(stage)
        if pool is None:
            name = f"ingest-{stage if isinstance(stage, str) else getattr(stage, 'name', 'sink')}"
            pool = self._threads[stage] = ThreadPoolExecutor(
                1, thread_name_prefix=name, initializer=name_os_thread, initargs=(name,)
            )
        return asyncio.get_running_loop().run_in_executor(pool, functools.partial(call, *args))

    def _build_part(self, name: str, chunks: list[Rows]) -> asyncio.Future[BuildResult] | None:
        """Start building a part of a flush still filling (Buffer.on_part); its flush awaits it.

        Only while the build thread is idle. When it is busy the flushes come faster than it
        builds them, a seal waits for it anyway, and parts would only add their work per row and
        memory (measured at full speed: -8% msg/s, +50 MB peak RSS).
        """
        if self._builds:
            return None
        dataset = self._registry[name]
        chunks = _unstored(chunks, self._floor(dataset))
        if not chunks:
            done: asyncio.Future[BuildResult] = asyncio.get_running_loop().create_future()
            done.set_result(_empty_result(dataset))
            return done
        return self._start_build(dataset, chunks)

    def _start_build(self, dataset: Dataset, chunks: list[Rows]) -> asyncio.Future[BuildResult]:
        future = self._submit(_BUILD, _build_table, dataset, chunks)
        self._builds += 1
        future.add_done_callback(self._build_ended)
        return future

    def _build_ended(self, _: object) -> None:
        self._builds -= 1

    def _floor(self, dataset: Dataset) -> int:
        """The journal position every sink holds this dataset's frames up to (a replay's)."""
        return min((sink.checkpoint(dataset.name) for sink in self._sinks), default=0)

    async def _build_all(self, lanes: list[_Lane]) -> None:
        closed = False
        while True:
            flush = await self._buffer.next_flush()
            if flush is None:
                if closed:
                    for lane in lanes:
                        lane.queue.put_nowait(None)
                    return
                # Shutting down: reorgs still open are recorded now (no newer block will close them).
                closed = True
                self.reorgs.close()
                continue
            # Rows derived while building it (its records the schema refused, the reorgs and gaps
            # its blocks showed) go to each lane ahead of it: once a sink holds this flush, a replay
            # skips its frames without decoding them, so nothing would derive those rows again.
            derived: list[Flush] = []
            try:
                item = await self._build(flush)
                if self._registry[flush.dataset].kind != "values":
                    derived = self._buffer.take_derived()
                items = [*[await self._build(d) for d in derived], item]
            except BaseException:
                for taken in (*derived, flush):
                    self._buffer.done(taken)
                raise
            if self._before_write is not None:
                self._before_write()  # the journal holds every frame before any of its rows is stored
            for item in items:
                self._queue(lanes, item)

    def _queue(self, lanes: list[_Lane], item: _Built) -> None:
        """Hand a built flush to every sink's lane."""
        flush = item.flush
        # The raw records are no longer needed: the table is what stays in memory now.
        flush.chunks, flush.values, flush.parts = [], [], []
        self._buffer.resize(flush, item.nbytes)
        item.waiting = item.unwritten = len(lanes)
        for lane in lanes:
            lane.queue.put_nowait(item)
        if not lanes:
            self._finished(item)

    async def _drain(self, lane: _Lane) -> None:
        """Store what the builder queues for this sink, in order; commit held rows when due."""
        sink = lane.sink
        while True:
            try:
                # Held rows are committed when due, or at once when the memory runs short (press).
                async with asyncio.timeout(sink.commit_due_in()):
                    item = await lane.queue.get()
            except TimeoutError:
                await self._commit(lane)
                continue
            if isinstance(item, _Pressure):
                await self._commit(lane)
                continue
            if item is None:
                await self._commit(lane)
                return
            table = item.per_sink[sink]
            item.per_sink[sink] = None
            if table is not None and table.num_rows:
                before = sink.held_bytes if sink.holding else 0
                await self._retrying(sink, item.dataset, self._write_sink, sink, item, table)
                if sink.holding:
                    item.retained += max(0, sink.held_bytes - before)
            del table
            item.unwritten -= 1
            if not item.unwritten:
                # Every sink has its rows: what is still in memory is only what sinks hold for a
                # later commit, often fewer columns (DuckDB leaves `_raw` to the Parquet files).
                self._buffer.resize(item.flush, item.retained)
            lane.held.append(item)
            if sink.holding and self._buffer.near_full:
                # The readers soon wait for memory that only a commit frees: waiting for a full
                # batch would stall them.
                await self._commit(lane)
            if not sink.holding:
                self._durable(lane)

    async def _commit(self, lane: _Lane) -> None:
        if lane.sink.holding:
            await self._retrying(lane.sink, None, self._in_thread, lane.sink, lane.sink.commit)
        self._durable(lane)

    def _durable(self, lane: _Lane) -> None:
        """Everything this sink was given is durable in it now."""
        for item in lane.held:
            item.waiting -= 1
            if not item.waiting:
                self._finished(item)
        lane.held.clear()

    def _finished(self, item: _Built) -> None:
        self._buffer.done(item.flush)
        self._account(item.dataset, item.counts, time.monotonic() - item.started)

    async def _build(self, flush: Flush) -> _Built:
        dataset = self._registry[flush.dataset]
        started = time.monotonic()
        if dataset.kind == "values":
            # Derived rows (quarantine, gaps) carry deterministic ids instead: readers count ids.
            table = values_table(dataset, flush.values)
            per_sink: dict[Sink, pa.Table | None] = dict.fromkeys(self._sinks, table)
            if flush.dataset == QUARANTINE:
                for row in flush.values:
                    self._metrics.quarantined[_reason_key(row["reason"])] += 1
            elif flush.dataset == GAPS:
                for row in flush.values:
                    self._metrics.gaps[(row["provider"], row["kind"])] += 1
            return _Built(flush, dataset, _Counts.of(table), per_sink, started, table_bytes(table))
        stored = {sink: sink.checkpoint(dataset.name) for sink in self._sinks}
        floor = min(stored.values(), default=0)
        chunks = _unstored(flush.chunks, floor) if flush.first <= floor else flush.chunks
        # Its first records, built while it filled (gather: a part's error does not leave the
        # others' unread).
        results = list(await asyncio.gather(*flush.parts))
        if chunks:
            results.append(await self._start_build(dataset, chunks))
        result = joined(dataset, results) if results else _empty_result(dataset)
        for r in result.rejected:  # records the schema could not take go to quarantine
            self._buffer.reject(r)
        table = result.table
        self.reorgs.observe(dataset.name, table, result.positions)
        # Only a replay can hand a sink rows it holds; in normal operation nothing to filter.
        per_sink: dict[Sink, pa.Table | None] = {
            sink: table if flush.first > stored[sink] else _newer(table, result.positions, stored[sink])
            for sink in self._sinks
        }
        return _Built(flush, dataset, _Counts.of(table), per_sink, started, table_bytes(table))

    async def _write_sink(self, sink: Sink, item: _Built, table: pa.Table) -> None:
        flush = item.flush
        paths = await self._in_thread(sink, sink.write, item.dataset, table, flush.first, flush.last)
        self._metrics.files_written += len(paths)
        self._metrics.recent_files.extend(paths)
        self._metrics.dataset(item.dataset.name).files += len(paths)

    async def _retrying(self, sink: Sink, dataset: Dataset | None, call: Callable, *args: object) -> None:
        """Run `call(*args)` until it succeeds: a sink that fails is retried with backoff, not skipped.

        The first attempt goes without tenacity: its retrying state leaves ~40 objects in reference
        cycles at every use, garbage that only the cyclic GC frees (tuning.collect_cycles), and
        nearly every call succeeds at once.
        """
        try:
            await call(*args)
            return  # a sink's calls come one at a time: none failing, nothing to clear
        except Fatal:
            raise
        except Exception as exc:
            first: Exception | None = exc
        retrying = AsyncRetrying(
            # A cancelled writer (the daemon stopping on another task's error) stops here: retried,
            # the cancellation was taken for a sink error and the writer never ended.
            retry=retry_if_exception(lambda exc: not isinstance(exc, Fatal | asyncio.CancelledError)),
            wait=wait_random_exponential(multiplier=0.2, max=self._retry_max),
            before_sleep=self._sink_failed(sink, dataset),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first is not None:  # tenacity's first attempt is the one that just failed
                    failed, first = first, None
                    try:
                        raise failed
                    finally:  # its traceback holds this frame: no cycle keeping the flush's table
                        del failed
                await call(*args)
        self._metrics.sink_failures.pop(sink.name, None)  # it went through: the sink is well again

    def _sink_failed(self, sink: Sink, dataset: Dataset | None) -> object:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._metrics.sink_errors += 1
            error = f"{type(exc).__name__}: {exc}"
            failure = self._metrics.sink_failures.get(sink.name)
            if failure is None:
                failure = self._metrics.sink_failures[sink.name] = SinkFailure(time.monotonic(), error, 0)
            failure.error, failure.attempts = error, failure.attempts + 1
            log.error(
                "sink write failed, retrying",
                sink=sink.name,
                dataset=dataset.name if dataset else None,
                attempt=state.attempt_number,
                error=error,
            )

        return before_sleep

    def _account(self, dataset: Dataset, counts: _Counts, seconds: float) -> None:
        stats = self._metrics.dataset(dataset.name)
        stats.flushes += 1
        stats.rows_written += counts.rows
        stats.last_flush_seconds = seconds
        for provider, n in counts.by_provider.items():
            self._metrics.rows_by_provider[provider] += n
        stats.reorg_rows += counts.reorg_rows
        latest = counts.latest_event
        if latest is not None and (stats.last_event_time is None or latest > stats.last_event_time):
            stats.last_event_time = latest


def _build_table(dataset: Dataset, chunks: list[Rows]) -> BuildResult:
    try:
        return build_table(dataset, chunks)
    finally:
        chunks.clear()  # tens of thousands of records are freed here, not on the event loop


def _unstored(chunks: list[Rows], floor: int) -> list[Rows]:
    """Frames every sink already holds (a journal replay's) are not even decoded again."""
    if not floor:
        return chunks
    return [c for c in chunks if not c.position or c.last_position > floor]


def _empty_result(dataset: Dataset) -> BuildResult:
    return BuildResult(dataset.arrow_schema.empty_table(), [])


def _newer(table: pa.Table, positions: pa.Array, stored: int) -> pa.Table:
    """Rows a sink does not hold yet: journal position above its checkpoint (or no position)."""
    if not stored or not table.num_rows:
        return table
    keep = pc.or_(pc.equal(positions, 0), pc.greater(positions, stored))
    return table.filter(keep)


def _reason_key(reason: str) -> str:
    """Group quarantine reasons by their kind (the text before the first colon)."""
    return reason.split(":", 1)[0][:60]
