"""BlockDB EVM WebSocket emulator: handshake auth, subscribe/unsubscribe acks, updates, reorgs and faults."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from aiohttp import web

from ingest.emulators.server import Connection, EmulatorServer, Ticker
from ingest.emulators.synth import Chain, Emission

__all__ = ["DATASET_IDS", "SERVED_DATASETS", "BlockDBEmulator"]

log = structlog.get_logger(__name__)

# Current dataset ids (PROTOCOLS.md 2.7); anything else is a malformed request.
DATASET_IDS = frozenset({
    "0101", "0102", "0103", "0111", "0121", "0122", "0201", "0202", "0203", "0211", "0212", "0301",
    "0302", "0303", "0304", "0305", "0404", "0405", "0411", "0501", "0601", "0701", "0702", "0801",
})  # fmt: skip
# Accepted params per served dataset (PROTOCOLS.md 2.8); unknown names are rejected so typos surface.
_PARAMS: dict[str, tuple[str, ...]] = {
    "0101": (),
    "0102": ("from_addresses", "to_addresses", "status_success"),
    "0103": ("contract_addresses", "topic_zeros"),
    "0302": ("base_token_address", "quote_token_address"),
    "0304": ("from_addresses", "to_addresses", "token_addresses", "transfer_types"),
    "0404": ("base_token_address", "quote_token_address", "aggregation_interval"),
}
SERVED_DATASETS = frozenset(_PARAMS)
_PAIR = ("base_token_address", "quote_token_address")
_REQUIRED = {"0302": _PAIR, "0404": _PAIR}
# List filters: param name -> (record field, hex width).
_LISTS = {
    "from_addresses": ("from_address", 40),
    "to_addresses": ("to_address", 40),
    "token_addresses": ("token_address", 40),
    "contract_addresses": ("contract_address", 40),
    "topic_zeros": ("topic_zero", 64),
}
# The WSS page names native/erc20/erc721/erc1155; the REST API splits native into tx and internal.
_TRANSFER_TYPES: dict[object, tuple[int, ...]] = {
    "native": (0, 1),
    "native_tx": (0,),
    "native_internal": (1,),
    "erc20": (2,),
    "erc721": (3,),
    "erc1155": (4,),
    **{code: (code,) for code in range(5)},
}
_INTERVALS = ("1m", "5m", "1h", "1d")
_DOCS_URL = "https://docs.blockdb.io/wss-reference/overview/errors"
_BAD = "The request contains invalid or missing parameters."
_HINT = "Ensure 'params' matches the stream filters; addresses are 20-byte hex strings with no 0x prefix."
_SHAPE = "Send {action, integer chain_id, 4-digit dataset_id, params object (subscribe only)}."
_UPGRADE_PLAN = "pro"  # details.required_plan of a FORBIDDEN ack: the plan that has every dataset
_DATASET_RE = re.compile(r"\d{4}")
_HEX_RE = {40: re.compile(r"[0-9a-fA-F]{40}"), 64: re.compile(r"[0-9a-fA-F]{64}")}


class _Problem(Exception):
    """A request the server answers with status "error" (BlockDB's error object, PROTOCOLS.md 2.4)."""

    def __init__(
        self,
        code: str,
        message: str,
        hint: str,
        invalid: list[tuple[str, str]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.error: dict[str, Any] = {
            "code": code,
            "message": message,
            "hint": hint,
            "severity": "error",
            "retryable": False,
        }
        if invalid:
            details = {
                **(details or {}),
                "invalid_parameters": [{"name": n, "reason": r} for n, r in invalid],
            }
        if details:
            self.error["details"] = details
        self.error["docs_url"] = _DOCS_URL


@dataclass(frozen=True, slots=True)
class _Filter:
    """A subscription's params: AND across fields, OR within a list; absent or empty lists pass all."""

    fields: tuple[tuple[str, frozenset[Any]], ...] = ()
    pair: frozenset[str] | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.pair is not None and {record["token_in"], record["token_out"]} != self.pair:
            return False
        return all(record.get(name) in allowed for name, allowed in self.fields)


def _is_hex(value: object, width: int) -> bool:
    return isinstance(value, str) and _HEX_RE[width].fullmatch(value) is not None


def _transfer_codes(kind: object) -> tuple[int, ...] | None:
    if isinstance(kind, str) or (isinstance(kind, int) and not isinstance(kind, bool)):
        return _TRANSFER_TYPES.get(kind)
    return None


def _parse_params(dataset_id: str, params: dict[str, Any]) -> _Filter:
    """Validate `params` for a served dataset and turn them into a filter."""
    invalid = [(f"params.{n}", "unknown_parameter") for n in params if n not in _PARAMS[dataset_id]]
    invalid += [(f"params.{n}", "missing") for n in _REQUIRED.get(dataset_id, ()) if n not in params]
    fields: list[tuple[str, frozenset[Any]]] = []
    for name, value in params.items():
        if name in _LISTS and name in _PARAMS[dataset_id]:
            field, width = _LISTS[name]
            if not isinstance(value, list):
                invalid.append((f"params.{name}", "invalid_type"))
                continue
            bad = [
                (f"params.{name}[{k}]", "invalid_format")
                for k, a in enumerate(value)
                if not _is_hex(a, width)
            ]
            invalid += bad
            if value and not bad:
                fields.append((field, frozenset(a.lower() for a in value)))
        elif name == "status_success" and "status_success" in _PARAMS[dataset_id]:
            if isinstance(value, bool):
                fields.append(("status_success", frozenset({value})))
            else:
                invalid.append(("params.status_success", "invalid_type"))
        elif name == "transfer_types" and dataset_id == "0304":
            if not isinstance(value, list):
                invalid.append(("params.transfer_types", "invalid_type"))
                continue
            # Names from the WSS page or REST API, or the integer codes themselves.
            codes = [_transfer_codes(k) for k in value]
            invalid += [
                (f"params.transfer_types[{k}]", "unsupported_value") for k, c in enumerate(codes) if not c
            ]
            if value and all(codes):
                fields.append(("transfer_type", frozenset(x for c in codes if c for x in c)))
        elif name in _PAIR and name in _PARAMS[dataset_id] and not _is_hex(value, 40):
            invalid.append((f"params.{name}", "invalid_format"))
        elif name == "aggregation_interval" and dataset_id == "0404" and value not in _INTERVALS:
            invalid.append(("params.aggregation_interval", "unsupported_value"))
    if invalid:
        raise _Problem("BAD_REQUEST", _BAD, _HINT, invalid)
    if params.get("aggregation_interval", "1m") != "1m":
        # Documented values the emulator does not produce: a well-formed request for an absent stream.
        where = [("params.aggregation_interval", "unsupported_value")]
        raise _Problem(
            "NOT_FOUND", "Only 1m OHLC bars are served here.", "Use aggregation_interval '1m'.", where
        )
    pair = frozenset(params[n].lower() for n in _PAIR) if _PAIR[0] in params else None
    return _Filter(tuple(fields), pair)


_Routes = dict[tuple[int, str], list[tuple[Connection, _Filter]]]


class BlockDBEmulator(EmulatorServer):
    """A local BlockDB `/v1/evm/` WebSocket serving one deterministic synthetic chain per chain id.

    One producer task advances every chain each `block_interval`; each update frame is encoded once and
    queued to every connection subscribed to its (chain_id, dataset_id) whose params it matches.
    """

    # The user guide names /v1/evm/; an older reference shows the upgrade on /v1/evm/stream.
    paths = ("/v1/evm/", "/v1/evm", "/v1/evm/stream")

    def __init__(
        self,
        *,
        key: str | None = None,
        seed: int = 1,
        chains: tuple[int, ...] = (1,),
        block_interval: float = 0.5,
        txs_per_block: int = 8,
        reorg_every: int = 0,
        ping_interval: float = 20.0,
        idle_timeout: float = 60.0,
        max_blocks: int | None = None,
        start_on_subscribe: bool = True,
        record_log: bool = False,
        resend_on_subscribe: int = 0,
        max_queue: int = 10_000,
        plan: Iterable[str] | None = None,
        subscribe_limit: tuple[int, float] | None = None,
    ) -> None:
        """`subscribe_limit`: (subscribe requests, per seconds) for the key; one over it is refused
        with RATE_LIMIT_EXCEEDED, retryable, and `details.retry_after_seconds` (PROTOCOLS.md 2.4)."""
        # Idle close uses 1000 NORMAL_CLOSURE, whose documented action is a plain reconnect; 1008 would
        # tell the client to check its key, which is not the problem. The doc gives one 60 s limit for
        # both no subscription and missing pongs, so it serves as the pong timeout too.
        super().__init__(
            ping_interval=ping_interval,
            pong_timeout=idle_timeout,
            idle_timeout=idle_timeout,
            idle_close_code=1000,
            max_queue=max_queue,
        )
        self._key = key
        # Dataset ids the key's plan covers (None: all). Subscribing to another one is refused with
        # FORBIDDEN and details.required_plan, like a plan that lacks the dataset (doc 2.4).
        self.plan = None if plan is None else frozenset(plan)
        self.subscribe_limit = subscribe_limit
        self.rate_limited = 0  # subscribes refused over subscribe_limit
        self._subscribes: deque[float] = deque()  # loop times of subscribes accepted in the window
        self.block_interval = block_interval
        self.max_blocks = max_blocks
        self.chains = {
            c: Chain(seed, c, txs_per_block=txs_per_block, reorg_every=reorg_every) for c in chains
        }
        self.sent: Counter[tuple[int, str]] = Counter()
        self.sent_reorg: Counter[tuple[int, str]] = Counter()
        self.dropped: Counter[tuple[int, str]] = Counter()
        self.blocks_produced = 0
        self.reorgs: list[tuple[int, int, int]] = []
        self.sent_log: list[tuple[int, str, str, bool]] | None = [] if record_log else None
        # BlockDB may deliver again after a reconnect (doc 2.6): a new subscription first gets the
        # stream's last `resend_on_subscribe` updates once more, so clients must deduplicate.
        self.resend_on_subscribe = resend_on_subscribe
        # Each with its record, so a resend goes only where the new subscription's params match it.
        self._recent: dict[tuple[int, str], deque[tuple[bytes, dict[str, Any], Any]]] = {}
        self.resent: Counter[tuple[int, str]] = Counter()
        self._start_on_subscribe = start_on_subscribe
        self._ticker = Ticker(block_interval)
        self._encode = msgspec.json.Encoder().encode

    # -- server hooks ----------------------------------------------------------------------------

    def authorize(self, request: web.Request) -> web.StreamResponse | None:
        """Bearer header first, then ?api_key= (the documented fallback); refuse with HTTP 401."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            supplied = token.strip() if scheme.lower() == "bearer" else ""
        else:
            supplied = request.query.get("api_key", "")
        ok = bool(supplied) and (
            self._key is None or hmac.compare_digest(supplied.encode(), self._key.encode())
        )
        if ok:
            return None
        log.info("auth_rejected", has_header=header is not None)  # never the key itself
        hint = "Send 'Authorization: Bearer <API_KEY>' or '?api_key=<API_KEY>'."
        error = _Problem("UNAUTHORIZED", "Missing or invalid API key.", hint).error
        return web.json_response({"error": error}, status=401, headers={"WWW-Authenticate": "Bearer"})

    async def on_startup(self) -> None:
        if not self._start_on_subscribe:
            self._ticker.start()
        self._ticker.spawn(self._step, self._exhausted, self.wait_writable)

    async def on_shutdown(self) -> None:
        await self._ticker.stop()

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        echo: dict[str, Any] = {}
        try:
            try:
                msg = msgspec.json.decode(data)
            except msgspec.DecodeError:
                where = [("message", "invalid_json")]
                raise _Problem("BAD_REQUEST", "The message is not valid JSON.", _SHAPE, where) from None
            if isinstance(msg, dict):
                echo = {k: msg[k] for k in ("action", "chain_id", "dataset_id") if k in msg}
            self._apply(conn, msg)
        except _Problem as problem:
            reply = {**echo, "status": "error", "error": problem.error}
        else:
            reply = {**echo, "status": "success"}
        self.offer(conn, self._encode(reply))
        if "status" in reply and reply["status"] == "success" and echo.get("action") == "subscribe":
            key = (echo.get("chain_id"), echo.get("dataset_id"))
            flt = conn.subscriptions.get(key)
            for frame, record, meta in self._recent.get(key, ()):  # type: ignore[call-overload]
                if flt is not None and flt.matches(record) and self.offer(conn, frame, meta):
                    self.resent[key] += 1  # type: ignore[index]

    def on_sent(self, conn: Connection, meta: Any) -> None:
        if meta is None:
            return  # an ack, not an update
        chain_id, dataset_id, _tracing_id, is_reorg = meta
        self.sent[(chain_id, dataset_id)] += 1
        if is_reorg:
            self.sent_reorg[(chain_id, dataset_id)] += 1
        if self.sent_log is not None:
            self.sent_log.append(meta)

    # -- requests --------------------------------------------------------------------------------

    def _apply(self, conn: Connection, msg: Any) -> None:
        """Validate a control message and apply it; raise _Problem for an error acknowledgement."""
        if not isinstance(msg, dict):
            raise _Problem(
                "BAD_REQUEST", "The message must be a JSON object.", _SHAPE, [("message", "invalid_type")]
            )
        action, chain_id, dataset_id = msg.get("action"), msg.get("chain_id"), msg.get("dataset_id")
        invalid = []
        if action not in ("subscribe", "unsubscribe"):
            invalid.append(("action", "missing" if action is None else "unsupported_value"))
        if chain_id is None:
            invalid.append(("chain_id", "missing"))
        elif not isinstance(chain_id, int) or isinstance(chain_id, bool):
            invalid.append(("chain_id", "invalid_type"))
        if dataset_id is None:
            invalid.append(("dataset_id", "missing"))
        elif not isinstance(dataset_id, str) or not _DATASET_RE.fullmatch(dataset_id):
            invalid.append(("dataset_id", "invalid_format"))
        elif dataset_id not in DATASET_IDS:
            invalid.append(("dataset_id", "unsupported_value"))
        params = msg.get("params")
        if action == "subscribe" and not isinstance(params, dict):
            invalid.append(("params", "missing" if params is None else "invalid_type"))
        if invalid:
            raise _Problem("BAD_REQUEST", _BAD, _SHAPE, invalid)
        if chain_id not in self.chains:
            hint = f"Served chain ids: {sorted(self.chains)}."
            raise _Problem("NOT_FOUND", "Chain not served.", hint, [("chain_id", "unsupported_value")])
        if dataset_id not in SERVED_DATASETS:
            hint = f"Served datasets: {sorted(SERVED_DATASETS)}."
            raise _Problem("NOT_FOUND", "Dataset not served.", hint, [("dataset_id", "unsupported_value")])
        if action == "subscribe" and self.plan is not None and dataset_id not in self.plan:
            raise _Problem(
                "FORBIDDEN",
                "Your plan does not include this dataset.",
                f"Upgrade to the '{_UPGRADE_PLAN}' plan, or subscribe to: {sorted(self.plan)}.",
                details={"required_plan": _UPGRADE_PLAN},
            )
        if action == "unsubscribe":
            conn.subscriptions.pop((chain_id, dataset_id), None)  # idempotent, like subscribe
            return
        if self.subscribe_limit is not None:
            self._check_rate()
        # One stream per (chain_id, dataset_id): a repeated subscribe replaces the filter.
        conn.subscriptions[(chain_id, dataset_id)] = _parse_params(dataset_id, params)
        self._ticker.start()

    def _check_rate(self) -> None:
        """Count a subscribe against `subscribe_limit`, or refuse it saying when the window has room."""
        assert self.subscribe_limit is not None
        limit, window = self.subscribe_limit
        now = asyncio.get_running_loop().time()
        while self._subscribes and self._subscribes[0] <= now - window:
            self._subscribes.popleft()
        if len(self._subscribes) < limit:
            self._subscribes.append(now)
            return
        self.rate_limited += 1
        wait = round(self._subscribes[0] + window - now + 0.001, 3)
        problem = _Problem(
            "RATE_LIMIT_EXCEEDED",
            "Too many subscribe requests.",
            f"Retry after {wait:g} seconds.",
            details={"retry_after_seconds": wait},
        )
        problem.error["retryable"] = True
        raise problem

    # -- production ------------------------------------------------------------------------------

    def burst(self, n_blocks: int) -> None:
        """Produce `n_blocks` extra blocks now, back to back, as fast as the sockets drain."""
        self._ticker.burst(n_blocks)

    async def wait_blocks(self, count: int) -> None:
        """Wait until `blocks_produced` reaches `count` (bound it with asyncio.timeout)."""
        await self._ticker.wait_for(lambda: self.blocks_produced >= count)

    def _exhausted(self) -> bool:
        limit = self.max_blocks
        return limit is not None and all(c.blocks_produced >= limit for c in self.chains.values())

    def _step(self) -> None:
        routes: _Routes = {}
        for conn in self.connections:
            for key, flt in conn.subscriptions.items():
                routes.setdefault(key, []).append((conn, flt))
        for chain_id, chain in self.chains.items():
            if self.max_blocks is not None and chain.blocks_produced >= self.max_blocks:
                continue
            known = len(chain.reorgs)
            emissions = chain.advance()
            self.blocks_produced += 1
            self.reorgs += chain.reorgs[known:]
            self._fan_out(chain_id, emissions, routes)

    def _fan_out(self, chain_id: int, emissions: list[Emission], routes: _Routes) -> None:
        for dataset_id, record, is_reorg in emissions:
            key = (chain_id, dataset_id)
            frame = b""
            if self.resend_on_subscribe:
                frame = self._encode(
                    {"chain_id": chain_id, "dataset_id": dataset_id, "is_reorg": is_reorg, "data": record}
                )
                recent = self._recent.setdefault(key, deque(maxlen=self.resend_on_subscribe))
                recent.append((frame, record, (chain_id, dataset_id, record["_tracing_id"], is_reorg)))
            for conn, flt in routes.get(key, ()):
                if not flt.matches(record):
                    continue
                # Encoded once, on first need, and the same bytes go to every matching socket.
                frame = frame or self._encode(
                    {"chain_id": chain_id, "dataset_id": dataset_id, "is_reorg": is_reorg, "data": record}
                )
                if not self.offer(conn, frame, (chain_id, dataset_id, record["_tracing_id"], is_reorg)):
                    self.dropped[key] += 1
