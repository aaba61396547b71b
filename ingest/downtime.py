"""Downtime between runs, on record: when each provider was last known to be receiving.

The driver records a gap from a disconnect to the resubscribe, but a daemon that stops (an
upgrade, a crash, a reboot) receives nothing until it runs again, and without this no row would
say so: `coverage` would count those hours complete. So the daemon keeps a small file per
instance saying, per provider, since when it has not been receiving (`since`: now while it is
connected, the moment of the loss while it is not) and for which subscriptions. It is rewritten
every few seconds and once more at a clean stop; the next run starts each provider's collector
with that hole open, and the collector records it as a `down` gap when it subscribes again.

After a crash the hole starts at the last write, `BEAT_SECONDS` (and a write's time) at most
before the crash: the gap may be that much longer than the downtime, never shorter. The file is
written at every connect too, before the gaps that connect closes are journaled, and holds that
hole (`closed`): a crash between the two has the next run record those gaps again (the same
rows, counted once in the views), not lose them. It says "receiving until now" only once the
journal holds every frame received until now (the app writes the journal out first).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

__all__ = ["BEAT_SECONDS", "Closed", "Downtime", "Hole"]

log = structlog.get_logger("ingest.downtime")

BEAT_SECONDS = 2.0


class Closed(msgspec.Struct, frozen=True):
    """A hole a connect closed, recorded as one gap per subscription."""

    kind: str  # disconnected | down
    started: int
    ended: int
    subscriptions: tuple[str, ...]


class Hole(msgspec.Struct, frozen=True):
    """A provider's subscriptions not received since `since` (ns, wall clock), and the last hole
    its collector closed."""

    since: int
    subscriptions: tuple[str, ...]
    closed: Closed | None = None


class _State(msgspec.Struct):
    written_at: int
    providers: dict[str, Hole]


def _plausible(state: _State) -> bool:
    """Times as a run writes them: a hole since no later than the write, a closed one in order."""
    for hole in state.providers.values():
        if not 0 < hole.since <= state.written_at:
            return False
        closed = hole.closed
        if closed is not None and not 0 < closed.started <= closed.ended <= state.written_at:
            return False
    return True


@dataclass
class Downtime:
    """The state file of one instance (`<data_dir>/state/<instance>.json`).

    Written on the event loop only (a small file: temporary name, then rename, ~0.1 ms), so the
    writes are in the order of their snapshots without a lock; the fsync that makes one survive
    a power cut runs in a worker thread after it, where waiting on the disk blocks no one.
    """

    path: Path
    _failing: bool = field(default=False, repr=False)  # a failure is logged once, not every beat
    _writes: int = field(default=0, repr=False)  # writes tried, so a save knows whether it is the last

    def read(self, configured: Mapping[str, tuple[str, ...]]) -> dict[str, Hole]:
        """The holes the last run left open, for the providers and subscriptions still configured.

        A file that cannot be read still says a run was here until it was last written: every
        configured subscription is taken as not received since then, rather than no gap at all.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}  # the first run of this instance: nothing was received before it
        except OSError as exc:
            log.error(
                "state file not read: no gap for the time before this run",
                path=str(self.path),
                error=str(exc),
            )
            return {}
        try:
            state = msgspec.json.decode(data, type=_State)
            if not _plausible(state):  # decodes, but says what no run wrote (a flipped bit, an edit)
                raise msgspec.ValidationError("times out of order or before 1970")
        except msgspec.DecodeError as exc:
            since = self.path.stat().st_mtime_ns
            log.warning(
                "state file unreadable, taking its time as the end of the last run",
                path=str(self.path),
                error=str(exc),
            )
            return {name: Hole(since, subs) for name, subs in configured.items() if subs}
        holes = {}
        for name, hole in state.providers.items():
            if name not in configured:
                continue
            # A subscription no longer configured has nothing to miss from now on.
            subs = tuple(s for s in hole.subscriptions if s in configured[name])
            holes[name] = Hole(hole.since, subs, hole.closed)
        return holes

    def write(self, holes: Mapping[str, Hole], now: int) -> bool:
        """Replace the file whole (temporary file, rename): a killed process leaves the old or the
        new. A failure is logged, not raised (the file bounds a gap, and the last good one still
        does): False."""
        self._writes += 1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp")
            tmp.write_bytes(msgspec.json.encode(_State(now, dict(holes))))
            os.replace(tmp, self.path)
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _sync(self) -> None:
        """fsync the file as last written (blocking: from a worker thread)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def save(self, holes: Mapping[str, Hole], now: int) -> None:
        """Write, then fsync off the event loop."""
        if not self.write(holes, now):
            return
        attempt = self._writes
        try:
            await asyncio.to_thread(self._sync)
        except OSError as exc:
            self._failed(exc)
            return
        # Written again only if no write since failed: another one (a connect's) may have, while
        # this fsync ran, and the log said "not written" then "written again" at every beat.
        if self._failing and self._writes == attempt:
            self._failing = False
            log.info("state file written again", path=str(self.path))

    def _failed(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.error("state file not written", path=str(self.path), error=str(exc))

    async def keep(self, holes: Callable[[int], Mapping[str, Hole]], clock: Callable[[], int]) -> None:
        """Save the state every BEAT_SECONDS (from the start of one to the next) until cancelled."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            now = clock()
            await self.save(holes(now), now)
            due = max(due + BEAT_SECONDS, loop.time())  # after a stalled disk: on, not catching up
            await asyncio.sleep(due - loop.time())
