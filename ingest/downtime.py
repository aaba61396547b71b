"""Downtime between runs, on record: when each provider was last known to be receiving.

The driver records a gap from a disconnect to the resubscribe, but a daemon that stops (an
upgrade, a crash, a reboot) receives nothing until it runs again, and without this no row would
say so: `coverage` would count those hours complete. So the daemon keeps a small file per
instance saying, per provider, since when it has not been receiving (`since`: now while it is
connected, the moment of the loss while it is not) and for which subscriptions. It is rewritten
every few seconds and once more at a clean stop; the next run starts each provider's collector
with that hole open, and the collector records it as a `down` gap when it subscribes again.

After a crash the hole starts at the last write, at most `BEAT_SECONDS` before the crash: the
gap may be that much longer than the downtime, never shorter. The file is written at every
connect too, before the gaps that connect closes are journaled, and holds that hole (`closed`):
a crash between the two has the next run record those gaps again (the same rows, counted once
in the views), not lose them. It says "receiving until now" only once the journal holds every
frame received until now (the app writes the journal out first).
"""

from __future__ import annotations

import asyncio
import os
import threading
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


@dataclass
class Downtime:
    """The state file of one instance (`<data_dir>/state/<instance>.json`)."""

    path: Path
    # A beat cancelled at stop may still be writing in its thread: writes go one at a time, and
    # one older than the file's is dropped, so the stop's is the one left.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _written_at: int = field(default=0, repr=False)

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

    def write(self, holes: Mapping[str, Hole], now: int, *, sync: bool = True) -> None:
        """Replace the file whole (temporary file, fsync, rename): a crash leaves the old or the new."""
        with self._lock:
            if now < self._written_at:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp")
            with open(tmp, "wb") as f:
                f.write(msgspec.json.encode(_State(now, dict(holes))))
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._written_at = now

    async def keep(self, holes: Callable[[int], Mapping[str, Hole]], clock: Callable[[], int]) -> None:
        """Rewrite the file every BEAT_SECONDS until cancelled; a failed write is logged, not fatal
        (the next one may succeed, and the last good file still bounds the hole)."""
        while True:
            now = clock()
            try:
                await asyncio.to_thread(self.write, holes(now), now)
            except OSError as exc:
                log.error("state file not written", path=str(self.path), error=str(exc))
            await asyncio.sleep(BEAT_SECONDS)
