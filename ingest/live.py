"""What a person watching sees: a rich live table while the daemon runs, and the summary at the end."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ingest.buffer import Buffer
from ingest.log import redact
from ingest.metrics import Metrics

__all__ = ["LiveView", "progress_logger"]

log = structlog.get_logger("ingest.live")


def _ns_time(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


class _Rates:
    """Rows per second per dataset, from the difference between two looks at the counters."""

    def __init__(self) -> None:
        self._last: dict[str, int] | None = None  # no rate before the second look
        self._at = time.monotonic()
        self.rates: dict[str, float] = {}

    def update(self, counts: dict[str, int]) -> None:
        now = time.monotonic()
        if self._last is None:
            self._last, self._at = dict(counts), now
            return
        elapsed = max(now - self._at, 1e-6)
        self.rates = {k: (v - self._last.get(k, 0)) / elapsed for k, v in counts.items()}
        self._last, self._at = dict(counts), now


class LiveView:
    def __init__(self, metrics: Metrics, buffer: Buffer, console: Console | None = None) -> None:
        self.metrics = metrics
        self.buffer = buffer
        self.console = console or Console(stderr=True)
        self._rates = _Rates()
        self._started = time.monotonic()

    def render(self) -> Group:
        self._rates.update(self.buffer.received)
        # Not only the buffer's: rows being written and held for DuckDB's commit (up to
        # duckdb_commit_seconds) too, so that rows = written + buffered, as a reader expects.
        buffered = self.buffer.unwritten_rows
        title = f"ingesting for {time.monotonic() - self._started:.0f} s"
        if self.metrics.replayed_frames:
            title += f" (replayed {self.metrics.replayed_frames:,} frames from the journal first)"
        datasets = Table(title=title, title_justify="left")
        for col, justify in (
            ("dataset", "left"),
            ("rows/s", "right"),
            ("rows", "right"),
            ("written", "right"),
            ("buffered", "right"),
            ("reorg rows", "right"),
            ("last event time (UTC)", "left"),
        ):
            datasets.add_column(col, justify=justify)  # type: ignore[arg-type]
        for name in sorted(self.buffer.received):
            stats = self.metrics.dataset(name)
            datasets.add_row(
                name,
                f"{self._rates.rates.get(name, 0.0):,.0f}",
                f"{self.buffer.received[name]:,}",
                f"{stats.rows_written:,}",
                f"{buffered.get(name, 0):,}",
                f"{stats.reorg_rows:,}",
                _ns_time(stats.last_event_time),
            )
        providers = Table()
        for col in ("provider", "state", "endpoint", "frames", "reconnects", "subscriptions", "last error"):
            providers.add_column(col)
        for p in self.metrics.providers.values():
            active = sum(1 for s in p.subscriptions.values() if s == "active")
            silent = sum(1 for s in p.subscriptions.values() if s == "silent")
            providers.add_row(
                p.name,
                p.state,
                p.display_url,
                f"{p.frames:,}",
                str(p.reconnects),
                f"{active}/{len(p.subscriptions)} active" + (f", {silent} silent" if silent else ""),
                redact(p.last_error)[:60],
            )
        now = time.monotonic()
        failing = [  # Text, not markup: an error message may hold brackets
            Text(f"{name} writes failing for {now - f.since:.0f} s ({f.attempts} tries), retried: ", "red")
            + Text(redact(f.error), "red")
            for name, f in sorted(self.metrics.sink_failures.items())
        ]
        return Group(providers, datasets, *failing)

    async def run(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=4, redirect_stderr=True) as live:
            try:
                while True:
                    await asyncio.sleep(0.5)
                    live.update(self.render())
            finally:  # cancelled once the daemon drained: the frame left on screen shows the end
                live.update(self.render())


async def progress_logger(metrics: Metrics, buffer: Buffer, every: float = 5.0) -> None:
    """The unattended stand-in for the live view: one log line per interval."""
    rates = _Rates()
    rates.update(buffer.received)  # the baseline: the first line gives the first interval's rate
    while True:
        await asyncio.sleep(every)
        rates.update(buffer.received)
        log.info(
            "progress",
            rows={k: v for k, v in sorted(buffer.received.items())},
            rows_per_s=round(sum(rates.rates.values())),
            buffered=sum(buffer.unwritten_rows.values()),
            reconnects={p.name: p.reconnects for p in metrics.providers.values()},
        )
