"""Helius / Solana JSON-RPC PubSub (PROTOCOLS.md section 4): request ids -> subscription ids -> rows.

Subscription ids are the node's and change on every connection, so each (re)connect sends every
subscribe again and maps the new ids back to the configured names. A signatureSubscribe ends by
itself after its terminal notification and is not asked again. transactionSubscribe is Helius's
own (Enhanced WebSockets, PROTOCOLS.md 4.8), served on its atlas-* endpoints only.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from ingest.errors import ConfigError
from ingest.events import Event, Notice, Rejected, Rows, SubscriptionAcked, SubscriptionFailed
from ingest.protocols.base import AskAgain, AuthDefaults, read_frames

__all__ = ["DATASETS", "METHODS", "HeliusProtocol", "HeliusSubscription"]

# subscribe method -> (notification method, dataset)
METHODS: dict[str, tuple[str, str]] = {
    "accountSubscribe": ("accountNotification", "solana_account_updates"),
    "programSubscribe": ("programNotification", "solana_program_accounts"),
    "logsSubscribe": ("logsNotification", "solana_logs"),
    "signatureSubscribe": ("signatureNotification", "solana_signatures"),
    "slotSubscribe": ("slotNotification", "solana_slots"),
    "rootSubscribe": ("rootNotification", "solana_roots"),
    "transactionSubscribe": ("transactionNotification", "solana_transactions"),
}
DATASETS = {notification: dataset for notification, dataset in METHODS.values()}
_COMMITMENTS = ("processed", "confirmed", "finalized")
_WITH_OPTIONS = (
    "accountSubscribe",
    "programSubscribe",
    "logsSubscribe",
    "signatureSubscribe",
    "transactionSubscribe",
)
# transactionSubscribe's filter: flags, one signature, and address lists (PROTOCOLS.md 4.8).
_TX_FLAGS = ("vote", "failed")
_TX_LISTS = ("accountInclude", "accountExclude", "accountRequired")
_TX_LIST_MAX = 50_000
_TX_DETAILS = ("full", "signatures", "accounts", "none")
_TX_ENCODINGS = ("base58", "base64", "jsonParsed")
_RETRYABLE = frozenset({-32603})  # internal error, e.g. the node's subscription limit


@dataclass(frozen=True, slots=True)
class HeliusSubscription:
    name: str
    method: str
    params: tuple[Any, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)  # commitment and the subscribed key

    @property
    def unsubscribe(self) -> str:
        return self.method.replace("Subscribe", "Unsubscribe")


class _Params(msgspec.Struct, kw_only=True):
    subscription: int | None = None
    result: msgspec.Raw = msgspec.Raw(b"null")


class _Msg(msgspec.Struct, kw_only=True):
    id: int | str | None = None
    method: str | None = None
    params: _Params | None = None
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: Any = None


class _Signature(msgspec.Struct, kw_only=True):
    context: dict[str, Any] = {}
    value: Any = None


_decode = msgspec.json.Decoder(_Msg).decode
_decode_signature = msgspec.json.Decoder(_Signature).decode
_encode = msgspec.json.encode


def _subscription(raw: Mapping[str, Any], where: str) -> HeliusSubscription:
    name, method, params = raw.get("name"), raw.get("method"), raw.get("params", [])
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: every Helius subscription needs a name")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"{where}.method: expected one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(params, list):
        raise ConfigError(f"{where}.params: expected a list, the JSON-RPC params as Solana documents them")
    options = params[1] if len(params) > 1 else {}
    if method in _WITH_OPTIONS:
        if not params:
            raise ConfigError(f"{where}.params: {method} needs its first parameter")
        if not isinstance(options, dict):
            raise ConfigError(f"{where}.params[1]: expected a table of options (commitment, encoding, ...)")
    elif params:
        raise ConfigError(f"{where}.params: {method} takes no parameters")
    commitment = options.get("commitment", "finalized") if isinstance(options, dict) else "finalized"
    if commitment not in _COMMITMENTS:
        raise ConfigError(f"{where}.params[1].commitment: expected one of {', '.join(_COMMITMENTS)}")
    first = params[0] if params else None
    if method in ("accountSubscribe", "programSubscribe", "signatureSubscribe") and not isinstance(
        first, str
    ):
        raise ConfigError(f"{where}.params[0]: expected a base58 string")
    if method == "logsSubscribe" and not (
        first in ("all", "allWithVotes")
        or (
            isinstance(first, dict)
            and isinstance(first.get("mentions"), list)
            and len(first["mentions"]) == 1
        )
    ):
        # Solana accepts exactly one address in mentions (PROTOCOLS.md 4.5).
        raise ConfigError(
            f'{where}.params[0]: expected "all", "allWithVotes" or {{mentions = ["<one address>"]}}'
        )
    if method == "transactionSubscribe":
        _transaction_params(first, options, where)
    # Slot and root streams take no commitment: their rows carry none.
    context: dict[str, Any] = {"commitment": commitment if method in _WITH_OPTIONS else None}
    if method == "accountSubscribe":
        context.update(pubkey=first, encoding=options.get("encoding", "binary"))  # Agave's default
    elif method == "programSubscribe":
        context.update(program_id=first, encoding=options.get("encoding", "binary"))
    elif method == "signatureSubscribe":
        context["signature"] = first
    return HeliusSubscription(name, method, tuple(params), context)


def _transaction_params(flt: Any, options: Mapping[str, Any], where: str) -> None:
    """What Helius refuses in a transactionSubscribe, refused at start-up with the key named."""
    if not isinstance(flt, dict):
        raise ConfigError(
            f"{where}.params[0]: expected a filter table (vote, failed, signature, accountInclude, ...)"
        )
    allowed = {*_TX_FLAGS, "signature", *_TX_LISTS}
    if unknown := sorted(set(flt) - allowed):
        raise ConfigError(
            f"{where}.params[0].{unknown[0]}: unknown filter (allowed: {', '.join(sorted(allowed))})"
        )
    for key in _TX_FLAGS:
        if key in flt and not isinstance(flt[key], bool):
            raise ConfigError(f"{where}.params[0].{key}: expected true or false")
    if "signature" in flt and not isinstance(flt["signature"], str):
        raise ConfigError(f"{where}.params[0].signature: expected a base58 string")
    for key in _TX_LISTS:
        addresses = flt.get(key, [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ConfigError(f"{where}.params[0].{key}: expected a list of base58 addresses")
        if len(addresses) > _TX_LIST_MAX:
            raise ConfigError(
                f"{where}.params[0].{key}: at most {_TX_LIST_MAX:,} addresses, got {len(addresses):,}"
            )
    encoding = options.get("encoding", "base64")
    if encoding not in _TX_ENCODINGS:
        raise ConfigError(f"{where}.params[1].encoding: expected one of {', '.join(_TX_ENCODINGS)}")
    version = options.get("maxSupportedTransactionVersion", 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= 255:
        raise ConfigError(f"{where}.params[1].maxSupportedTransactionVersion: expected an integer (0)")
    if not isinstance(options.get("showRewards", False), bool):
        raise ConfigError(f"{where}.params[1].showRewards: expected true or false")
    details = options.get("transactionDetails", "full")
    if details not in _TX_DETAILS:
        raise ConfigError(f"{where}.params[1].transactionDetails: expected one of {', '.join(_TX_DETAILS)}")
    if details in ("full", "accounts") and "maxSupportedTransactionVersion" not in options:
        # Without it Helius refuses any version-0 transaction, most of today's traffic.
        raise ConfigError(
            f"{where}.params[1].maxSupportedTransactionVersion: needed with transactionDetails = "
            f'"{details}" (set it to 0)'
        )


class HeliusProtocol:
    """Sans-I/O Solana PubSub session: subscribe, remap ids per connection, route notifications."""

    kind: ClassVar[str] = "helius"
    auth: ClassVar[AuthDefaults] = AuthDefaults(location="query", query_param="api-key")
    fatal_close_codes: ClassVar[frozenset[int]] = frozenset()
    auth_close_codes: ClassVar[frozenset[int]] = frozenset()  # a bad key is refused at the upgrade
    # Quiet subscriptions are normal; liveness comes from WebSocket pings (ping_interval), so silence
    # means trouble only after a few missed ones.
    default_idle_timeout: ClassVar[float] = 75.0
    option_keys: ClassVar[tuple[str, ...]] = ()
    linger: ClassVar[float] = 0.0  # unsubscribes are answered
    default_ping_interval: ClassVar[float] = 30.0  # Helius: ping at least every minute; its samples use 30 s
    # Its 10-minute inactivity timer counts client frames, not notifications (PROTOCOLS.md 4.7): the
    # driver pings every ping_interval even while data flows, not only after silence.
    steady_pings: ClassVar[bool] = True

    def __init__(
        self, name: str, subscriptions: list[HeliusSubscription], options: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self.subprotocols: tuple[str, ...] = ()
        self._desired: dict[str, HeliusSubscription] = {s.name: s for s in subscriptions}
        self._next_request = 1
        self._pending: dict[
            int | str, tuple[str, str]
        ] = {}  # request id -> (subscription, subscribe|unsubscribe)
        self._ids: dict[int, HeliusSubscription] = {}  # node's subscription id -> subscription
        self._retry: AskAgain[str] = AskAgain()  # refused for now (the node's limit): on keepalive()
        self._closing = False
        self._outbox: list[str] = []
        # Drawn at each connect and stored with every root: a node notifies every slot it roots,
        # in order, so roots of one connection one after the other prove the slots between them
        # were never rooted (sql/021_solana_roots.sql). Across connections they prove nothing, nor
        # do roots of unknown connection (None: a capture replayed, a journal from before the id).
        self._connection: int | None = None

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], where: str) -> Mapping[str, Any]:
        return {}

    @classmethod
    def parse_subscription(
        cls, raw: Mapping[str, Any], where: str, base_dir: Path | None = None
    ) -> HeliusSubscription:
        if unknown := sorted(set(raw) - {"name", "method", "params"}):
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (allowed: method, name, params)")
        return _subscription(raw, where)

    # -- driver inputs ---------------------------------------------------------------------------

    def connect(self) -> None:
        self._connection = random.getrandbits(63)
        for sub in self._desired.values():
            self._request(sub.name, "subscribe", sub.method, list(sub.params))

    def receive(self, frame: str | bytes, received_at: int) -> list[Event]:
        raw = frame.encode() if isinstance(frame, str) else frame
        try:
            msg = _decode(raw)
        except msgspec.MsgspecError as exc:
            return [Rejected(self.name, raw, f"unreadable frame: {exc}", received_at)]
        if msg.method is not None and msg.params is not None and msg.method.endswith("Notification"):
            return self._notification(msg.method, msg.params, raw, received_at)
        if msg.id is not None and msg.id in self._pending:
            return self._response(msg)
        if msg.error is not None:
            return [Notice("", f"JSON-RPC error: {_error_text(msg.error)}")]
        return [
            Rejected(self.name, raw, "unknown message: neither a notification nor a response", received_at)
        ]

    def receive_many(self, frames: list[bytes], received_at: int, positions: Iterable[int]) -> list[Event]:
        if any(kind == "subscribe" for _, kind in self._pending.values()):
            self._map_ahead(frames)
        return read_frames(self, frames, received_at, positions)

    def _map_ahead(self, frames: list[bytes]) -> None:
        """Learn the ids that this read's subscribe responses give before reading its frames in
        order: a node may send a subscription's first notification ahead of the response naming its
        id (solana-labs/solana#11806), and unmapped it would lose the pubkey or signature that only
        the subscription gives, its rows' key. Only while subscribes are unanswered: at start."""
        for raw in frames:
            if b'"id"' not in raw or b'"result"' not in raw:  # a notification has no id: not decoded twice
                continue
            try:
                msg = _decode(raw)
            except msgspec.MsgspecError:
                continue  # quarantined when read in order
            pending = self._pending.get(msg.id) if msg.id is not None else None
            if pending is None or pending[1] != "subscribe" or msg.error is not None:
                continue
            with contextlib.suppress(msgspec.MsgspecError):  # read again, in order, by _response
                self._map(pending[0], msgspec.json.decode(bytes(msg.result)))

    def _map(self, name: str, result: Any) -> bool:
        """Route the node's subscription id `result` (an integer) to subscription `name`."""
        if not isinstance(result, int) or isinstance(result, bool):
            return False
        if (sub := self._desired.get(name)) is not None:
            self._ids[result] = sub
        return True

    def data_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        return out

    def keepalive(self) -> None:
        if self._closing:  # saying goodbye: a subscription asked again now would outlive it
            return
        for name in self._retry.due():
            if (sub := self._desired.get(name)) is not None:
                self._request(name, "subscribe", sub.method, list(sub.params))

    def close(self) -> None:
        self._closing = True
        for sub_id, sub in list(self._ids.items()):
            self._request(sub.name, "unsubscribe", sub.unsubscribe, [sub_id])

    @property
    def closed(self) -> bool:
        return self._closing and not any(kind == "unsubscribe" for _, kind in self._pending.values())

    @property
    def active(self) -> int:
        return len(self._desired)

    def connection_lost(self) -> None:
        # The node's ids die with the socket: the next connect() asks again and remaps.
        self._ids.clear()
        self._pending.clear()
        self._retry.clear()

    def state(self) -> dict[str, Any]:
        return {
            "connection": self._connection,
            "next_request": self._next_request,
            "pending": [[request, name, kind] for request, (name, kind) in self._pending.items()],
            "ids": [[sub_id, sub.name] for sub_id, sub in self._ids.items()],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        connection = state.get("connection")
        self._connection = int(connection) if connection is not None else None
        self._next_request = max(self._next_request, int(state.get("next_request", 1)))
        self._pending = {request: (name, kind) for request, name, kind in state.get("pending", [])}
        self._ids = {int(i): self._desired[n] for i, n in state.get("ids", []) if n in self._desired}

    # -- internals -------------------------------------------------------------------------------

    def _request(self, name: str, kind: str, method: str, params: list[Any]) -> None:
        request_id = self._next_request
        self._next_request += 1
        self._pending[request_id] = (name, kind)
        msg = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        self._outbox.append(_encode(msg).decode())

    def _response(self, msg: _Msg) -> list[Event]:
        name, kind = self._pending.pop(msg.id)  # type: ignore[arg-type]
        if msg.error is not None:
            code = msg.error.get("code") if isinstance(msg.error, dict) else None
            if kind == "unsubscribe":
                return [Notice(name, f"unsubscribe refused: {_error_text(msg.error)}")]
            retryable = code in _RETRYABLE
            if retryable:
                self._retry.later(name)
            else:
                self._desired.pop(name, None)  # bad params stay bad: not asked again
            return [SubscriptionFailed(name, _error_text(msg.error), retryable)]
        result = msgspec.json.decode(bytes(msg.result))
        if kind == "subscribe" and self._map(name, result):
            return [SubscriptionAcked(name)]
        if kind == "unsubscribe":
            for sub_id, sub in list(self._ids.items()):
                if sub.name == name:
                    del self._ids[sub_id]
        return []

    def _notification(self, method: str, params: _Params, raw: bytes, received_at: int) -> list[Event]:
        dataset = DATASETS.get(method)
        if dataset is None:
            return [Rejected(self.name, raw, f"unknown notification {method!r}", received_at)]
        sub = self._ids.get(params.subscription) if params.subscription is not None else None
        label = sub.name if sub else f"subscription {params.subscription}"
        context = sub.context if sub else {}
        record = bytes(params.result)
        original = None
        if method == "rootNotification":  # the result is a bare integer: give it a column name
            original, record = [record], b'{"root":' + record + b"}"
            context = {**context, "connection": self._connection}
        elif method == "signatureNotification":
            original = [record]
            try:
                note = _decode_signature(record)
            except msgspec.MsgspecError as exc:
                return [
                    Rejected(self.name, raw, f"unreadable signature notification: {exc}", received_at, label)
                ]
            received = note.value == "receivedSignature"
            if not received and not (isinstance(note.value, dict) and "err" in note.value):
                # Neither an ack of receipt nor a final result ({"err": ...}): nothing to end it on.
                reason = f"signature notification without a result: {note.value!r}"[:500]
                return [Rejected(self.name, raw, reason, received_at, label)]
            err = None if received else note.value.get("err")
            record = _encode({"slot": note.context.get("slot"), "received": received, "err": err})
            if not received and sub is not None:
                # Terminal: the node cancelled this subscription itself; do not unsubscribe or ask again.
                self._ids.pop(params.subscription, None)  # type: ignore[arg-type]
                self._desired.pop(sub.name, None)
        return [Rows(self.name, dataset, label, [record], received_at, context, raw=original)]


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"
    return str(error)
