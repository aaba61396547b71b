"""Helius / Solana JSON-RPC PubSub emulator: api-key auth, subscriptions, commitment-lagged notifications.

Besides Agave's methods it serves Helius' Enhanced WebSockets `transactionSubscribe` (PROTOCOLS.md 4.8);
`enhanced=False` makes it a plain node that answers Method not found to it. `fork_every` puts some slots
on minority forks that are seen at `processed` only, then abandoned (PROTOCOLS.md 4.9).
"""

from __future__ import annotations

import hmac
import weakref
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from aiohttp import WSMessage, WSMsgType, web

from ingest.emulators.helius_chain import MINT_DECIMALS, Block, Chain, Tx, TxPlan
from ingest.emulators.helius_encode import filters_allow, ui_account
from ingest.emulators.helius_rpc import (
    DISABLED,
    ENHANCED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Call,
    RpcError,
    SubSpec,
    expect_no_params,
    parse_call,
    parse_subscribe,
    parse_unsubscribe,
)
from ingest.emulators.helius_tx import allows, transaction_value
from ingest.emulators.server import Connection, EmulatorServer, Ticker

__all__ = ["HeliusEmulator"]

log = structlog.get_logger(__name__)

_LEVELS = ("processed", "confirmed", "finalized")
_ACTIVITY = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG)
# What a pubsub node answers to getVersion (Agave registers it beside the subscriptions).
_VERSION = {"feature-set": 3_294_202_862, "solana-core": "2.2.16"}


@dataclass(eq=False, slots=True)
class _Sub:
    """A live subscription: its spec, its socket and the frame pieces around each result."""

    id: int
    spec: SubSpec
    conn: Connection
    prefix: bytes
    suffix: bytes

    @property
    def active(self) -> bool:
        return self.conn.subscriptions.get(self.id) is self


class _Routes:
    """Subscriptions of all open sockets, indexed for one slot's fan-out."""

    def __init__(self, connections: tuple[Connection, ...]) -> None:
        self.slot: list[_Sub] = []
        self.root: list[_Sub] = []
        self.keyed: dict[tuple[str, str | None, str | None], list[_Sub]] = {}
        self.logs: dict[str | None, list[_Sub]] = {}
        self.transactions: dict[str | None, list[_Sub]] = {}
        self.received: dict[str | None, list[_Sub]] = {}
        for conn in connections:
            for sub in conn.subscriptions.values():
                spec = sub.spec
                if spec.kind in ("slot", "root"):
                    (self.slot if spec.kind == "slot" else self.root).append(sub)
                elif spec.kind in ("logs", "transaction"):
                    by_level = self.logs if spec.kind == "logs" else self.transactions
                    by_level.setdefault(spec.commitment, []).append(sub)
                else:  # account/program/signature, keyed by pubkey, owner or signature
                    self.keyed.setdefault((spec.kind, spec.commitment, spec.key), []).append(sub)
                if spec.received:
                    self.received.setdefault(spec.key, []).append(sub)

    def get(self, kind: str, level: str, key: str) -> list[_Sub]:
        return self.keyed.get((kind, level, key), [])


class HeliusEmulator(EmulatorServer):
    """A local `wss://mainnet.helius-rpc.com/?api-key=KEY` speaking Agave's PubSub over a synthetic ledger.

    Each `slot_interval` the node processes one slot; the slot `confirm_lag` blocks back becomes
    confirmed and the one `finality_lag` blocks back becomes the root, so every subscription sees each
    block once, at its own commitment (transactionSubscribe each transaction once, like logsSubscribe).
    Subscription ids come from one counter for the whole emulator.

    With `fork_every=N` (>= 2), every N-th existing slot (`Chain.forked`) is a block on a minority fork:
    its slot notification (parent: the last canonical block, root unchanged), receivedSignature and every
    `processed` notification go out as for any block, then the cluster abandons it. It is never confirmed,
    finalized or rooted, its writes never reach the state and the next block's parent skips it. It is
    listed in `forked_slots` and counts neither in `slots_produced` (canonical blocks, each moving the
    confirmed and root blocks on by one; what `max_slots` bounds) nor in `slots_skipped`.
    """

    paths = ("/",)

    def __init__(
        self,
        *,
        key: str | None = None,
        seed: int = 1,
        slot_interval: float = 0.4,
        max_slots: int | None = None,
        start_on_subscribe: bool = True,
        record_log: bool = False,
        finality_lag: int = 32,
        confirm_lag: int = 2,
        skip_every: int = 0,
        fork_every: int = 0,
        idle_timeout: float | None = 600.0,
        idle_close_code: int = 1000,
        ping_interval: float | None = None,
        max_subscriptions: int | None = None,
        max_queue: int = 10_000,
        enhanced: bool = True,
    ) -> None:
        if not 0 <= confirm_lag <= finality_lag:
            raise ValueError("need 0 <= confirm_lag <= finality_lag")
        # Helius: a 10-minute inactivity timer; its advice (send pings) implies client traffic is what
        # counts, so any client frame, pings included, resets it (PROTOCOLS.md 4.7). The close code is
        # not documented: 1000 by default. Agave sends no pings of its own, hence none by default.
        super().__init__(
            ping_interval=ping_interval,
            idle_timeout=idle_timeout,
            idle_close_code=idle_close_code,
            max_queue=max_queue,
        )
        self._key = key
        self.seed = seed
        self.slot_interval = slot_interval
        self.max_slots = max_slots
        self.finality_lag = finality_lag
        self.confirm_lag = confirm_lag
        self.max_subscriptions = max_subscriptions
        self.enhanced = enhanced
        self.chain = Chain(seed, skip_every=skip_every, fork_every=fork_every)
        self.sent: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.sent_log: list[tuple[str, int, int, Any]] | None = [] if record_log else None
        self.subscriptions_total = 0
        self.pings_received = 0  # client WebSocket pings, what keeps a socket past idle_timeout
        self.slots_produced = 0
        self.slots_skipped = 0
        self.forked_slots: list[int] = []  # slots sent at processed on a fork, then abandoned
        # The ledger existed before anyone connected: pre-produce the blocks the root still lags behind
        # (forks among them were abandoned unseen).
        self._blocks: deque[Block] = deque()
        while len(self._blocks) < finality_lag:
            if (block := self.chain.advance()) is not None and not block.fork:
                self._blocks.append(block)
        self.root_slot = self.chain.first_slot - 1  # nothing rooted until the first tick
        self.processed_slot = self.chain.last_block_slot
        lagged = confirm_lag < len(self._blocks)
        self.confirmed_slot = self._blocks[-1 - confirm_lag].slot if lagged else self.root_slot
        self._next_sub_id = 0
        self._active: weakref.WeakKeyDictionary[Connection, bool] = weakref.WeakKeyDictionary()
        self._start_on_subscribe = start_on_subscribe
        self._ticker = Ticker(slot_interval)
        self._encode = msgspec.json.Encoder().encode

    # -- server hooks ----------------------------------------------------------------------------

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        """`?api-key=` only. HTTP 401 at the upgrade is inferred from Helius' HTTP RPC (PROTOCOLS.md 4.1)."""
        supplied = request.query.get("api-key", "")
        ok = bool(supplied) and (
            self._key is None or hmac.compare_digest(supplied.encode(), self._key.encode())
        )
        if ok:
            return None
        log.info("auth_rejected", key_present=bool(supplied))  # never the key itself
        body = {
            "jsonrpc": "2.0",
            "error": {"code": -32401, "message": "invalid api key provided"},
            "id": None,
        }
        return web.json_response(body, status=401)

    async def on_startup(self) -> None:
        if not self._start_on_subscribe:
            self._ticker.start()
        self._ticker.spawn(self._step, self._exhausted, self.wait_writable)

    async def on_shutdown(self) -> None:
        await self._ticker.stop()

    async def _dispatch(self, conn: Connection, msg: WSMessage, now: float) -> bool:
        if msg.type in _ACTIVITY and not conn.is_silent(now):
            self._active[conn] = True  # read (and cleared) by is_idle on the next watchdog tick
            if msg.type is WSMsgType.PING:
                self.pings_received += 1
        return await super()._dispatch(conn, msg, now)

    def is_idle(self, conn: Connection) -> bool:
        """Idle = no client frame since the watchdog last asked; notifications do not count."""
        return not self._active.pop(conn, False)

    def offer(self, conn: Connection, frame: bytes, meta: Any = None) -> bool:
        if conn.open and conn.queue.qsize() >= self.max_queue:
            return False  # Helius loses updates for slow readers rather than closing (PROTOCOLS.md 5)
        return super().offer(conn, frame, meta)

    def on_sent(self, conn: Connection, meta: Any) -> None:
        if meta is None:
            return  # a response, not a notification
        self.sent[meta[0]] += 1
        if self.sent_log is not None:
            self.sent_log.append(meta)

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        try:
            msg = msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            self.offer(conn, self._encode(_error(RpcError(PARSE_ERROR, "Parse error"), None)))
            return
        if isinstance(msg, list):  # a batch: one array of replies, requests without id left out
            replies = [r for item in msg if (r := self._answer(conn, item)) is not None]
            if not msg:
                replies = [_error(RpcError(INVALID_REQUEST, "Invalid request"), None)]
            if replies:
                self.offer(conn, self._encode(replies if msg else replies[0]))
        elif (reply := self._answer(conn, msg)) is not None:
            self.offer(conn, self._encode(reply))

    # -- requests --------------------------------------------------------------------------------

    def _answer(self, conn: Connection, item: Any) -> dict[str, Any] | None:
        try:
            call = parse_call(item)
        except RpcError as exc:
            return _error(exc, exc.request_id)
        if call is None:
            return None  # a JSON-RPC notification: jsonrpc-core runs no method and sends nothing
        try:
            result = self._invoke(conn, call)
        except RpcError as exc:
            return _error(exc, call.id)
        return {"jsonrpc": "2.0", "result": result, "id": call.id}

    def _invoke(self, conn: Connection, call: Call) -> Any:
        method = call.method
        if method in ENHANCED and not self.enhanced:
            raise RpcError(METHOD_NOT_FOUND, "Method not found")  # a plain Agave node has no such method
        if method in SUBSCRIBE:
            return self._subscribe(conn, parse_subscribe(SUBSCRIBE[method], call.params))
        if method in UNSUBSCRIBE:
            # Agave drops any of this socket's ids whatever the method's kind; unknown ids are refused.
            if conn.subscriptions.pop(parse_unsubscribe(call.params), None) is None:
                raise RpcError(INVALID_PARAMS, "Invalid subscription id.")
            return True
        if method == "getVersion":
            expect_no_params(call.params)
            return _VERSION
        if method in DISABLED:
            log.info("method_disabled", method=method)
        raise RpcError(METHOD_NOT_FOUND, "Method not found")

    def _subscribe(self, conn: Connection, spec: SubSpec) -> int:
        limit = self.max_subscriptions
        if limit is not None and sum(len(c.subscriptions) for c in self.connections) >= limit:
            message = "Internal Error: Subscription refused. Node subscription limit reached"
            raise RpcError(INTERNAL_ERROR, message)
        sub_id = self._next_sub_id
        self._next_sub_id += 1
        prefix = b'{"jsonrpc":"2.0","method":"' + spec.notification.encode() + b'","params":{"result":'
        conn.subscriptions[sub_id] = _Sub(sub_id, spec, conn, prefix, b',"subscription":%d}}' % sub_id)
        self.subscriptions_total += 1
        self._ticker.start()
        return sub_id

    # -- test helpers ----------------------------------------------------------------------------

    def transactions_at(self, slot: int) -> tuple[TxPlan, ...]:
        """The transactions slot `slot` holds or will hold (empty if skipped, never landing if forked);
        known before it is produced."""
        return self.chain.plan(slot)

    def signature_at(self, slot: int, index: int) -> str:
        """Signature of transaction `index` of slot `slot` (only lands if the slot has that many)."""
        return self.transactions_at(slot)[index].signature

    def upcoming_signature(self, ahead: int = 3, *, fails: bool = False) -> tuple[int, str]:
        """(slot, signature) of a non-vote transaction at least `ahead` slots from now, failing or not,
        in a slot that lands (never a forked one)."""
        for slot in range(self.chain.next_slot + ahead - 1, self.chain.next_slot + ahead + 1_000):
            for plan in () if self.chain.forked(slot) else self.chain.plan(slot):
                if plan.kind != "vote" and plan.fails == fails:
                    return slot, plan.signature
        raise LookupError("no such transaction in the next 1000 slots")

    def burst(self, n_slots: int) -> None:
        """Produce `n_slots` extra slots now, back to back, as fast as the sockets drain."""
        self._ticker.burst(n_slots)

    async def wait_slots(self, count: int) -> None:
        """Wait until `slots_produced` reaches `count` (bound it with asyncio.timeout)."""
        await self._ticker.wait_for(lambda: self.slots_produced >= count)

    # -- production ------------------------------------------------------------------------------

    def _exhausted(self) -> bool:
        return self.max_slots is not None and self.slots_produced >= self.max_slots

    def _step(self) -> None:
        block = self.chain.advance()
        if block is None:
            self.slots_skipped += 1  # a skipped slot takes its 400 ms but produces nothing
            return
        if block.fork:  # a minority fork: processed, then abandoned (no confirmation, no root)
            self.forked_slots.append(block.slot)
            self.processed_slot = block.slot
            self._process(_Routes(self.connections), block, self.root_slot)
            return
        self._blocks.append(block)
        confirmed, root = self._blocks[-1 - self.confirm_lag], self._blocks[0]
        self.processed_slot, self.confirmed_slot, self.root_slot = block.slot, confirmed.slot, root.slot
        routes = _Routes(self.connections)
        self._process(routes, block, root.slot)
        self._emit(routes, "confirmed", confirmed)
        for sub in routes.root:
            self._notify(sub, root.slot, (root.slot, b"%d" % root.slot))
        self._emit(routes, "finalized", root)
        self._blocks.popleft()
        self.slots_produced += 1

    def _process(self, routes: _Routes, block: Block, root: int) -> None:
        """What the node sends once it has processed `block`: slot, receivedSignature, processed data."""
        info = self._result({"slot": block.slot, "parent": block.parent, "root": root})
        for sub in routes.slot:
            self._notify(sub, block.slot, info)
        for tx in block.txs:  # the node saw these signatures before it finished the slot
            for sub in routes.received.get(tx.signature, ()):
                self._notify(sub, block.slot, self._result(_context(block.slot, "receivedSignature")))
        self._emit(routes, "processed", block)

    def _emit(self, routes: _Routes, level: str, block: Block) -> None:
        """Notify every `level` subscription of what `block` changed, in block order."""
        slot, rendered = block.slot, {}
        for account in block.writes:
            for kind, key in (("account", account.pubkey), ("program", account.owner)):
                for sub in routes.get(kind, level, key):
                    spec = sub.spec
                    if kind == "program" and not filters_allow(spec.filters, account.data):
                        continue
                    # Same slot and rendering -> same bytes, whichever socket asks. dataSlice is
                    # validated but not applied: Agave's pubsub encodes notifications without it.
                    cache_key = (kind, account.pubkey, spec.encoding)
                    if cache_key not in rendered:
                        value = ui_account(account, spec.encoding, None, MINT_DECIMALS)
                        if kind == "program":
                            value = {"pubkey": account.pubkey, "account": value}
                        rendered[cache_key] = self._result(_context(slot, value))
                    self._notify(sub, slot, rendered[cache_key])
        logs, transactions = routes.logs.get(level, ()), routes.transactions.get(level, ())
        for tx in block.txs:
            result = None
            for sub in logs:
                spec = sub.spec
                if spec.logs == "mentions":
                    wanted = spec.key in tx.keys
                else:  # "all" leaves simple vote transactions out
                    wanted = spec.logs == "allWithVotes" or not tx.is_vote
                if wanted:
                    value = {"signature": tx.signature, "err": tx.err, "logs": list(tx.logs)}
                    result = result or self._result(_context(slot, value))
                    self._notify(sub, slot, result)
            if transactions:
                self._emit_transaction(transactions, slot, tx)
            for sub in routes.get("signature", level, tx.signature):
                if sub.active:
                    self._notify(sub, slot, self._result(_context(slot, {"err": tx.err})))
                    del sub.conn.subscriptions[sub.id]  # single shot: gone once its answer is queued

    def _emit_transaction(self, subs: list[_Sub], slot: int, tx: Tx) -> None:
        """transactionNotification of `tx` to each subscription whose filter it passes."""
        rendered: dict[tuple[Any, ...], tuple[Any, bytes]] = {}
        for sub in subs:
            spec = sub.spec.tx
            if spec is None or not allows(spec, tx):
                continue
            # Subscriptions that render alike share one encoding of the value.
            key = (sub.spec.encoding, spec.details, spec.show_rewards, spec.max_version)
            if key not in rendered:
                rendered[key] = self._result(transaction_value(tx, slot, sub.spec.encoding, spec))
            self._notify(sub, slot, rendered[key])

    def _result(self, result: Any) -> tuple[Any, bytes]:
        return result, self._encode(result)

    def _notify(self, sub: _Sub, slot: int, result: tuple[Any, bytes]) -> None:
        if not sub.active:
            return  # unsubscribed (or answered) earlier in this slot's fan-out
        method = sub.spec.notification
        meta = (method, sub.id, slot, result[0] if self.sent_log is not None else None)
        if not self.offer(sub.conn, sub.prefix + result[1] + sub.suffix, meta):
            self.dropped[method] += 1


def _context(slot: int, value: Any) -> dict[str, Any]:
    """PubSub's RpcResponse: context without apiVersion (PROTOCOLS.md 4.2)."""
    return {"context": {"slot": slot}, "value": value}


def _error(exc: RpcError, request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": exc.error(), "id": request_id}
