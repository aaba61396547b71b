"""Per-connection CoinAPI session: scope, routes, sequence numbers, update limits and frame metadata."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from ingest.emulators.coinapi_market import Symbol
from ingest.emulators.coinapi_scope import Request, Route, Scope
from ingest.emulators.coinapi_wire import Event

__all__ = ["HEARTBEAT", "RECONNECT", "DataMeta", "ErrorMeta", "Session", "authorization_key"]


class DataMeta(NamedTuple):
    """What `on_sent` learns about a data frame handed to the socket."""

    dtype: str
    key: str
    uuid: str | None
    sequence: int | None
    gap: int | None  # the sequence number skipped just before this one, when a gap was injected


class ErrorMeta(NamedTuple):
    message: str


HEARTBEAT = object()
RECONNECT = object()


@dataclass(slots=True, eq=False)
class Session:
    """Protocol state of one connection, beside the base server's Connection."""

    authed: bool
    key_at_upgrade: bool = False  # a valid key in the upgrade request (header, query or path)
    started: bool = False
    failed: bool = False
    scope: Scope = field(default_factory=Scope)
    routes: frozenset[Route] = frozenset()
    sequences: dict[Route, int] = field(default_factory=dict)
    counts: dict[Route, int] = field(default_factory=dict)
    owed_snapshots: set[str] = field(default_factory=set)
    last_time: dict[Route, int] = field(default_factory=dict)
    last_out: float = 0.0  # loop time of the last frame out, for heartbeats
    error_sent: asyncio.Event = field(default_factory=asyncio.Event)

    def rescope(self, request: Request, symbols: Iterable[Symbol], now: float) -> None:
        """Apply a hello/subscribe/unsubscribe and recompute which routes this connection receives."""
        was_heartbeat = self.scope.heartbeat
        self.scope.apply(request)
        self.started = True
        if self.scope.heartbeat and not was_heartbeat:
            self.last_out = now  # the first heartbeat follows one quiet interval after enabling
        routes = frozenset(self.scope.routes(symbols))
        # A symbol new to the `book` scope gets a snapshot before any delta (book FAQ).
        books = {r for t, r in routes if t == "book"}
        had = {r for t, r in self.routes if t == "book"}
        self.owed_snapshots = (self.owed_snapshots & books) | (books - had)
        self.routes = routes

    def frame(self, event: Event, gap_every: int) -> tuple[bytes, DataMeta] | None:
        """This connection's frame for `event`, numbered; None when a filter or limit holds it back."""
        route = (event.dtype, event.route)
        scope = self.scope
        if event.period_id is not None and scope.periods is not None and event.period_id not in scope.periods:
            return None
        limit = scope.limits.get(event.dtype)
        if limit:
            last = self.last_time.get(route)
            if last is not None and event.time - last < limit * 10_000:  # ms -> 100 ns ticks
                return None
            self.last_time[route] = event.time
        tail = event.tail
        if event.dtype == "book" and event.route in self.owed_snapshots:
            self.owed_snapshots.discard(event.route)
            tail = event.snapshot
        if tail is None:
            return None
        if not event.sequenced:
            return event.head, DataMeta(event.dtype, event.key, None, None, None)
        # Sequence numbers count per (type, symbol_id) and start at 1 on every connection.
        sequence, gap = self.sequences.get(route, 0) + 1, None
        if gap_every:
            count = self.counts[route] = self.counts.get(route, 0) + 1
            if count % gap_every == 0:
                gap, sequence = sequence, sequence + 1
        self.sequences[route] = sequence
        frame = b"".join((event.head, str(sequence).encode(), tail))
        return frame, DataMeta(event.dtype, event.key, event.uuid, sequence, gap)


def authorization_key(header: str | None) -> str | None:
    """The key in `Authorization: KEY` or `Basic base64("coinapi:KEY")`; a bearer JWT is not verifiable."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if not value:
        return scheme
    if scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            return base64.b64decode(value, validate=True).decode().partition(":")[2]
    return ""  # a malformed Basic value or a JWT: treated as a bad key
