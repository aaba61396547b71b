"""Reusable aiohttp WebSocket server for the provider emulators: connections, keepalive and faults."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ClassVar, Self

import structlog
from aiohttp import WSMessage, WSMsgType, web

__all__ = ["Connection", "EmulatorServer"]

log = structlog.get_logger(__name__)

_END = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


class Connection:
    """One accepted WebSocket: its send queue, subscriptions, silence window and keepalive state."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.transport = request.transport
        # Frames are pre-encoded once and shared; the queue only holds references.
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.subscriptions: dict[Any, Any] = {}
        self.closing = False
        self.close_request: tuple[int, str] | None = None
        self.close_requested = asyncio.Event()
        self.close_sent = asyncio.Event()
        self.silent_until = 0.0
        self.idle_since: float | None = None
        self.unanswered_ping_since: float | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    @property
    def open(self) -> bool:
        """Whether frames may still be sent on this connection."""
        return not (self.closing or self.ws.closed)

    def is_silent(self, now: float) -> bool:
        """Whether a `go_silent` window covers `now` (loop time)."""
        return now < self.silent_until

    def abort(self) -> None:
        """Cut the TCP connection without a close frame, as a network failure would."""
        self.closing = True
        self.writable.set()
        if self.transport is not None:
            self.transport.abort()


class EmulatorServer:
    """An aiohttp app on 127.0.0.1 with generic connection tracking, keepalive and fault injection.

    Subclasses set `paths` and override the `authorize`/`on_*`/`is_idle` hooks; frames go out through
    `offer()`, which queues them per connection so a slow socket never stalls the producer.
    """

    paths: ClassVar[tuple[str, ...]] = ("/",)
    # How long our close frame waits for the peer's reply (and stop() for handlers) before TCP is cut.
    close_timeout: ClassVar[float] = 2.0
    # Burst flow control: wait for queues above high water to drain to low water.
    high_water: ClassVar[int] = 512
    low_water: ClassVar[int] = 128
    stall_timeout: ClassVar[float] = 10.0

    def __init__(
        self,
        *,
        ping_interval: float | None = None,
        pong_timeout: float | None = None,
        idle_timeout: float | None = None,
        idle_close_code: int = 1000,
        max_queue: int = 10_000,
    ) -> None:
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.idle_timeout = idle_timeout
        self.idle_close_code = idle_close_code
        self.max_queue = max_queue
        self.connections_total = 0
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        timers = [t for t in (ping_interval, pong_timeout, idle_timeout) if t]
        # Watchdog granularity: a quarter of the shortest timer, so tiny test timeouts stay precise.
        self._tick = min(max(min(timers, default=1.0) / 4, 0.005), 1.0)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ws:// URL of the first path; only valid after `start()`."""
        if self._url is None:
            raise RuntimeError("emulator not started")
        return self._url

    @property
    def connections(self) -> tuple[Connection, ...]:
        """Currently open connections."""
        return tuple(self._connections)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind the server (port 0 = ephemeral) and return its ws:// URL."""
        if self._runner is not None:
            return self.url
        app = web.Application()
        for path in self.paths:
            app.router.add_get(path, self._handle)
        self.add_routes(app)
        # access_log=None: the access log would print query strings, and keys may travel there.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.close_timeout)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"ws://{bound_host}:{bound_port}{self.paths[0]}"
        await self.on_startup()
        log.info("emulator_started", emulator=type(self).__name__, url=self._url)
        return self._url

    async def stop(self) -> None:
        """Stop producing, close every socket with 1001 GOING_AWAY, and release the port."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await self.on_shutdown()
        await self.close_connections(1001, "server shutdown")
        await runner.cleanup()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("emulator_stopped", emulator=type(self).__name__)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- hooks for subclasses --------------------------------------------------------------------

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        """Return a response to refuse the upgrade, or None to accept it."""
        return None

    def add_routes(self, app: web.Application) -> None:
        """Add plain HTTP routes beside the WebSocket paths (e.g. a token endpoint)."""

    async def on_startup(self) -> None:
        """Start producer tasks."""

    async def on_shutdown(self) -> None:
        """Stop producer tasks (called before sockets are closed)."""

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        """Handle one client text or binary frame."""

    def on_sent(self, conn: Connection, meta: Any) -> None:
        """Called after a frame queued with `meta` was handed to the socket."""

    def is_idle(self, conn: Connection) -> bool:
        """Whether the connection counts as idle for `idle_timeout` (default: no subscriptions)."""
        return not conn.subscriptions

    # -- sending ---------------------------------------------------------------------------------

    def offer(self, conn: Connection, frame: bytes, meta: Any = None) -> bool:
        """Queue a pre-encoded text frame; False if it was lost (silent, closing or overflowing)."""
        if not conn.open or conn.is_silent(asyncio.get_running_loop().time()):
            return False
        if conn.queue.qsize() >= self.max_queue:
            # The documented back-pressure signal: close 1013 TRY_AGAIN_LATER (BlockDB 2.4).
            self.spawn(self.close_connection(conn, 1013, "slow consumer"))
            return False
        conn.queue.put_nowait((frame, meta))
        return True

    async def wait_writable(self) -> None:
        """Wait until every connection has drained below low water; close stalled ones with 1013."""
        for conn in tuple(self._connections):
            if conn.queue.qsize() <= self.high_water or not conn.open:
                continue
            conn.writable.clear()
            try:
                async with asyncio.timeout(self.stall_timeout):
                    await conn.writable.wait()
            except TimeoutError:
                self.spawn(self.close_connection(conn, 1013, "slow consumer"))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background coroutine that `stop()` will wait for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- faults ----------------------------------------------------------------------------------

    async def drop_connections(self) -> None:
        """Abort every open transport: no close frame, the client sees a cut network."""
        for conn in tuple(self._connections):
            conn.abort()
        await asyncio.sleep(0)

    async def close_connections(self, code: int, reason: str = "") -> None:
        """Send a close frame with `code` and `reason` on every open connection."""
        await asyncio.gather(*(self.close_connection(c, code, reason) for c in tuple(self._connections)))

    async def close_later(self, conn: Connection, delay: float, code: int, reason: str = "") -> None:
        """Close one connection `delay` seconds from now, unless it is gone by then."""
        await asyncio.sleep(delay)
        if conn.open:
            await self.close_connection(conn, code, reason)

    async def close_connection(self, conn: Connection, code: int, reason: str = "") -> None:
        """Send a close frame with `code` on one connection; return once it is written.

        The handler then waits up to `close_timeout` for the client's reply before cutting TCP, so the
        caller (often the test that also plays the client) is not blocked on that reply.
        """
        if not conn.closing:
            conn.closing = True
            conn.writable.set()
            conn.close_request = (code, reason)
            conn.close_requested.set()
        try:
            async with asyncio.timeout(self.close_timeout):
                await conn.close_sent.wait()
        except TimeoutError:
            conn.abort()

    def go_silent(self, seconds: float) -> None:
        """Half-open every open connection for `seconds`: no data, acks, pings or pongs cross it."""
        until = asyncio.get_running_loop().time() + seconds
        for conn in self._connections:
            conn.silent_until = max(conn.silent_until, until)

    # -- per-connection machinery ----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        refused = self.authorize(request)
        if refused is not None:
            return refused
        # autoping=False: pongs must obey go_silent, and we track our own pings' answers.
        # compress=False: per-socket deflate would re-encode every shared frame.
        # timeout: how long our close frame waits for the client's reply before TCP is cut.
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=self.close_timeout)
        await ws.prepare(request)
        conn = Connection(ws, request)
        self._connections.add(conn)
        self.connections_total += 1
        log.debug("connection_opened", emulator=type(self).__name__, total=self.connections_total)
        tasks = [asyncio.create_task(self._write_loop(conn)), asyncio.create_task(self._watchdog(conn))]
        try:
            await self._read_loop(conn)
        finally:
            conn.closing = True
            conn.writable.set()
            self._connections.discard(conn)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.close_sent.set()
            log.debug("connection_closed", emulator=type(self).__name__, code=ws.close_code)
        return ws

    async def _read_loop(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        close_requested = asyncio.ensure_future(conn.close_requested.wait())
        receive: asyncio.Future[WSMessage] | None = None
        try:
            while True:
                receive = asyncio.ensure_future(conn.ws.receive())
                await asyncio.wait((receive, close_requested), return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    # Close from this task: aiohttp only waits for the client's close reply when the
                    # closing task is not also parked in receive(); elsewhere it cuts TCP at once.
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receive
                    code, reason = conn.close_request or (1000, "")
                    # ws.close() writes the frame before its first await, so close_sent is true by
                    # the time anyone waiting on it runs.
                    conn.close_sent.set()
                    await conn.ws.close(code=code, message=reason.encode())
                    return
                if not await self._dispatch(conn, receive.result(), loop.time()):
                    return
        finally:
            # Also reached when the runner cancels the handler: leave no future pending.
            for future in (close_requested, receive):
                if future is not None and not future.done():
                    future.cancel()

    async def _dispatch(self, conn: Connection, msg: WSMessage, now: float) -> bool:
        """Handle one received message; False when the connection is over."""
        if msg.type in _END:
            return False
        if conn.is_silent(now):
            return True  # half-open: what the client sends is lost too
        if msg.type is WSMsgType.PING:
            with contextlib.suppress(ConnectionError):
                await conn.ws.pong(msg.data)
        elif msg.type is WSMsgType.PONG:
            conn.unanswered_ping_since = None
        elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            await self.on_message(conn, msg.data)
        return True

    async def _write_loop(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame, meta = await conn.queue.get()
            if not conn.open:
                return
            if conn.is_silent(loop.time()):
                continue  # a silent server loses what it had queued
            try:
                await conn.ws.send_frame(frame, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return
            self.on_sent(conn, meta)
            if not conn.writable.is_set() and conn.queue.qsize() <= self.low_water:
                conn.writable.set()

    async def _watchdog(self, conn: Connection) -> None:
        """Send pings, enforce the pong and idle limits; all suspended while the link is silent."""
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        next_ping = loop.time() + self.ping_interval if self.ping_interval else math.inf
        while conn.open:
            await asyncio.sleep(self._tick)
            now = loop.time()
            if conn.is_silent(now):
                conn.unanswered_ping_since = None  # pings we never sent cannot go unanswered
                continue
            if not self.is_idle(conn):
                conn.idle_since = None
            elif conn.idle_since is None:
                conn.idle_since = now
            if (
                self.idle_timeout
                and conn.idle_since is not None
                and now - conn.idle_since >= self.idle_timeout
            ):
                log.info("idle_close", emulator=type(self).__name__, code=self.idle_close_code)
                self.spawn(self.close_connection(conn, self.idle_close_code, "idle: no active subscription"))
                return
            since = conn.unanswered_ping_since
            if self.pong_timeout and since is not None and now - since >= self.pong_timeout:
                # A peer that stopped answering pings is presumed gone; a close handshake would hang.
                log.info("pong_timeout", emulator=type(self).__name__)
                conn.abort()
                return
            if now >= next_ping:
                next_ping = now + (self.ping_interval or math.inf)
                if conn.unanswered_ping_since is None:
                    conn.unanswered_ping_since = now
                try:
                    await conn.ws.ping()
                except (ConnectionError, RuntimeError):
                    return


class Ticker:
    """An emulator's clock: a step every `interval` once started, and `burst(n)` steps at once.

    It starts with the first subscription (not at start()), so a client that subscribes sees every
    step from the first, and equal seeds give equal streams.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._started = asyncio.Event()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._burst = 0

    def start(self) -> None:
        self._started.set()

    def burst(self, steps: int) -> None:
        """Take `steps` extra steps now, back to back, as fast as the sockets drain."""
        self._burst += steps
        self._started.set()
        self._wake.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until predicate() holds after a step (bound it with asyncio.timeout)."""
        async with self._progress:
            await self._progress.wait_for(predicate)

    async def run(
        self, step: Callable[[], None], exhausted: Callable[[], bool], drain: Callable[[], Awaitable[None]]
    ) -> None:
        """Call step() on the clock until exhausted(); after a burst step, wait for the sockets."""
        await self._started.wait()
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval  # the first step follows one interval after the start
        while not exhausted():
            bursting = self._burst > 0
            if bursting:
                self._burst -= 1
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(due - loop.time(), 0)):
                        await self._wake.wait()
                if loop.time() < due:
                    continue  # woken early by burst()
            step()
            async with self._progress:
                self._progress.notify_all()
            if bursting:
                await drain()
            due = loop.time() + self.interval

    def spawn(
        self, step: Callable[[], None], exhausted: Callable[[], bool], drain: Callable[[], Awaitable[None]]
    ) -> None:
        """Run the clock as a task (stopped by stop())."""
        self._task = asyncio.get_running_loop().create_task(self.run(step, exhausted, drain))

    async def stop(self) -> None:
        task, self._task = getattr(self, "_task", None), None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
