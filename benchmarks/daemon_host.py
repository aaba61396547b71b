"""The project's daemon in a process of its own: `Daemon(config).run()`, watched from inside.

`python -m benchmarks.daemon_host SPEC.json` builds the config with `parse_config` (journal on,
both sinks on, as the daemon runs by default) and runs it exactly as `python -m ingest run`
does, minus the live view. A watcher task in the same event loop, every 5 ms:

- notes when each Parquet file appears in `metrics.files` (appended as soon as the Parquet sink
  has renamed it into place: from then on `query` sees its rows) -> receive-to-queryable latency;
- notes when `rows_written` grows (both sinks done with a flush) -> receive-to-durable latency
  and the moment every row sent is durable in DuckDB *and* Parquet;
- samples CPU, RSS and frames read every 100 ms.

When the harness says how many rows were sent, the host asks the daemon to stop as soon as
that many are durable, so the run ends by itself; `max_seconds` bounds it in any case.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.probe import Control, Sampler, cpu_seconds, emit, peak_rss_bytes

_POLL = 0.005


async def _watch(daemon: Any, control: Control, spec: dict[str, Any], out: dict[str, Any]) -> None:
    metrics, buffer = daemon.metrics, daemon.buffer
    datasets: list[str] = spec["datasets"]
    sampler = Sampler()
    files_seen: list[tuple[str, int]] = []
    steps: list[tuple[int, int]] = []  # (wall ns, rows written so far) whenever it grows
    last_rows, stop_requested = 0, False
    out.update(files_seen=files_seen, rows_steps=steps, samples=sampler.samples)
    while True:
        await asyncio.sleep(_POLL)
        now_ns = time.time_ns()
        files = metrics.files
        if len(files) > len(files_seen):
            files_seen.extend((f, now_ns) for f in files[len(files_seen) :])
        rows = sum(metrics.datasets[d].rows_written for d in datasets if d in metrics.datasets)
        if rows != last_rows:
            steps.append((now_ns, rows))
            last_rows = rows
        frames = sum(p.frames for p in metrics.providers.values())
        sampler.maybe(frames)
        if out.get("first_frame") is None and frames:
            out["first_frame"] = time.monotonic()
        target = control.target_rows
        if not stop_requested and control.stop.is_set():
            timed_out = time.monotonic() - (control.stop_at or 0) > spec.get("drain_timeout", 60.0)
            if (target is not None and rows >= target) or timed_out:
                out["all_durable"] = time.monotonic()
                out["drain_timed_out"] = timed_out
                sampler.force(frames)
                stop_requested = True
                daemon.request_stop()
        out["received"] = sum(buffer.received.get(d, 0) for d in datasets)


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    from ingest.app import Daemon
    from ingest.config import parse_config
    from ingest.log import configure_logging

    configure_logging("json", level=logging.WARNING)  # what an unattended daemon logs, minus info
    config = parse_config(spec["config"], base=Path(spec["base"]))
    daemon = Daemon(config)
    control = Control(asyncio.get_running_loop())
    out: dict[str, Any] = {"first_frame": None}
    cpu_start = cpu_seconds()
    watcher = asyncio.create_task(_watch(daemon, control, spec, out))
    started = time.monotonic()
    try:
        result = await daemon.run(duration=spec["max_seconds"])
    finally:
        watcher.cancel()
    out.update(
        ok=True,
        seconds=time.monotonic() - started,
        exited=time.monotonic(),
        cpu_seconds=cpu_seconds(),
        cpu_at_start=cpu_start,
        peak_rss=peak_rss_bytes(),
        failed=result.failed,
        buffer_received=result.buffer_received,
        frames={name: p.frames for name, p in result.metrics.providers.items()},
        reconnects={name: p.reconnects for name, p in result.metrics.providers.items()},
        rows_written={n: d.rows_written for n, d in result.metrics.datasets.items()},
        flushes={n: d.flushes for n, d in result.metrics.datasets.items()},
        quarantined=dict(result.metrics.quarantined),
        gaps=sum(result.metrics.gaps.values()),
        sink_errors=result.metrics.sink_errors,
    )
    return out


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    emit(asyncio.run(main(spec)))
