"""What every measured consumer process shares: resource samples and the harness's control lines.

Each consumer (the daemon host, the baselines, the null client) runs as its own process, so its
CPU time (`os.times`, all threads), RSS (`/proc/self/statm`) and peak RSS (`VmHWM` in
`/proc/self/status`; not `getrusage`'s ru_maxrss, which Linux carries over from the parent) are
its own and nobody else's. The harness writes one JSON line to the consumer's stdin when the
load server has finished sending (`{"stop": true, "target_rows": N}`); the consumer prints one
JSON line with its result on stdout and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

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
    """This process's peak RSS since it started (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that over from the parent across fork and exec,
    so a child of a big harness would report the harness's size.
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def emit(obj: dict[str, Any], stream: TextIO | None = None) -> None:
    """One result line for the harness (stdout carries nothing else)."""
    out = stream or sys.stdout
    out.write(json.dumps(obj, separators=(",", ":")) + "\n")
    out.flush()


def keep_stdout_for_results() -> TextIO:
    """A stream to the real stdout; fd 1 itself then goes to stderr, so nothing else lands there."""
    sys.stdout.flush()
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return results


class Sampler:
    """(monotonic s, cpu s, rss bytes, messages so far) every `every` seconds, from a thread.

    A thread, so that a consumer blocked in a long call (a dlt load, a DuckDB insert) is still
    sampled; it needs the GIL only for a moment each time. Until the first message it samples
    every `waiting` seconds: the CPU figures start from the last sample before the first frame,
    and the daemon's start-up (~0.7 of a core, right up to its subscription) would otherwise
    count for up to `every` seconds.
    """

    def __init__(self, messages: Callable[[], int], every: float = 0.1, waiting: float = 0.005) -> None:
        self.samples: list[tuple[float, float, int, int]] = []
        self._messages = messages
        self._every, self._waiting = every, waiting
        self._done = threading.Event()
        self.sample()  # the baseline: before any message
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every if self.samples[-1][3] else self._waiting):
            self.sample()

    def sample(self) -> None:
        self.samples.append((time.monotonic(), cpu_seconds(), rss_bytes(), self._messages()))

    def stop(self) -> None:
        """Stop sampling, with a last sample taken now."""
        self._done.set()
        self._thread.join()
        self.sample()


class Control:
    """The harness's instructions, read from stdin by a thread; `stop` is set on an event loop too."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stop = threading.Event()
        self.target_rows: int | None = None
        self.stop_at: float | None = None  # monotonic time the stop line arrived
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.stopped = self.stopped_on(loop) if loop is not None else None
        threading.Thread(target=self._read, name="bench-control", daemon=True).start()

    def stopped_on(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """An event of `loop` set the moment the stop line arrives (at once if it has)."""
        event = asyncio.Event()
        with self._lock:
            if self.stop.is_set():
                event.set()
            else:
                self._waiters.append((loop, event))
        return event

    def _read(self) -> None:
        for line in sys.stdin:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("stop"):
                self.target_rows = msg.get("target_rows")
                break
        # the stop line, or stdin closed (the harness is gone): stop as well
        self.stop_at = time.monotonic()
        with self._lock:
            self.stop.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a loop already closed waits for nothing
                loop.call_soon_threadsafe(event.set)
