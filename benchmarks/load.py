"""A loopback WebSocket load server that speaks just enough of each provider for the real collectors.

One raw asyncio server (no aiohttp: it would cost a Python call per frame) performs the upgrade
itself, answers the dialogue each client opens with, and then writes pre-encoded frames from a
shared `Cursor` in writes of ~256 kB, at full speed (as fast as the socket takes them, with
asyncio's flow control) or at a fixed offered rate (frames due by the clock, every few ms).

- BlockDB: `subscribe` -> success ack, then update envelopes; `unsubscribe` -> stop, then the ack
  (written after every frame already sent, so the client reads them all before it).
- CoinAPI: `hello` (or `subscribe`) -> trades; `unsubscribe` -> stop; heartbeats when idle.
- Bitquery (graphql-transport-ws): `connection_init` -> `connection_ack`; `subscribe` -> `next`
  frames for the client's operation id; `ping` -> `pong`; `complete` -> stop.

Counts are exact: a frame counts as sent once handed to the transport, and the transport is
never closed under unsent data while the client still reads. Each write is noted (the wall clock
just before it, and how many frames the cursor has handed out by then), so a stored row that
names its frame (CoinAPI's uuid) gives the moment that frame was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from benchmarks.frames import Cursor, FramePool, SendLog, bitquery_pool, blockdb_pool, coinapi_pool
from benchmarks.probe import cpu_seconds
from benchmarks.wire import (
    CLOSE,
    MAX_REQUEST,
    PING,
    PONG,
    FrameReader,
    encode_frame,
    handshake_response,
    parse_request,
)

__all__ = ["ConnStats", "LoadServer", "RoundResult"]

_HEARTBEAT = encode_frame(b'{"type":"hearbeat"}')  # CoinAPI's own spelling
_PONG = encode_frame(b'{"type":"pong"}')
_ACK = encode_frame(b'{"type":"connection_ack"}')
_CHUNK_BYTES = 256 << 10
_TICK = 0.002  # pacing granularity at a fixed rate
_decode = msgspec.json.decode
_encode = msgspec.json.encode


@dataclass(slots=True)
class ConnStats:
    frames: int = 0
    rows: int = 0
    nbytes: int = 0
    started: float = 0.0  # time.monotonic() of the first frame written
    ended: float = 0.0  # when the round ended for this connection (its time was up, or it left)
    stopped_by_client: bool = False


@dataclass(slots=True)
class RoundResult:
    """What one round of streaming sent, over every connection."""

    frames: int
    rows: int
    nbytes: int
    started: float  # monotonic: first frame of any connection
    ended: float  # monotonic: the last connection's round ended
    connections: int
    cpu_seconds: float = 0.0  # the load server's own CPU time during the round (this process)
    per_connection: list[ConnStats] = field(default_factory=list)
    send_log: SendLog | None = None  # when each frame was written (one cursor for every connection)

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 1e-9)


class _Conn(asyncio.Protocol):
    """One client socket: handshake, the provider dialogue, flow control and its frame counters."""

    def __init__(self, server: LoadServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._request = bytearray()
        self._reader: FrameReader | None = None
        self.cursor: Cursor | None = None
        self.stats = ConnStats()
        self.subscription: Any = None  # what the client asked for (ack echo, op id)
        self.heartbeat: bytes | None = None  # sent when idle for a second (CoinAPI, Bitquery)
        self.stopped = False  # the client unsubscribed / completed
        self.lost = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.last_write = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20, low=256 << 10)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._writable.set()
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._reader is None:
            self._request += data
            end = self._request.find(b"\r\n\r\n")
            if end < 0:
                if len(self._request) > MAX_REQUEST:
                    self._abort()
                return
            rest = bytes(self._request[end + 4 :])
            try:
                request = parse_request(bytes(self._request[: end + 4]))
            except ValueError:
                self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self._abort()
                return
            response, _ = handshake_response(request, accept=("graphql-transport-ws",))
            self._write(response)
            self._reader = FrameReader()
            self.server.connections.add(self)
            data = rest
            if not data:
                return
        try:
            messages = self._reader.feed(data)
        except ValueError:
            self._abort()
            return
        for opcode, payload in messages:
            if opcode == CLOSE:
                self._write(encode_frame(payload[:2], CLOSE))
                self.stopped = True
                if self.transport is not None:
                    self.transport.close()  # after the buffered frames are flushed
                return
            if opcode == PING:
                self._write(encode_frame(payload, PONG))
            elif opcode in (0x1, 0x2):
                self.server.dialogue(self, payload)

    # -- writing ---------------------------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_write = time.monotonic()

    def send(self, payload: bytes) -> None:
        self._write(encode_frame(payload))

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def stream(self, rate: float | None, seconds: float) -> None:
        """Write frames for `seconds`: at `rate` frames/s, or as fast as the socket takes them."""
        cursor, transport = self.cursor, self.transport
        assert cursor is not None and transport is not None
        loop = asyncio.get_running_loop()
        chunk = cursor.frames_for(_CHUNK_BYTES)
        stats = self.stats
        t0 = loop.time()
        end = t0 + seconds
        stats.started = time.monotonic()
        while not (self.stopped or self.lost or transport.is_closing()):
            now = loop.time()
            if now >= end:
                break
            if rate is None:
                n = chunk
            else:
                n = min(int((now - t0) * rate) - stats.frames, chunk)
                if n <= 0:
                    await asyncio.sleep(min(_TICK, end - now))
                    continue
            pieces, frames, rows = cursor.take(n)
            # Noted before the write, so no frame can be read before its noted send time.
            cursor.log.note(time.time_ns(), cursor.taken)
            for piece in pieces:
                transport.write(piece)
                stats.nbytes += len(piece)
            stats.frames += frames
            stats.rows += rows
            self.last_write = time.monotonic()
            if not self._writable.is_set():
                try:  # a slow client must not hold the round past its end
                    async with asyncio.timeout_at(end):
                        await self._writable.wait()
                except TimeoutError:
                    break
            elif rate is None:
                await asyncio.sleep(0)  # let the client's unsubscribe in
        stats.ended = time.monotonic()

    async def keepalive(self) -> None:
        """CoinAPI heartbeats and Bitquery pongs when nothing else went out for a second."""
        while not (self.lost or self.stopped):
            await asyncio.sleep(0.25)
            if self.heartbeat and time.monotonic() - self.last_write >= 1.0:
                self._write(self.heartbeat)

    def close(self) -> None:
        """Close politely (1000) once everything buffered is out."""
        if self.transport is not None and not self.transport.is_closing():
            self._write(encode_frame(b"\x03\xe8", CLOSE))
            self.transport.close()


class LoadServer:
    """Serves one mix on 127.0.0.1; `run_round()` streams to every subscribed client at once."""

    def __init__(self, mix: str) -> None:
        if mix not in ("coinapi", "blockdb", "bitquery"):
            raise ValueError(f"unknown mix {mix!r}")
        self.mix = mix
        self.connections: set[_Conn] = set()
        self._ready: list[_Conn] = []
        self._ready_changed = asyncio.Event()
        self._cursors: dict[str, Cursor] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        path = {"coinapi": "/v1/", "blockdb": "/v1/evm/", "bitquery": "/graphql"}[self.mix]
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        for conn in list(self.connections):
            conn._abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for cursor in self._cursors.values():
            cursor.close()

    def cursor(self, key: str, build: Callable[[], FramePool]) -> Cursor:
        """One shared cursor per pool: every frame of a run is distinct, across all connections."""
        cursor = self._cursors.get(key)
        if cursor is None:
            cursor = self._cursors[key] = Cursor(build())
        return cursor

    # -- dialogues -------------------------------------------------------------------------------

    def dialogue(self, conn: _Conn, payload: bytes) -> None:
        try:
            msg = _decode(payload)
        except msgspec.DecodeError:
            return
        if not isinstance(msg, dict):
            return
        getattr(self, f"_{self.mix}")(conn, msg)

    def _blockdb(self, conn: _Conn, msg: dict[str, Any]) -> None:
        action = msg.get("action")
        echo = {k: msg.get(k) for k in ("action", "chain_id", "dataset_id")}
        if action == "subscribe":
            conn.subscription = echo
            conn.cursor = self.cursor("blockdb", blockdb_pool)
            conn.send(_encode({**echo, "status": "success"}))
            self._mark_ready(conn)
        elif action == "unsubscribe":
            conn.stopped = True  # the streamer writes nothing more; the ack follows every frame sent
            conn.stats.stopped_by_client = True
            conn.send(_encode({**echo, "status": "success"}))

    def _coinapi(self, conn: _Conn, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("hello", "subscribe") and conn.cursor is None:
            conn.subscription = msg.get("subscribe_data_type")
            conn.heartbeat = _HEARTBEAT if msg.get("heartbeat") else None
            conn.cursor = self.cursor("coinapi", coinapi_pool)
            self._spawn(conn.keepalive())
            self._mark_ready(conn)
        elif kind == "unsubscribe":
            conn.stopped = True
            conn.stats.stopped_by_client = True

    def _bitquery(self, conn: _Conn, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "connection_init":
            conn._write(_ACK)
            conn.heartbeat = _PONG
            self._spawn(conn.keepalive())
        elif kind == "ping":
            conn._write(_PONG)
        elif kind == "subscribe" and conn.cursor is None:
            op_id = str(msg.get("id"))
            conn.subscription = op_id
            conn.cursor = self.cursor(f"bitquery:{op_id}", lambda: bitquery_pool(op_id))
            self._mark_ready(conn)
        elif kind == "complete":
            conn.stopped = True
            conn.stats.stopped_by_client = True

    def _mark_ready(self, conn: _Conn) -> None:
        self._ready.append(conn)
        self._ready_changed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- rounds ----------------------------------------------------------------------------------

    async def wait_ready(self, n: int, timeout: float) -> None:
        """Until `n` clients have subscribed (their data stream is wanted)."""
        async with asyncio.timeout(timeout):
            while len(self._ready) < n:
                self._ready_changed.clear()
                await self._ready_changed.wait()

    def prepare(self) -> None:
        """Build the pools before the clock starts (a Bitquery pool needs the client's op id)."""
        {"coinapi": coinapi_pool, "blockdb": blockdb_pool, "bitquery": bitquery_pool}[self.mix]()

    async def run_round(
        self, n: int, *, rate: float | None, seconds: float, timeout: float = 60.0, close_after: bool = False
    ) -> RoundResult:
        """Wait for `n` subscribed clients, stream to all of them for `seconds`, return the counts.

        `rate` is frames/s over all connections (split evenly), None for full speed.
        """
        await self.wait_ready(n, timeout)
        conns = self._ready[:n]
        per = None if rate is None else rate / n
        cpu = cpu_seconds()
        await asyncio.gather(*(c.stream(per, seconds) for c in conns))
        cpu = cpu_seconds() - cpu
        if close_after:
            for c in conns:
                c.close()
        stats = [c.stats for c in conns]
        started = [s.started for s in stats if s.frames]
        cursors = {id(c.cursor): c.cursor for c in conns if c.cursor is not None}
        # Ordinals are the cursor's: with one cursor they number every frame of the round.
        log = next(iter(cursors.values())).log if len(cursors) == 1 else None
        return RoundResult(
            frames=sum(s.frames for s in stats),
            rows=sum(s.rows for s in stats),
            nbytes=sum(s.nbytes for s in stats),
            started=min(started, default=time.monotonic()),
            ended=max((s.ended for s in stats), default=time.monotonic()),
            connections=len(conns),
            cpu_seconds=cpu,
            per_connection=stats,
            send_log=log,
        )

    async def wait_closed(self, timeout: float) -> None:
        """Until every client has gone (or the timeout)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.connections:
                    await asyncio.sleep(0.05)
