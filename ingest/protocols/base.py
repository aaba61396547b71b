"""The contract every provider protocol keeps: frames in, events and frames out, no I/O."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import msgspec
import structlog

from ingest.events import Event, Gap, Rejected, Rows

__all__ = [
    "AskAgain",
    "AuthDefaults",
    "Batch",
    "ProviderProtocol",
    "SubscriptionSpec",
    "next_due",
    "read_decoded",
    "read_frames",
    "read_socket_read",
]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class AuthDefaults:
    """Where a provider expects its key, unless the config says otherwise."""

    location: str  # "header" or "query"
    header: str = "Authorization"
    scheme: str = "Bearer"
    query_param: str = "api_key"
    token_url: str | None = None  # OAuth2 token endpoint for `auth.oauth`; None: the config must name one


class SubscriptionSpec(Protocol):
    name: str


class ProviderProtocol(Protocol):
    """A provider's wire protocol as a state machine (websockets' sans-I/O style).

    The driver owns the socket and the clock: it calls connect() after every (re)connect, feeds
    each frame to receive(), sends what data_to_send() drains, and calls connection_lost() when
    the socket goes. The protocol remembers the desired subscriptions across connections.
    """

    kind: ClassVar[str]
    auth: ClassVar[AuthDefaults]
    fatal_close_codes: ClassVar[frozenset[int]]  # close codes that reconnecting will not fix
    # Close codes that refuse the credentials: fatal, but for one new OAuth token first.
    auth_close_codes: ClassVar[frozenset[int]]
    default_idle_timeout: ClassVar[float]  # silence that means a dead link, unless configured
    option_keys: ClassVar[tuple[str, ...]]  # provider-level config keys this protocol reads
    # After a goodbye nobody acknowledges: read on until the stream has been quiet this long.
    linger: ClassVar[float]
    default_ping_interval: ClassVar[float]  # client WebSocket pings unless configured; 0 = none

    name: str  # the configured provider name, stamped on every row
    subprotocols: tuple[str, ...]  # offered in Sec-WebSocket-Protocol

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], where: str) -> Mapping[str, Any]:
        """Validate the provider-level keys named in option_keys; raise ConfigError naming the key."""
        ...

    @classmethod
    def parse_subscription(cls, raw: Mapping[str, Any], where: str, base_dir: Path) -> SubscriptionSpec:
        """Validate one subscription table (files it names are relative to base_dir)."""
        ...

    def connect(self) -> None:
        """Queue the handshake and every desired subscription."""

    def receive(self, frame: str | bytes, received_at: int) -> list[Event]:
        """Read one frame; never raises for anything the server can send."""
        ...

    def receive_many(self, frames: list[bytes], received_at: int, positions: Iterable[int]) -> list[Event]:
        """Read the frames of one socket read, in order; each Rows, Rejected and Gap carries the
        position of the frame it came from. `read_frames` is the frame-by-frame reading; a
        protocol may read the whole batch at once, with the same events and records, except that
        a run of frames of one stream may share one Rows (which then lists each record's position)."""
        ...

    def data_to_send(self) -> list[str]:
        """Drain the frames queued for the server."""
        ...

    def keepalive(self) -> None:
        """Called on an interval while connected, and once a time next_due() gave has come: queue
        an app-level ping or retries.

        Optional, not declared here (absent means None; see `next_due` below): `next_due()`, the
        time (ns, wall clock as receive times) from which keepalive() has something to send, such
        as a refused subscription whose wait is over; None when nothing is scheduled before the
        next periodic call.
        """

    def close(self) -> None:
        """Queue what a clean goodbye needs (unsubscribes, completes)."""

    @property
    def closed(self) -> bool:
        """True once every goodbye was acknowledged (or none was needed)."""
        ...

    @property
    def active(self) -> int:
        """How many subscriptions are still wanted (0 means nothing left to do)."""
        ...

    def connection_lost(self) -> None:
        """Forget per-connection state (acks, ids); keep the desired subscriptions."""

    def state(self) -> dict[str, Any]:
        """Routing state the frames alone do not show (ids the client chose, counters), as JSON.

        Journaled after every client-side change, so replaying the journal's frames through a
        fresh protocol routes them exactly as the first time. Never the subscriptions wanted.
        """
        ...

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what state() returned."""


_POSITIONED = (Rows, Rejected, Gap)


def read_frames(
    protocol: ProviderProtocol, frames: list[bytes], received_at: int, positions: Iterable[int]
) -> list[Event]:
    """receive() on each frame in turn; a frame that raises is quarantined, the rest go on."""
    events: list[Event] = []
    for raw, position in zip(frames, positions, strict=False):
        try:
            out = protocol.receive(raw, received_at)
        except Exception as exc:  # a protocol bug quarantines the frame, not the collector
            reason = f"protocol error: {type(exc).__name__}: {exc}"[:500]
            out = [Rejected(protocol.name, raw, reason, received_at)]
        for event in out:
            if type(event) in _POSITIONED:
                event.position = position  # type: ignore[union-attr]
        events += out
    return events


def read_socket_read(
    protocol: ProviderProtocol,
    frames: list[bytes],
    received_at: int,
    positions: Sequence[int],
    max_frame: int,
) -> list[Any]:
    """The events of one socket read's frames, as the driver reads them live and the journal's
    replay reads them again (the same way, so a replay routes as live did): the whole read through
    `receive_many`, or frame by frame around any frame above `max_frame` (quarantined unparsed)
    and after a bug in the batch reading."""
    if max(map(len, frames)) > max_frame:
        events: list[Any] = []
        for raw, position in zip(frames, positions, strict=True):
            if len(raw) > max_frame:
                reason = f"frame too large: {len(raw)} bytes"
                events.append(Rejected(protocol.name, raw, reason, received_at, position=position))
            else:
                events += read_frames(protocol, [raw], received_at, [position])
        return events
    try:
        return protocol.receive_many(frames, received_at, positions)
    except Exception:  # a bug in a protocol's batch reading: read frame by frame instead
        log.exception("batch read failed, reading frame by frame", provider=protocol.name)
        return read_frames(protocol, frames, received_at, positions)


Decoded = TypeVar("Decoded")


@dataclass(slots=True)
class Batch:
    """What reading one call's frames appends to: the events, and the Rows that a record of a
    later frame of the same stream may join (a call's frames share one receive time)."""

    events: list[Event] = field(default_factory=list)
    run: Rows | None = None


def read_decoded(
    protocol: ProviderProtocol,
    decode: Callable[[bytes], Decoded],
    read: Callable[[bytes, Decoded, int, int, Batch], None],
    frames: list[bytes],
    received_at: int,
    positions: Iterable[int],
) -> list[Event]:
    """A batch for a protocol that decodes every frame into one struct, then reads the struct.

    The decoding is one C-level map over the batch, no Python call per frame; `read` appends
    what one frame means to the batch. A frame that does not decode sends the batch frame by
    frame, so only it is quarantined.
    """
    try:
        decoded = list(map(decode, frames))
    except msgspec.MsgspecError:
        return read_frames(protocol, frames, received_at, positions)
    batch = Batch()
    for raw, value, position in zip(frames, decoded, positions, strict=False):
        try:
            read(raw, value, received_at, position, batch)
        except Exception as exc:  # a protocol bug quarantines this frame; the ones before it stand
            reason = f"protocol error: {type(exc).__name__}: {exc}"[:500]
            batch.events.append(Rejected(protocol.name, raw, reason, received_at, position=position))
            batch.run = None  # a record of a later frame starts a Rows of its own
    return batch.events


K = TypeVar("K")


class AskAgain(Generic[K]):
    """Requests the server refused for now (subscriptions), each with the time from which it may
    be asked again: at once (0: the next keep-alive) or after the wait the refusal asked for (ns,
    wall clock, as receive times). Kept across reconnects, so a new connection does not ask early;
    one whose time has come goes out with the others. Also counts each request's refusals in a
    row, for a backoff that grows until the server grants it (`backoff`, `granted`)."""

    def __init__(self) -> None:
        self._at: dict[K, int] = {}
        self._refusals: dict[K, int] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def later(self, key: K, at: int = 0) -> None:
        self._at[key] = at

    def backoff(self, key: K, first: float, cap: float) -> float:
        """Seconds to wait after one more refusal of `key`: `first`, doubled at each refusal in a
        row, up to `cap`."""
        refusals = self._refusals[key] = self._refusals.get(key, 0) + 1
        return min(first * 2 ** (refusals - 1), cap)

    def granted(self, key: K) -> None:
        """The server took it (or it is given up): not asked again, and a later refusal backs off
        from the start."""
        self._at.pop(key, None)
        self._refusals.pop(key, None)

    def due(self) -> list[K]:
        """The requests whose time has come; no longer held."""
        now = time.time_ns()
        ready = [key for key, at in self._at.items() if at <= now]
        for key in ready:
            del self._at[key]
        return ready

    def next_at(self) -> int | None:
        """The earliest time a request waits for; None when none has one (those held for "at
        once" go at the next periodic keep-alive, as before)."""
        return min((at for at in self._at.values() if at > 0), default=None)

    def clear(self) -> None:
        self._at.clear()
        self._refusals.clear()


def next_due(protocol: object) -> int | None:
    """When the protocol next has something to send from keepalive() (its optional `next_due()`):
    the driver calls keepalive() then, not only every keepalive_interval, so a subscription the
    server asked to retry after 1 s is not left unsubscribed until the next 20 s tick."""
    due = getattr(protocol, "next_due", None)
    return due() if due is not None else None
