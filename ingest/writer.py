"""Consumes flushes: builds the Arrow table and writes every sink, off the event loop.

Work per flush, not per message: one decode, one table, one append per sink. Two stages run
as a pipeline: while the sinks store flush k, flush k+1 is already being built, so building and
storing overlap instead of taking turns. Both run in worker threads (pyarrow and DuckDB release
the GIL, so the second core does real work), each sink in its own thread so a slow one does not
hold the other. Flushes reach every sink in the order they were sealed. A failing sink is
retried with backoff and the flush keeps its place, so nothing is dropped; meanwhile the
buffer's byte limit makes the readers wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from ingest.arrow_batch import BuildResult, build_table, values_table
from ingest.buffer import GAPS, QUARANTINE, Buffer, Flush
from ingest.errors import Fatal
from ingest.metrics import Metrics
from ingest.reorgs import ReorgTracker
from ingest.schema import Dataset, Registry
from ingest.sinks.base import Sink

__all__ = ["Writer"]

log = structlog.get_logger("ingest.writer")


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

    async def run(self) -> None:
        """Write flushes in order until the buffer is closed and drained."""
        built: asyncio.Queue[_Built | None] = asyncio.Queue(maxsize=1)  # one table ready ahead
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._store_all(built), name="writer-store")
            await self._build_all(built)

    async def _build_all(self, built: asyncio.Queue[_Built | None]) -> None:
        closed = False
        while True:
            flush = await self._buffer.next_flush()
            if flush is None:
                if closed:
                    await built.put(None)
                    return
                # Shutting down: reorgs still open are recorded now (no newer block will close them).
                closed = True
                self.reorgs.close()
                continue
            try:
                item = await self._build(flush)
            except BaseException:
                self._buffer.done(flush)
                raise
            await built.put(item)

    async def _store_all(self, built: asyncio.Queue[_Built | None]) -> None:
        while (item := await built.get()) is not None:
            try:
                await self._store(item)
            finally:
                self._buffer.done(item.flush)

    async def _build(self, flush: Flush) -> _Built:
        dataset = self._registry[flush.dataset]
        started = time.monotonic()
        if dataset.kind == "values":
            # Derived rows (quarantine, gaps) carry deterministic ids instead: readers count ids.
            table = values_table(dataset, flush.values)
            per_sink = {sink: table for sink in self._sinks}
            if flush.dataset == QUARANTINE:
                for row in flush.values:
                    self._metrics.quarantined[_reason_key(row["reason"])] += 1
            elif flush.dataset == GAPS:
                for row in flush.values:
                    self._metrics.gaps[(row["provider"], row["kind"])] += 1
            return _Built(flush, dataset, table, per_sink, started)
        stored = {sink: sink.checkpoint(dataset.name) for sink in self._sinks}
        floor = min(stored.values(), default=0)
        # Frames every sink already holds (a journal replay) are not even decoded again.
        chunks = [c for c in flush.chunks if not c.position or c.position > floor]
        result = await asyncio.to_thread(build_table, dataset, chunks) if chunks else _empty_result(dataset)
        for r in result.rejected:  # records the schema could not take go to quarantine
            self._buffer.reject(r)
        table = result.table
        self.reorgs.observe(dataset.name, table, result.positions)
        # Only a replay can hand a sink rows it holds; in normal operation nothing to filter.
        per_sink = {
            sink: table if flush.first > stored[sink] else _newer(table, result.positions, stored[sink])
            for sink in self._sinks
        }
        return _Built(flush, dataset, table, per_sink, started)

    async def _store(self, item: _Built) -> None:
        if self._before_write is not None:
            self._before_write()  # the journal holds every frame before any of its rows is stored
        writes = [
            self._write_sink(s, item.dataset, t, item.flush) for s, t in item.per_sink.items() if t.num_rows
        ]
        await asyncio.gather(*writes)
        self._account(item.dataset, item.table, time.monotonic() - item.started)

    async def _write_sink(self, sink: Sink, dataset: Dataset, table: pa.Table, flush: Flush) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: not isinstance(exc, Fatal)),
            wait=wait_random_exponential(multiplier=0.2, max=self._retry_max),
            before_sleep=self._sink_failed(sink, dataset),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                paths = await asyncio.to_thread(sink.write, dataset, table, flush.first, flush.last)
        self._metrics.files.extend(paths)
        self._metrics.dataset(dataset.name).files += len(paths)

    def _sink_failed(self, sink: Sink, dataset: Dataset) -> object:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._metrics.sink_errors += 1
            log.error(
                "sink write failed, retrying",
                sink=sink.name,
                dataset=dataset.name,
                attempt=state.attempt_number,
                error=f"{type(exc).__name__}: {exc}",
            )

        return before_sleep

    def _account(self, dataset: Dataset, table: pa.Table, seconds: float) -> None:
        stats = self._metrics.dataset(dataset.name)
        stats.flushes += 1
        stats.rows_written += table.num_rows
        stats.last_flush_seconds = seconds
        if "_provider" in table.column_names and table.num_rows:
            for item in pc.value_counts(table["_provider"]).to_pylist():
                self._metrics.rows_by_provider[item["values"]] += item["counts"]
        if "_is_reorg" in table.column_names and table.num_rows:
            stats.reorg_rows += pc.sum(table["_is_reorg"].cast(pa.int64())).as_py() or 0
        if "_event_time" in table.column_names and table.num_rows:
            latest = pc.max(table["_event_time"]).cast(pa.int64()).as_py()
            if latest is not None and (stats.last_event_time is None or latest > stats.last_event_time):
                stats.last_event_time = latest


@dataclass(slots=True)
class _Built:
    """A flush turned into a table (and what each sink still lacks of it), ready to store."""

    flush: Flush
    dataset: Dataset
    table: pa.Table
    per_sink: dict[Sink, pa.Table]
    started: float


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
