"""The side-by-side table (rich), the scaling table, the JSON file, and what machine it ran on."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.bench_pipeline import RunSpec, Summary, summarise

__all__ = ["Row", "machine_info", "render", "summaries", "write_json"]

_PACKAGES = ("ingest", "aiohttp", "duckdb", "pyarrow", "msgspec", "structlog", "dlt")
BASELINES = ("naive", "dlt", "dlt-arrow")
_TITLES = {
    "naive": "naive\n(aiohttp, INSERT\nper message)",
    "dlt": "dlt\n(dicts)",
    "dlt-arrow": "dlt\n(Arrow table)",
    "null": "null reader",
}


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a table: a metric of one spec per system."""

    label: str
    metric: str  # a key of the run results, e.g. "msgs_per_s"
    specs: dict[str, RunSpec]  # system -> spec
    unit: str = ""
    target: tuple[str, float] | None = None  # (">=" or "<", value) for the ingest median
    sender: tuple[RunSpec, str] | None = None  # the sender-alone figure shown beside it


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
    }


def summaries(results: Sequence[dict[str, Any]]) -> dict[RunSpec, dict[str, Summary]]:
    """Median, min and max of every numeric metric, per spec, over its runs that are ok.

    A run that failed (an error, or not `ok`: rows lost or stored twice, ...) adds nothing to
    the figures; `runs` and `failed_runs` count every run, so the tables can mark the spec.
    """
    by_spec: dict[RunSpec, list[dict[str, Any]]] = {}
    for r in results:
        by_spec.setdefault(RunSpec(**r["spec"]), []).append(r)
    out: dict[RunSpec, dict[str, Summary]] = {}
    for spec, every in by_spec.items():
        runs = [r for r in every if r.get("ok")]
        keys = {k for r in runs for k, v in r.items() if isinstance(v, int | float) and type(v) is not bool}
        out[spec] = {k: summarise([r.get(k) for r in runs]) for k in sorted(keys)}
        checks = [r.get("rows_match") for r in every if r.get("rows_match") is not None]
        out[spec]["rows_match"] = summarise([float(all(checks))] if checks else [])
        out[spec]["runs"] = summarise([len(every)])
        out[spec]["failed_runs"] = summarise([len(every) - len(runs)])
    return out


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("/s", "rows/s", "msg/s"):
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= div:
                return f"{value / div:.3g}{suffix}"
        return f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _cell(s: Summary | None, unit: str) -> str:
    if s is None or s.median is None:
        return "-"
    if s.min == s.max:
        return _num(s.median, unit)
    return f"{_num(s.median, unit)}\n[dim]({_num(s.min, unit)}..{_num(s.max, unit)})[/dim]"


def _counts(stats: dict[str, Summary]) -> tuple[int, int]:
    """(runs, failed runs) of a spec."""
    runs, failed = stats.get("runs"), stats.get("failed_runs")
    return int(runs.median or 0) if runs else 0, int(failed.median or 0) if failed else 0


def _failed_mark(stats: dict[str, Summary]) -> str:
    """On every figure of a spec with a failed run: its figures are of the other runs only."""
    runs, failed = _counts(stats)
    return f"\n[red]✗ {failed} of {runs} runs failed[/red]" if failed else ""


def _target_ok(target: tuple[str, float], value: float | None) -> str:
    if value is None:
        return ""
    op, bound = target
    ok = value >= bound if op == ">=" else value < bound
    return " [green]✓[/green]" if ok else " [red]✗[/red]"


def render(
    console: Console,
    rows: Sequence[Row],
    stats: dict[RunSpec, dict[str, Summary]],
    *,
    title: str,
    systems: Sequence[str] = (*BASELINES, "ingest", "null"),
) -> Table:
    """One table: each system's median (min-max), ingest's ratio to each baseline, sender, target."""
    table = Table(title=title, show_lines=True, title_justify="left")
    table.add_column("measurement", style="bold")
    shown = [s for s in systems if any(s in r.specs for r in rows)]
    for system in shown:
        table.add_column(_TITLES.get(system, system), justify="right")
    ratios = [b for b in BASELINES if b in shown and "ingest" in shown]
    for base in ratios:
        table.add_column(f"ingest ÷\n{base}", justify="right")
    table.add_column("sender alone\n(null reader)", justify="right")
    table.add_column("target", justify="right")

    def get(row: Row, system: str, metric: str | None = None) -> Summary | None:
        spec = row.specs.get(system)
        return stats.get(spec, {}).get(metric or row.metric) if spec is not None else None

    for row in rows:
        cells = [f"{row.label}" + (f" [dim]{row.unit}[/dim]" if row.unit else "")]
        for system in shown:
            spec_stats = stats.get(row.specs[system], {}) if system in row.specs else {}
            if row.metric == "ok":  # the verdict itself: runs ok of runs
                runs, failed = _counts(spec_stats)
                colour = "red" if failed else "green"
                cells.append(f"[{colour}]{runs - failed}/{runs}[/{colour}]" if runs else "-")
            else:
                cells.append(_cell(get(row, system), row.unit) + _failed_mark(spec_stats))
        ingest = get(row, "ingest")
        for base in ratios:
            other = get(row, base)
            if ingest and other and ingest.median and other.median:
                cells.append(f"{ingest.median / other.median:.3g}x")
            else:
                cells.append("-")
        sender = ""
        if row.sender is not None:
            spec, metric = row.sender
            s = stats.get(spec, {}).get(metric)
            sender = _cell(s, "/s") if s else "-"
        cells.append(sender)
        if row.target is not None:
            op, bound = row.target
            mark = _target_ok(row.target, ingest.median if ingest else None)
            cells.append(f"{'≥' if op == '>=' else '<'} {_num(bound, row.unit)}{mark}")
        else:
            cells.append("")
        table.add_row(*cells)
    console.print(table)
    return table


def write_json(
    path: Path,
    *,
    results: Sequence[dict[str, Any]],
    stats: dict[RunSpec, dict[str, Summary]],
    tables: dict[str, Sequence[Row]],
    options: dict[str, Any],
    started: datetime.datetime,
    extra: dict[str, Any] | None = None,
) -> None:
    """Every run, every summary, the tables' layout and the machine, as one JSON document."""

    def spec_key(spec: RunSpec) -> str:
        return spec.label()

    def summary_json(s: Summary) -> dict[str, Any]:
        return {"median": s.median, "min": s.min, "max": s.max, "values": s.values}

    doc = {
        "benchmark": "ingest",
        "started": started.isoformat(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(),
        "options": options,
        "machine": machine_info(),
        "summaries": {
            spec_key(spec): {"spec": asdict(spec), "metrics": {k: summary_json(v) for k, v in m.items()}}
            for spec, m in stats.items()
        },
        "tables": {
            name: [
                {
                    "label": r.label,
                    "metric": r.metric,
                    "unit": r.unit,
                    "target": list(r.target) if r.target else None,
                    "specs": {system: spec_key(spec) for system, spec in r.specs.items()},
                    "sender": spec_key(r.sender[0]) if r.sender else None,
                }
                for r in rows
            ]
            for name, rows in tables.items()
        },
        "runs": list(results),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_default))


def _default(obj: object) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)
