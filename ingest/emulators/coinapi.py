"""CoinAPI Market Data WebSocket V1 emulator: hello/subscribe scopes, market data, heartbeats and faults."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import math
import weakref
from collections import Counter, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar

import msgspec
import structlog
from aiohttp import web

from ingest.emulators.coinapi_market import DEFAULT_CLOCK_START, SYMBOLS, Market, Symbol
from ingest.emulators.coinapi_scope import Route, ScopeError, parse_request
from ingest.emulators.coinapi_session import (
    HEARTBEAT,
    RECONNECT,
    DataMeta,
    ErrorMeta,
    Session,
    authorization_key,
)
from ingest.emulators.coinapi_wire import HEARTBEAT_FRAME, TICKS_PER_SECOND, Event, control_frame, iso7
from ingest.emulators.server import Connection, EmulatorServer

__all__ = ["BUFFER_FULL", "FORBIDDEN_TYPE", "INVALID_KEY", "CoinAPIEmulator"]

log = structlog.get_logger(__name__)

INVALID_KEY = "Invalid API key"
BUFFER_FULL = "Reached maximum allowed buffered messages for this connection."
# CoinAPI's FAQ: a data type the key's plan does not include (the Startup plan and `quote`, say).
FORBIDDEN_TYPE = "Forbidden - Your API key don't have privileges to data type '{}'."
FLOOD_CHUNK = 64
# The upgrade's key verdict (None: no key at the HTTP level), handed from authorize() to the socket's
# tasks: aiohttp runs both in the handler's context, and tasks created there inherit it.
_UPGRADE_AUTH: contextvars.ContextVar[bool | None] = contextvars.ContextVar("coinapi_upgrade_auth")


class CoinAPIEmulator(EmulatorServer):
    """A local `wss://ws.coinapi.io/v1/` serving a deterministic synthetic market.

    One producer advances the market every `tick_interval` seconds (`tick_duration` of market time);
    each event is encoded once, split around its sequence number, and numbered per connection.
    """

    paths = ("/v1/", "/", "/v1", "/v1/APIKEY-{apikey}", "/APIKEY-{apikey}")
    error_close_code: ClassVar[int] = 1000  # CoinAPI documents no close codes; it just disconnects
    reconnect_close_code: ClassVar[int] = 1001  # the planned restart announced by `reconnect`

    def __init__(
        self,
        *,
        key: str | None = None,
        seed: int = 1,
        tick_interval: float = 0.1,
        tick_duration: float | None = None,
        trades_per_tick: float = 2.0,
        quotes_per_tick: float = 3.0,
        max_ticks: int | None = None,
        start_on_subscribe: bool = True,
        record_log: bool = False,
        sequence_gap_every: int = 0,
        heartbeat_interval: float = 1.0,
        clock_start: datetime = DEFAULT_CLOCK_START,
        book_snapshot_every: int = 0,
        symbols: tuple[Symbol, ...] = SYMBOLS,
        ping_interval: float | None = 60.0,
        pong_timeout: float | None = 60.0,
        max_queue: int = 131_072,
        connection_limit: tuple[int, float] | None = None,
        forbidden_types: Iterable[str] = (),
        standalone_messages: bool = False,
    ) -> None:
        """`connection_limit`: (new connections, per seconds) from one IP, the documented sliding
        window (PROTOCOLS.md 3.7, e.g. 10 per 10 s); an upgrade over it is refused with HTTP 429.
        `forbidden_types`: data types the key's plan lacks; a hello or subscribe asking for one gets
        the FAQ's Forbidden error and is closed, like every CoinAPI error.
        `standalone_messages`: read each subscribe and unsubscribe on its own, like a hello, as
        CoinAPI's examples write them (with `apikey` and `heartbeat`): without `apikey` it is refused
        (Invalid API key) unless the key came at the upgrade, and without `heartbeat` heartbeats
        stop. By default a session keeps the hello's key and heartbeat choice."""
        # The server pings every minute and drops a peer that does not pong (PROTOCOLS.md 3.1).
        super().__init__(ping_interval=ping_interval, pong_timeout=pong_timeout, max_queue=max_queue)
        self._key = key
        self.seed = seed
        self.tick_interval = tick_interval
        self.max_ticks = max_ticks
        self.sequence_gap_every = sequence_gap_every
        self.heartbeat_interval = heartbeat_interval
        self.market = Market(
            seed,
            clock_start=clock_start,
            tick_duration=tick_interval if tick_duration is None else tick_duration,
            trades_per_tick=trades_per_tick,
            quotes_per_tick=quotes_per_tick,
            book_snapshot_every=book_snapshot_every,
            symbols=symbols,
        )
        self.sent: Counter[tuple[str, str]] = Counter()
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.heartbeats_sent = 0
        self.reconnects_sent = 0
        self.errors_sent: list[str] = []
        self.gaps_injected: list[tuple[str, str, int, int]] = []
        self.sent_log: list[tuple[str, str, str | None, int | None]] | None = [] if record_log else None
        self.flooded = 0
        self.connection_limit = connection_limit
        self.forbidden_types = frozenset(forbidden_types)
        self.standalone_messages = standalone_messages
        self.upgrades_refused = 0  # over connection_limit
        self._upgrades: dict[str, deque[float]] = {}  # per IP: loop times of accepted upgrades in the window
        self._start_on_subscribe = start_on_subscribe
        self._sessions: weakref.WeakKeyDictionary[Connection, Session] = weakref.WeakKeyDictionary()
        self._clock = asyncio.Event()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._burst = 0
        self._flood = 0
        self._stalled: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._background: list[asyncio.Task[None]] = []

    @property
    def ticks_produced(self) -> int:
        """Market ticks produced so far."""
        return self.market.ticks

    # -- server hooks ----------------------------------------------------------------------------

    def _valid(self, supplied: str) -> bool:
        if not supplied:
            return False
        return self._key is None or hmac.compare_digest(supplied.encode(), self._key.encode())

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        """Note the HTTP-level key, if any; CoinAPI accepts the socket and answers a bad key in-band."""
        if self.connection_limit is not None and (refused := self._over_limit(request)) is not None:
            return refused
        supplied = (
            request.match_info.get("apikey")
            or request.headers.get("X-CoinAPI-Key")
            or request.query.get("apikey")
            or authorization_key(request.headers.get("Authorization"))
        )
        verdict = None if supplied is None else self._valid(supplied)
        if verdict is False:
            log.info("auth_rejected", emulator="coinapi", at="upgrade")  # never the key itself
        _UPGRADE_AUTH.set(verdict)
        return None

    def _over_limit(self, request: web.Request) -> web.StreamResponse | None:
        """HTTP 429 with the limit's headers once an IP opened `limit` sockets within the window;
        the refusal says in how many ms the oldest of them leaves it (`-RetryAfterMs`)."""
        assert self.connection_limit is not None
        limit, window = self.connection_limit
        now = asyncio.get_running_loop().time()
        accepted = self._upgrades.setdefault(request.remote or "", deque())
        while accepted and accepted[0] <= now - window:
            accepted.popleft()
        if len(accepted) < limit:
            accepted.append(now)
            return None
        self.upgrades_refused += 1
        retry_after_ms = math.ceil((accepted[0] + window - now) * 1000) + 1
        prefix = "X-WsRequestsPerIpLimit-"
        headers = {
            f"{prefix}Limit": str(limit),
            f"{prefix}WindowSizeMs": str(round(window * 1000)),
            f"{prefix}Remaining": "0",
            f"{prefix}RetryAfterMs": str(retry_after_ms),
        }
        log.info("upgrade_refused", emulator="coinapi", reason="connection limit")
        return web.Response(status=429, text="Too many connection requests", headers=headers)

    async def _watchdog(self, conn: Connection) -> None:
        # The base has no on-open hook; this per-socket task starts as the socket is accepted.
        session = self._session(conn)
        if _UPGRADE_AUTH.get(None) is False:
            self._fail(conn, INVALID_KEY)
        session.last_out = asyncio.get_running_loop().time()
        await super()._watchdog(conn)

    async def on_startup(self) -> None:
        if not self._start_on_subscribe:
            self._clock.set()
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._produce()), loop.create_task(self._heartbeats())]

    async def on_shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        session = self._session(conn)
        if session.failed:
            return
        try:
            msg = msgspec.json.decode(data)
        except msgspec.DecodeError:
            self._fail(conn, "Message is not valid JSON.")
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not session.started and kind not in ("hello", "subscribe"):
            self._fail(conn, "The first message must be 'hello' (or 'subscribe').")
            return
        if kind not in ("hello", "subscribe", "unsubscribe"):
            self._fail(conn, f"Unknown message type {kind!r}; expected hello, subscribe or unsubscribe.")
            return
        apikey = msg.get("apikey")
        if self.standalone_messages and apikey is None and not session.key_at_upgrade:
            session.authed = False  # each message authenticates itself, as a hello does
        if isinstance(apikey, str):
            if not self._valid(apikey):
                log.info("auth_rejected", emulator="coinapi", at=kind)
                self._fail(conn, INVALID_KEY)
                return
            session.authed = True
        if not session.authed:
            self._fail(conn, INVALID_KEY)
            return
        try:
            request = parse_request(msg, kind)
        except ScopeError as problem:
            self._fail(conn, str(problem))
            return
        if self.standalone_messages and request.heartbeat is None:
            request.heartbeat = False  # absent reads as false, as in a hello
        if kind != "unsubscribe" and (denied := sorted(self.forbidden_types & set(request.data_types))):
            self._fail(conn, FORBIDDEN_TYPE.format(denied[0]))
            return
        session.rescope(request, self.market.symbols.values(), asyncio.get_running_loop().time())
        conn.subscriptions = dict.fromkeys(session.scope.atoms, True)
        self._clock.set()  # the market clock starts with the first accepted request

    def on_sent(self, conn: Connection, meta: Any) -> None:
        session = self._sessions.get(conn)
        if session is not None:
            session.last_out = asyncio.get_running_loop().time()
        if isinstance(meta, DataMeta):
            self.sent[(meta.dtype, meta.key)] += 1
            if meta.gap is not None and meta.sequence is not None:
                self.gaps_injected.append((meta.key, meta.dtype, meta.gap, meta.sequence))
            if self.sent_log is not None:
                self.sent_log.append((meta.dtype, meta.key, meta.uuid, meta.sequence))
        elif meta is HEARTBEAT:
            self.heartbeats_sent += 1
        elif meta is RECONNECT:
            self.reconnects_sent += 1
        elif isinstance(meta, ErrorMeta):
            self.errors_sent.append(meta.message)
            if session is not None:
                session.error_sent.set()

    def offer(self, conn: Connection, frame: bytes, meta: Any = None) -> bool:
        """Queue a frame; past `max_queue` the documented buffer error replaces what was queued."""
        session = self._sessions.get(conn)
        if session is not None and session.failed:
            return False
        if conn.open and conn.queue.qsize() >= self.max_queue:
            self._fail(conn, BUFFER_FULL, flush=True)
            return False
        return super().offer(conn, frame, meta)

    # -- errors, reconnect, flood ----------------------------------------------------------------

    def _session(self, conn: Connection) -> Session:
        session = self._sessions.get(conn)
        if session is None:
            upgrade = _UPGRADE_AUTH.get(None) is True
            session = self._sessions[conn] = Session(authed=upgrade, key_at_upgrade=upgrade)
        return session

    def _begin_error(self, conn: Connection, message: str, *, flush: bool = False) -> Session | None:
        """Mark the session failed and queue `{"type":"error"}`; None if it already failed."""
        session = self._session(conn)
        if session.failed:
            return None
        session.failed = True
        log.info("coinapi_error_sent", message=message)
        if flush:
            # Buffered data is dropped, not resent (PROTOCOLS.md 3.7).
            while not conn.queue.empty():
                _, meta = conn.queue.get_nowait()
                if isinstance(meta, DataMeta):
                    self.dropped[(meta.dtype, meta.key)] += 1
        if conn.open and not conn.is_silent(asyncio.get_running_loop().time()):
            conn.queue.put_nowait((control_frame(type="error", message=message), ErrorMeta(message)))
        else:
            session.error_sent.set()
        return session

    async def _close_after_error(self, conn: Connection, session: Session) -> None:
        # Whatever was queued before the error goes first; a stuck socket is closed regardless.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10 * self.close_timeout):
                await session.error_sent.wait()
        await self.close_connection(conn, self.error_close_code)

    def _fail(self, conn: Connection, message: str, *, flush: bool = False) -> None:
        session = self._begin_error(conn, message, flush=flush)
        if session is not None:
            self.spawn(self._close_after_error(conn, session))

    async def send_error(self, message: str) -> None:
        """Send `{"type":"error","message":...}` on every connection, then close each one."""
        closing = []
        for conn in self.connections:
            session = self._begin_error(conn, message)
            if session is not None:
                closing.append(self._close_after_error(conn, session))
        await asyncio.gather(*closing)

    def send_reconnect(self, within_seconds: int = 10, close_after: float | None = 0.5) -> None:
        """Announce a planned restart, then close each socket `close_after` s later (None: the window).

        `before_time` is on the market clock, like every other time the emulator sends.
        """
        before = iso7(self.market.now + within_seconds * TICKS_PER_SECOND)
        frame = control_frame(type="reconnect", within_seconds=within_seconds, before_time=before)
        delay = float(within_seconds) if close_after is None else close_after
        for conn in self.connections:
            if self.offer(conn, frame, RECONNECT):
                self.spawn(self.close_later(conn, delay, self.reconnect_close_code))

    def burst(self, n_ticks: int) -> None:
        """Produce `n_ticks` extra ticks now, back to back, as fast as the sockets drain."""
        self._burst += n_ticks
        self._clock.set()
        self._wake.set()

    def flood(self, n: int) -> None:
        """Push `n` extra trades per symbol with a trade subscriber, as fast as the sockets take them."""
        self._flood += n
        self._clock.set()
        self._wake.set()

    async def wait_ticks(self, count: int) -> None:
        """Wait until `ticks_produced` reaches `count` (bound it with asyncio.timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.market.ticks >= count)

    async def wait_flooded(self) -> None:
        """Wait until every requested flood trade was queued (bound it with asyncio.timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self._flood == 0)

    # -- production ------------------------------------------------------------------------------

    def _exhausted(self) -> bool:
        return self.max_ticks is not None and self.market.ticks >= self.max_ticks

    async def _produce(self) -> None:
        # The market clock starts with the first subscription, so equal seeds give equal streams.
        await self._clock.wait()
        loop = asyncio.get_running_loop()
        due = loop.time() + self.tick_interval
        while True:
            if self._flood:
                chunk = min(self._flood, FLOOD_CHUNK)
                routes = self._routes()
                symbols = [sid for sid in self.market.symbols if ("trade", sid) in routes]
                self._fan_out(self.market.flood(symbols, chunk, routes), routes)
                self._flood -= chunk
                self.flooded += chunk
                await self._notify()
                await self._drain()
                continue
            if self._burst and not self._exhausted():
                self._burst -= 1
                self._advance()
                await self._notify()
                await self._drain()
                due = loop.time() + self.tick_interval
                continue
            self._burst = 0
            self._wake.clear()
            timeout = None if self._exhausted() else max(due - loop.time(), 0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if self._exhausted() or loop.time() < due:
                continue  # woken early by burst() or flood()
            self._advance()
            await self._notify()
            # Keep the cadence, but do not catch up on ticks missed while the loop was busy.
            due = max(due + self.tick_interval, loop.time())

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    def _routes(self) -> dict[Route, list[tuple[Connection, Session]]]:
        routes: dict[Route, list[tuple[Connection, Session]]] = {}
        for conn in self.connections:
            session = self._sessions.get(conn)
            if session is None or session.failed or not conn.open:
                continue
            for route in session.routes:
                routes.setdefault(route, []).append((conn, session))
        return routes

    def _advance(self) -> None:
        routes = self._routes()
        self._fan_out(self.market.step(routes), routes)

    def _fan_out(self, events: list[Event], routes: dict[Route, list[tuple[Connection, Session]]]) -> None:
        for event in events:
            for conn, session in routes.get((event.dtype, event.route), ()):
                self._deliver(conn, session, event)

    def _deliver(self, conn: Connection, session: Session, event: Event) -> None:
        framed = session.frame(event, self.sequence_gap_every)
        if framed is not None and not self.offer(conn, *framed):
            self.dropped[(event.dtype, event.key)] += 1

    async def _drain(self) -> None:
        """Wait for queues above high water to drain; a socket stuck for `stall_timeout` is left to fill."""
        for conn in self.connections:
            if conn.queue.qsize() <= self.high_water or not conn.open or conn in self._stalled:
                continue
            conn.writable.clear()
            try:
                async with asyncio.timeout(self.stall_timeout):
                    await conn.writable.wait()
            except TimeoutError:
                self._stalled.add(conn)  # its buffer limit, not the producer, deals with it now

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(max(self.heartbeat_interval / 4, 0.005), 0.25)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in self.connections:
                session = self._sessions.get(conn)
                if session is None or session.failed or not session.scope.heartbeat:
                    continue
                # Only after a full interval with nothing else sent or waiting to be sent.
                if conn.queue.empty() and now - session.last_out >= self.heartbeat_interval:
                    session.last_out = now
                    self.offer(conn, HEARTBEAT_FRAME, HEARTBEAT)
