"""JSON-RPC 2.0 framing and PubSub parameter validation for the Helius emulator, with Agave's error texts."""

# Agave parses params with serde through jsonrpc-core/jsonrpc-derive, then checks pubkeys, signatures and
# filters itself; the messages below follow those layers ("Invalid params: ..." from serde, "Invalid
# Request: Invalid pubkey provided" from Agave's own checks, "`params` should ..." from jsonrpc-derive).

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ingest.emulators.helius_encode import (
    ENCODINGS,
    Base58Error,
    DataSize,
    Filter,
    Memcmp,
    TokenAccountState,
    b58decode,
)

__all__ = [
    "COMMITMENTS",
    "DISABLED",
    "ENHANCED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SUBSCRIBE",
    "TX_DETAILS",
    "TX_ENCODINGS",
    "UNSUBSCRIBE",
    "Call",
    "RpcError",
    "SubSpec",
    "TxSpec",
    "expect_no_params",
    "parse_call",
    "parse_subscribe",
    "parse_unsubscribe",
]

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)
COMMITMENTS = ("processed", "confirmed", "finalized")
SUBSCRIBE = {
    "accountSubscribe": "account",
    "programSubscribe": "program",
    "logsSubscribe": "logs",
    "signatureSubscribe": "signature",
    "slotSubscribe": "slot",
    "rootSubscribe": "root",
    "transactionSubscribe": "transaction",
}
UNSUBSCRIBE = frozenset(f"{kind}Unsubscribe" for kind in SUBSCRIBE.values())
# Helius' own Enhanced WebSockets methods, absent from a plain Agave node (PROTOCOLS.md 4.1, 4.8).
ENHANCED = frozenset({"transactionSubscribe", "transactionUnsubscribe"})
TX_ENCODINGS = ("base58", "base64", "jsonParsed")
TX_DETAILS = ("full", "signatures", "accounts", "none")
_TX_LISTS = ("accountInclude", "accountExclude", "accountRequired")
_TX_LIST_MAX = 50_000
# Agave's unstable methods; Helius' WebSocket page says they are not supported there, and a node
# without the enabling flag answers Method not found (PROTOCOLS.md 4.5, 4.6).
DISABLED = frozenset(
    f"{kind}{verb}" for kind in ("block", "vote", "slotsUpdates") for verb in ("Subscribe", "Unsubscribe")
)
_MAX_FILTERS = 4
_MEMCMP_MAX_BYTES, _MEMCMP_MAX_BASE58, _MEMCMP_MAX_BASE64 = 128, 175, 172
_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


class RpcError(Exception):
    """A JSON-RPC error response: code, message, and the request id it answers (None -> null)."""

    def __init__(self, code: int, message: str, request_id: Any = None, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.data = data

    def error(self) -> dict[str, Any]:
        """The `error` member of the response; `data` only when jsonrpc-core would set it."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            body["data"] = self.data
        return body


@dataclass(frozen=True, slots=True)
class Call:
    """A well-formed request: id (int, str or None), method and raw params (list, dict or None)."""

    id: Any
    method: str
    params: Any


@dataclass(frozen=True, slots=True)
class TxSpec:
    """transactionSubscribe's filter and the options that shape each notification (PROTOCOLS.md 4.8)."""

    vote: bool = False  # vote transactions only when asked for
    failed: bool = True  # failed ones unless refused
    signature: str | None = None
    include: frozenset[str] = frozenset()  # any of them (empty: no constraint)
    exclude: frozenset[str] = frozenset()  # none of them
    required: frozenset[str] = frozenset()  # all of them
    details: str = "full"
    show_rewards: bool = False
    max_version: int | None = None


@dataclass(frozen=True, slots=True)
class SubSpec:
    """A validated subscription: kind, commitment and the kind's own parameters."""

    kind: str  # account | program | logs | signature | slot | root | transaction
    commitment: str | None = None  # None for slot/root, which follow the node's own progress
    key: str | None = None  # pubkey, program id, logs mention or signature
    encoding: str = "binary"  # Agave's default when `encoding` is omitted
    data_slice: tuple[int, int] | None = None
    filters: tuple[Filter, ...] = ()
    logs: str | None = None  # all | allWithVotes | mentions
    received: bool = False  # signatureSubscribe enableReceivedNotification
    tx: TxSpec | None = None  # transactionSubscribe

    @property
    def notification(self) -> str:
        return f"{self.kind}Notification"


def parse_call(msg: Any) -> Call | None:
    """Validate one request object; None for a JSON-RPC notification (no id), which gets no reply."""
    if not isinstance(msg, dict) or not _REQUEST_KEYS.issuperset(msg):
        raise RpcError(INVALID_REQUEST, "Invalid request")  # jsonrpc-core denies unknown fields
    request_id = msg.get("id")
    valid_id = request_id is None or isinstance(request_id, str) or _is_uint(request_id)
    if not valid_id or msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
        raise RpcError(INVALID_REQUEST, "Invalid request", request_id if valid_id else None)
    params = msg.get("params")
    if params is not None and not isinstance(params, list | dict):
        raise RpcError(INVALID_REQUEST, "Invalid request", request_id)
    if "id" not in msg:
        return None
    return Call(request_id, msg["method"], params)


def parse_unsubscribe(params: Any) -> int:
    """The subscription id of an `<x>Unsubscribe` request: serde parses params as the tuple (u64,)."""
    if not isinstance(params, list):
        raise _serde(f"invalid type: {_unexpected(params)}, expected a tuple of size 1")
    if len(params) != 1:
        expected = "a tuple of size 1" if not params else "fewer elements in array"
        raise _serde(f"invalid length {len(params)}, expected {expected}")
    return _u64(params[0], "u64")


def parse_subscribe(kind: str, params: Any) -> SubSpec:
    """Validate the params of a `<kind>Subscribe` request, in the order Agave reports errors."""
    if kind in ("slot", "root"):
        expect_no_params(params)
        return SubSpec(kind)
    first, *rest = _positional(params, 1, 2)
    if kind == "transaction":
        return _transaction(first, rest[0] if rest else None)
    # serde reads the tuple in order (first param, then config); Agave's own checks come after.
    logs, mentions = _logs_filter(first) if kind == "logs" else ("", [])
    text = "" if kind == "logs" else _string(first, "a string")
    config = _config(rest[0] if rest else None, _CONFIG_NAMES[kind])
    commitment = _commitment(config)
    if kind == "logs":
        if logs != "mentions":
            return SubSpec(kind, commitment, logs=logs)
        if len(mentions) != 1:
            raise RpcError(INVALID_PARAMS, "Invalid Request: Only 1 address supported")
        return SubSpec(kind, commitment, _key(mentions[0], 32, "mentions"), logs=logs)
    if kind == "signature":
        received = config.get("enableReceivedNotification")
        if received is not None and not isinstance(received, bool):
            raise _serde(f"invalid type: {_unexpected(received)}, expected a boolean")
        return SubSpec(kind, commitment, _key(text, 64, "signature"), received=bool(received))
    encoding, data_slice = _encoding(config), _data_slice(config.get("dataSlice"))
    filters = _filters(config.get("filters")) if kind == "program" else ()
    return SubSpec(kind, commitment, _key(text, 32, "pubkey"), encoding, data_slice, filters)


_CONFIG_NAMES = {
    "account": "RpcAccountInfoConfig",
    "program": "RpcProgramAccountsConfig",
    "logs": "RpcTransactionLogsConfig",
    "signature": "RpcSignatureSubscribeConfig",
}


def _transaction(first: Any, second: Any) -> SubSpec:
    """transactionSubscribe's [filter, options]. Helius documents no error texts, so they follow Agave's
    layers: serde type errors for the filter, then the options, then the checks on the values."""
    if not isinstance(first, dict):
        raise _serde(f"invalid type: {_unexpected(first)}, expected struct TransactionSubscribeFilter")
    vote, failed = _flag(first.get("vote")), _flag(first.get("failed"))
    signature = first.get("signature")
    if signature is not None:
        _string(signature, "a string")
    lists = {name: _strings(first.get(name)) for name in _TX_LISTS}
    config = _config(second, "TransactionSubscribeOptions")
    commitment = _commitment(config)
    encoding = "base64" if config.get("encoding") is None else _variant(config["encoding"], TX_ENCODINGS)
    details = config.get("transactionDetails")
    details = "full" if details is None else _variant(details, TX_DETAILS)
    show_rewards = _flag(config.get("showRewards"))
    version = config.get("maxSupportedTransactionVersion")
    if version is not None and (version := _u64(version, "u8")) > 255:
        raise _serde(f"invalid value: integer `{version}`, expected u8")
    if signature is not None:
        _key(signature, 64, "signature")
    for name, addresses in lists.items():
        if len(addresses) > _TX_LIST_MAX:
            raise RpcError(INVALID_PARAMS, f"Too many addresses in {name}; max {_TX_LIST_MAX}")
        for address in addresses:
            _key(address, 32, "pubkey")
    if details in ("full", "accounts") and version is None:
        # Helius: "Required when transactionDetails is set to accounts or full" (PROTOCOLS.md 4.8).
        message = f'Invalid Request: transactionDetails "{details}" needs maxSupportedTransactionVersion (0)'
        raise RpcError(INVALID_PARAMS, message)
    spec = TxSpec(
        vote=bool(vote),
        failed=failed is not False,
        signature=signature,
        include=frozenset(lists["accountInclude"]),
        exclude=frozenset(lists["accountExclude"]),
        required=frozenset(lists["accountRequired"]),
        details=details,
        show_rewards=bool(show_rewards),
        max_version=version,
    )
    return SubSpec("transaction", commitment, signature, encoding, tx=spec)


def _flag(value: Any) -> bool | None:
    """An optional boolean: absent and null alike are None."""
    if value is not None and not isinstance(value, bool):
        raise _serde(f"invalid type: {_unexpected(value)}, expected a boolean")
    return value


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _serde(f"invalid type: {_unexpected(value)}, expected a sequence")
    return [_string(item, "a string") for item in value]


def _serde(text: str) -> RpcError:
    """A serde deserialization failure as jsonrpc-core's Params::parse words it."""
    return RpcError(INVALID_PARAMS, f"Invalid params: {text}.")


def _unexpected(value: Any) -> str:
    """serde_json's description of a JSON value it did not expect."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    return "sequence" if isinstance(value, list) else "map"


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _u64(value: Any, what: str) -> int:
    if _is_uint(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        raise _serde(f"invalid value: {_unexpected(value)}, expected {what}")
    raise _serde(f"invalid type: {_unexpected(value)}, expected {what}")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _serde(f"invalid type: {_unexpected(value)}, expected {what}")
    return value


def _variant(value: Any, choices: tuple[str, ...]) -> str:
    listed = ", ".join(f"`{c}`" for c in choices)
    if not isinstance(value, str):
        raise _serde(f"invalid type: {_unexpected(value)}, expected one of {listed}")
    if value not in choices:
        raise _serde(f"unknown variant `{value}`, expected one of {listed}")
    return value


def _positional(params: Any, required: int, total: int) -> list[Any]:
    """jsonrpc-derive's positional params: an array of `required`..`total` items (or none at all)."""
    if isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "`params` should be an array")
    args = list(params or ())
    if len(args) < required:
        raise RpcError(INVALID_PARAMS, f"`params` should have at least {required} argument(s)")
    if len(args) > total:
        message = f"Invalid parameters: Expected from {required} to {total} parameters."
        raise RpcError(INVALID_PARAMS, message, data=f"Got: {len(args)}")
    return args


def expect_no_params(params: Any) -> None:
    """jsonrpc-core's check for methods without parameters: absent or [] only."""
    if params or isinstance(params, dict):
        message = "Invalid parameters: No parameters were expected"
        raise RpcError(INVALID_PARAMS, message, data=_debug_params(params))


def _debug_params(params: Any) -> str:
    """Rust's Debug form of jsonrpc-core Params, which expect_no_params puts in `data`."""
    if isinstance(params, dict):
        return f"Map({_debug_value(params)[7:-1]})"
    return _debug_value(params)


def _debug_value(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return f"Bool({str(value).lower()})"
    if isinstance(value, int | float):
        return f"Number({value})"
    if isinstance(value, str):
        return f"String({json.dumps(value)})"
    if isinstance(value, list):
        return "Array([" + ", ".join(_debug_value(v) for v in value) + "])"
    return "Object({" + ", ".join(f"{json.dumps(k)}: {_debug_value(v)}" for k, v in value.items()) + "})"


def _config(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _serde(f"invalid type: {_unexpected(value)}, expected struct {name}")
    return value


def _commitment(config: dict[str, Any]) -> str:
    level = config.get("commitment")
    return "finalized" if level is None else _variant(level, COMMITMENTS)  # PubSub's documented default


def _encoding(config: dict[str, Any]) -> str:
    encoding = config.get("encoding")
    return "binary" if encoding is None else _variant(encoding, ENCODINGS)


def _data_slice(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _serde(f"invalid type: {_unexpected(value)}, expected struct UiDataSliceConfig")
    for field in ("offset", "length"):
        if field not in value:
            raise _serde(f"missing field `{field}`")
    return _u64(value["offset"], "usize"), _u64(value["length"], "usize")


def _key(text: str, size: int, thing: str) -> str:
    """Agave's Pubkey/Signature FromStr: base58 of exactly `size` bytes, else its generic refusal."""
    max_chars = 44 if size == 32 else 88
    try:
        ok = len(text) <= max_chars and len(b58decode(text)) == size
    except Base58Error:
        ok = False
    if not ok:
        raise RpcError(INVALID_PARAMS, f"Invalid Request: Invalid {thing} provided")
    return text


def _logs_filter(value: Any) -> tuple[str, list[Any]]:
    variants = ("all", "allWithVotes", "mentions")
    if isinstance(value, dict) and len(value) == 1 and "mentions" in value:
        mentions = value["mentions"]
        if not isinstance(mentions, list):
            raise _serde(f"invalid type: {_unexpected(mentions)}, expected a sequence")
        return "mentions", [_string(m, "a string") for m in mentions]
    if isinstance(value, dict):
        name = next(iter(value), "")
        raise _serde(f"unknown variant `{name}`, expected one of " + ", ".join(f"`{v}`" for v in variants))
    if value == "mentions":
        raise _serde("invalid type: unit variant, expected newtype variant")
    return _variant(value, variants), []


def _filters(value: Any) -> tuple[Filter, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _serde(f"invalid type: {_unexpected(value)}, expected a sequence")
    parsed = [_filter(item) for item in value]  # serde runs before Agave's own verify_filters
    if len(parsed) > _MAX_FILTERS:
        raise RpcError(INVALID_PARAMS, f"Too many filters provided; max {_MAX_FILTERS}")
    return tuple(_verify(f) for f in parsed)


def _filter(item: Any) -> tuple[str, Any]:
    variants = ("dataSize", "memcmp", "tokenAccountState")
    if item == "tokenAccountState":
        return ("tokenAccountState", None)
    if not isinstance(item, dict) or len(item) != 1:
        listed = ", ".join(f"`{v}`" for v in variants)
        if isinstance(item, str):
            raise _serde(f"unknown variant `{item}`, expected one of {listed}")
        raise _serde(f"invalid type: {_unexpected(item)}, expected enum RpcFilterType")
    name, body = next(iter(item.items()))
    if name == "dataSize":
        return name, _u64(body, "u64")
    if name != "memcmp":
        raise _serde(f"unknown variant `{name}`, expected one of " + ", ".join(f"`{v}`" for v in variants))
    if not isinstance(body, dict):
        raise _serde(f"invalid type: {_unexpected(body)}, expected struct Memcmp")
    for field in ("offset", "bytes"):
        if field not in body:
            raise _serde(f"missing field `{field}`")
    offset = _u64(body["offset"], "usize")
    encoding = _variant(body.get("encoding", "base58"), ("binary", "base58", "base64"))
    return name, (offset, _string(body["bytes"], "a string"), encoding)


def _verify(parsed: tuple[str, Any]) -> Filter:
    """RpcFilterType::verify: size limits and decoding; failures read `Invalid param: <Debug>`."""
    name, body = parsed
    if name == "tokenAccountState":
        return TokenAccountState()
    if name == "dataSize":
        return DataSize(body)
    offset, text, encoding = body
    limit = _MEMCMP_MAX_BASE64 if encoding == "base64" else _MEMCMP_MAX_BASE58
    if len(text) > limit:
        raise RpcError(INVALID_PARAMS, "Invalid param: DataTooLarge")
    try:
        raw = _b64decode(text) if encoding == "base64" else b58decode(text)
    except Base58Error as exc:
        raise RpcError(INVALID_PARAMS, f"Invalid param: Base58DecodeError({exc})") from None
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, f"Invalid param: Base64DecodeError({exc})") from None
    if len(raw) > _MEMCMP_MAX_BYTES:
        raise RpcError(INVALID_PARAMS, "Invalid param: DataTooLarge")
    return Memcmp(offset, raw)


def _b64decode(text: str) -> bytes:
    """Strict standard base64 (padding required); errors named like the Rust base64 crate's."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
    for i, c in enumerate(text):
        if c not in alphabet:
            raise ValueError(f"InvalidByte({i}, {ord(c)})")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("InvalidPadding" if len(text) % 4 == 0 else "InvalidLength") from None
