"""Bitquery streaming (PROTOCOLS.md section 1): GraphQL subscriptions over both WebSocket subprotocols.

Legacy `graphql-ws` (Apollo: connection_init/ack, start, data, ka, error, complete) and
`graphql-transport-ws` (subscribe, next, error, complete, ping/pong) differ only in envelope names,
so one state machine speaks both. Several subscriptions share a connection, each under its own
operation id; ids are never reused, so a late frame of an old operation cannot be misread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from ingest.errors import ConfigError
from ingest.events import (
    Event,
    FatalError,
    Notice,
    Reconnect,
    Rejected,
    Rows,
    SubscriptionAcked,
    SubscriptionFailed,
)
from ingest.protocols.base import AskAgain, AuthDefaults, read_frames
from ingest.protocols.bitquery.query import GENERIC_DATASET, METRICS, Cube, Renames, analyse

__all__ = ["LEGACY", "TRANSPORT", "BitqueryProtocol", "BitquerySubscription"]

LEGACY = "graphql-ws"
TRANSPORT = "graphql-transport-ws"
# Cubes that accept a subscription and stay silent, and cubes sunset on 10 August 2026 (PROTOCOLS.md 1.6).
_NEVER_PUSH = frozenset(
    {("EVM", "Balances"), ("EVM", "Holders"), ("EVM", "Uncles"), ("Tron", "Balances"), ("Tron", "Holders")}
)
_SUNSET = frozenset({("EVM", "BalanceUpdates"), ("EVM", "TokenHolders"), ("Tron", "BalanceUpdates")})
# (start, data, stop) per subprotocol. Bitquery does not honour graphql-ws's `stop`: an operation is
# ended there with `complete`, as on graphql-transport-ws (PROTOCOLS.md 1.6, its samples).
_TYPES = {LEGACY: ("start", "data", "complete"), TRANSPORT: ("subscribe", "next", "complete")}
_STOPPED_KEPT = 64  # operations stopped after their errors whose late rows are still routed
# Operation errors that say a plan's limit was reached, not that the query is wrong (PROTOCOLS.md 1.6).
_PLAN_LIMIT = re.compile(
    r"too many (concurrent subscriptions|sessions)|maximum number of subscriptions|points limit"
    r"|usage quota|billing period",
    re.IGNORECASE,
)
# Operation errors that say the document or its variables are wrong (PROTOCOLS.md 1.6: "parse error",
# "subscription not valid"; graphql-js validation messages): asking again gets the same answer.
_INVALID = re.compile(
    r"pars(e|ing) error|syntax error|not valid|validation|cannot query field|unknown (argument|type|field"
    r"|directive|fragment|operation)|must (not )?have a selection|expected (type|value)|is not defined"
    r"|was not provided|must provide operation|variable \"?\$",
    re.IGNORECASE,
)
# Apollo's and others' extension codes for the same.
_INVALID_CODES = frozenset({"GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT"})


@dataclass(frozen=True, slots=True)
class BitquerySubscription:
    name: str
    query: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    operation_name: str | None = None
    cubes: Mapping[tuple[str, str], Cube] = field(default_factory=dict, repr=False)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query}
        if self.variables:
            out["variables"] = dict(self.variables)
        if self.operation_name:
            out["operationName"] = self.operation_name
        return out


class _Msg(msgspec.Struct, kw_only=True):
    type: str
    id: str | int | None = None
    payload: msgspec.Raw = msgspec.Raw(b"null")


class _Result(msgspec.Struct, kw_only=True):
    data: dict[str, msgspec.Raw] | None = None
    errors: list[Any] | None = None


# The shape of every data frame Bitquery sends: root -> cube -> list of rows. Decoding a whole frame
# into it is one pass, the rows coming out as Raw slices of the frame; going level by level through
# Raw (frame, payload, root, cube) parsed the ~80 kB four times. Any other shape fails here and takes
# the general path, so what that path accepts, rejects and reports is unchanged.
class _TypedResult(msgspec.Struct, kw_only=True):
    data: dict[str, dict[str, list[msgspec.Raw] | None] | None] | None = None
    errors: list[Any] | None = None


class _TypedMsg(msgspec.Struct, kw_only=True):
    type: str
    id: str | int | None = None
    payload: _TypedResult | None = None


_decode_msg = msgspec.json.Decoder(_Msg).decode
_decode_typed = msgspec.json.Decoder(_TypedMsg).decode
_decode_result = msgspec.json.Decoder(_Result).decode
_decode_obj = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_rows = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_any = msgspec.json.decode
_encode = msgspec.json.encode
# A row renamed field by field is decoded and encoded again: numbers as decimals, so an amount
# keeps its digits (a double keeps ~17) and one beyond a double's range (1E400) is no error.
_decode_exact = msgspec.json.Decoder(float_hook=Decimal).decode
_encode_exact = msgspec.json.Encoder(decimal_format="number").encode

# (root key, cube key, rows as received) for each non-null cube of a result
_Cubes = list[tuple[str, str, list[bytes]]]


def _typed_cubes(result: _TypedResult) -> _Cubes:
    return [
        (root_key, cube_key, list(map(bytes, rows)))
        for root_key, root in (result.data or {}).items()
        if root is not None
        for cube_key, rows in root.items()
        if rows is not None
    ]


def _error_list(payload: Any) -> list[Any]:
    """The errors in any of the shapes servers use: one error, a list, or {errors: [...]}."""
    if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
        payload = payload["errors"]
    return payload if isinstance(payload, list) else [payload]


def _messages(payload: Any) -> str:
    """Error text from any of the shapes servers use: one error, a list, or {errors: [...]}."""
    errors = _error_list(payload)
    return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)


def _invalid(errors: list[Any]) -> bool:
    """A parse or validation error: the document is wrong, not the moment. graphql-js gives these
    `locations` in the document and no `path` (an execution error has a path), Apollo a code."""
    for error in errors:
        text = error
        if isinstance(error, dict):
            if error.get("locations") and not error.get("path"):
                return True
            extensions = error.get("extensions")
            if isinstance(extensions, dict) and extensions.get("code") in _INVALID_CODES:
                return True
            text = error.get("message", "")
        if _INVALID.search(str(text)):
            return True
    return False


def _rename(value: Any, renames: Renames) -> Any:
    """`value` keyed by field names. It is a freshly decoded row, so a dict is changed in place
    below its aliases and rebuilt (its key order kept) only at a level where an alias is."""
    if isinstance(value, list):
        return [_rename(v, renames) for v in value]
    if not isinstance(value, dict):
        return value
    for key, inner in renames.below.items():
        if key in value:
            value[key] = _rename(value[key], inner)
    if renames.fields and (keys := renames.renamed_keys(tuple(value))) is not None:
        return dict(zip(keys, value.values(), strict=True))
    return value


def _canonical(row: bytes, cube: Cube) -> bytes:
    """A row keyed by field names, its aggregates under `metrics`: what the dataset declares."""
    obj = _decode_exact(row)
    if not isinstance(obj, dict):
        return row  # not an object: the batch builder rejects it with a reason
    metrics = {k: obj.pop(k) for k in cube.metrics if k in obj}
    if cube.renames is not None:
        obj = _rename(obj, cube.renames)
    if metrics:
        obj[METRICS] = metrics
    return _encode_exact(obj)


class BitqueryProtocol:
    """Sans-I/O Bitquery session over graphql-ws or graphql-transport-ws."""

    kind: ClassVar[str] = "bitquery"
    # Bitquery takes the token only in the URL for WebSockets (PROTOCOLS.md 1.2).
    auth: ClassVar[AuthDefaults] = AuthDefaults(
        location="query", query_param="token", token_url="https://oauth2.bitquery.io/oauth2/token"
    )
    # graphql-transport-ws codes a reconnect cannot fix: bad frames, an operation before the ack,
    # wrong subprotocol, duplicate id, second init. 4408 and 4500 are worth a retry.
    fatal_close_codes: ClassVar[frozenset[int]] = frozenset({4400, 4401, 4406, 4409, 4429})
    # 4403 Forbidden: connection_init refused, the token (PROTOCOLS.md 1.11: refresh it).
    auth_close_codes: ClassVar[frozenset[int]] = frozenset({4403})
    # Bitquery: no data and no keep-alive for about 10 s means a silent disconnect (1.6).
    default_idle_timeout: ClassVar[float] = 10.0
    option_keys: ClassVar[tuple[str, ...]] = ("subprotocol",)
    linger: ClassVar[float] = 0.3  # `complete` is never acknowledged
    plan_limit_retry: ClassVar[float] = 300.0  # seconds until a start refused over a plan limit is retried
    # A start failed for a passing reason ("connection failed", "Internal server error"): started
    # again after this many seconds, doubled at each failure in a row, up to error_retry_max.
    error_retry: ClassVar[float] = 5.0
    error_retry_max: ClassVar[float] = 300.0
    complete_retry: ClassVar[float] = 1.0  # a subscription the server completed, started again after
    default_ping_interval: ClassVar[float] = 0.0  # ka / pong frames carry liveness

    def __init__(
        self, name: str, subscriptions: list[BitquerySubscription], options: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self.subprotocol: str = (options or {}).get("subprotocol", TRANSPORT)
        self.subprotocols = (self.subprotocol,)
        self._start, self._data, self._stop = _TYPES[self.subprotocol]
        self._desired: dict[str, BitquerySubscription] = {s.name: s for s in subscriptions}
        self._ops: dict[str, BitquerySubscription] = {}  # operation id -> subscription, this socket
        # Operations we stopped after a result of errors only (not terminal on graphql-transport-ws):
        # what the server sent before it saw the stop still goes to their tables. This socket only.
        self._stopped: dict[str, BitquerySubscription] = {}
        self._next_id = 1
        self._acked = False
        self._closing = False
        # Completed by the server (started again at the next keepalive()), or refused over a plan's
        # limit (started again once plan_limit_retry has passed).
        self._again: AskAgain[str] = AskAgain()
        self._live: set[str] = set()  # subscriptions that delivered data on this socket
        self._outbox: list[str] = []

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], where: str) -> Mapping[str, Any]:
        sub = raw.get("subprotocol", TRANSPORT)
        if sub not in _TYPES:
            raise ConfigError(f'{where}.subprotocol: expected "{TRANSPORT}" or "{LEGACY}", got {sub!r}')
        return {"subprotocol": sub}

    @classmethod
    def parse_subscription(
        cls, raw: Mapping[str, Any], where: str, base_dir: Path | None = None
    ) -> BitquerySubscription:
        allowed = {"name", "query", "query_file", "variables", "operation_name"}
        if unknown := sorted(set(raw) - allowed):
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: every Bitquery subscription needs a name")
        if ("query" in raw) == ("query_file" in raw):
            raise ConfigError(
                f"{where}: give either query or query_file (a .graphql file next to the config)"
            )
        if "query_file" in raw:
            if not isinstance(raw["query_file"], str) or not raw["query_file"]:
                raise ConfigError(f"{where}.query_file: expected the path of a .graphql file as a string")
            path = Path(raw["query_file"])
            path = path if path.is_absolute() else (base_dir or Path.cwd()) / path
            try:
                query = path.read_text(encoding="utf-8")  # GraphQL documents are UTF-8
            except OSError as exc:
                raise ConfigError(f"{where}.query_file: cannot read {path}: {exc.strerror or exc}") from None
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    f"{where}.query_file: {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x}"
                    f" at offset {exc.start})"
                ) from None
        else:
            query = raw["query"]
            if not isinstance(query, str):
                raise ConfigError(f"{where}.query: expected a GraphQL document as a string")
        variables = raw.get("variables", {})
        if not isinstance(variables, dict):
            raise ConfigError(f"{where}.variables: expected a table")
        operation_name = raw.get("operation_name")
        if operation_name is not None and not isinstance(operation_name, str):
            raise ConfigError(f"{where}.operation_name: expected a string")
        cubes = analyse(
            query, variables, operation_name, where, "query_file" if "query_file" in raw else "query"
        )
        return BitquerySubscription(name, query, variables, operation_name, cubes)

    # -- driver inputs ---------------------------------------------------------------------------

    def connect(self) -> None:
        # Bitquery needs no init payload: the token is in the URL. Operations wait for the ack.
        self._outbox.append('{"type":"connection_init"}')

    def receive(self, frame: str | bytes, received_at: int) -> list[Event]:
        # Data frames, nearly all the traffic, are read in one typed pass (see _TypedMsg); any other
        # frame, or a data frame of another shape, goes through the general reader.
        try:
            msg = _decode_typed(frame)
        except msgspec.MsgspecError:
            return self._receive_any(frame, received_at)
        if msg.type != self._data or msg.id is None or msg.payload is None:
            return self._receive_any(frame, received_at)
        result = msg.payload
        return self._on_result(
            str(msg.id), _typed_cubes(result), result.errors, result.data is not None, received_at
        )

    def _receive_any(self, frame: str | bytes, received_at: int) -> list[Event]:
        try:
            msg = _decode_msg(frame)
        except msgspec.MsgspecError as exc:
            return [self._reject(frame, f"unreadable frame: {exc}", received_at)]
        kind = msg.type
        op = None if msg.id is None else str(msg.id)
        if kind == self._data and op is not None:
            return self._on_data(op, bytes(msg.payload), frame, received_at)
        if kind in ("ka", "pong"):
            return []
        if kind == "ping":
            self._outbox.append('{"type":"pong"}')
            return []
        if kind == "connection_ack":
            if self._acked:  # a second ack would start every operation again: every row twice
                return [self._reject(frame, "connection_ack on an acknowledged connection", received_at)]
            self._acked = True
            self._again.due()  # their time has come: started now, with the rest
            for sub in self._desired.values():
                if sub.name not in self._again:
                    self._begin(sub)
            return []
        if kind == "error" and op is not None:
            return self._on_error(op, bytes(msg.payload), received_at)
        if kind == "complete" and op is not None:
            sub = self._ops.pop(op, None)
            if sub is not None and sub.name in self._desired and not self._closing:
                # Nothing arrives until it is started again, so that is soon (a second), backing
                # off if the server keeps ending it (a query that ends by itself).
                wait = self._again.backoff(sub.name, self.complete_retry, self.error_retry_max)
                self._again.later(sub.name, received_at + int(wait * 1e9))
                return [
                    Notice(
                        sub.name, f"the server completed the subscription; starting it again in {wait:g} s"
                    )
                ]
            return []
        if kind == "connection_error":
            text = _messages(_decode_any(bytes(msg.payload)) if bytes(msg.payload) != b"null" else "")
            if not self._acked and _PLAN_LIMIT.search(text):
                # Too Many Sessions and the like clear with time: not the token's fault, not fatal.
                wait = self.plan_limit_retry
                reason = f"connection refused: {text} (a plan limit: connecting again in {wait:g} s)"
                return [Reconnect(reason, retry_after=wait)]
            if not self._acked:  # refused before the ack: the token (a new one may do)
                return [FatalError(f"connection refused: {text}", auth=True)]
            return [Notice("", f"server reported: {text}")]
        return [self._reject(frame, f"unknown message type {kind!r}", received_at)]

    def receive_many(self, frames: list[bytes], received_at: int, positions: Iterable[int]) -> list[Event]:
        return read_frames(self, frames, received_at, positions)

    def silence_hint(self, subscription: str) -> str:
        """What a subscription without data may mean (the driver's silent_after; not in ProviderProtocol):
        its own cubes first, where PROTOCOLS.md 1.6 knows they never push or were sunset."""
        sub = self._desired.get(subscription)
        cubes = sorted({(c.root, c.cube) for c in sub.cubes.values()}) if sub else []
        if never := [f"{root}.{cube}" for root, cube in cubes if (root, cube) in _NEVER_PUSH]:
            return f"{', '.join(never)}: Bitquery accepts a subscription and never pushes (query it instead)"
        if sunset := [f"{root}.{cube}" for root, cube in cubes if (root, cube) in _SUNSET]:
            return f"{', '.join(sunset)}: sunset by Bitquery on 10 August 2026, the stream may send nothing"
        return (
            "no data since it was sent: Bitquery answers nothing over the plan's concurrent-subscription "
            "cap, and some cubes never push (PROTOCOLS.md 1.6)"
        )

    def data_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        return out

    def keepalive(self) -> None:
        if self.subprotocol == TRANSPORT:
            self._outbox.append('{"type":"ping"}')
        if self._acked and not self._closing:  # else the next ack starts them
            for name in self._again.due():
                if name in self._desired:
                    self._begin(self._desired[name])

    def close(self) -> None:
        # Bitquery honours neither `stop` nor a goodbye ack: `complete` per operation, then close.
        self._closing = True
        # The ids stay mapped: rows already in flight must still reach their tables.
        for op in self._ops:
            self._outbox.append(_encode({"type": "complete", "id": op}).decode())

    def next_due(self) -> int | None:
        """When the first start refused for a while (a plan limit, a passing error's backoff) may go
        again (ns, wall clock), for the driver to call keepalive() then; None: nothing waits, or the
        connection is not acknowledged (the ack starts them) or is closing."""
        return self._again.next_at() if self._acked and not self._closing else None

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def active(self) -> int:
        return len(self._desired)

    @property
    def awaiting_handshake(self) -> bool:
        """Connected and no connection_ack yet: the driver gives up after its handshake_timeout
        (PROTOCOLS.md 1.11; gql's ack timeout). Not in ProviderProtocol: absent is False."""
        return not self._acked

    def connection_lost(self) -> None:
        self._ops.clear()
        self._stopped.clear()
        self._live.clear()
        # _again stays: the next ack starts every subscription but those still waiting.
        self._acked = False

    def state(self) -> dict[str, Any]:
        return {
            "ops": {op: sub.name for op, sub in self._ops.items()},
            "stopped": {op: sub.name for op, sub in self._stopped.items()},
            "next_id": self._next_id,
            "acked": self._acked,
            "live": sorted(self._live),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._ops = {op: self._desired[n] for op, n in state.get("ops", {}).items() if n in self._desired}
        stopped = state.get("stopped", {}).items()
        self._stopped = {op: self._desired[n] for op, n in stopped if n in self._desired}
        self._next_id = max(self._next_id, int(state.get("next_id", 1)))
        self._acked = bool(state.get("acked", False))
        self._live = set(state.get("live", ()))

    # -- internals -------------------------------------------------------------------------------

    def _begin(self, sub: BitquerySubscription) -> None:
        op = str(self._next_id)
        self._next_id += 1
        self._ops[op] = sub
        self._outbox.append(_encode({"type": self._start, "id": op, "payload": sub.payload()}).decode())

    @staticmethod
    def _label(op: str, sub: BitquerySubscription | None) -> str:
        return sub.name if sub else f"operation {op}"

    def _reject(self, frame: str | bytes, reason: str, received_at: int, subscription: str = "") -> Rejected:
        raw = frame.encode() if isinstance(frame, str) else frame
        return Rejected(self.name, raw, reason, received_at, subscription)

    def _on_error(self, op: str, payload: bytes, received_at: int) -> list[Event]:
        errors = _error_list(_decode_any(payload)) if payload != b"null" else ["error without a message"]
        return self._failed(op, errors, received_at)

    def _failed(self, op: str, errors: list[Any], received_at: int) -> list[Event]:
        """The operation ended with these errors (an `error` frame, or a result with errors and no data)."""
        sub = self._ops.pop(op, None)
        text = _messages(errors)
        if sub is None:
            return [Notice("", f"error for unknown operation {op}: {text}")]
        if _PLAN_LIMIT.search(text):
            # Over the plan's limits (points, sessions, concurrent subscriptions): these clear with
            # time or another stream's end, so it is started again now and then, not dropped.
            wait = self.plan_limit_retry
            self._again.later(sub.name, received_at + int(wait * 1e9))
            return [SubscriptionFailed(sub.name, f"{text} (a plan limit: started again in {wait:g} s)", True)]
        if _invalid(errors):
            # A query the server rejects will be rejected again: this subscription stops, others go on.
            self._desired.pop(sub.name, None)
            return [SubscriptionFailed(sub.name, text, retryable=False)]
        # Anything else may pass ("connection failed", "Internal server error"): asked again, backing off.
        wait = self._again.backoff(sub.name, self.error_retry, self.error_retry_max)
        self._again.later(sub.name, received_at + int(wait * 1e9))
        return [SubscriptionFailed(sub.name, f"{text} (started again in {wait:g} s)", retryable=True)]

    def _on_data(self, op: str, payload: bytes, frame: str | bytes, received_at: int) -> list[Event]:
        """A data frame of any shape: a cube may also hold a single row (an object or a scalar)."""
        try:
            result = _decode_result(payload)
            cubes: _Cubes = []
            for root_key, root_raw in (result.data or {}).items():
                if bytes(root_raw) == b"null":
                    continue
                for cube_key, cube_raw in _decode_obj(root_raw).items():
                    raw = bytes(cube_raw)
                    if raw != b"null":
                        rows = list(map(bytes, _decode_rows(raw))) if raw[:1] == b"[" else [raw]
                        cubes.append((root_key, cube_key, rows))
        except (msgspec.MsgspecError, ValueError) as exc:
            label = self._label(op, self._ops.get(op) or self._stopped.get(op))
            return [self._reject(frame, f"unreadable result: {exc}", received_at, label)]
        return self._on_result(op, cubes, result.errors, result.data is not None, received_at)

    def _on_result(
        self, op: str, cubes: _Cubes, errors: list[Any] | None, has_data: bool, received_at: int
    ) -> list[Event]:
        """Events of a whole result, read before any: a frame is taken or rejected as one."""
        if errors and not has_data:
            # Errors and no data: the operation failed (the Apollo reference sends validation
            # errors so, then `complete`), however the frame is named. On graphql-transport-ws an
            # execution error need not end the operation, so it is stopped before any restart:
            # else two would run, one of them unknown to us.
            if op in self._ops:
                self._outbox.append(_encode({"type": self._stop, "id": op}).decode())
                if len(self._stopped) >= _STOPPED_KEPT:  # a server failing one start after another
                    del self._stopped[next(iter(self._stopped))]
                self._stopped[op] = self._ops[op]
            return self._failed(op, errors, received_at)
        sub = self._ops.get(op)
        live = sub is not None
        if not live:
            sub = self._stopped.get(op)
        label = self._label(op, sub)
        events: list[Event] = []
        for root_key, cube_key, rows in cubes:
            if rows:
                events.extend(self._rows(sub, label, root_key, cube_key, rows, received_at, live))
        if errors:
            events.append(Notice(label, f"result carried errors: {_messages(errors)}"))
        return events

    def _rows(
        self,
        sub: BitquerySubscription | None,
        label: str,
        root_key: str,
        cube_key: str,
        rows: list[bytes],
        received_at: int,
        live: bool = True,
    ) -> list[Event]:
        """`live`: the operation runs (not one stopped after its errors), so its data says it is."""
        cube = sub.cubes.get((root_key, cube_key)) if sub else None
        if cube is None:  # a shape the query did not declare: kept whole in the generic table
            context = {"network": None, "mempool": None, "root": root_key, "cube": cube_key}
            cube = Cube(root_key, cube_key, GENERIC_DATASET, context)
        # No per-subscription ack exists in either protocol: the first data says it is live.
        first: list[Event] = []
        if live and sub is not None and sub.name not in self._live:
            self._live.add(sub.name)
            self._again.granted(sub.name)  # it works again: a later failure backs off from the start
            first.append(SubscriptionAcked(sub.name))
        records = [_canonical(r, cube) for r in rows] if cube.rewrite else rows
        out = Rows(
            provider=self.name,
            dataset=cube.dataset,
            subscription=label,
            records=records,
            received_at=received_at,
            context=cube.context,
            raw=rows if cube.rewrite else None,
        )
        return [*first, out]
