"""Profile the daemon under load: `python -m benchmarks.profile [--mix coinapi] [--seconds 8] [--gil]`.

Runs one full-speed run of the daemon (the `throughput` scenario's spec) and attaches py-spy to
the daemon process once its collectors have subscribed, for the streaming part only. Writes the
collapsed stacks (`profile-<mix>.txt`: open in speedscope.app, or feed to flamegraph.pl) and
prints, per thread, where the samples went: by function including callees, and by leaf (self).
`--gil` samples only the thread holding the GIL: what serialises the daemon. `--threads` instead
measures each thread's CPU over the load (from the scheduler, without py-spy): the event loop,
each writer stage, the `to_thread` workers, in % of a core and us per message, with wake-ups and
page faults a second. `--hz` sets py-spy's sampling rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.bench_pipeline import RunSpec, run_once

__all__ = ["main", "summarise_collapsed"]

_THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\): ?")
_POOL = re.compile(r"(_\d+|-\d+)$")


def _thread_group(name: str) -> str:
    """asyncio_0, asyncio_1 ... are to_thread workers: one group (journal fsyncs, sink opening);
    ingest-build_0, ingest-parquet_0, ingest-duckdb_0 are the writer's stages, one thread each."""
    if name.startswith("ingest-"):
        return _POOL.sub("", name)
    return _POOL.sub("_*", name) if name.startswith(("asyncio", "ThreadPoolExecutor")) else name


def summarise_collapsed(lines: Sequence[str]) -> dict[str, dict[str, Counter[str]]]:
    """Per thread group: total samples, inclusive samples per function, self samples per function."""
    out: dict[str, dict[str, Counter[str]]] = {}
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        stack = _THREAD.sub("", stack)
        frames = stack.split(";")
        group = _thread_group(frames[0]) if frames else "?"
        frames = frames[1:]
        g = out.setdefault(group, {"total": Counter(), "inclusive": Counter(), "self": Counter()})
        g["total"]["samples"] += n
        for fn in set(frames):
            g["inclusive"][fn] += n
        if frames:
            g["self"][frames[-1]] += n
    return out


def _print(console: Console, summary: dict[str, dict[str, Counter[str]]], top: int) -> None:
    grand = sum(g["total"]["samples"] for k, g in summary.items() if not k.startswith("bench-")) or 1
    for group, g in sorted(summary.items(), key=lambda kv: -kv[1]["total"]["samples"]):
        if group.startswith("bench-") or g["total"]["samples"] < 0.01 * grand:
            continue  # the harness's own probe threads, and threads that barely ran
        total = g["total"]["samples"]
        table = Table(title=f"thread {group}: {total} samples ({100 * total / grand:.0f}% of all)")
        table.add_column("inclusive %", justify="right")
        table.add_column("function (with callees)")
        table.add_column("self %", justify="right")
        table.add_column("function (leaf)")
        inclusive = [kv for kv in g["inclusive"].most_common() if not _boring(kv[0])][:top]
        leaf = g["self"].most_common(top)
        for i in range(max(len(inclusive), len(leaf))):
            a = inclusive[i] if i < len(inclusive) else ("", 0)
            b = leaf[i] if i < len(leaf) else ("", 0)
            table.add_row(
                f"{100 * a[1] / total:.1f}" if a[0] else "",
                a[0],
                f"{100 * b[1] / total:.1f}" if b[0] else "",
                b[0],
            )
        console.print(table)


def _boring(fn: str) -> bool:
    """Frames every sample of a thread passes through (the event loop, thread bootstrap)."""
    return any(
        s in fn
        for s in ("runpy", "asyncio/runners.py", "BaseEventLoop.run_", "threading.py", "<module>", "main (")
    )


def _threads(spec: RunSpec) -> int:
    """One run; each thread's CPU over the load after its first second (warm-up)."""
    workdir = Path(tempfile.mkdtemp(prefix="ingest-profile-"))
    out = workdir / "threads.json"
    window = max(spec.seconds - 1.5, 0.5)
    command = [sys.executable, "-m", "benchmarks.thread_cpu", "--after", "1", f"{window:g}", str(out)]
    try:
        result = asyncio.run(run_once(spec, workdir, profile=command))
        rows = json.loads(out.read_text()) if out.exists() else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console = Console(width=None if sys.stdout.isatty() else 200)
    if "error" in result or not rows:
        console.print(f"[red]run failed: {result.get('error', 'no thread figures')}[/red]")
        return 1
    messages = result["sent_frames"] / result["send_seconds"]  # the rate the load was read at
    table = Table(
        title=f"{spec.label()}: CPU by thread, {window:g} s of the load ({messages:,.0f} msg/s sent)"
    )
    for column in ("thread", "% of a core", "us a message", "wake-ups/s", "page faults/s"):
        table.add_column(column, justify="left" if column == "thread" else "right")
    busy = [r for r in rows if r["cores"] >= 0.005]
    for r in busy:
        table.add_row(
            r["name"],
            f"{100 * r['cores']:.1f}",
            f"{1e6 * r['cores'] / messages:.2f}",
            f"{r['wakeups_per_s']:.0f}",
            f"{r['faults_per_s']:.0f}",
        )
    total = sum(r["cores"] for r in rows)
    faults = sum(r["faults_per_s"] for r in rows)
    table.add_row("all threads", f"{100 * total:.1f}", f"{1e6 * total / messages:.2f}", "", f"{faults:.0f}")
    console.print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--mix", default="coinapi", choices=("coinapi", "blockdb", "bitquery"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, help="offered frames/s (default: full speed)")
    parser.add_argument("--gil", action="store_true", help="only samples that hold the GIL")
    parser.add_argument("--threads", action="store_true", help="each thread's CPU instead of py-spy samples")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--hz", type=int, default=100, help="py-spy samples a second (more: a quiet daemon)")
    args = parser.parse_args(argv)
    spec = RunSpec("ingest", args.mix, rate=args.rate, seconds=args.seconds)
    if args.threads:
        return _threads(spec)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy (the bench extra)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-gil" if args.gil else ""
    collapsed = args.out / f"profile-{args.mix}{suffix}.txt"
    command = [py_spy, "record", "-o", str(collapsed), "-f", "raw", "-r", str(args.hz), "-t", "-F"]
    command += ["-d", f"{args.seconds:g}", *(["--gil"] if args.gil else []), "--pid"]
    workdir = Path(tempfile.mkdtemp(prefix="ingest-profile-"))
    try:
        result = asyncio.run(run_once(spec, workdir, profile=command))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console = Console(width=None if sys.stdout.isatty() else 200)
    if "error" in result:
        console.print(f"[red]run failed: {result['error']}[/red]")
        return 1
    keys = ("msgs_per_s", "rows_per_s", "cpu_us_per_msg", "cpu_cores", "peak_rss_mb", "rows_match")
    console.print(f"{spec.label()}: " + ", ".join(f"{k}={result.get(k)!r:.10}" for k in keys))
    if not collapsed.exists():
        console.print("[red]py-spy wrote nothing (ptrace not permitted? try as root)[/red]")
        return 1
    _print(console, summarise_collapsed(collapsed.read_text().splitlines()), args.top)
    console.print(f"collapsed stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
