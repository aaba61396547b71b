"""`python -m ingest VERB`: run, query, status, reconcile, replay, compact, emulate, test."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import structlog
from rich.console import Console
from rich.table import Table

from ingest.config import Config, load_config
from ingest.errors import ConfigError, Fatal
from ingest.log import configure_logging
from ingest.schema import load_registry
from ingest.tuning import collect_cycles, tune_process
from ingest.views import connect_for_query

__all__ = ["main"]

log = structlog.get_logger("ingest.cli")
ROOT = Path(__file__).resolve().parent.parent


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (nan would compare as never due)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__)
    sub = parser.add_subparsers(dest="verb")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help="TOML config file (default: the built-in demo)")
        return p

    run = with_config(sub.add_parser("run", help="run the ingestion daemon (the default verb)"))
    run.add_argument("--duration", type=_seconds, help="stop after this many seconds (default: until Ctrl-C)")
    run.add_argument("--log-format", choices=("console", "json"), help="log lines as text or JSON")
    run.add_argument("--no-live", action="store_true", help="no live table, a progress log line instead")

    query = with_config(sub.add_parser("query", help="run SQL over the store (works while the daemon runs)"))
    query.add_argument("sql")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")

    with_config(sub.add_parser("status", help="rows, time range, reorgs and quarantine per dataset"))

    emulate = sub.add_parser("emulate", help="serve one provider emulator on 127.0.0.1 until stopped")
    emulate.add_argument("provider")
    emulate.add_argument("--port", type=_port, default=0)
    emulate.add_argument("--key", help="the only key accepted (default: any non-empty key)")
    emulate.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an emulator option as in a config's `emulator = {...}`, the value in TOML: "
        "--set fork_every=25 --set 'chains=[\"eth\"]' (repeatable)",
    )

    rec = with_config(
        sub.add_parser("reconcile", help="compare two providers on one chain: missing heights, differences")
    )
    rec.add_argument("--chain", default="eth", help="chain name as in the blocks view (eth, bsc, ...)")
    rec.add_argument("--providers", default="blockdb,bitquery", help="the two providers to compare: A,B")
    rec.add_argument("--from", dest="first", type=int, help="first height (default: the overlap of both)")
    rec.add_argument("--to", dest="last", type=int, help="last height")
    rec.add_argument("--format", choices=("table", "json"), default="table")

    comp = with_config(
        sub.add_parser("compact", help="merge small Parquet files of closed days (safe while daemons run)")
    )
    comp.add_argument("--older-than", type=datetime.date.fromisoformat, help="only days before this date")
    comp.add_argument("--target-rows", type=_count, default=1_000_000)
    comp.add_argument(
        "--grace", type=_seconds, default=3600.0, help="seconds before replaced files are deleted"
    )

    rp = with_config(
        sub.add_parser("replay", help="ingest journal segments or a capture of raw frames offline")
    )
    rp.add_argument(
        "path", type=Path, nargs="+", help="journal segment files or directories, or a capture file"
    )
    rp.add_argument(
        "--provider", help="for a capture (one raw frame per line): the configured provider it is from"
    )

    test = sub.add_parser("test", help="run the test suite")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    sub.add_parser(
        "bench", help="benchmarks: throughput, latency, CPU and memory beside what users write instead"
    )
    return parser


_PRINTING = frozenset({"query", "status", "reconcile"})  # verbs whose output is read through a pipe


def with_default_verb(argv: list[str]) -> list[str]:
    """`run` when no verb is given (options alone are run's)."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return ["run", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = with_default_verb(list(sys.argv[1:] if argv is None else argv))
    # Verbs that hand their options on untouched (argparse would try to read them itself).
    if argv[:1] == ["test"]:
        return subprocess.call([sys.executable, "-m", "pytest", *argv[1:]], cwd=ROOT)
    if argv[:1] == ["bench"]:
        sys.path.insert(0, str(ROOT))  # benchmarks/ sits beside ingest/, outside the package
        from benchmarks.run import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    verb = args.verb or "run"
    try:
        if verb == "emulate":
            configure_logging("console")
            return asyncio.run(_emulate(args.provider, args.port, args.key, args.options))
        config = load_config(getattr(args, "config", None))
        if verb == "run":
            return _run(config, args)
        configure_logging("console")
        if verb == "query":
            return _query(config, args.sql, args.format)
        if verb == "replay":
            return _replay(config, args.path, args.provider)
        if verb == "reconcile":
            return _reconcile(config, args)
        if verb == "compact":
            return _compact(config, args.older_than, args.target_rows, args.grace)
        return _status(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except Fatal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except duckdb.Error as exc:  # `status` or `reconcile` over a damaged store file: DuckDB says which
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if verb not in _PRINTING:  # a socket's, say: not a reader that had enough
            raise
        # The reader stopped reading (`query ... | head`): what it wanted it has. Python would
        # report the pipe again when it flushes stdout at exit, so stdout goes nowhere now.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(config: Config, args: argparse.Namespace) -> int:
    log_format = args.log_format or config.log_format
    configure_logging(log_format)
    undo = tune_process()
    try:
        return _run_daemon(config, args, log_format)
    finally:
        undo()


def _run_daemon(config: Config, args: argparse.Namespace, log_format: str) -> int:
    from ingest.app import Daemon  # imported late: `query` need not load aiohttp
    from ingest.live import LiveView, progress_logger
    from ingest.summary import print_summary

    live = not args.no_live and log_format == "console" and sys.stderr.isatty()
    daemon = Daemon(config)

    async def main_task() -> int:
        view = LiveView(daemon.metrics, daemon.buffer) if live else None
        watcher = asyncio.create_task(view.run() if view else progress_logger(daemon.metrics, daemon.buffer))
        collector = asyncio.create_task(collect_cycles())  # the GC's clock (tune_process)
        try:
            result = await daemon.run(duration=args.duration)
        finally:
            for task in (watcher, collector):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Piped output has no width of its own: a wide one keeps the tables readable in logs.
        print_summary(result, config, load_registry(), Console(width=None if sys.stdout.isatty() else 160))
        return 1 if result.failed and len(result.failed) == len(config.providers) else 0

    try:
        return asyncio.run(main_task())
    except ExceptionGroup as group:
        # A component that cannot go on (a sink's fatal error) stops the daemon's task group: say
        # what it was, as any other fatal error, rather than a traceback of the group.
        fatal = group.subgroup(Fatal)
        if fatal is None:
            raise
        while isinstance(fatal, BaseExceptionGroup):
            fatal = fatal.exceptions[0]
        raise fatal from None


def _reconcile(config: Config, args: argparse.Namespace) -> int:
    from ingest.reconcile import reconcile

    names = [p.strip() for p in args.providers.split(",")]
    if len(names) != 2 or not all(names):
        print("--providers: expected two provider names, A,B", file=sys.stderr)
        return 2
    con, _ = connect_for_query(
        load_registry(), config.storage.duckdb_path, _lake(config), instance=config.instance
    )
    # A misspelt chain or provider would compare nothing and pass (exit 0): named instead.
    held = con.execute("SELECT provider, chain FROM blocks GROUP BY ALL ORDER BY ALL").fetchall()
    if missing := [n for n in names if (n, args.chain) not in held]:
        there = ", ".join(f"{p} on {c}" for p, c in held) or "none"
        print(
            f"no blocks of {missing[0]} on {args.chain} in the store (blocks there: {there})", file=sys.stderr
        )
        return 2
    r = reconcile(con, args.chain, names[0], names[1], args.first, args.last)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "chain": r.chain,
                    "a": r.a,
                    "b": r.b,
                    "first": r.first,
                    "last": r.last,
                    "compared": r.compared,
                    "only_a": r.only_a,
                    "only_b": r.only_b,
                    "hash_mismatch": r.hash_mismatch,
                    "transfer_mismatch": r.transfer_mismatch,
                }
            )
        )
    else:
        console = Console()
        if r.first is None:
            console.print(f"nothing to compare: {r.a} and {r.b} share no heights on {r.chain}")
            return 0
        console.print(f"{r.chain} heights {r.first}..{r.last}: {r.compared} compared between {r.a} and {r.b}")
        console.print(f"  only in {r.a}: {len(r.only_a)} {r.only_a[:20]}")
        console.print(f"  only in {r.b}: {len(r.only_b)} {r.only_b[:20]}")
        table = Table(title=f"hashes that differ ({len(r.hash_mismatch)})", title_justify="left")
        for col in ("height", r.a, r.b):
            table.add_column(col)
        for number, ha, hb in r.hash_mismatch[:50]:
            table.add_row(str(number), ha, hb)
        console.print(table)
        amounts = Table(title=f"transfers that differ ({len(r.transfer_mismatch)})", title_justify="left")
        for col in ("height", f"count {r.a}", f"count {r.b}", f"amount {r.a}", f"amount {r.b}"):
            amounts.add_column(col)
        for row in r.transfer_mismatch[:50]:
            amounts.add_row(*map(str, row))
        console.print(amounts)
        console.print("they agree" if r.agree else "they differ")
    return 0 if r.agree else 1


def _compact(config: Config, older_than: datetime.date | None, target_rows: int, grace: float) -> int:
    from ingest.compact import compact

    if config.storage.parquet_root is None:
        print("the Parquet sink is off: nothing to compact", file=sys.stderr)
        return 2
    lake = config.storage.lake()
    try:
        report = compact(
            lake,
            load_registry(),
            instance=config.instance,
            older_than=older_than,
            target_rows=target_rows,
            grace_seconds=grace,
        )
    except OSError as exc:  # a lake the user may not write (read-only, another's); it stays as it was
        print(f"error: cannot compact {lake.uri}: {exc}", file=sys.stderr)
        return 1
    if report.busy:
        print("another compaction is at work on this lake: nothing done", file=sys.stderr)
        return 1
    print(
        f"{len(report.partitions)} closed partitions: files {report.files_before} -> {report.files_after}, "
        f"{report.rows:,} rows, bytes {report.bytes_before:,} -> {report.bytes_after:,}, "
        f"{report.deleted} replaced files deleted"
    )
    return 0


def _replay(config: Config, paths: list[Path], provider: str | None) -> int:
    from ingest.app import Daemon
    from ingest.replay import capture_records, journal_records

    names = {p.name for p in config.providers}
    if provider is not None:
        if provider not in names:
            print(
                f"--provider: no provider named {provider!r} in the config ({', '.join(sorted(names))})",
                file=sys.stderr,
            )
            return 2
        if missing := [p for p in paths if not p.is_file()]:
            print(f"no such capture file: {missing[0]}", file=sys.stderr)
            return 2
        records: Any = (r for path in paths for r in capture_records(path, provider))
    else:
        if missing := [p for p in paths if not p.exists()]:
            print(f"no such file or directory: {missing[0]}", file=sys.stderr)
            return 2
        if not all(p.is_dir() or p.suffix == ".seg" for p in paths):
            print("a capture of raw frames needs --provider NAME (the frames' provider)", file=sys.stderr)
            return 2
        records = journal_records(paths)
    daemon = Daemon(config)
    stats = asyncio.run(daemon.ingest_offline(records))
    print(f"replayed {stats.frames:,} frames into {stats.rows:,} rows", flush=True)
    for name, count in sorted(daemon.metrics.datasets.items()):
        print(f"  {name}: {count.rows_written:,} rows written")
    if stats.unknown_streams:
        print(f"  frames of providers not in the config (quarantined): {dict(stats.unknown_streams)}")
    return 0


def _query(config: Config, sql: str, fmt: str) -> int:
    con, _ = connect_for_query(
        load_registry(), config.storage.duckdb_path, _lake(config), instance=config.instance
    )
    try:
        relation = con.sql(sql)
        if relation is None:  # a statement with no result (SET, CREATE VIEW ...)
            return 0
        table = relation.to_arrow_table()
    except duckdb.Error as exc:
        print(f"query error: {exc}", file=sys.stderr)
        return 1
    write_table(table, fmt)
    return 0


def _lake(config: Config) -> Any:
    return config.storage.lake() if config.storage.parquet_root is not None else None


def _printable(table: pa.Table, *, nested_as_json: bool) -> pa.Table:
    """Columns every output format can take: nanosecond times as ISO text (a Python datetime stops
    at microseconds, and every dataset has `_received_at`), and for CSV, which has no nesting,
    lists and structs as JSON text."""
    for i, field in enumerate(table.schema):
        typ = field.type
        column: pa.ChunkedArray | pa.Array | None = None
        if pa.types.is_temporal(typ) and getattr(typ, "unit", None) == "ns":
            try:
                column = table.column(i).cast(pa.string())
            except pa.ArrowNotImplementedError:  # durations: their count of nanoseconds
                column = table.column(i).cast(pa.int64())
        elif pa.types.is_interval(typ):  # `now() - max(_received_at)`: as DuckDB writes it
            column = pa.array([_interval_text(v) for v in table.column(i).to_pylist()], pa.string())
        elif nested_as_json and pa.types.is_nested(typ):
            texts = [None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()]
            column = pa.array(texts, pa.string())
        elif nested_as_json and (pa.types.is_binary(typ) or pa.types.is_large_binary(typ)):
            # quarantine.raw: Arrow's CSV writer fails on bytes that are not UTF-8 (a traceback).
            column = pa.array([_bytes_text(v) for v in table.column(i).to_pylist()], pa.string())
        if column is not None:
            table = table.set_column(i, pa.field(field.name, column.type), column)
    return table


def _bytes_text(value: bytes | None) -> str | None:
    """Bytes as their UTF-8 text (as the CSV writer wrote them); otherwise as DuckDB writes a
    BLOB, each byte outside printable ASCII (and quotes and backslash) as \\xHH."""
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"\"'\\" else f"\\x{b:02X}" for b in value)


def _interval_text(value: Any) -> str | None:
    """A DuckDB interval as DuckDB prints it (`1 year 2 months 3 days 04:05:06.5`): Arrow has no
    cast of it to text (CSV failed), and Python shows a MonthDayNano tuple."""
    if value is None:
        return None
    months, days, nanos = value.months, value.days, value.nanoseconds
    years = int(months / 12)  # toward zero, as DuckDB: -14 months is -1 year -2 months
    parts = [
        f"{n} {unit}{'' if abs(n) == 1 else 's'}"
        for n, unit in ((years, "year"), (months - 12 * years, "month"), (days, "day"))
        if n
    ]
    if nanos or not parts:
        seconds, micros = divmod(abs(nanos) // 1000, 1_000_000)
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        fraction = f".{micros:06d}".rstrip("0") if micros else ""
        parts.append(f"{'-' if nanos < 0 else ''}{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}")
    return " ".join(parts)


def write_table(table: pa.Table, fmt: str) -> None:
    """Print a query result as a readable table, CSV or JSON lines."""
    table = _printable(table, nested_as_json=fmt == "csv")
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
        return
    rows = table.to_pylist()
    if fmt == "json":
        for row in rows:
            print(json.dumps(row, default=str))
        return
    out = Table(show_lines=False)
    for name in table.column_names:
        out.add_column(name, overflow="fold")
    for row in rows:
        out.add_row(*("NULL" if v is None else str(v) for v in row.values()))
    Console().print(out)
    print(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")


def _status(config: Config) -> int:
    from ingest.summary import status_table

    registry = load_registry()
    con, source = connect_for_query(
        registry, config.storage.duckdb_path, _lake(config), instance=config.instance
    )
    console = Console()
    console.print(status_table(con, registry, source))
    return 0


def _emulator_options(settings: Sequence[str]) -> dict[str, Any]:
    """`--set OPTION=VALUE` arguments, each value read as TOML (as in a config file)."""
    options: dict[str, Any] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {setting!r}: expected OPTION=VALUE")
        if name.strip() in ("key", "port"):
            raise ConfigError(f"--set {setting!r}: give the {name.strip()} with --{name.strip()}")
        try:
            options[name.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"--set {setting!r}: the value is not TOML (a string needs quotes: {name}='\"text\"')"
            ) from None
    return options


async def _emulate(provider: str, port: int, key: str | None, settings: Sequence[str] = ()) -> int:
    from ingest.emulators import EMULATORS, make_emulator

    if provider not in EMULATORS:
        print(f"unknown provider {provider!r} (known: {', '.join(sorted(EMULATORS))})", file=sys.stderr)
        return 2
    try:
        emulator = make_emulator(provider, _emulator_options(settings), key=key)
    except (ConfigError, TypeError, ValueError) as exc:
        print(f"emulate {provider}: {exc}", file=sys.stderr)
        return 2
    try:
        url = await emulator.start(host="127.0.0.1", port=port)
    except OSError as exc:  # the port in use, or one below 1024 for a user
        print(
            f"emulate {provider}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    accepts = "only the given key" if key else "any non-empty key"
    print(
        f"{provider} emulator listening on {url} (accepts {accepts}); Ctrl-C stops",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
    return 0
