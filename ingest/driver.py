"""The one connection driver every collector uses: connect, feed the protocol, watch, reconnect.

A session is one socket. It ends on a close, an error, or silence (the watchdog), and the driver
reconnects with capped, jittered exponential backoff (tenacity). A session that lived
`healthy_after` seconds resets the backoff; a Fatal error (bad key, a fatal close code, the
provider saying so) stops this collector only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import random
import sys
import termios
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence, Sized
from typing import NoReturn, Protocol

import aiohttp
import msgspec
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_fixed,
    wait_random_exponential,
)
from yarl import URL

from ingest.auth import Target, build_target
from ingest.config import ProviderConfig
from ingest.downtime import Closed, Hole
from ingest.errors import AuthRejected, Disconnected, Fatal, ProtocolFatal, Silent, Transient
from ingest.events import (
    FatalError,
    Gap,
    Notice,
    Reconnect,
    Rejected,
    Rows,
    SubscriptionAcked,
    SubscriptionFailed,
)
from ingest.journal import Journal, Kind
from ingest.log import redact
from ingest.metrics import ProviderStats
from ingest.protocols.base import ProviderProtocol, next_due, read_socket_read
from ingest.retry_hints import from_headers
from ingest.tokens import TokenSource

__all__ = ["Collector", "RowSink"]

log = structlog.get_logger("ingest.driver")
_encode = msgspec.json.encode
_DATA = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
_MAX_BATCH = 1024  # frames read as one batch at most (a 64 KiB socket read holds ~250 trades)
_GONE = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)
# What a write to a socket the peer already closed raises (aiohttp's ClientConnectionResetError is both).
_SEND_FAILED = (aiohttp.ClientError, ConnectionError)
# Close 1013 TRY_AGAIN_LATER: the server shed us (a slow reader, or its own load). BlockDB and
# Bitquery ask for a longer backoff (PROTOCOLS.md 1.6, 2.4), so the wait is the backoff's cap.
_TRY_AGAIN_LATER = 1013


class RowSink(Protocol):
    """Where a collector puts what it reads (the Buffer)."""

    def add(self, rows: Rows) -> None: ...
    def reject(self, rejected: Rejected) -> None: ...
    def gap(self, gap: Gap, detected_at: int) -> None: ...
    @property
    def congested(self) -> bool: ...
    def wait_for_room(self) -> Awaitable[None]: ...


class _ReconnectNow(Exception):
    """The provider asked for a fresh connection: skip the backoff."""


class Collector:
    """Runs one provider's protocol over a WebSocket until stopped or fatally refused."""

    def __init__(
        self,
        config: ProviderConfig,
        protocol: ProviderProtocol,
        target: Target,
        sink: RowSink,
        stats: ProviderStats,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        close_timeout: float = 3.0,
        journal: Journal | None = None,
        tokens: TokenSource | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        """With `tokens`, `target` is the URL without a key: each connect adds the current token.
        `on_connect` runs at each connect, before the gap it closes is recorded (ingest.downtime)."""
        self.config = config
        self.protocol = protocol
        self._target = target
        self._tokens = tokens
        self._keyless_url = target.url
        # Tokens are numbered by `TokenSource.fetches`; this one replaced a token refused after
        # the upgrade, and is not replaced in its turn unless it served a healthy session first.
        self._replacement = 0
        # The last immediate reconnect (asked by the server) came before its session proved healthy.
        self._asked_early = False
        self._sink = sink
        self.stats = stats
        self._sleep_override = sleep
        self._close_timeout = close_timeout
        self._journal = journal
        if journal is not None:
            journal.track_state(config.name, lambda: _encode(self.protocol.state()))
        self._max_frame = config.max_frame_bytes
        # Pings every ping_interval whatever arrives, sent by the watchdog, for providers whose idle
        # timer counts only client frames (Helius, PROTOCOLS.md 4.7): a ping after ping_interval of
        # silence, which a busy stream never has, would not do. Not in ProviderProtocol: absent is False.
        self._steady_pings: float = config.ping_interval if getattr(protocol, "steady_pings", False) else 0.0
        # The others ping after ping_interval of silence and give the link up when nothing answers
        # within half of it, as aiohttp's heartbeat would; but the watchdog's, since aiohttp's took a
        # pause for buffer room for silence (its full queue stops the socket's reads, so the pong is
        # not read) and closed the socket, dropping the frames its queue held, on no gap.
        self._quiet_pings: float = 0.0 if self._steady_pings else config.ping_interval
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._deadline: asyncio.Timeout | None = None
        # Why the watchdog fired the read deadline, when it was not silence (an unanswered handshake).
        self._expired: Transient | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stop_at = 0.0
        self._lost_at: float | None = None
        self._lost_at_ns: int | None = None  # wall clock of the last loss, for the gaps table
        # What the hole open since _lost_at_ns is: a loss of this run, or (resume) the downtime
        # before it, for the subscriptions the last run had.
        self._names = tuple(s.name for s in config.subscriptions)
        self._hole_kind = "disconnected"
        self._hole_subscriptions = self._names
        self._closed: Closed | None = None  # the last hole closed (recorded as gaps) by a connect
        self._on_connect = on_connect
        # Loop time reading last (re)started; None while the reader waits for buffer room, which the
        # watchdog must not take for silence.
        self._reading_since: float | None = 0.0
        self._paused_for = 0.0  # seconds the reader has waited for buffer room, in all
        # Wall clock when the reader began waiting for buffer room, until it has read all the socket
        # held since: a loss seen meanwhile may have come at any moment after it (_on_lost).
        self._unread_since_ns: int | None = None
        # Server pings the watchdog answered while the reader waited for buffer room (not yet read).
        self._answered: list[object] = []
        self.log = log.bind(provider=config.name)
        stats.display_url = target.display_url
        for sub in config.subscriptions:
            stats.subscriptions[sub.name] = "pending"

    # -- lifecycle -------------------------------------------------------------------------------

    def resume(self, hole: Hole) -> None:
        """Before run(): the last run of this instance left these subscriptions unreceived since
        `hole.since`; the first connect records that as a `down` gap (see ingest.downtime). The
        hole that run closed last is recorded again: the same rows, in case its journal did not
        have them when it died (the views count them once)."""
        if hole.closed is not None:
            self._record(hole.closed)
        self._lost_at_ns = hole.since
        self._hole_kind = "down"
        self._hole_subscriptions = hole.subscriptions

    def hole(self, now: int) -> Hole | None:
        """What is not being received as of `now`: since the loss while disconnected (or stopped),
        since now while connected; None before the first connection of a run with nothing to resume."""
        if self._lost_at_ns is not None:
            return Hole(self._lost_at_ns, self._hole_subscriptions, self._closed)
        if self.stats.connects:
            return Hole(now, self._names, self._closed)
        return None

    def _record(self, closed: Closed) -> None:
        for name in closed.subscriptions:
            self._gap(Gap(self.config.name, name, closed.kind, closed.started, closed.ended), closed.ended)

    async def run(self) -> None:
        """Collect until stop(); returns after a Fatal error too (reported, not raised)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                while not self._stopping:
                    # A fresh retry state per outage: the backoff starts small again after a healthy session.
                    async for attempt in self._retrying():
                        with attempt:
                            await self._session(http)
            except Fatal as exc:
                self.stats.state = "failed"
                self.stats.last_error = str(exc)
                self.log.error("collector stopped", reason=str(exc))
                return
        self.stats.state = "stopped"

    async def stop(self) -> None:
        """Say goodbye (unsubscribe), read what was already sent, then close; ends run()."""
        self._stopping = True
        self._stop_event.set()
        if self._ws is not None and self._deadline is not None:
            await self._goodbye(self._ws)

    async def _goodbye(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send the protocol's goodbye; frames already on the wire are still read after it.

        Reading ends when every goodbye is acknowledged, or, for providers that acknowledge
        nothing, once the stream has been quiet for the protocol's `linger`; in any case within
        the close timeout.
        """
        loop = asyncio.get_running_loop()
        self.protocol.close()
        self._record_state()
        self._stop_at = loop.time() + self._close_timeout
        await self._send(ws)
        if self.protocol.closed:
            self._arm_deadline(min(self.protocol.linger, self._close_timeout))
        else:
            self._arm_deadline(self._close_timeout)

    def _retrying(self) -> AsyncRetrying:
        b = self.config.backoff
        backoff = wait_fixed(0.05) + wait_random_exponential(multiplier=b.initial, max=b.max)
        return AsyncRetrying(
            retry=retry_if_exception_type(Transient),
            wait=_at_least_the_hint(backoff),
            sleep=self._sleep_override or self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        self.stats.state = "backoff"
        self.stats.last_error = str(exc)
        self.log.warning("reconnecting", after=round(delay, 2), attempt=state.attempt_number, reason=str(exc))

    # -- one socket ------------------------------------------------------------------------------

    async def _session(self, http: aiohttp.ClientSession) -> None:
        if self._stopping:
            return
        self.stats.state = "connecting"
        try:
            ws = await self._connect_unless_stopped(http)
        except AuthRejected:
            if self._tokens is None:
                raise
            # A token is checked only at connect, so an expired or revoked one shows here: one new
            # token, at once, before the refusal counts as fatal (PROTOCOLS.md 1.2 and 1.11).
            self.log.warning("token refused at connect, fetching a new one")
            self._tokens.invalidate()
            self._replacement = self._tokens.fetches + 1  # as after the upgrade: replaced once
            ws = await self._connect_unless_stopped(http)
        if ws is None:
            return
        started = time.monotonic()
        self._on_connected()
        pause, reason = 0.0, ""
        try:
            async with ws:
                await self._read(ws)
        except _ReconnectNow as exc:
            lived = time.monotonic() - started
            early = lived < self.config.backoff.healthy_after
            if self._stopping or not (early and self._asked_early):
                self._asked_early = early
                self.log.info("reconnecting at once", reason=str(exc))
                return
            # Asked again before a session proved healthy: at once every time would be a storm
            # (a server, or a proxy, answering every hello so), so from the second on, the backoff.
            raise Transient(f"{exc}, again {lived:.1f} s after connecting") from None
        except Transient as exc:
            lived = time.monotonic() - started
            self._on_lost(str(exc))
            if self._stopping:
                return
            # A session that never finished its handshake was not healthy, however long it hung on.
            unanswered = getattr(self.protocol, "awaiting_handshake", False)
            if lived < self.config.backoff.healthy_after or unanswered:
                raise
            self.log.warning("connection lost", reason=str(exc), lived=round(lived, 1))
            # The provider asked for a pause: not at once, even after a healthy session.
            pause, reason = _jittered(exc.retry_after or 0.0), str(exc)
        finally:
            self._deadline, self._ws = None, None
            if time.monotonic() - started >= self.config.backoff.healthy_after:
                self._asked_early = False
            self.protocol.connection_lost()
            if self._lost_at is None:
                self._lost_at = time.monotonic()
            if self._lost_at_ns is None:
                self._lost_at_ns = time.time_ns()
        # After the socket is let go of, so a stop() meanwhile finds no session to say goodbye on.
        if pause and not self._stopping:
            self.log.warning("reconnecting", after=round(pause, 2), reason=reason)
            await (self._sleep_override or self._sleep)(pause)

    async def _connect_unless_stopped(
        self, http: aiohttp.ClientSession
    ) -> aiohttp.ClientWebSocketResponse | None:
        """_connect(), given up (None) if stop() comes first: a server that takes the TCP
        connection and never answers the upgrade (or a token endpoint that hangs) held the stop
        up for as long as connect_timeout. A socket that opens is kept: stop() says goodbye on it."""
        connect = asyncio.ensure_future(self._connect(http))
        stopped = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait((connect, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not connect.done():
                connect.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connect
        return connect.result() if not connect.cancelled() else None

    async def _connect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        """Open the socket (with the current token, if the key is one); errors mapped to ours."""
        if self._tokens is not None:
            # The token as of this connect (cached, or renewed when near expiry): a reconnect hours
            # later must not reuse one the server would refuse. Fetch errors are Transient or Fatal.
            token = await self._tokens.token(http)
            self._target = build_target(self._keyless_url, self.config.auth, token)
            self.stats.display_url = self._target.display_url
        try:
            # A server that accepts TCP but never answers the upgrade must not hang us forever.
            async with asyncio.timeout(self.config.connect_timeout):
                return await http.ws_connect(
                    self._target.url,
                    headers=self._target.headers,
                    protocols=self.protocol.subprotocols,
                    autoping=False,  # pings are liveness: the driver sees and answers them itself
                    heartbeat=None,  # the watchdog pings (_quiet_pings, _steady_pings)
                    max_msg_size=0,  # provider frames can exceed aiohttp's 4 MiB default (PROTOCOLS.md 5.6)
                    decode_text=False,  # msgspec reads bytes; skipping str saves a UTF-8 pass per frame
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            # str(exc) carries the request URL, key included: build the message from safe parts.
            message = f"handshake refused: HTTP {exc.status} {exc.message}"
            if exc.status in (401, 403):
                raise AuthRejected(message) from None
            # A rate limit (429) or an overloaded server (503) may say how long to stay away.
            raise Disconnected(message, retry_after=from_headers(exc.headers)) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Disconnected(f"connect failed: {type(exc).__name__}: {_safe(exc, self._target)}") from None

    def _credentials_refused(self, reason: str) -> NoReturn:
        """The server took the socket, then refused its credentials: fatal, but a token from the
        OAuth endpoint is replaced at once first, as at the upgrade (PROTOCOLS.md 1.11: 4403 ->
        refresh the token); the replacement refused too is fatal, unless it served a healthy
        session before (revoked hours later, say: replaced again)."""
        reason = redact(reason)  # a server may echo the token: masked while it is still registered
        tokens = self._tokens
        if tokens is not None and tokens.fetches != self._replacement:
            self.log.warning("token refused after connect, fetching a new one", reason=reason)
            tokens.invalidate()
            self._replacement = tokens.fetches + 1  # the serial of the token the reconnect fetches
            raise _ReconnectNow(reason)
        raise AuthRejected(reason)

    def _on_connected(self) -> None:
        self.stats.connects += 1
        self.stats.state = "connected"
        if self._lost_at is not None:
            self.stats.disconnected_seconds += time.monotonic() - self._lost_at
            self._lost_at = None
        closed = None
        if self._lost_at_ns is not None:
            # Nothing was received from the loss (or the last run's end) until the subscribe.
            closed = Closed(self._hole_kind, self._lost_at_ns, time.time_ns(), self._hole_subscriptions)
            self._closed, self._lost_at_ns = closed, None
            self._hole_kind = "disconnected"
            self._hole_subscriptions = self._names
        if self._on_connect is not None:
            # The saved state moves past the hole, and holds it, before its gaps are journaled: a
            # crash between the two has the next run record them, not lose them.
            self._on_connect()
        if closed is not None:
            self._record(closed)
        self.log.info("connected", url=self._target.display_url, connects=self.stats.connects)
        for name in self.stats.subscriptions:
            if not self.stats.subscriptions[name].startswith("failed"):
                self.stats.subscriptions[name] = "pending"

    def _on_lost(self, reason: str) -> None:
        self._lost_at = time.monotonic()
        # A close read after a pause for buffer room, before the reader caught up with the socket,
        # is seen late: the server may have cut the connection at any moment of the pause (and sent
        # nothing since), so the hole starts when the pause began.
        now = time.time_ns()
        self._lost_at_ns = min(now, self._unread_since_ns or now)
        self.stats.state = "backoff"
        self.stats.last_error = reason

    def _gap(self, gap: Gap, detected_at: int) -> None:
        if self._journal is not None:  # journaled so a crash before its flush does not lose it
            gap.position = self._journal.append(Kind.GAP, self.config.name, detected_at, _encode(gap))
        self._sink.gap(gap, detected_at)

    def _record_state(self) -> None:
        """Journal the protocol's routing state after a change the received frames do not show."""
        if self._journal is not None:
            self._journal.append(Kind.STATE, self.config.name, time.time_ns(), _encode(self.protocol.state()))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        stats = self.stats
        self._expired = None
        self._answered = []
        self._unread_since_ns = None
        # What the protocol queued for an earlier socket is not for this one: the answers a
        # start-up replay's frames asked for (a pong, the starts a journaled ack sends) would go
        # out ahead of the handshake, which servers refuse (Bitquery closes with 4401).
        self.protocol.data_to_send()
        self.protocol.connect()
        self._record_state()
        await self._send(ws)
        try:
            async with asyncio.timeout(None) as deadline:
                self._deadline, self._ws = deadline, ws
                if self._stopping:  # stop() came while connecting: say goodbye right away
                    await self._goodbye(ws)
                watchdog = asyncio.create_task(self._watchdog(ws))
                try:
                    frames: list[bytes] = []
                    queued = _parsed_queue(ws)
                    take = _queued_data_reader(ws, queued)
                    pacer = _ReadPacer.of(ws, self.config.read_coalesce)
                    while True:
                        if self._unread_since_ns is not None and _caught_up(ws, queued):
                            self._unread_since_ns = None  # the socket was open after the pause
                        msg = await ws.receive()
                        kind = msg.type
                        if kind in _DATA:
                            frames.append(msg.data)  # bytes: ws_connect(decode_text=False)
                            if queued and len(frames) < _MAX_BATCH:
                                if take is not None:
                                    await take(frames, _MAX_BATCH)  # the data frames queued next
                                if queued and len(frames) < _MAX_BATCH:
                                    continue  # more of this socket read is parsed: read it in the same batch
                        if frames:
                            self._on_frames(frames)
                            if await self._after_frames(ws):
                                return
                            if pacer is not None and not queued:
                                await pacer.gather(len(frames))
                            frames = []
                        if kind is aiohttp.WSMsgType.PING:
                            stats.keepalives += 1
                            stats.last_frame_ns = time.time_ns()
                            if not self._was_answered(msg):
                                with contextlib.suppress(*_SEND_FAILED):  # the socket is gone: see _send
                                    await ws.pong(msg.data)
                        elif kind is aiohttp.WSMsgType.PONG:
                            stats.keepalives += 1
                            stats.last_frame_ns = time.time_ns()
                        elif kind in _GONE:
                            self._closed_by_server(ws, msg)
                finally:
                    watchdog.cancel()
        except TimeoutError:
            if self._stopping:
                return
            raise self._expired or Silent(f"no frame for {self.config.idle_timeout:g} s") from None

    async def _after_frames(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Answer, wait for buffer room, see whether a goodbye is complete; True: stop reading."""
        protocol, sink = self.protocol, self._sink
        if out := protocol.data_to_send():
            # What goes out may carry ids the protocol just chose (Bitquery's starts at an ack):
            # journaled first, so a replay routes the answers as this session does. Rare: not per frame.
            self._record_state()
            await self._send(ws, out)
        if sink.congested:
            # Nothing is read meanwhile, though the server may well be sending: not silence.
            self._reading_since = None
            paused_at = asyncio.get_running_loop().time()
            if self._unread_since_ns is None:
                self._unread_since_ns = time.time_ns()
            try:
                await sink.wait_for_room()
            finally:
                self._reading_since = asyncio.get_running_loop().time()
                self._paused_for += self._reading_since - paused_at
        if self._stopping and protocol.closed:
            if not protocol.linger:
                return True
            # Still arriving: wait for `linger` of quiet, within the close timeout.
            now = asyncio.get_running_loop().time()
            self._arm_deadline(min(protocol.linger, self._stop_at - now))
        return False

    def _on_frames(self, frames: list[bytes]) -> None:
        """The data frames of one socket read: journal them, let the protocol read them, route
        what comes out. Per read, not per frame: they arrived together, so they share one
        receive time, one journal record and one call into the protocol."""
        stats = self.stats
        n = len(frames)
        stats.frames += n
        received_at = stats.last_frame_ns = time.time_ns()
        journal = self._journal
        # On disk (the journal) before it counts as received.
        if journal is not None:
            first = journal.append_frames(self.config.name, received_at, frames)
            positions: Sequence[int] = range(first, first + n)
        else:
            positions = [0] * n
        events = read_socket_read(self.protocol, frames, received_at, positions, self._max_frame)
        sink = self._sink
        stop: BaseException | None = None
        for event in events:
            if type(event) is Rows:
                sink.add(event)
                continue
            try:
                self._on_event(event)
            except (Fatal, Transient, _ReconnectNow) as exc:
                # The rest of the read still goes to the buffer: it is journaled, so it counts.
                stop = stop or exc
        if stop is not None:
            raise stop

    def _closed_by_server(self, ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> None:
        code = ws.close_code if msg.type is not aiohttp.WSMsgType.CLOSE else msg.data
        # The server's words go into errors, /health and the live view, not only the (masked) log.
        reason = redact(msg.extra or "") if msg.type is aiohttp.WSMsgType.CLOSE else ""
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise Disconnected(f"socket error: {type(msg.data).__name__}")
        if self._stopping:
            raise Disconnected("closed during shutdown", code=code)
        if code in self.protocol.auth_close_codes:
            self._credentials_refused(f"server refused the credentials: closed with {code} {reason}".strip())
        if code in self.protocol.fatal_close_codes:
            raise ProtocolFatal(f"server closed the connection with {code} {reason}".strip())
        message = f"server closed the connection ({code} {reason})".strip()
        if code == _TRY_AGAIN_LATER:
            wait = self.config.backoff.max
            raise Disconnected(f"{message}: try again later, in {wait:g} s", code=code, retry_after=wait)
        raise Disconnected(message, code=code)

    def _on_event(self, event: object) -> None:
        if isinstance(event, Rejected):
            self._sink.reject(event)
        elif isinstance(event, Gap):
            self._sink.gap(event, time.time_ns())  # from a frame: the frame is journaled, not the gap
        elif isinstance(event, SubscriptionAcked):
            if self.stats.subscriptions.get(event.subscription) == "silent":
                self.log.warning("silent subscription answered", subscription=event.subscription)
            self.stats.subscriptions[event.subscription] = "active"
            self.log.info("subscribed", subscription=event.subscription)
        elif isinstance(event, SubscriptionFailed):
            self.stats.subscriptions[event.subscription] = f"failed: {event.message}"
            self.log.error(
                "subscription refused",
                subscription=event.subscription,
                error=event.message,
                retryable=event.retryable,
            )
            if self.protocol.active == 0 and not event.retryable:
                raise ProtocolFatal("every subscription was refused")
        elif isinstance(event, Notice):
            self.log.warning("provider notice", subscription=event.subscription, message=event.message)
        elif isinstance(event, FatalError):
            if event.auth:
                self._credentials_refused(event.reason)
            raise ProtocolFatal(event.reason)
        elif isinstance(event, Reconnect):
            if event.retry_after:  # not at once: a lost connection, waiting at least that long
                raise Disconnected(event.reason, retry_after=event.retry_after)
            raise _ReconnectNow(event.reason)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, frames: list[str] | None = None) -> None:
        """Send the protocol's frames (or `frames`). A send that fails is a lost connection, not an
        error of its own: reading goes on, hands out the frames that had already arrived, then the
        close, which ends the session as a disconnect like any other."""
        try:
            for frame in frames if frames is not None else self.protocol.data_to_send():
                await ws.send_str(frame)
        except _SEND_FAILED as exc:
            self.log.info("send failed, the connection is closing", error=type(exc).__name__)

    def _arm_deadline(self, delay: float) -> None:
        if self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time() + delay)

    async def _watchdog(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Fire the read deadline when nothing at all arrived for idle_timeout; run keepalives and
        steady pings."""
        loop = asyncio.get_running_loop()
        idle = self.config.idle_timeout
        ping_every, quiet_ping = self._steady_pings, self._quiet_pings
        tick = min(1.0, idle / 4, self.config.handshake_timeout / 4, (ping_every or quiet_ping or 4.0) / 4)
        seen, seen_at, keepalive_at = -1, loop.time(), loop.time()
        pinged_at = opened = loop.time()
        awaiting_pong = False  # a quiet ping went out at pinged_at and nothing has come since
        # Reading time since this connect: a pause for buffer room is not the provider's silence.
        silent_after, silence_told, paused_before = self.config.silent_after, False, self._paused_for
        # A protocol whose handshake is still unanswered after handshake_timeout (frames or not:
        # Bitquery's keep-alives come before an ack that may never come) gets a new connection.
        # Not in ProviderProtocol: absent is False.
        handshake, handshaking = self.config.handshake_timeout, True
        fired: int | None = None  # the due time keepalive() last ran for
        while True:
            due = next_due(self.protocol)
            wait = tick
            if due is not None and due != fired:
                # Wake when it is due (a retry after 1 s), not up to a tick later.
                wait = min(tick, max(due - time.time_ns(), 0) / 1e9 + 0.005)
            await asyncio.sleep(wait)
            now = loop.time()
            count = self.stats.frames + self.stats.keepalives
            since = self._reading_since  # silence counts only from when reading (re)started
            if count != seen or since is None:
                seen, seen_at = count, now
            elif now - max(seen_at, since) >= idle and not self._stopping:
                self._arm_deadline(0.0)
                return
            if self._replacement and now - opened >= self.config.backoff.healthy_after:
                self._replacement = 0  # this socket's token served a healthy session: replaceable again
            if since is None:
                await self._answer_queued_pings(ws)
            reading_for = now - opened - (self._paused_for - paused_before)
            live = since is not None and not self._stopping
            if handshaking and live:
                handshaking = getattr(self.protocol, "awaiting_handshake", False)
                if handshaking and reading_for >= handshake:
                    self._expired = Disconnected(f"handshake not acknowledged within {handshake:g} s")
                    self._arm_deadline(0.0)
                    return
            if silent_after and not silence_told and live and reading_for >= silent_after:
                silence_told = True
                self._report_silent(reading_for)
            # On the last tick before it is due, so pings are never further apart than ping_interval.
            if ping_every and now + tick - pinged_at >= ping_every:
                pinged_at = now
                await self._ping(ws)
            if quiet_ping and not self._stopping:
                reading = now if since is None else since
                # Anything read since the ping answers it; a pause for buffer room does too (seen_at
                # moves on meanwhile): the pong may wait in the socket behind the frames not read.
                awaiting_pong = awaiting_pong and seen_at <= pinged_at
                if awaiting_pong and now - max(pinged_at, reading) >= quiet_ping / 2:
                    self._expired = Silent(f"no pong within {quiet_ping / 2:g} s of a ping")
                    self._arm_deadline(0.0)
                    return
                if not awaiting_pong and now - max(seen_at, reading) >= quiet_ping:
                    pinged_at, awaiting_pong = now, True
                    await self._ping(ws)
            # Also as soon as the protocol has something due (a refused subscription's wait is
            # over); once per due time, so one the protocol does not act on cannot spin.
            due = next_due(self.protocol)
            is_due = due is not None and due != fired and due <= time.time_ns()
            if is_due or now - keepalive_at >= self.config.keepalive_interval:
                keepalive_at, fired = now, due if is_due else fired
                self.protocol.keepalive()
                self._record_state()
                await self._send(ws)

    async def _answer_queued_pings(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Answer the server's pings aiohttp has parsed but the reader, waiting for buffer room,
        has not read: a provider drops a peer that leaves them unanswered (CoinAPI pings every
        minute), and the pause may come from another provider's flood. One behind more frames than
        aiohttp's queue holds is not parsed yet: that socket is really stalled."""
        for item in list(_parsed_queue(ws)):
            msg = item[0] if type(item) is tuple else None
            if getattr(msg, "type", None) is not aiohttp.WSMsgType.PING or self._was_answered(msg, keep=True):
                continue
            self._answered.append(msg)
            with contextlib.suppress(*_SEND_FAILED):  # as in _read: the reader sees the close
                await ws.pong(msg.data)  # type: ignore[union-attr]

    def _was_answered(self, msg: object, *, keep: bool = False) -> bool:
        """Whether the watchdog answered this very ping already; forgotten once read (not `keep`)."""
        for i, answered in enumerate(self._answered):
            if answered is msg:
                if not keep:
                    del self._answered[i]
                return True
        return False

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            await ws.ping()
        except _SEND_FAILED as exc:  # as in _send: the reader sees the close and reconnects
            self.log.info("ping failed, the connection is closing", error=type(exc).__name__)

    def _report_silent(self, waited: float) -> None:
        """Subscriptions sent this long ago on this connection that have had neither an ack nor data:
        "silent" until they answer. The connection is alive (frames or keep-alives come, else the
        idle timeout reconnects), so this is the provider ignoring them, which some do without a
        word (PROTOCOLS.md 1.6: Bitquery over a plan's cap). Told once a connection."""
        subs = self.stats.subscriptions
        hint_for = getattr(self.protocol, "silence_hint", None)
        for name in [n for n, state in subs.items() if state == "pending"]:
            subs[name] = "silent"
            hint = hint_for(name) if hint_for else "no acknowledgement and no data since it was sent"
            self.log.warning("subscription silent", subscription=name, seconds=round(waited), hint=hint)


def _parsed_queue(ws: aiohttp.ClientWebSocketResponse) -> Sized:
    """The messages aiohttp has parsed but not yet handed out, to see when a socket read is all read.

    Not public API (aiohttp 3.x keeps them in `_reader._buffer`): without it every frame is a
    batch of its own, which is correct, only slower.
    """
    queue = getattr(getattr(ws, "_reader", None), "_buffer", None)
    return queue if isinstance(queue, Sized) else ()


def _caught_up(ws: aiohttp.ClientWebSocketResponse, queued: Sized) -> bool:
    """Whether everything the socket received is read and it is still open: aiohttp's queue empty,
    no end of stream seen, nothing in the kernel's buffer. True where it cannot tell (aiohttp's
    internals not as expected), as if every loss were seen at once. Not public API, like _parsed_queue."""
    if queued:
        return False
    is_eof = getattr(getattr(ws, "_reader", None), "is_eof", None)
    if is_eof is not None and is_eof():
        return False
    transport = getattr(getattr(getattr(ws, "_response", None), "connection", None), "transport", None)
    sock = transport.get_extra_info("socket") if isinstance(transport, asyncio.Transport) else None
    if sock is None:
        return True
    try:
        count = fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4))
    except OSError:
        return True
    return int.from_bytes(count, sys.byteorder) == 0


def _queued_data_reader(
    ws: aiohttp.ClientWebSocketResponse, queued: Sized
) -> Callable[[list[bytes], int], Awaitable[None]] | None:
    """What appends the data frames at the head of aiohttp's parsed queue to a batch, up to a
    limit, straight from its reader; None where aiohttp's internals are not as expected.

    `receive()` costs ~0.3 us a frame over the reader's own `read()` (its state checks and a
    second coroutine): a quarter of aiohttp's cost per frame. In the daemon, CoinAPI trades, 3
    runs each: the event loop's CPU 4.5-5.7 -> 4.3-5.5 us a message at 20k msg/s, 2.2-2.8 ->
    2.15-2.17 at full speed. Only frames already parsed and queued are taken, and only data
    frames, so nothing can suspend or raise in between, and every control frame (close, ping)
    still goes through `receive()`, which acts on it. Not public API, like _parsed_queue.
    """
    reader = getattr(ws, "_reader", None)
    read = getattr(reader, "read", None)
    if read is None or not isinstance(queued, deque):
        return None

    async def take(frames: list[bytes], limit: int) -> None:
        append = frames.append
        while queued and len(frames) < limit:
            head = queued[0]  # (message, size)
            if type(head) is not tuple or getattr(head[0], "type", None) not in _DATA:
                return
            append((await read()).data)

    return take


class _ReadPacer:
    """Lets the frames of a fast stream gather for a moment before the next read.

    Every read is a wake-up of the event loop, and a wake-up costs more than the frames of a
    moderate stream: on these VMs ~90 us of CPU over a busy loop's. A provider sending a few frames
    every couple of milliseconds would cost the daemon more in wake-ups than in messages (CoinAPI
    trades at 20k msg/s: the event loop 4.5-6.6 -> 3.2-5.7 us a message with 10 ms pauses). So
    when reads come less than half of `seconds` apart and have drained the socket, reading pauses
    for `seconds`, and what arrives meanwhile waits in the socket's buffer to come as one read.
    Pacing stops once a pause gathers no more than one frame: a pause that gathers nothing costs
    a wake-up of its own (at 100 msg/s it doubled the event loop's CPU). A socket with data
    waiting is never paused, so a busy stream is read as fast as before; a frame waits `seconds`
    at most.
    """

    def __init__(self, transport: asyncio.Transport | None, fd: int, seconds: float) -> None:
        self._transport = transport  # None: only `pace` is used (its tests)
        self._fd = fd
        self._seconds = seconds
        self._pacing = False
        self._last = -seconds  # when the last read was done with

    @classmethod
    def of(cls, ws: aiohttp.ClientWebSocketResponse, seconds: float) -> _ReadPacer | None:
        """The pacer of this socket; None when pausing is off or the transport is not reachable.

        Not public API: aiohttp keeps the transport on the upgrade's response connection.
        """
        connection = getattr(getattr(ws, "_response", None), "connection", None)
        transport = getattr(connection, "transport", None)
        if seconds <= 0 or not isinstance(transport, asyncio.Transport):
            return None
        sock = transport.get_extra_info("socket")
        return None if sock is None else cls(transport, sock.fileno(), seconds)

    def pace(self, now: float, frames: int) -> bool:
        """Whether to pause after a read of `frames` done with at `now` (loop time)."""
        since, self._last = now - self._last, now
        if self._pacing:
            self._pacing = frames > 1  # the pause gathered more than one frame: still worth it
        else:
            self._pacing = since < self._seconds / 2
        return self._pacing

    def _waiting(self) -> bool:
        """Bytes are in the socket's buffer, not read yet (or it cannot say: then read on)."""
        try:
            count = fcntl.ioctl(self._fd, termios.FIONREAD, bytes(4))
        except OSError:
            return True
        return int.from_bytes(count, sys.byteorder) > 0

    async def gather(self, frames: int) -> None:
        """After a read that drained aiohttp's queue: pause reading for a moment, if the stream is
        fast, the socket holds nothing more, and aiohttp is not holding it itself."""
        transport = self._transport
        assert transport is not None
        if not self.pace(asyncio.get_running_loop().time(), frames):
            return
        # Not reading: aiohttp paused it (its queue is full) and resumes it itself.
        if not transport.is_reading() or self._waiting():
            return
        transport.pause_reading()
        try:
            await asyncio.sleep(self._seconds)
        finally:
            transport.resume_reading()  # a no-op once closing


def _at_least_the_hint(backoff: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    """The backoff's wait, or what the provider asked for (Transient.retry_after) if longer."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return max(backoff(state), _jittered(getattr(exc, "retry_after", None) or 0.0))

    return wait


def _jittered(wait: float) -> float:
    """A provider's wait plus up to a fifth (PROTOCOLS.md 2.4: about 20% jitter), so collectors shed
    together (a 1013 to every socket) do not all come back in the same instant."""
    return wait * random.uniform(1.0, 1.2)


def _safe(exc: BaseException, target: Target) -> str:
    text = str(exc)
    # aiohttp quotes the URL as yarl re-encodes it (a base64 key's '+' and '=' become %2B and %3D,
    # a %2F becomes '/'), which is not the URL we gave it: both are replaced.
    try:
        urls = {target.url, str(URL(target.url))}
    except ValueError:  # a URL yarl refuses is in the error as we gave it
        urls = {target.url}
    for url in urls:
        text = text.replace(url, target.display_url)
    return redact(text)  # the key in any other URL (a redirect's), in any form a library writes
