"""The project's daemon in a process of its own, run the way `python -m ingest run` runs it.

`python -m benchmarks.daemon_host SPEC.json` builds the config with `parse_config` (journal on,
both sinks on, as the daemon runs by default) and hands it to the CLI's own `run` code
(`ingest.cli._run`: its logging set-up and process tuning such as the GC thresholds, unattended
mode: JSON log lines and the progress line, then the end-of-run summary, all on stderr here).
The only addition is a watcher task in the daemon's event loop (the `Daemon` class is
subclassed to start it), which every 5 ms:

- notes when each Parquet file appears in `metrics.recent_files` (appended as soon as the Parquet sink
  has renamed it into place: from then on `query` sees its rows) -> receive-to-queryable latency;
- notes when `rows_written` grows (both sinks done with a flush) -> receive-to-durable latency
  and the moment every row sent is durable in DuckDB *and* Parquet;

while a sampler thread records CPU, RSS and frames read every 100 ms. When the harness says the
load is over (and how many rows it sent), the watcher waits until the daemon has read all of
them, then stops it the way a user does: it flushes and commits what DuckDB holds for its next
batch (which a running daemon commits within `duckdb_commit_seconds`), so the run ends by
itself once every row sent is durable; `max_seconds` bounds it in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.probe import Control, Sampler, cpu_seconds, emit, keep_stdout_for_results, peak_rss_bytes

_POLL = 0.005


async def _watch(
    daemon: Any, control: Control, spec: dict[str, Any], sampler: Sampler, out: dict[str, Any]
) -> None:
    metrics = daemon.metrics
    datasets: list[str] = spec["datasets"]
    files_seen: list[tuple[str, int]] = []
    steps: list[tuple[int, int]] = []  # (wall ns, rows written so far) whenever it grows
    last_rows, stop_requested = 0, False
    out.update(files_seen=files_seen, rows_steps=steps)
    while True:
        await asyncio.sleep(_POLL)
        now_ns = time.time_ns()
        if new := metrics.files_written - len(files_seen):  # polled far more often than 1024 a poll
            files_seen.extend((f, now_ns) for f in list(metrics.recent_files)[-new:])
        rows = sum(metrics.datasets[d].rows_written for d in datasets if d in metrics.datasets)
        if rows != last_rows:
            steps.append((now_ns, rows))
            last_rows = rows
        if not stop_requested and control.stop.is_set() and _all_read(daemon, control, datasets):
            stop_requested = True
            daemon.request_stop()
        _note_durable(control, rows, sampler, out)


def _all_read(daemon: Any, control: Control, datasets: list[str]) -> bool:
    """Every row sent has been read off the socket (stopping sooner would cut off the backlog)."""
    target = control.target_rows
    received = daemon.buffer.received
    return target is None or sum(received.get(d, 0) for d in datasets) >= target


def _note_durable(control: Control, rows: int, sampler: Sampler, out: dict[str, Any]) -> None:
    """The moment every row sent is durable in both sinks (once)."""
    target = control.target_rows
    if "all_durable" not in out and target is not None and rows >= target:
        out["all_durable"] = time.monotonic()
        sampler.sample()


def main(spec: dict[str, Any]) -> dict[str, Any]:
    from ingest import app, cli
    from ingest.config import parse_config

    config = parse_config(spec["config"], base=Path(spec["base"]))
    control = Control()
    out: dict[str, Any] = {}
    hosted: list[Any] = []

    class HostedDaemon(app.Daemon):
        """The daemon, unchanged, plus the watcher in its loop."""

        async def run(self, **kw: Any) -> Any:
            hosted.append(self)
            providers = self.metrics.providers
            sampler = Sampler(lambda: sum(p.frames for p in list(providers.values())))
            watcher = asyncio.create_task(_watch(self, control, spec, sampler, out))
            try:
                return await super().run(**kw)
            finally:
                watcher.cancel()
                # The last rows become durable as run() returns: between two of the watcher's polls.
                rows = sum(d.rows_written for n, d in self.metrics.datasets.items() if n in spec["datasets"])
                _note_durable(control, rows, sampler, out)
                sampler.stop()
                out["samples"] = sampler.samples
                out["exited"] = time.monotonic()

    app.Daemon = HostedDaemon  # type: ignore[misc]  # cli._run imports it from the module, late
    cpu_start = cpu_seconds()
    args = argparse.Namespace(log_format="json", no_live=True, duration=spec["max_seconds"], config=None)
    code = cli._run(config, args)
    daemon = hosted[0]
    metrics = daemon.metrics
    out.update(
        ok=code == 0,
        exit_code=code,
        cpu_seconds=cpu_seconds(),
        cpu_at_start=cpu_start,
        peak_rss=peak_rss_bytes(),
        failed=[c.config.name for c in daemon.collectors if c.stats.state == "failed"],
        buffer_received=daemon.buffer.received,
        frames={name: p.frames for name, p in metrics.providers.items()},
        reconnects={name: p.reconnects for name, p in metrics.providers.items()},
        rows_written={n: d.rows_written for n, d in metrics.datasets.items()},
        flushes={n: d.flushes for n, d in metrics.datasets.items()},
        quarantined=dict(metrics.quarantined),
        gaps=sum(metrics.gaps.values()),
        sink_errors=metrics.sink_errors,
    )
    return out


if __name__ == "__main__":
    results = keep_stdout_for_results()  # the CLI's summary goes to stderr, the result line here
    spec = json.loads(Path(sys.argv[1]).read_text())
    emit(main(spec), results)
