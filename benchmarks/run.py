"""`python -m benchmarks [--quick] [--json PATH] [--only SCENARIO ...]`: measure, print, save.

Scenarios (all in one run of the benchmark, so the figures compare on one machine state):

- `sender`: the load server alone against the null reader, per mix (its ceiling).
- `throughput`: every mix at full speed, for the daemon and for each baseline (the same seconds).
- `latency`: CoinAPI trades at 50k msg/s offered, default flush and the low-latency setting.
- `cpu`: CoinAPI trades at 20k msg/s offered: CPU per message (and latency) for every system.
- `scaling`: BlockDB transfers at full speed over 1, 4 and 16 concurrent subscriptions.
- `flush`: flush `max_rows` at full speed, and `max_age_seconds` at 20k msg/s.
- `soak`: CoinAPI trades at full speed for 10 minutes, once: peak RSS, and whether RSS stays flat.

Runs of a spec are interleaved with the others' (round after round), so drift in the host's
load spreads over every system instead of favouring one. A run that is not `ok` (rows lost or
stored twice, quarantine, gaps, a drain that timed out, a failed collector, sink errors; see
bench_pipeline) counts as failed: the tables mark every figure of its spec, its figures stay out
of the medians, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.bench_pipeline import RunSpec, run_once
from benchmarks.report import Row, render, summaries, write_json

__all__ = ["LOW_LATENCY", "SCENARIOS", "main"]

SCENARIOS = ("sender", "throughput", "latency", "cpu", "scaling", "flush", "soak")
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"
# The documented low-latency setting (README of benchmarks/): a flush at least every 100 ms.
LOW_LATENCY = {"max_rows": 50_000, "max_age": 0.1}
_TARGETS = {"coinapi": 300_000.0, "blockdb": 150_000.0, "bitquery": 1_000_000.0}
_MIX_LABELS = {"coinapi": "CoinAPI trades", "blockdb": "BlockDB transfers", "bitquery": "Bitquery transfers"}
_OK_LABEL = "  runs ok (baselines: stored = read; ingest: = sent, once each, both sinks, no quarantine)"


@dataclass(frozen=True, slots=True)
class Mode:
    runs: int  # repetitions of the daemon's runs (the median of these is shown)
    baseline_runs: int  # naive and dlt-arrow
    dlt_runs: int  # dlt with dicts: ~35 s a run (its loads block the reading), so fewer
    seconds: float  # full-speed window, single-record mixes, every system alike
    bitquery_seconds: float
    sender_seconds: float
    rate_seconds: float  # fixed-rate windows (latency, CPU), at least `_rate_seconds`
    warmup: float
    subs: tuple[int, ...]
    max_rows: tuple[int, ...]
    max_age: tuple[float, ...]
    dlt_mixes: tuple[str, ...]  # dlt with dicts is slow: where it runs
    soak_seconds: float  # the one long run: is RSS flat?
    soak_warmup: float


# Full-speed loads of 15 s (Bitquery 10 s): in 5 s loads the DuckDB work of the last seconds
# (how the last commits fell, and then the checkpoint's rewrite of partial row groups, since
# turned off) weighed so much that runs came out 30% apart. The baselines get the same window:
# a fixed cost at the end (the last load, the last commit) would weigh more in a shorter one.
FULL = Mode(3, 3, 1, 15.0, 10.0, 1.0, 4.0, 1.0, (1, 4, 16), (10_000, 50_000, 200_000),
            (0.1, 0.25, 1.0, 2.0), ("coinapi", "blockdb", "bitquery"), 600.0, 30.0)  # fmt: skip
QUICK = Mode(1, 1, 1, 1.0, 1.0, 0.5, 1.5, 0.5, (1, 4), (10_000, 50_000), (0.1, 1.0), ("coinapi",),
             10.0, 2.0)  # fmt: skip


def _rate_seconds(mode: Mode, max_age: float) -> float:
    """A fixed-rate window with room for two whole flushes after the warm-up: latency counts only
    files whose first row came after the warm-up and that appeared before the stop."""
    return max(mode.rate_seconds, mode.warmup + 3 * max_age)


@dataclass(slots=True)
class Plan:
    """What to run (each spec once per round, `runs` rounds) and the tables that show it."""

    runs: dict[RunSpec, int]
    tables: dict[str, list[Row]]

    def want(self, spec: RunSpec, n: int) -> RunSpec:
        self.runs[spec] = max(self.runs.get(spec, 0), n)
        return spec


def build_plan(mode: Mode, only: set[str]) -> Plan:
    plan = Plan({}, {"side by side": [], "how cost grows": []})
    side, grows = plan.tables["side by side"], plan.tables["how cost grows"]
    full = {mix: mode.bitquery_seconds if mix == "bitquery" else mode.seconds for mix in _MIX_LABELS}

    def ingest(mix: str, **kw: Any) -> RunSpec:
        kw.setdefault("seconds", full[mix])
        return plan.want(RunSpec("ingest", mix, warmup=mode.warmup, **kw), mode.runs)

    def baseline(system: str, mix: str, **kw: Any) -> RunSpec:
        kw.setdefault("seconds", full[mix])  # the daemon's window: one row, one length
        runs = mode.dlt_runs if system == "dlt" else mode.baseline_runs
        return plan.want(RunSpec(system, mix, warmup=mode.warmup, **kw), runs)

    def baselines(mix: str, **kw: Any) -> dict[str, RunSpec]:
        systems = ["naive", "dlt-arrow"] + (["dlt"] if mix in mode.dlt_mixes else [])
        return {s: baseline(s, mix, **kw) for s in systems}

    def sender(mix: str) -> RunSpec:
        return plan.want(RunSpec("null", mix, seconds=mode.sender_seconds), mode.runs)

    if "sender" in only or "throughput" in only:
        for mix in _MIX_LABELS:
            null = sender(mix)
            if "throughput" not in only:
                continue
            specs = {**baselines(mix), "ingest": ingest(mix)}
            unit, metric, sent = ("rows/s", "rows_per_s", "sender_rows_per_s")
            if mix != "bitquery":
                unit, metric, sent = ("msg/s", "msgs_per_s", "sender_frames_per_s")
            target = (">=", _TARGETS[mix])
            side.append(Row(f"{_MIX_LABELS[mix]}, full speed", metric, specs, unit, target, (null, sent)))
            if mix == "bitquery":
                side.append(Row("  (messages, ~117 rows each)", "msgs_per_s", specs, "msg/s", None,
                                (null, "sender_frames_per_s")))  # fmt: skip
            side.append(Row("  peak RSS", "peak_rss_mb", specs, "MB", ("<", 500.0)))
            side.append(Row(_OK_LABEL, "ok", specs))
        if "throughput" not in only:
            for mix in _MIX_LABELS:
                specs = {"null": sender(mix)}
                side.append(Row(f"{_MIX_LABELS[mix]}: sender alone", "sender_frames_per_s", specs, "msg/s"))
    if "cpu" in only:
        rate, seconds = 20_000.0, _rate_seconds(mode, 1.0)  # one window for every system
        specs = {**baselines("coinapi", rate=rate, seconds=seconds),
                 "ingest": ingest("coinapi", rate=rate, seconds=seconds, latency=True)}  # fmt: skip
        side.append(Row("CoinAPI at 20k msg/s: CPU per message", "cpu_us_per_msg", specs, "µs", ("<", 10.0)))
        side.append(Row("  messages/s read while offered (kept up?)", "read_msgs_per_s", specs, "msg/s"))
        # Each system's own run: a consumer that falls behind holds the sender back (flow control).
        side.append(Row("  frames/s the sender got out (20k offered)", "sender_frames_per_s", specs, "msg/s"))
        side.append(Row("  peak RSS", "peak_rss_mb", specs, "MB", ("<", 500.0)))
        side.append(Row(_OK_LABEL, "ok", specs))
    if "latency" in only:
        for label, flush, bound in (("default flush (50k rows / 1 s)", {}, 1500.0),
                                    ("low-latency flush (max_age 0.1 s)", LOW_LATENCY, 250.0)):  # fmt: skip
            seconds = _rate_seconds(mode, flush.get("max_age", 1.0))
            spec = ingest("coinapi", rate=50_000.0, seconds=seconds, latency=True, **flush)
            specs = {"ingest": spec}
            # From the load server's write of the frame: what a user of the data waits.
            side.append(Row(f"CoinAPI at 50k msg/s, {label}: send→queryable p50", "send_queryable_p50_ms",
                            specs, "ms"))  # fmt: skip
            side.append(Row("  frames/s the sender got out (50k offered)", "sender_frames_per_s", specs,
                            "msg/s"))  # fmt: skip
            side.append(Row("  send→queryable p99", "send_queryable_p99_ms", specs, "ms", ("<", bound)))
            side.append(Row("  of which send→read (socket, pacing) p99", "socket_wait_p99_ms", specs, "ms"))
            side.append(Row("  receive→queryable p99 (from _received_at)", "queryable_p99_ms", specs, "ms"))
            side.append(Row("  send→durable in both sinks p99", "send_durable_p99_ms", specs, "ms"))
            side.append(Row("  CPU per message", "cpu_us_per_msg", specs, "µs"))
            side.append(Row("  peak RSS", "peak_rss_mb", specs, "MB", ("<", 500.0)))
            side.append(Row(_OK_LABEL, "ok", specs))
    if "scaling" in only:
        for n in mode.subs:
            spec = ingest("blockdb", subs=n)
            specs = {"ingest": spec}
            label = f"BlockDB full speed, {n} subscription(s): throughput"
            grows.append(Row(label, "msgs_per_s", specs, "msg/s"))
            grows.append(Row("  peak RSS", "peak_rss_mb", specs, "MB", ("<", 500.0)))
            grows.append(Row(_OK_LABEL, "ok", specs))
    if "flush" in only:
        for rows in mode.max_rows:
            specs = {"ingest": ingest("coinapi", max_rows=rows)}
            label = f"CoinAPI full speed, max_rows {rows:,}: throughput"
            grows.append(Row(label, "msgs_per_s", specs, "msg/s"))
            grows.append(Row("  peak RSS", "peak_rss_mb", specs, "MB", ("<", 500.0)))
            grows.append(Row(_OK_LABEL, "ok", specs))
        for age in mode.max_age:
            seconds = _rate_seconds(mode, age)
            spec = ingest("coinapi", rate=20_000.0, seconds=seconds, latency=True, max_age=age)
            specs = {"ingest": spec}
            grows.append(Row(f"CoinAPI at 20k msg/s, max_age {age:g} s: send→queryable p50",
                             "send_queryable_p50_ms", specs, "ms"))  # fmt: skip
            grows.append(Row("  send→queryable p99", "send_queryable_p99_ms", specs, "ms"))
            grows.append(Row("  CPU per message", "cpu_us_per_msg", specs, "µs"))
            grows.append(Row("  peak RSS", "peak_rss_mb", specs, "MB"))
            grows.append(Row(_OK_LABEL, "ok", specs))
    if "soak" in only:
        # Once: a 10-minute run writes ~15 GB. Warm-up left out of the flatness figures.
        spec = plan.want(RunSpec("ingest", "coinapi", seconds=mode.soak_seconds, warmup=mode.soak_warmup), 1)
        specs = {"ingest": spec}
        secs = mode.soak_seconds
        length = f"{secs / 60:g} min" if secs >= 60 else f"{secs:g} s"
        grows.append(Row(f"CoinAPI full speed for {length}: throughput", "msgs_per_s", specs, "msg/s"))
        grows.append(Row("  peak RSS", "peak_rss_mb", specs, "MB", ("<", 500.0)))
        grows.append(Row("  RSS peak, first third of the run", "rss_first_third_peak_mb", specs, "MB"))
        grows.append(Row("  RSS peak, last third of the run", "rss_last_third_peak_mb", specs, "MB"))
        grows.append(Row("  RSS trend (least squares)", "rss_slope_mb_per_min", specs, "MB/min"))
        grows.append(Row(_OK_LABEL, "ok", specs))
    return plan


def _line(spec: RunSpec, r: dict[str, Any], seconds: float) -> str:
    if "error" in r:
        return f"{spec.label()}: [red]{r['error']}[/red]"
    keys = ("sender_frames_per_s", "msgs_per_s", "rows_per_s", "peak_rss_mb", "cpu_us_per_msg",
            "send_queryable_p50_ms", "send_queryable_p99_ms", "queryable_p99_ms")  # fmt: skip
    shown = " ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys if k in r)
    verdict = "ok" if r.get("ok") else f"[red]NOT OK: {'; '.join(r.get('problems') or ['no verdict'])}[/red]"
    return f"{spec.label()} ({seconds:.1f} s): {shown} {verdict}"


async def _run_all(plan: Plan, workdir: Path, console: Console, keep: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    rounds = max(plan.runs.values(), default=0)
    total = sum(plan.runs.values())
    for r in range(rounds):
        for spec, n in plan.runs.items():
            if r >= n:
                continue
            started = time.monotonic()
            result = await run_once(spec, workdir, keep=keep)
            result["round"] = r + 1
            result["wall_s"] = time.monotonic() - started
            results.append(result)
            console.print(f"[dim][{len(results)}/{total}][/dim] {_line(spec, result, result['wall_s'])}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one short run of each, under ~2 minutes")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file (default: %(default)s)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="only this scenario (repeatable)")
    parser.add_argument("--runs", type=int, help="repetitions per spec (default 3, quick 1)")
    parser.add_argument("--workdir", type=Path, help="where runs write their data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every run's data directory")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.runs:
        mode = replace(mode, runs=args.runs, baseline_runs=args.runs, dlt_runs=min(args.runs, mode.dlt_runs))
    only = set(args.only or SCENARIOS)
    plan = build_plan(mode, only)
    console = Console(width=None if sys.stdout.isatty() else 200)
    started = datetime.datetime.now(datetime.UTC)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]ingest benchmark[/bold] ({'quick' if args.quick else 'full'}): "
                  f"{sum(plan.runs.values())} runs, data in {workdir}")  # fmt: skip
    t0 = time.monotonic()
    try:
        results = asyncio.run(_run_all(plan, workdir, console, args.keep))
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    stats = summaries(results)
    for name, rows in plan.tables.items():
        if rows:
            render(console, rows, stats, title=f"{name} — median (min..max) of each system's runs")
    options = {"quick": args.quick, "only": sorted(only), "mode": asdict(mode)}
    write_json(args.json, results=results, stats=stats, tables=plan.tables, options=options, started=started,
               extra={"total_seconds": time.monotonic() - t0})  # fmt: skip
    failed = [r for r in results if not r.get("ok")]  # an error, or a run that lost or doubled rows
    console.print(f"results: {args.json} ({len(results)} runs, {len(failed)} failed, "
                  f"{time.monotonic() - t0:.0f} s)")  # fmt: skip
    return 1 if failed else 0
