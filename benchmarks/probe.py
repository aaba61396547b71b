"""What every measured consumer process shares: resource samples and the harness's control lines.

Each consumer (the daemon host, the baselines, the null client) runs as its own process, so its
CPU time (`os.times`, all threads), RSS (`/proc/self/statm`) and peak RSS (`getrusage` ru_maxrss)
are its own and nobody else's. The harness writes one JSON line to the consumer's stdin when the
load server has finished sending (`{"stop": true, "target_rows": N}`); the consumer prints one
JSON line with its result on stdout and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Control", "Sampler", "cpu_seconds", "emit", "peak_rss_bytes", "rss_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    """User + system CPU time of this process, every thread included."""
    t = os.times()
    return t.user + t.system


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the peak is all we can tell
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def emit(obj: dict[str, Any]) -> None:
    """One result line for the harness (stdout carries nothing else)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


@dataclass(slots=True)
class Sampler:
    """(monotonic s, cpu s, rss bytes, messages so far) every `every` seconds."""

    every: float = 0.1
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)
    _next: float = 0.0

    def maybe(self, messages: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now >= self._next:
            self._next = now + self.every
            self.samples.append((now, cpu_seconds(), rss_bytes(), messages))

    def force(self, messages: int) -> None:
        self._next = 0.0
        self.maybe(messages)


class Control:
    """The harness's instructions, read from stdin by a thread; `stop` is set on an event loop too."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stop = threading.Event()
        self.target_rows: int | None = None
        self.stop_at: float | None = None  # monotonic time the stop line arrived
        self._loop = loop
        self.stopped = asyncio.Event() if loop is not None else None
        threading.Thread(target=self._read, name="bench-control", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("stop"):
                self.target_rows = msg.get("target_rows")
                self.stop_at = time.monotonic()
                self.stop.set()
                if self._loop is not None and self.stopped is not None:
                    self._loop.call_soon_threadsafe(self.stopped.set)
                return
        # stdin closed: the harness is gone, stop as well
        self.stop_at = time.monotonic()
        self.stop.set()
        if self._loop is not None and self.stopped is not None:
            self._loop.call_soon_threadsafe(self.stopped.set)
