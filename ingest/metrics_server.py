"""GET /metrics (Prometheus text) and GET /health (JSON) from the daemon's counters, on loopback.

Everything is read from `Metrics` and the `Buffer` at request time; nothing is counted twice. The
only state kept here is the flush-duration histogram, built by sampling each dataset's
`last_flush_seconds` whenever its `flushes` counter moved (every `sample_interval`): flushes that
complete between two samples are counted in `ingest_dataset_flushes_total` but timed once.

Health rule: a provider is healthy when it is connected, or reconnecting (`backoff`,
`connecting`) with a frame less than `max_frame_age` seconds old; a sink is healthy unless its
writes have been failing for longer than that (they are retried: rows wait, nothing is lost, but
nothing is stored either). /health answers 200 when every provider and sink is healthy and 503
otherwise (starting, stopped, failed, a long outage, a sink that keeps failing).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from ingest.errors import ConfigError
from ingest.exposition import CONTENT_TYPE, Family, Histogram, render
from ingest.log import redact
from ingest.metrics import Metrics

__all__ = ["BufferStats", "Extras", "MetricsServer", "collect", "health", "start_metrics_server"]

RECONNECTING = ("backoff", "connecting")


class BufferStats(Protocol):
    """What is read from `ingest.buffer.Buffer`."""

    @property
    def received(self) -> dict[str, int]: ...
    @property
    def buffered_rows(self) -> dict[str, int]: ...
    @property
    def outstanding_bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Extras:
    """Optional sources owned elsewhere; each is left out of the output when None."""

    gaps: Callable[[], Mapping[tuple[str, str], int]] | None = None  # (provider, kind) -> gaps recorded
    journal_bytes: Callable[[], int] | None = None  # bytes in the write-ahead journal
    last_frame_age: Callable[[str], float | None] | None = None  # provider -> seconds since a frame


class FlushLatency:
    """Samples DatasetStats: a moved `flushes` counter means `last_flush_seconds` is a new duration."""

    def __init__(self) -> None:
        self.histogram = Histogram()
        self._seen: dict[str, int] = {}

    def sample(self, metrics: Metrics) -> None:
        for name, stats in metrics.datasets.items():
            if stats.flushes != self._seen.get(name, 0):
                self._seen[name] = stats.flushes
                self.histogram.observe(stats.last_flush_seconds, dataset=name)


def collect(metrics: Metrics, buffer: BufferStats, extras: Extras, latency: FlushLatency) -> list[Family]:
    """Every metric family, from the current values."""
    p = sorted(metrics.providers.values(), key=lambda s: s.name)

    def per_provider(name: str, kind: str, help: str, value: Callable[[Any], float]) -> Family:
        fam = Family(name, kind, help)
        for s in p:
            fam.add(value(s), provider=s.name)
        return fam

    fams = [
        per_provider(
            "ingest_provider_frames_total", "counter", "Frames read from the socket.", lambda s: s.frames
        ),
        per_provider(
            "ingest_provider_keepalives_total",
            "counter",
            "Pings and other liveness frames.",
            lambda s: s.keepalives,
        ),
        per_provider("ingest_provider_connects_total", "counter", "Connections made.", lambda s: s.connects),
        per_provider(
            "ingest_provider_reconnects_total",
            "counter",
            "Connections after the first.",
            lambda s: s.reconnects,
        ),
        per_provider(
            "ingest_provider_connected",
            "gauge",
            "1 while the stream is connected.",
            lambda s: s.state == "connected",
        ),
        per_provider(
            "ingest_provider_disconnected_seconds_total",
            "counter",
            "Time spent without a connection after losing one.",
            lambda s: s.disconnected_seconds,
        ),
    ]
    state = Family("ingest_provider_state", "gauge", "The collector's state, as a label (value 1).")
    subs = Family("ingest_subscription_state", "gauge", "Each subscription's state, as a label (value 1).")
    for s in p:
        state.add(1, provider=s.name, state=s.state)
        for sub, sub_state in sorted(s.subscriptions.items()):
            subs.add(1, provider=s.name, subscription=sub, state=redact(sub_state))  # a server's words
    rows = Family("ingest_provider_rows_total", "counter", "Rows written to every sink, by provider.")
    for name, n in sorted(metrics.rows_by_provider.items()):
        rows.add(n, provider=name)
    fams += [state, subs, rows]
    if extras.last_frame_age is not None:
        age = Family("ingest_provider_last_frame_age_seconds", "gauge", "Seconds since the last frame.")
        for s in p:
            if (seconds := extras.last_frame_age(s.name)) is not None:
                age.add(seconds, provider=s.name)
        fams.append(age)

    d = sorted(metrics.datasets.items())
    for name, kind, help, attr in [
        ("ingest_dataset_rows_written_total", "counter", "Rows written to every sink.", "rows_written"),
        ("ingest_dataset_flushes_total", "counter", "Flushes written.", "flushes"),
        ("ingest_dataset_files_total", "counter", "Parquet files written.", "files"),
        ("ingest_dataset_reorg_rows_total", "counter", "Rows flagged as reorg corrections.", "reorg_rows"),
        ("ingest_dataset_last_flush_seconds", "gauge", "Duration of the last flush.", "last_flush_seconds"),
    ]:
        fam = Family(name, kind, help)
        for ds, stats in d:
            fam.add(getattr(stats, attr), dataset=ds)
        fams.append(fam)
    event = Family("ingest_dataset_last_event_time_seconds", "gauge", "Newest event time written (Unix).")
    for ds, stats in d:
        if stats.last_event_time is not None:
            event.add(stats.last_event_time / 1e9, dataset=ds)
    fams.append(event)
    latency.sample(metrics)
    fams.append(latency.histogram.family("ingest_flush_duration_seconds", "Flush durations (sampled)."))

    received = Family("ingest_dataset_received_rows_total", "counter", "Rows accepted into the buffer.")
    buffered = Family("ingest_buffer_rows", "gauge", "Rows waiting in the buffer.")
    waiting = buffer.buffered_rows
    for ds in sorted(set(buffer.received) | set(waiting)):
        received.add(buffer.received.get(ds, 0), dataset=ds)
        buffered.add(waiting.get(ds, 0), dataset=ds)
    fams += [
        received,
        buffered,
        Family("ingest_buffer_outstanding_bytes", "gauge", "Bytes buffered, queued or being written.").add(
            buffer.outstanding_bytes
        ),
    ]
    failing = Family(
        "ingest_sink_failing_seconds",
        "gauge",
        "How long a sink's writes have been failing (only failing sinks).",
    )
    for name, failure in sorted(metrics.sink_failures.items()):
        failing.add(round(time.monotonic() - failure.since, 3), sink=name)
    quarantined = Family("ingest_quarantined_frames_total", "counter", "Frames kept in quarantine.")
    for reason, n in sorted(metrics.quarantined.items()):
        quarantined.add(n, reason=reason)
    fams += [
        quarantined,
        Family("ingest_sink_errors_total", "counter", "Failed sink writes (retried).").add(
            metrics.sink_errors
        ),
        failing,
        Family("ingest_parquet_files_total", "counter", "Parquet files written this run.").add(
            metrics.files_written
        ),
    ]
    if extras.gaps is not None:
        gaps = Family("ingest_gaps_total", "counter", "Holes in what was received.")
        for (provider, kind), n in sorted(extras.gaps().items()):
            gaps.add(n, provider=provider, kind=kind)
        fams.append(gaps)
    if extras.journal_bytes is not None:
        fams.append(
            Family("ingest_journal_bytes", "gauge", "Size of the journal.").add(extras.journal_bytes())
        )
    return fams


def health(metrics: Metrics, extras: Extras, max_frame_age: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) by the rule in the module docstring."""
    providers: dict[str, Any] = {}
    for s in sorted(metrics.providers.values(), key=lambda s: s.name):
        age = extras.last_frame_age(s.name) if extras.last_frame_age is not None else None
        ok = s.state == "connected" or (s.state in RECONNECTING and age is not None and age <= max_frame_age)
        providers[s.name] = {
            "state": s.state,
            "connected": s.state == "connected",
            "last_frame_age_seconds": age,
            "reconnects": s.reconnects,
            "healthy": ok,
            "last_error": redact(s.last_error),  # as the log masks it: errors quote servers and sinks
            # Connected, but these had no ack or data for silent_after: the provider ignores them.
            "silent_subscriptions": sorted(n for n, state in s.subscriptions.items() if state == "silent"),
        }
    now = time.monotonic()
    sinks = {
        name: {
            "failing_for_seconds": round(now - f.since, 1),
            "attempts": f.attempts,
            "last_error": redact(f.error),
            "healthy": now - f.since <= max_frame_age,
        }
        for name, f in sorted(metrics.sink_failures.items())
    }
    if not providers:  # no collector yet: the sinks opening, the journal of a crash replaying
        return 503, {"status": "starting", "providers": providers, "failing_sinks": sinks}
    healthy = all(p["healthy"] for p in providers.values()) and all(s["healthy"] for s in sinks.values())
    body = {"status": "ok" if healthy else "unhealthy", "providers": providers, "failing_sinks": sinks}
    return (200 if healthy else 503), body


@dataclass(slots=True)
class MetricsServer:
    url: str
    _runner: web.AppRunner
    _sampler: asyncio.Task[None]

    async def stop(self) -> None:
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        await self._runner.cleanup()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_metrics_server(
    metrics: Metrics,
    buffer: BufferStats,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    extras: Extras | None = None,
    allow_remote: bool = False,
    max_frame_age: float = 30.0,
    sample_interval: float = 0.1,
) -> MetricsServer:
    """Serve /metrics and /health until `stop()`; port 0 picks a free port (see `.url`).

    Raises:
        ConfigError: `host` is not a loopback address and `allow_remote` is false (the pages
            show subscription names and errors, which are not for the network at large).
    """
    if not allow_remote and not _is_loopback(host):
        raise ConfigError(
            f"metrics.host: {host!r} is not a loopback address (set metrics.allow_remote = true)"
        )
    sources = extras or Extras()
    latency = FlushLatency()

    async def get_metrics(request: web.Request) -> web.Response:
        body = render(collect(metrics, buffer, sources, latency))
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def get_health(request: web.Request) -> web.Response:
        status, body = health(metrics, sources, max_frame_age)
        return web.json_response(body, status=status)

    async def sample() -> None:
        while True:
            latency.sample(metrics)
            await asyncio.sleep(sample_interval)

    @web.middleware
    async def loopback_names_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A web page can reach a loopback port under a name it controls (DNS rebinding) and read
        # the answer as its own: a Host that is no loopback name is refused.
        if not _is_loopback(request.url.host or ""):
            return web.Response(status=421, text="misdirected request: ask for a loopback address\n")
        return await handler(request)

    app = web.Application(middlewares=[] if allow_remote else [loopback_names_only])
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health", get_health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:  # the port taken (another daemon on this host), a host that does not resolve
        await runner.cleanup()
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"metrics: cannot listen on {host}:{port} ({reason}); another daemon there? see [metrics] port"
        ) from None
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return MetricsServer(f"http://{shown}:{bound_port}", runner, asyncio.create_task(sample()))
