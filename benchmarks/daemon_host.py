"""The project's daemon in a process of its own, run the way `python -m ingest run` runs it.

`python -m benchmarks.daemon_host SPEC.json` builds the config with `parse_config` (journal on,
both sinks on, as the daemon runs by default) and hands it to the CLI's own `run` code
(`ingest.cli._run`: its logging set-up and process tuning such as the GC thresholds and the
allocators, unattended mode: JSON log lines and the progress line, then the end-of-run summary,
all on stderr here).
The only additions are two observers and a watcher task in the daemon's event loop (the
`Daemon` class is subclassed to install them):

- the Parquet file list (`metrics.recent_files`) notes the moment each file is added, right after
  the Parquet sink renamed it into place (from then on `query` sees its rows)
  -> receive-to-queryable latency;
- each dataset's `rows_written` notes the moment it grows (both sinks done with a flush)
  -> receive-to-durable latency, and the moment every row sent is durable in DuckDB *and*
  Parquet;

both at the very moment of the update, in the daemon's loop, rather than by polling (a 5 ms poll
cost the daemon ~2% of a core, ~1 us a message at 20k msg/s, and noted each moment up to 5 ms
late). A sampler thread records CPU, RSS and frames read every 100 ms (every 5 ms until the
first frame). The moment the harness says the load is over (and how many rows it sent), the
watcher wakes and waits until the daemon has read all of them, then stops it the way a user
does: it flushes and commits what DuckDB holds for its next batch (which a running daemon
commits within `duckdb_commit_seconds`), so the run ends by
itself once every row sent is durable; `max_seconds` bounds it in any case. The moment of that
stop is noted (`stop_requested_ns`): the flush it forces comes before `max_age`, so files that
appear after it are left out of latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.probe import Control, Sampler, cpu_seconds, emit, keep_stdout_for_results, peak_rss_bytes
from ingest.metrics import DatasetStats

_POLL_ENDING = 0.005  # after the load, how soon the stop follows the last row read


class _NotedFiles(deque[str]):
    """The daemon's list of recent Parquet files, noting when each was added."""

    def __init__(self, maxlen: int | None, seen: list[tuple[str, int]]) -> None:
        super().__init__(maxlen=maxlen)
        self._seen = seen

    def extend(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        now_ns = time.time_ns()
        self._seen.extend((p, now_ns) for p in paths)
        super().extend(paths)


class _Durable:
    """Rows written of the measured datasets: each growth noted with its moment."""

    def __init__(self, control: Control, sampler: Sampler, out: dict[str, Any]) -> None:
        self.rows = 0
        self.steps: list[tuple[int, int]] = []  # (wall ns, rows written so far) whenever it grows
        self._control, self._sampler, self._out = control, sampler, out

    def grew(self, by: int) -> None:
        if by:
            self.rows += by
            self.steps.append((time.time_ns(), self.rows))
            self.check()

    def check(self) -> None:
        """Note the moment every row sent is durable, once the harness has said how many."""
        _note_durable(self._control, self.rows, self._sampler, self._out)


def _observe(daemon: Any, spec: dict[str, Any], durable: _Durable, files_seen: list[tuple[str, int]]) -> None:
    """Install the observers (before the writer's first flush)."""
    metrics = daemon.metrics
    metrics.recent_files = _NotedFiles(metrics.recent_files.maxlen, files_seen)

    class NotedStats(DatasetStats):
        @property  # type: ignore[override]
        def rows_written(self) -> int:
            return DatasetStats.rows_written.__get__(self)  # type: ignore[attr-defined]

        @rows_written.setter
        def rows_written(self, value: int) -> None:
            slot = DatasetStats.rows_written  # type: ignore[attr-defined]
            try:
                before = slot.__get__(self)
            except AttributeError:  # the first value, set by __init__
                before = 0
            slot.__set__(self, value)
            durable.grew(value - before)

    for name in spec["datasets"]:
        metrics.datasets[name] = NotedStats()


async def _watch(
    daemon: Any, control: Control, spec: dict[str, Any], durable: _Durable, out: dict[str, Any]
) -> None:
    """Stop the daemon once the load is over and it has read every row sent."""
    datasets: list[str] = spec["datasets"]
    # Woken by the stop line itself: a poll here would stop the daemon up to a period late, time
    # its throughput pays for and the baselines (which check the stop at every message) do not.
    await control.stopped_on(asyncio.get_running_loop()).wait()
    durable.check()  # every row may have been durable before the harness said how many it sent
    while not _all_read(daemon, control, datasets):
        await asyncio.sleep(_POLL_ENDING)
    # The stop flushes the open batch before its max_age: files from now on are left out of latency.
    out["stop_requested_ns"] = time.time_ns()
    daemon.request_stop()


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


def _finish(sampler: Sampler, out: dict[str, Any]) -> None:
    """Note the exit, then stop the sampler: its last sample, taken after, closes the CPU window
    (were it taken before, a run that never saw every row durable would have no CPU figure)."""
    out["exited"] = time.monotonic()
    sampler.stop()
    out["samples"] = sampler.samples


def main(spec: dict[str, Any]) -> dict[str, Any]:
    from ingest.tuning import choose_arrow_allocator

    choose_arrow_allocator()  # as `python -m ingest` does, before pyarrow loads (imported here, late)
    from ingest import app, cli
    from ingest.config import parse_config

    config = parse_config(spec["config"], base=Path(spec["base"]))
    control = Control()
    out: dict[str, Any] = {}
    hosted: list[Any] = []

    class HostedDaemon(app.Daemon):
        """The daemon, unchanged, plus the observers and the watcher in its loop."""

        async def run(self, **kw: Any) -> Any:
            hosted.append(self)
            providers = self.metrics.providers
            sampler = Sampler(lambda: sum(p.frames for p in list(providers.values())))
            files_seen: list[tuple[str, int]] = []
            durable = _Durable(control, sampler, out)
            out.update(files_seen=files_seen, rows_steps=durable.steps)
            _observe(self, spec, durable, files_seen)
            watcher = asyncio.create_task(_watch(self, control, spec, durable, out))
            try:
                return await super().run(**kw)
            finally:
                watcher.cancel()
                durable.check()
                _finish(sampler, out)

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
