"""End-of-run summary and `status`: what is in the store, read back from it."""

from __future__ import annotations

import duckdb
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ingest.app import RunResult
from ingest.buffer import GAPS, QUARANTINE
from ingest.config import Config
from ingest.errors import Fatal
from ingest.log import redact
from ingest.schema import Registry, quote_ident
from ingest.sinks.duckdb import MEMORY_LIMIT
from ingest.views import connect_for_query

__all__ = ["EXAMPLE_QUERIES", "print_summary", "status_table"]

EXAMPLE_QUERIES = (
    "SELECT chain, count(*) AS blocks, max(number) AS head FROM blocks GROUP BY chain",
    "SELECT token_address, count(*) AS transfers, sum(amount_raw_f64) AS volume "
    "FROM blockdb_transfers GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
)


def status_table(con: duckdb.DuckDBPyConnection, registry: Registry, source: str) -> Table:
    """Per dataset: rows, event-time range, reorg-flagged rows; then quarantine by reason."""
    table = Table(title=f"datasets (read from {source})", title_justify="left")
    for col in (
        "dataset",
        "rows",
        "first event (UTC)",
        "last event (UTC)",
        "reorg rows",
        "last received (UTC)",
    ):
        table.add_column(col, justify="right" if col in ("rows", "reorg rows") else "left")
    for name, ds in sorted(registry.items()):
        if ds.kind != "records":
            continue
        row = con.execute(
            f"""SELECT count(*), strftime(min(_event_time), '%Y-%m-%d %H:%M:%S'),
                       strftime(max(_event_time), '%Y-%m-%d %H:%M:%S'),
                       count(*) FILTER (WHERE _is_reorg), strftime(max(_received_at), '%Y-%m-%d %H:%M:%S')
                FROM {quote_ident(name)}"""
        ).fetchall()[0]
        table.add_row(name, f"{row[0]:,}", row[1] or "-", row[2] or "-", f"{row[3]:,}", row[4] or "-")
    # Derived rows written again by a journal replay share an id: each counts once.
    quarantined = con.execute(
        "SELECT provider, split_part(reason, ':', 1) AS kind, count(*) "
        f"FROM (SELECT DISTINCT ON (id) * FROM {quote_ident(QUARANTINE)}) GROUP BY ALL ORDER BY 3 DESC, 1, 2"
    ).fetchall()
    gaps = con.execute(
        "SELECT provider, kind, count(*), sum(epoch_ns(ended_at) - epoch_ns(started_at)) / 1e9 "
        f"FROM (SELECT DISTINCT ON (id) * FROM {quote_ident(GAPS)}) GROUP BY ALL ORDER BY 1, 2"
    ).fetchall()
    table.caption = "\n".join(
        [
            "quarantined frames: "
            + (", ".join(f"{p} {k}: {n}" for p, k, n in quarantined) if quarantined else "none"),
            "gaps: "
            + (", ".join(f"{p} {k}: {n} ({secs:.1f} s)" for p, k, n, secs in gaps) if gaps else "none"),
        ]
    )
    return table


def print_summary(result: RunResult, config: Config, registry: Registry, console: Console) -> None:
    m = result.metrics
    this_run = Table(title=f"this run ({result.seconds:.1f} s)", title_justify="left")
    for col in ("dataset", "rows received", "rows written", "flushes", "files", "reorg rows"):
        this_run.add_column(col, justify="left" if col == "dataset" else "right")
    for name in sorted(result.buffer_received):
        s = m.dataset(name)
        this_run.add_row(
            name,
            f"{result.buffer_received[name]:,}",
            f"{s.rows_written:,}",
            str(s.flushes),
            str(s.files),
            f"{s.reorg_rows:,}",
        )
    if m.replayed_frames:
        # What the replay re-derived counts too (rows each sink may already have held): no match
        # with this run's sends is to be expected, nor a sign of loss.
        this_run.caption = (
            f"rows received include {m.replayed_frames:,} frames replayed from the journal of a run"
            " that did not stop cleanly (each sink skips the rows it already held)"
        )
    console.print(this_run)

    providers = Table(title="providers", title_justify="left")
    for col in (
        "provider",
        "endpoint",
        "frames read",
        "rows stored",
        "emulator sent",
        "reconnects",
        "state",
        "last error",
    ):
        providers.add_column(col, overflow="fold", no_wrap=col == "endpoint")
    for p in m.providers.values():
        sent = result.emulator_sent.get(p.name)
        stored = m.rows_by_provider[p.name]
        if sent is None:
            versus = "-"
        elif m.replayed_frames:
            versus = f"{sent:,} records [yellow](stored counts the replay too)[/]"
        else:
            versus = f"{sent:,} records " + ("[green]= stored[/]" if sent == stored else "[red]!= stored[/]")
        providers.add_row(
            p.name,
            p.display_url,
            f"{p.frames:,}",
            f"{stored:,}",
            versus,
            str(p.reconnects),
            p.state,
            redact(p.last_error)[:60],
        )
    console.print(providers)
    # The ones a user must look at: a silent one stored nothing, a refused one never will.
    idle = [
        f"{p.name}/{name} ({redact(state)})"
        for p in m.providers.values()
        for name, state in p.subscriptions.items()
        if state == "silent" or state.startswith("failed")
    ]
    if idle:
        console.print(Text(f"subscriptions not delivering: {'; '.join(idle)}", "red"))

    storage = config.storage
    try:
        con, source = connect_for_query(
            registry,
            storage.duckdb_path,
            storage.lake() if storage.parquet_root else None,
            instance=config.instance,
        )
        # Its scans stream; left at DuckDB's default (80% of RAM) they filled its cache instead:
        # after ten minutes at full speed (148M rows), the daemon's peak RSS 540 -> 843 MB here.
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT >> 20}MiB'")  # the sink's own
        console.print(status_table(con, registry, source))
    except (duckdb.Error, Fatal) as exc:
        console.print(f"[red]could not read the store back: {exc}[/red]")
    if storage.duckdb_path:
        console.print(f"DuckDB:  {storage.duckdb_path}")
    if storage.parquet_root:
        console.print(
            f"Parquet: {storage.parquet_root}/dataset=<name>/date=<YYYY-MM-DD>/*.parquet "
            f"({m.files_written} files written this run)"
        )
    console.print("\nTry:")
    for sql in EXAMPLE_QUERIES:
        console.print(f'  python run.py query "{sql}"', soft_wrap=True)
