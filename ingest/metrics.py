"""Counters and states the live view, the summary and the logs read: plain attributes, cheap to bump."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

__all__ = ["DatasetStats", "Metrics", "ProviderStats", "SinkFailure"]

RECENT_FILES = 1024  # Parquet paths kept for watchers; a daemon runs for months, so not all of them


@dataclass(slots=True)
class ProviderStats:
    """One collector's connection: what it is doing and what came over its socket."""

    name: str
    display_url: str = ""
    state: str = "starting"  # starting | connecting | connected | backoff | stopped | failed
    connects: int = 0
    frames: int = 0
    keepalives: int = 0  # pings and other non-data liveness frames
    last_frame_ns: int = 0  # wall clock of the last frame or keep-alive (for /health)
    last_error: str = ""
    subscriptions: dict[str, str] = field(default_factory=dict)  # name -> pending | active | failed: …
    disconnected_seconds: float = 0.0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


@dataclass(slots=True)
class DatasetStats:
    """What reached the sinks for one dataset."""

    rows_written: int = 0
    flushes: int = 0
    files: int = 0
    reorg_rows: int = 0
    last_event_time: int | None = None  # ns since epoch
    last_flush_seconds: float = 0.0


@dataclass(slots=True)
class SinkFailure:
    """A sink whose writes are failing now (retried with backoff until one goes through)."""

    since: float  # time.monotonic() of the first failure in this run of them
    error: str  # the latest
    attempts: int


@dataclass(slots=True)
class Metrics:
    providers: dict[str, ProviderStats] = field(default_factory=dict)
    datasets: dict[str, DatasetStats] = field(default_factory=dict)
    quarantined: Counter[str] = field(default_factory=Counter)  # by reason (first words)
    rows_by_provider: Counter[str] = field(default_factory=Counter)  # rows written to every sink
    gaps: Counter[tuple[str, str]] = field(default_factory=Counter)  # (provider, kind) -> gaps recorded
    files_written: int = 0  # Parquet files written this run
    recent_files: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_FILES))  # the latest
    sink_errors: int = 0
    sink_failures: dict[str, SinkFailure] = field(default_factory=dict)  # by sink name; none: all well
    replayed_frames: int = 0  # frames replayed from the journal at start (an unclean stop before)

    def provider(self, name: str) -> ProviderStats:
        stats = self.providers.get(name)
        if stats is None:
            stats = self.providers[name] = ProviderStats(name)
        return stats

    def dataset(self, name: str) -> DatasetStats:
        stats = self.datasets.get(name)
        if stats is None:
            stats = self.datasets[name] = DatasetStats()
        return stats
