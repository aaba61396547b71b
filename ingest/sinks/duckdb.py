"""DuckDB sink: one table per dataset, created from the declaration, appended in large commits.

Flushes are held and committed together once a dataset has a row group's worth of rows
(32,768: the sink attaches the file with that row group size, a quarter of DuckDB's default) or
the oldest held one waited `commit_seconds`. DuckDB writes whole row groups of a transaction
straight to the database file, but logs smaller inserts to its WAL and rewrites them at
checkpoint, which costs about half again per row (benchmarks/HISTORY.md). Readers query
the Parquet files while the daemon runs (DuckDB has one writer), so only the file DuckDB leaves
when the daemon stops sees this delay; the writer keeps the journal frames of held rows until
they are committed, so a crash loses nothing.

`_raw` (each row's JSON as received) stays out of DuckDB unless asked for: it is the widest
column by far and halves DuckDB's insert rate, and the Parquet lake keeps it for every row.
Datasets whose only payload is `_raw` (the generic ones) keep it everywhere.

Envelope columns that only repeat others of the row (CoinAPI's `_tracing_id` is its `uuid`; a
`_dedup_key` is the tracing id) are computed by DuckDB when read, not stored
(Dataset.duckdb_computed): in a table the sink creates, not in one an earlier version made.

DuckDB keeps what a commit wrote cached up to `memory_limit` (128 MB), and it keeps the
metadata of every row group appended on a connection for as long as the connection lives: in a
long run, RSS that never comes back. So after each commit the sink evicts the cache (a commit
only appends, it reads nothing back), and every 80 row groups (2.6M rows) it opens the file
again. That reopen's checkpoint does not merge the partial row groups commits leave
(`_no_vacuum`). The limit itself bounds a commit's working set (~60-75 MB for 122,880 trade
rows): 64 MB took ~70 MB off the peak in short runs, but ten minutes at full speed with it
ended in a fatal checkpoint failure (the table past ~20M rows). A commit of large values (tens
of kB each: account data, raw rows of generic datasets) can need more than that, so a commit
that runs out of memory is rolled back and tried again with a higher limit, which then goes
back down. A fatal DuckDB error stops the daemon with a clear error instead: the
instance cannot be used again in the same process, and a restart loses nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import structlog

from ingest.arrow_batch import table_bytes
from ingest.errors import Fatal
from ingest.schema import RAW, Dataset, quote_ident, quote_literal
from ingest.views import apply_views

__all__ = ["POSITIONS", "DuckDBSink"]

POSITIONS = "_ingest_positions"  # per instance and dataset: the last journal position stored
# The row group size the sink writes (DuckDB's default is 122,880). A commit of at least this
# many rows goes straight to the file; the writer holds rows until then, in memory it counts
# against max_pending_bytes. A quarter of the default holds a quarter of the rows, and lets
# Bitquery's wide rows, which the memory budget commits ~33k at a time, skip the WAL. Side by
# side, 15 s at full speed, 3 runs each: BlockDB 113k -> 122k msg/s and peak RSS 502 -> 430 MB,
# Bitquery 105k -> 111k rows/s and 503 -> 485 MB, CoinAPI 197k -> 185k msg/s and 456 -> 396 MB;
# the file ~7% larger, the same query times.
ROW_GROUP_ROWS = 32_768
MEMORY_LIMIT = 128 << 20
MAX_MEMORY_LIMIT = 4 << 30  # how high a commit that runs out of memory may raise the limit
RELEASE_LIMIT = 4 << 20  # between commits: DuckDB evicts its cached blocks down to this
KEPT_BLOCK_MEMORY = 64 << 20  # what DuckDB's blocks keep of memory between commits (_keep_blocks)
# Row groups appended on one connection before it is opened again: DuckDB keeps each one's
# metadata (~100 kB) for the connection's life. A reopen takes ~75 ms.
REOPEN_ROW_GROUPS = 80
REOPEN_ROWS = REOPEN_ROW_GROUPS * ROW_GROUP_ROWS

_CATALOG = "ingest_store"  # the attached file's name inside the sink's connection
log = structlog.get_logger("ingest.sinks.duckdb")


class DuckDBSink:
    name = "duckdb"

    def __init__(
        self,
        path: Path,
        *,
        instance: str = "main",
        lock_wait: float = 15.0,
        memory_limit: int = MEMORY_LIMIT,
        max_memory_limit: int = MAX_MEMORY_LIMIT,
        keep_raw: bool = False,
        commit_rows: int = ROW_GROUP_ROWS,
        commit_seconds: float = 5.0,
        reopen_rows: int = REOPEN_ROWS,
    ) -> None:
        self.path = path
        self._commit_rows = commit_rows
        self._commit_seconds = commit_seconds
        self._held: dict[str, list[tuple[Dataset, pa.Table, int]]] = {}  # dataset -> (ds, rows, last)
        self._held_since: float | None = None
        self._keep_raw = keep_raw
        self._memory_limit = memory_limit
        self._max_memory_limit = max(memory_limit, max_memory_limit)
        self._instance = instance
        self._lock_wait = lock_wait
        self._con: duckdb.DuckDBPyConnection | None = None
        self._checkpoints: dict[str, int] = {}
        self._opened = False
        self._reopen_rows = reopen_rows
        self._rows_on_connection = 0
        self._computed: dict[str, frozenset[str]] = {}  # dataset -> its table's virtual columns

    def open(self, datasets: Iterable[Dataset]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = self._connect()
        # DuckDB's buffer pool defaults to 80% of RAM and keeps what it caches: a long-running
        # daemon's memory would creep. Inserts need little; queries go through other processes.
        self._set_memory_limit(self._memory_limit)
        for ds in datasets:
            self._con.execute(ds.create_table_sql(self._omitted(ds), ds.duckdb_computed()))
            self._add_missing_columns(ds)
            self._computed[ds.name] = self._generated_columns(ds)
        self._con.execute(
            f"CREATE TABLE IF NOT EXISTS {POSITIONS} (instance VARCHAR, dataset VARCHAR, position BIGINT, "
            "PRIMARY KEY (instance, dataset))"
        )
        rows = self._con.execute(
            f"SELECT dataset, position FROM {POSITIONS} WHERE instance = ?", [self._instance]
        ).fetchall()
        self._checkpoints = dict(rows)
        apply_views(self._con)
        self._opened = True

    def read(self, sql: str) -> pa.Table:
        """A query's result on the store, as Arrow; between writes only (start-up)."""
        assert self._con is not None
        return self._con.sql(sql).to_arrow_table()

    def _omitted(self, ds: Dataset) -> tuple[str, ...]:
        return () if self._keep_raw or ds.raw_only or ds.kind != "records" else (RAW,)

    def checkpoint(self, dataset: str) -> int:
        return self._checkpoints.get(dataset, 0)

    def _connect(self, *, wait_forever: bool = False) -> duckdb.DuckDBPyConnection:
        # One writer or many readers, never both: a `query` reading the file right now holds it
        # only briefly, so wait for it; another daemon would hold it for good, so at start the
        # wait is bounded. Once running, the file is ours: wait for the reader, however long.
        deadline = None if wait_forever else time.monotonic() + self._lock_wait
        next_warning = 0.0
        while True:
            try:
                con = _attach(self.path)
            except duckdb.IOException as exc:
                now = time.monotonic()
                if "lock" not in str(exc).lower() or (deadline is not None and now > deadline):
                    raise Fatal(f"cannot open {self.path} for writing: {exc}") from None
                if now >= next_warning:  # once, then every half minute of a long wait
                    log.warning("database busy, waiting", path=str(self.path))
                    next_warning = now + 30.0
                time.sleep(0.5)
                continue
            _no_vacuum(con)
            _one_thread(con)
            _keep_blocks(con)
            return con

    def _add_missing_columns(self, ds: Dataset) -> None:
        """Columns declared after the table was made are added, so old data stays queryable."""
        assert self._con is not None
        existing = {
            row[0]
            for row in self._con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [ds.name]
            ).fetchall()
        }
        for name, typ in ds.duckdb_columns(self._omitted(ds)):
            if name not in existing:
                self._con.execute(f"ALTER TABLE {quote_ident(ds.name)} ADD COLUMN {quote_ident(name)} {typ}")

    def _generated_columns(self, ds: Dataset) -> frozenset[str]:
        """The columns the table computes, not stores: none in a table an earlier version made."""
        assert self._con is not None
        rows = self._con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = ? AND is_generated = 'ALWAYS'",
            [ds.name],
        ).fetchall()
        return frozenset(row[0] for row in rows)

    def write(self, dataset: Dataset, table: pa.Table, first: int, last: int) -> list[str]:
        """Hold the rows; commit everything held once this dataset has a row group's worth."""
        assert self._opened, "open() first"
        unstored = (*self._omitted(dataset), *self._computed.get(dataset.name, ()))
        if unstored:
            table = table.drop_columns([c for c in unstored if c in table.column_names])  # zero-copy
        parts = self._held.setdefault(dataset.name, [])
        parts.append((dataset, table, last))
        if self._held_since is None:
            self._held_since = time.monotonic()
        if sum(t.num_rows for _, t, _ in parts) >= self._commit_rows:
            try:
                self.commit()
            except BaseException:
                if self._held:  # not committed: the writer retries this write whole
                    self._unhold_last(dataset.name)
                raise
        return []

    def _unhold_last(self, name: str) -> None:
        self._held[name].pop()
        if not self._held[name]:
            del self._held[name]
        if not self._held:
            self._held_since = None

    @property
    def holding(self) -> bool:
        return bool(self._held)

    @property
    def held_bytes(self) -> int:
        return sum(table_bytes(t) for parts in self._held.values() for _, t, _ in parts)

    def _held_rows(self) -> int:
        return sum(t.num_rows for parts in self._held.values() for _, t, _ in parts)

    def commit_due_in(self) -> float | None:
        if self._held_since is None:
            return None
        return max(0.0, self._held_since + self._commit_seconds - time.monotonic())

    def _set_memory_limit(self, limit: int) -> None:
        assert self._con is not None
        self._con.execute(f"SET memory_limit = '{limit}B'")

    def commit(self) -> None:
        """Insert every held table and how far each dataset reaches, in one transaction."""
        if not self._held:
            return
        rows = self._held_rows()
        self._with_memory(self._insert_held)
        self._rows_on_connection += rows
        try:
            if self._rows_on_connection >= self._reopen_rows:
                self._reopen()
            else:
                self._release_cache()
        except duckdb.Error as exc:
            # The rows are in: an error here must not read as a failed write, which the writer
            # would make again (twice the rows). Memory is handed back after the next commit.
            log.warning("could not hand DuckDB's memory back", error=str(exc)[:300])

    def _release_cache(self) -> None:
        """Hand back the blocks DuckDB cached during the commit (~70 MB of trade rows at the
        128 MB limit): lowering the limit evicts them, and the next commit reads nothing back,
        it only appends. Measured: no cost per row."""
        with contextlib.suppress(duckdb.Error):  # what is still pinned stays; that is all
            self._set_memory_limit(RELEASE_LIMIT)
        self._set_memory_limit(self._memory_limit)

    def _reopen(self) -> None:
        """Open the database again: DuckDB keeps every row group's metadata of a table it
        appended to in memory (~0.8 MB a million trade rows, for good), and loads it back only
        when read. The file stays this daemon's but for the moment between close and open; a
        reader that takes it then is waited for (see _connect)."""
        con, self._con = self._con, None
        assert con is not None
        try:
            con.close()  # a checkpoint first, of what smaller commits left in the WAL
        except duckdb.Error as exc:
            raise Fatal(
                f"DuckDB failed closing {self.path} to reopen it ({str(exc)[:300]}); nothing is "
                "lost: start the daemon again"
            ) from None
        self._con = self._connect(wait_forever=True)
        self._set_memory_limit(self._memory_limit)
        self._rows_on_connection = 0

    def _with_memory(self, work: Callable[[], None]) -> None:
        """Run `work` (DuckDB statements); if it runs out of memory, again with a higher limit,
        which then goes back down. A fatal error ends the sink (see the module's docstring)."""
        con = self._con
        if con is None:
            raise Fatal(f"{self.path} was closed after a fatal DuckDB error: start the daemon again")
        limit = self._memory_limit
        try:
            while True:
                try:
                    work()
                    return
                except duckdb.FatalException as exc:
                    # DuckDB's instance is unusable ("reopen the database to recover"), and reusing
                    # it in this process crashed it (a 10-minute soak). Stop: the journal keeps every
                    # frame not stored yet, and the positions committed with the rows tell a restart
                    # whether these rows are in.
                    with contextlib.suppress(duckdb.Error):
                        con.close()
                    self._con = None
                    raise Fatal(
                        f"DuckDB failed and must be reopened ({str(exc)[:300]}); nothing is lost: "
                        "start the daemon again and it stores what is missing from the journal"
                    ) from None
                except duckdb.Error as exc:
                    if not _out_of_memory(exc) or limit >= self._max_memory_limit:
                        raise
                    limit = min(limit * 4, self._max_memory_limit)
                    log.warning("ran out of memory, trying again", rows=self._held_rows(), memory_limit=limit)
                    self._set_memory_limit(limit)
        finally:
            if limit != self._memory_limit and self._con is not None:
                try:
                    self._set_memory_limit(self._memory_limit)
                except duckdb.Error as exc:
                    # The rows may be in: an error here must not read as a failed write, which the
                    # writer would make again. The limit is set again after the next commit.
                    log.warning("could not set DuckDB's memory limit back", error=str(exc)[:300])

    def _insert_held(self) -> None:
        con = self._con
        assert con is not None
        reached: dict[str, int] = {}
        # The rows and how far they reach commit together: after a crash both or neither.
        con.execute("BEGIN TRANSACTION")
        try:
            for name, parts in self._held.items():
                dataset = parts[0][0]
                batch = pa.concat_tables([table for _, table, _ in parts])  # zero-copy
                con.register("_ingest_batch", batch)
                try:
                    # BY NAME: the Arrow schema and the table agree on names, not necessarily on order.
                    con.execute(
                        f"INSERT INTO {quote_ident(dataset.name)} BY NAME SELECT * FROM _ingest_batch"
                    )
                finally:
                    # In a failed transaction this fails too; registering again replaces it.
                    with contextlib.suppress(duckdb.Error):
                        con.unregister("_ingest_batch")
                last = max(last for _, _, last in parts)
                if last > self._checkpoints.get(name, 0):
                    reached[name] = last
                    con.execute(
                        f"INSERT OR REPLACE INTO {POSITIONS} VALUES (?, ?, ?)", [self._instance, name, last]
                    )
            con.execute("COMMIT")
        except BaseException:
            # A COMMIT that fails has already ended the transaction: nothing left to roll back.
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        self._checkpoints.update(reached)
        self._held.clear()
        self._held_since = None

    def close(self) -> None:
        if self._con is not None:
            self.commit()
            self._with_memory(self._checkpoint)  # large values in the log need memory here too
            assert self._con is not None
            self._con.close()
            self._con = None

    def _checkpoint(self) -> None:
        assert self._con is not None
        self._con.execute("CHECKPOINT")


def _attach(path: Path) -> duckdb.DuckDBPyConnection:
    """The database file, attached with the sink's row group size and made the default catalog.

    The size is an option of ATTACH only (DuckDB does not keep it in the file): readers open the
    file as usual and see the same tables, views and macros.
    """
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH {quote_literal(str(path))} AS {_CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
        con.execute(f"USE {_CATALOG}")
    except BaseException:
        con.close()
        raise
    return con


def _no_vacuum(con: duckdb.DuckDBPyConnection) -> None:
    """Leave row groups as commits wrote them.

    A commit that is not a whole number of row groups leaves a partial one, and DuckDB's
    checkpoint (at each reopen and at close) merges partial row groups by rewriting them: 2.3 us
    of CPU a trade row, more than the insert (1.6 us), on both cores, while the sink waits.
    Measured on 1.5M trade rows in commits of 150k: the checkpoint 2.0 s -> 0 s, the file 216 ->
    114 MB. The table keeps some smaller row groups; it only ever grows (the pipeline deletes
    nothing), so there is nothing else to vacuum.
    """
    with contextlib.suppress(duckdb.CatalogException):  # DuckDB before 1.2 has no such setting
        con.execute("SET max_vacuum_tasks = 0")


def _keep_blocks(con: duckdb.DuckDBPyConnection) -> None:
    """Keep the memory of the blocks a commit used for the next commit.

    The sink evicts DuckDB's cache after each commit (_release_cache), and DuckDB's allocator
    (its own jemalloc) hands the freed blocks' pages back to the OS within a second, so each
    commit faulted them in again, ~3.5 us a 4 KiB page on these VMs. DuckDB's block allocator
    keeps up to this much physical memory for blocks instead, only what was touched. Measured on
    the sink alone, 20k-row CoinAPI writes: 120 -> 36 page faults every 1,000 rows, 2.2-2.4 ->
    2.0-2.1 us of CPU a row, peak RSS +6 MB (32, 64 and 128 MB gave the same).
    """
    with contextlib.suppress(duckdb.CatalogException):  # DuckDB before 1.3 has no such setting
        con.execute(f"SET block_allocator_memory = '{KEPT_BLOCK_MEMORY}B'")


def _one_thread(con: duckdb.DuckDBPyConnection) -> None:
    """Do the sink's inserts on the sink's own thread only.

    An Arrow append gains nothing from DuckDB's worker threads (one scan feeds one table), yet
    with them each insert cost 0.5 us more CPU a row (BlockDB transfers: 3.5 vs 4.0 us), and the
    daemon already has both cores busy. Side by side, 10 s at full speed, 3 runs each: BlockDB
    96k -> 110k msg/s, CoinAPI 168k -> 177k, Bitquery 91k -> 99k rows/s, peak RSS no higher.
    Readers (`query`, the summary) open their own connections and keep DuckDB's default.
    """
    con.execute("SET threads = 1")


def _out_of_memory(exc: duckdb.Error) -> bool:
    # Out of memory at COMMIT comes as a TransactionException, known only by its text.
    return isinstance(exc, duckdb.OutOfMemoryException) or "failed to pin block" in str(exc)
