"""Bitquery streaming emulator: GraphQL subscriptions over graphql-ws and graphql-transport-ws."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec
import structlog
from aiohttp import web

from ingest.emulators.bitquery_feeds import Chains, messages
from ingest.emulators.bitquery_query import Plan, RequestError, compile_request
from ingest.emulators.server import Connection, EmulatorServer, Ticker

__all__ = ["GRAPHQL_TRANSPORT_WS", "GRAPHQL_WS", "TOKEN_PATH", "BitqueryEmulator"]

log = structlog.get_logger(__name__)

GRAPHQL_WS = "graphql-ws"  # legacy Apollo subscriptions-transport-ws (PROTOCOLS.md 1.4)
GRAPHQL_TRANSPORT_WS = "graphql-transport-ws"  # GraphQL over WebSocket, npm graphql-ws (PROTOCOLS.md 1.5)
_KA = b'{"type":"ka"}'
_PONG = b'{"type":"pong"}'
_ACK = b'{"type":"connection_ack"}'
_REASON_BYTES = 123  # a close frame's reason must fit in 123 bytes
TOKEN_PATH = "/oauth2/token"  # as https://oauth2.bitquery.io/oauth2/token (PROTOCOLS.md 1.2)
_OAUTH_ERRORS = {  # RFC 6749 5.2 codes, with descriptions in the style of Ory Hydra's
    "invalid_client": "Client authentication failed (e.g., unknown client, no client authentication "
    "included, or unsupported authentication method).",
    "invalid_scope": "The requested scope is invalid, unknown, or malformed.",
    "unsupported_grant_type": "The authorization grant type is not supported by the authorization server.",
}


@dataclass(slots=True)
class _Session:
    """Per-socket protocol state; the active operations live in `Connection.subscriptions` (id -> Plan)."""

    protocol: str | None
    init: bool = False  # connection_init received
    authorized: bool = True  # the token passed the check (made at connection_init if `auth_at="init"`)


class _Refused(Exception):
    """A graphql-transport-ws message that closes the socket with `code` (the reference server's rules)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class BitqueryEmulator(EmulatorServer):
    """A local `wss://streaming.bitquery.io/graphql`: both GraphQL WebSocket subprotocols, served by one
    producer that advances every chain each `block_interval` and pushes each block to each operation.

    Operations with the same document and variables share one encoded payload per block; only the
    envelope (`data`/`next` and the id) is written per socket.

    With `client_id` and `client_secret` it is also the OAuth2 token endpoint (POST `TOKEN_PATH`,
    client-credentials grant) and the WebSocket accepts only the tokens it issued, until they are
    `token_lifetime` seconds old; otherwise any non-empty token (or only `key`, if given).

    `max_concurrent` is a plan's cap on running operations, over every socket: Bitquery accepts an
    operation beyond it and never sends it anything (PROTOCOLS.md 1.6).

    `auth_at` is where a bad token is refused: at the upgrade (HTTP 401, the default), or, as a
    GraphQL WebSocket server's `onConnect` does, at `connection_init`: close 4403 Forbidden on
    graphql-transport-ws, `connection_error` and then close 1011 on graphql-ws (PROTOCOLS.md 1.5).
    """

    paths = ("/graphql", "/eap")  # the V2 endpoint and the early-access one (PROTOCOLS.md 1.1)

    def __init__(
        self,
        *,
        key: str | None = None,
        seed: int = 1,
        block_interval: float = 0.5,
        txs_per_block: int = 8,
        reorg_every: int = 0,
        ka_interval: float = 1.0,
        pong_interval: float = 1.0,
        init_timeout: float = 3.0,
        max_blocks: int | None = None,
        start_on_subscribe: bool = True,
        record_log: bool = False,
        max_queue: int = 10_000,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_lifetime: float = 17999.0,
        auth_at: str = "upgrade",
        max_concurrent: int | None = None,
    ) -> None:
        # No WebSocket-level pings: Bitquery's liveness signals are `ka` and `pong` messages.
        super().__init__(max_queue=max_queue)
        self._key = key
        self.seed = seed
        self.block_interval = block_interval
        self.ka_interval = ka_interval
        self.pong_interval = pong_interval
        self.init_timeout = init_timeout
        self.max_blocks = max_blocks
        # Rows sent per (operation id, response path such as "EVM.Transfers"), after the socket took them.
        self.sent: Counter[tuple[str, str]] = Counter()
        self.messages_sent: Counter[str] = Counter()  # data/next frames per operation id
        self.dropped: Counter[tuple[str, str]] = Counter()  # rows lost to silence, closing or overflow
        self.blocks_produced = 0  # producer ticks; each tick adds one block to every running chain
        self.sent_log: list[tuple[str, str, dict[str, Any]]] | None = [] if record_log else None
        self.chains = Chains(seed, txs_per_block=txs_per_block, reorg_every=reorg_every)
        self._sessions: dict[Connection, _Session] = {}
        self._client: tuple[str, str] | None = None  # OAuth mode: only issued tokens are accepted
        if client_id is not None or client_secret is not None:
            if not client_id or not client_secret:
                raise TypeError("client_id and client_secret go together, both non-empty")
            self._client = (client_id, client_secret)
        self.token_lifetime = token_lifetime
        self._tokens: dict[str, float] = {}  # issued token -> loop time it expires
        self.tokens_issued = 0
        self.token_requests_refused = 0  # bad client credentials, grant or scope
        self.auth_rejected = 0  # upgrades (or inits) refused for a missing, wrong or expired token
        if auth_at not in ("upgrade", "init"):
            raise ValueError(f"auth_at must be 'upgrade' or 'init', not {auth_at!r}")
        self.auth_at = auth_at
        self.max_concurrent = max_concurrent
        self._ignored: dict[Connection, set[str]] = {}  # operations over the cap: accepted, never served
        self._refusals: list[str] = []  # messages the next operation starts are refused with
        self._init_refusals: list[str] = []  # messages the next graphql-ws inits are refused with
        self._acks_withheld = 0  # the next inits this many get keep-alives but never an ack
        self._start_on_subscribe = start_on_subscribe
        self._ticker = Ticker(block_interval)
        self._encode = msgspec.json.Encoder().encode

    @property
    def rows_sent(self) -> int:
        """All rows handed to sockets, over every operation and cube."""
        return sum(self.sent.values())

    # -- connection setup ------------------------------------------------------------------------

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        """The token travels only as ?token= (headers are not accepted for WSS, PROTOCOLS.md 1.2)."""
        if self.auth_at == "init" or self._token_ok(request):
            return None
        return web.Response(status=401, text="Unauthorized")

    def _token_ok(self, request: web.Request) -> bool:
        supplied = request.query.get("token", "")
        if self._client is not None:
            # Checked at the upgrade only: a socket outlives its token, as on Bitquery (1.2).
            expires = self._tokens.get(supplied)
            ok = expires is not None and asyncio.get_running_loop().time() < expires
        else:
            ok = bool(supplied) and (
                self._key is None or hmac.compare_digest(supplied.encode(), self._key.encode())
            )
        if not ok:
            self.auth_rejected += 1
            log.info("auth_rejected", has_token=bool(supplied), at=self.auth_at)  # never the token itself
        return ok

    # -- OAuth2 token endpoint -------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        """The http:// URL of the token endpoint, on the same server; only valid after `start()`."""
        return f"http://{urlsplit(self.url).netloc}{TOKEN_PATH}"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(TOKEN_PATH, self._issue_token)

    def refuse_starts(self, message: str, count: int = 1) -> None:
        """Answer the next `count` operation starts with `error` and this message, as Bitquery does
        over a plan's limit (`points limit exceeded: usage quota reached`, PROTOCOLS.md 1.6)."""
        self._refusals += [message] * count

    def fail_running(self, message: str) -> None:
        """Send every running operation a result of errors only (`data` null), as an execution
        error does: the operation is not ended by it (PROTOCOLS.md 1.5, 1.7) and keeps running
        until the client sends `complete` (`stop` is not honoured on graphql-ws, 1.6)."""
        error = {"message": message, "path": ["EVM"]}
        for conn, session in self._sessions.items():
            kind = "data" if session.protocol == GRAPHQL_WS else "next"
            for op_id in conn.subscriptions:
                self._send(conn, {"type": kind, "id": op_id, "payload": {"data": None, "errors": [error]}})

    def refuse_inits(self, message: str, count: int = 1) -> None:
        """Answer the next `count` graphql-ws `connection_init`s with `connection_error` and this
        message, then close, as Bitquery may over a plan's limit (`Too Many Sessions: 429`, 1.6)."""
        self._init_refusals += [message] * count

    def withhold_acks(self, count: int = 1) -> None:
        """Take the next `count` `connection_init`s without ever acknowledging them, keep-alives
        flowing all the same: a server stuck in the handshake (PROTOCOLS.md 1.11, step 2)."""
        self._acks_withheld += count

    def _acknowledge(self, conn: Connection, heartbeat: bytes, interval: float) -> None:
        """The ack (unless withheld), then the heartbeat that follows it."""
        if self._acks_withheld:
            self._acks_withheld -= 1
            log.info("ack_withheld", emulator="bitquery")
        else:
            self.offer(conn, _ACK)
        self.spawn(self._heartbeat(conn, heartbeat, interval))

    def revoke_tokens(self) -> None:
        """Forget every issued token: the next socket with one is refused (at `auth_at`); open ones
        stay (1.2)."""
        self._tokens.clear()

    async def _issue_token(self, request: web.Request) -> web.Response:
        """`grant_type=client_credentials&client_id=...&client_secret=...&scope=api`, form-encoded."""
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return self._oauth_error(400, "unsupported_grant_type")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if (
            self._client is None
            or not isinstance(client_id, str)
            or not isinstance(secret, str)
            or not hmac.compare_digest(client_id.encode(), self._client[0].encode())
            or not hmac.compare_digest(secret.encode(), self._client[1].encode())
        ):
            return self._oauth_error(401, "invalid_client")
        if form.get("scope", "api") != "api":
            return self._oauth_error(400, "invalid_scope")
        now = asyncio.get_running_loop().time()
        self._tokens = {t: at for t, at in self._tokens.items() if at > now}  # drop expired ones
        token = f"ory_at_{secrets.token_urlsafe(32)}"
        self._tokens[token] = now + self.token_lifetime
        self.tokens_issued += 1
        lifetime = self.token_lifetime
        expires_in = int(lifetime) if float(lifetime).is_integer() else lifetime
        log.info("token_issued", emulator="bitquery", expires_in=expires_in)
        return web.json_response(
            {"access_token": token, "expires_in": expires_in, "scope": "api", "token_type": "bearer"}
        )

    def _oauth_error(self, status: int, error: str) -> web.Response:
        self.token_requests_refused += 1
        log.info("token_refused", emulator="bitquery", error=error)  # never the credentials
        return web.json_response({"error": error, "error_description": _OAUTH_ERRORS[error]}, status=status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # The base handler with subprotocol negotiation added: aiohttp echoes the first protocol the
        # client offers that is in `protocols`, and sends no Sec-WebSocket-Protocol when none matches.
        refused = self.authorize(request)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse(
            autoping=False,
            compress=False,
            timeout=self.close_timeout,
            protocols=(GRAPHQL_TRANSPORT_WS, GRAPHQL_WS),
        )
        await ws.prepare(request)
        conn = Connection(ws, request)
        session = _Session(ws.ws_protocol, authorized=self.auth_at == "upgrade" or self._token_ok(request))
        self._connections.add(conn)
        self._sessions[conn] = session
        self.connections_total += 1
        log.debug("connection_opened", emulator="bitquery", protocol=session.protocol)
        tasks = [asyncio.create_task(self._write_loop(conn)), asyncio.create_task(self._watchdog(conn))]
        if session.protocol is None:
            # Like the graphql-ws reference server: accept the upgrade, then close 4406. (The Apollo
            # reference closes 1002 instead; Bitquery speaks both, so the newer protocol's code wins.)
            self.spawn(self.close_connection(conn, 4406, "Subprotocol not acceptable"))
        elif session.protocol == GRAPHQL_TRANSPORT_WS:
            tasks.append(asyncio.create_task(self._init_timer(conn, session)))
        try:
            await self._read_loop(conn)
        finally:
            conn.closing = True
            conn.writable.set()
            self._connections.discard(conn)
            self._sessions.pop(conn, None)
            self._ignored.pop(conn, None)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.close_sent.set()
            log.debug("connection_closed", emulator="bitquery", code=ws.close_code)
        return ws

    async def _init_timer(self, conn: Connection, session: _Session) -> None:
        await asyncio.sleep(self.init_timeout)
        if conn.open and not session.init:
            self.spawn(self.close_connection(conn, 4408, "Connection initialisation timeout"))

    async def _heartbeat(self, conn: Connection, frame: bytes, interval: float) -> None:
        """`ka` or unsolicited `pong` right away and then every `interval`; offer() drops them when silent."""
        while conn.open:
            self.offer(conn, frame)
            await asyncio.sleep(interval)

    # -- messages --------------------------------------------------------------------------------

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        session = self._sessions.get(conn)
        if session is None or not conn.open or session.protocol is None:
            return
        if session.protocol == GRAPHQL_WS:
            self._legacy(conn, session, data)
            return
        try:
            self._modern(conn, session, data)
        except _Refused as refused:
            log.info("closing", emulator="bitquery", code=refused.code, reason=refused.reason)
            reason = refused.reason.encode()[:_REASON_BYTES].decode(errors="ignore")
            self.spawn(self.close_connection(conn, refused.code, reason))

    def _send(self, conn: Connection, message: dict[str, Any]) -> None:
        self.offer(conn, self._encode(message))

    def _legacy(self, conn: Connection, session: _Session, data: str | bytes) -> None:
        """Apollo subscriptions-transport-ws, as Bitquery runs it (PROTOCOLS.md 1.4 and 1.6)."""
        try:
            msg = msgspec.json.decode(data)
        except msgspec.DecodeError:
            msg = None
        if not isinstance(msg, dict):
            # The reference server reports unparsable frames with connection_error and keeps the socket.
            text = data if isinstance(data, str) else data.decode(errors="replace")
            got = {"message": f"Message must be JSON-parseable. Got: {text[:200]}"}
            self._send(conn, {"type": "connection_error", "payload": got})
            return
        kind, op_id = msg.get("type"), msg.get("id")
        if kind == "connection_init":
            if session.init:
                # Bitquery allows no re-init on a live socket: a new socket is the only recovery.
                payload = {"message": "Too many initialisation requests"}
                self._send(conn, {"type": "connection_error", "payload": payload})
                return
            if not session.authorized or self._init_refusals:
                # The Apollo reference server: the refusal, then a close 10 ms later.
                message = self._init_refusals.pop(0) if session.authorized else "Forbidden"
                self._send(conn, {"type": "connection_error", "payload": {"message": message}})
                reason = message.encode()[:_REASON_BYTES].decode(errors="ignore")
                self.spawn(self.close_later(conn, 0.01, 1011, reason))
                return
            session.init = True
            self._acknowledge(conn, _KA, self.ka_interval)
        elif kind == "start":
            if not session.init:
                payload = {"message": "connection_init must be sent before any operation"}
                self._send(conn, {"type": "connection_error", "payload": payload})
                return
            payload = msg.get("payload")
            if not isinstance(op_id, str) or not op_id or not isinstance(payload, dict):
                errors = [{"message": "start needs a non-empty string id and a payload object"}]
                self._send(conn, {"type": "error", "id": op_id, "payload": {"errors": errors}})
                return
            # A repeated id replaces the running operation (Apollo reference: unsubscribe, then start).
            conn.subscriptions.pop(op_id, None)
            self._start(conn, op_id, payload, lambda errors: {"errors": errors})
        elif kind == "stop":
            log.debug("stop_ignored", emulator="bitquery", id=op_id)  # not honoured (PROTOCOLS.md 1.6)
        elif kind == "complete":
            if conn.subscriptions.pop(op_id, None) is not None:
                log.info("operation_completed", emulator="bitquery", id=op_id)
        elif kind == "connection_terminate":
            self.spawn(self.close_connection(conn, 1000, ""))
        else:
            self._send(conn, {"type": "error", "id": op_id, "payload": {"message": "Invalid message type!"}})

    def _modern(self, conn: Connection, session: _Session, data: str | bytes) -> None:
        """GraphQL over WebSocket: every protocol violation closes the socket (PROTOCOLS.md 1.5)."""
        try:
            msg = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise _Refused(4400, "Invalid message received") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise _Refused(4400, "Invalid message received")
        kind = msg["type"]
        if kind in ("connection_init", "ping", "pong"):
            payload = msg.get("payload")
            if payload is not None and not isinstance(payload, dict):
                raise _Refused(4400, f"\"{kind}\" message expects the 'payload' property to be an object")
            if kind == "connection_init":
                if session.init:
                    raise _Refused(4429, "Too many initialisation requests")
                if not session.authorized:
                    raise _Refused(4403, "Forbidden")
                session.init = True
                # Unsolicited pongs start after the ack: gql reads anything else before it as an error.
                self._acknowledge(conn, _PONG, self.pong_interval)
            elif kind == "ping":
                self._send(conn, {"type": "pong", "payload": payload} if payload else {"type": "pong"})
        elif kind == "subscribe":
            op_id, payload = self._checked_id(msg), msg.get("payload")
            if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
                raise _Refused(4400, "\"subscribe\" message expects the 'payload' property to be an object "
                                     "with a string 'query'")  # fmt: skip
            for name, types in (("variables", dict), ("operationName", str), ("extensions", dict)):
                if payload.get(name) is not None and not isinstance(payload[name], types):
                    raise _Refused(4400, f"\"subscribe\" message payload has an invalid '{name}'")
            if not session.init:
                raise _Refused(4401, "Unauthorized")
            if op_id in conn.subscriptions:
                raise _Refused(4409, f"Subscriber for {op_id} already exists")
            self._start(conn, op_id, payload, lambda errors: errors)
        elif kind == "complete":
            if conn.subscriptions.pop(self._checked_id(msg), None) is not None:
                log.info("operation_completed", emulator="bitquery")
        else:
            raise _Refused(4400, f"Unexpected message of type {kind} received")

    @staticmethod
    def _checked_id(msg: dict[str, Any]) -> str:
        op_id = msg.get("id")
        if not isinstance(op_id, str) or not op_id:
            raise _Refused(4400, f"\"{msg['type']}\" message requires a non-empty 'id' property")
        return op_id

    def _start(
        self, conn: Connection, op_id: str, payload: dict[str, Any], wrap: Callable[[list[Any]], Any]
    ) -> None:
        """Compile and register an operation, or answer `error` for it (no complete follows)."""
        query = payload.get("query")
        variables = payload.get("variables")
        name = payload.get("operationName")
        try:
            if self._refusals:
                raise RequestError([{"message": self._refusals.pop(0)}])
            if not isinstance(query, str):
                raise RequestError([{"message": "payload.query must be a string"}])
            if variables is not None and not isinstance(variables, dict):
                raise RequestError([{"message": "payload.variables must be an object"}])
            plan = compile_request(query, variables, name if isinstance(name, str) else None)
        except RequestError as refused:
            log.info("operation_refused", emulator="bitquery", id=op_id, error=str(refused))
            self._send(conn, {"type": "error", "id": op_id, "payload": wrap(refused.errors)})
            return
        except Exception:  # an emulator bug refuses this operation only, as a server error would
            log.exception("operation_failed", emulator="bitquery", id=op_id)
            errors = [{"message": "Internal server error"}]
            self._send(conn, {"type": "error", "id": op_id, "payload": wrap(errors)})
            return
        ignored = self._ignored.setdefault(conn, set())
        ignored.discard(op_id)  # an id used again is a new operation
        if self.max_concurrent is not None and self._served() >= self.max_concurrent:
            ignored.add(op_id)
            log.info("operation_ignored", emulator="bitquery", id=op_id, max_concurrent=self.max_concurrent)
        conn.subscriptions[op_id] = plan
        log.info("operation_started", emulator="bitquery", id=op_id, cubes=[c.path for c in plan.cubes])
        self._ticker.start()

    def _served(self) -> int:
        """Operations running and served, over every socket."""
        return sum(
            op not in self._ignored.get(conn, ()) for conn in self._sessions for op in conn.subscriptions
        )

    def on_sent(self, conn: Connection, meta: Any) -> None:
        if meta is None:
            return  # acks, keep-alives and errors carry no rows
        op_id, counts, rows = meta
        self.messages_sent[op_id] += 1
        for path, n in counts:
            self.sent[(op_id, path)] += n
        if self.sent_log is not None and rows:
            self.sent_log.extend((op_id, path, row) for path, row in rows)

    # -- production ------------------------------------------------------------------------------

    async def on_startup(self) -> None:
        if not self._start_on_subscribe:
            self._ticker.start()
        self._ticker.spawn(self._step, self._exhausted, self.wait_writable)

    async def on_shutdown(self) -> None:
        await self._ticker.stop()

    def burst(self, n_blocks: int) -> None:
        """Produce `n_blocks` extra blocks now, back to back, as fast as the sockets drain."""
        self._ticker.burst(n_blocks)

    async def wait_blocks(self, count: int) -> None:
        """Wait until `blocks_produced` reaches `count` (bound it with asyncio.timeout)."""
        await self._ticker.wait_for(lambda: self.blocks_produced >= count)

    def _exhausted(self) -> bool:
        return self.max_blocks is not None and self.blocks_produced >= self.max_blocks

    def _step(self) -> None:
        routes: dict[bytes, tuple[Plan, list[tuple[Connection, str, bytes]]]] = {}
        for conn, session in self._sessions.items():
            kind = b"data" if session.protocol == GRAPHQL_WS else b"next"
            ignored = self._ignored.get(conn, ())
            for op_id, plan in conn.subscriptions.items():
                if op_id in ignored:
                    continue
                routes.setdefault(plan.signature, (plan, []))[1].append((conn, op_id, kind))
        for plan, _ in routes.values():
            self.chains.ensure(plan)
        produced = self.chains.step()
        self.blocks_produced += 1
        for plan, targets in routes.values():
            try:
                encoded = [
                    m
                    for block in self.chains.blocks_for(plan, produced)
                    for m in messages(plan, block, self._encode, self.sent_log is not None)
                ]
            except Exception:  # an emulator bug must not end the stream of every other operation
                log.exception("plan_failed", emulator="bitquery", cubes=[c.path for c in plan.cubes])
                continue
            for message in encoded:
                # The payload is encoded once per plan; only the envelope differs per socket.
                for conn, op_id, kind in targets:
                    frame = b'{"type":"%s","id":%s,"payload":%s}' % (
                        kind,
                        self._encode(op_id),
                        message.payload,
                    )
                    if not self.offer(conn, frame, (op_id, message.counts, message.rows)):
                        for path, n in message.counts:
                            self.dropped[(op_id, path)] += n
