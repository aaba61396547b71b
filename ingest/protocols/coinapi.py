"""CoinAPI market data WebSocket V1 (PROTOCOLS.md section 3): one `hello` scope, one record per frame.

A connection has one scope: the union of every configured subscription's data types and filters
goes in the `hello`. Each message is then labelled with the subscription whose filters match it,
and its `sequence` (per type and symbol, restarting on every connection) is checked for jumps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from ingest.errors import ConfigError
from ingest.events import Event, FatalError, Gap, Notice, Reconnect, Rejected, Rows
from ingest.protocols.base import AuthDefaults, Batch, read_decoded

__all__ = ["DATASETS", "GENERIC_DATASET", "CoinAPIProtocol", "CoinAPISubscription"]

DATASETS: dict[str, str] = {
    "trade": "coinapi_trades",
    "quote": "coinapi_quotes",
    "book": "coinapi_book_updates",
    "book5": "coinapi_book_updates",
    "book20": "coinapi_book_updates",
    "book50": "coinapi_book_updates",
    "book_l3": "coinapi_book_updates",
    "ohlcv": "coinapi_ohlcv",
}
GENERIC_DATASET = "coinapi_generic"
DATA_TYPES = frozenset({*DATASETS, "exrate", "asset", "exchange", "symbol"})
_HEARTBEATS = frozenset({"hearbeat", "heartbeat"})  # documented misspelt; accept both
_FILTERS = {  # config key -> hello field
    "symbols": "subscribe_filter_symbol_id",
    "exchanges": "subscribe_filter_exchange_id",
    "assets": "subscribe_filter_asset_id",
    "periods": "subscribe_filter_period_id",
}
_LIMITS = {
    "quote_limit_ms": "subscribe_update_limit_ms_quote",
    "book_limit_ms": "subscribe_update_limit_ms_book_snapshot",
    "exrate_limit_ms": "subscribe_update_limit_ms_exrate",
}


@dataclass(frozen=True, slots=True)
class CoinAPISubscription:
    name: str
    data_types: tuple[str, ...]
    symbols: tuple[str, ...] = ()
    exchanges: tuple[str, ...] = ()
    assets: tuple[str, ...] = ()
    periods: tuple[str, ...] = ()
    limits: tuple[tuple[str, int], ...] = ()

    def matches(self, kind: str, symbol_id: str | None) -> bool:
        """CoinAPI's filter semantics: prefix, or exact with a trailing $; kinds of filter are a union."""
        if kind not in self.data_types:
            return False
        if not (self.symbols or self.exchanges or self.assets):
            return True
        if symbol_id is None:
            return False
        for f in self.symbols:
            if (symbol_id == f[:-1]) if f.endswith("$") else symbol_id.startswith(f):
                return True
        if any(symbol_id.startswith(e + "_") for e in self.exchanges):
            return True
        parts = symbol_id.split("_", 3)
        base, quote = (parts[2], parts[3]) if len(parts) == 4 else (None, None)
        return any(a in (base, quote) or a == f"{base}/{quote}" for a in self.assets)


class _Head(msgspec.Struct, kw_only=True):
    type: str = ""
    symbol_id: str | None = None
    sequence: int | None = None
    message: str | None = None
    within_seconds: float | None = None


_decode_head = msgspec.json.Decoder(_Head).decode
_encode = msgspec.json.encode


def _strings(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key}: expected a list of non-empty strings")
    return tuple(value)


class CoinAPIProtocol:
    """Sans-I/O CoinAPI session: hello, labelled records, sequence checks, live scope changes."""

    kind: ClassVar[str] = "coinapi"
    # The key goes in `hello` by default (PROTOCOLS.md 3.2); header X-CoinAPI-Key or ?apikey= also work.
    auth: ClassVar[AuthDefaults] = AuthDefaults(
        location="message", header="X-CoinAPI-Key", scheme="", query_param="apikey"
    )
    fatal_close_codes: ClassVar[frozenset[int]] = frozenset()
    # With heartbeat on, a message comes every second at least: 5 s of nothing is a dead link.
    default_idle_timeout: ClassVar[float] = 5.0
    option_keys: ClassVar[tuple[str, ...]] = ("heartbeat",)
    linger: ClassVar[float] = 0.3  # the unsubscribe is never acknowledged
    default_ping_interval: ClassVar[float] = 0.0  # the server pings every minute

    def __init__(
        self, name: str, subscriptions: list[CoinAPISubscription], options: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self.subprotocols: tuple[str, ...] = ()
        self.heartbeat = bool((options or {}).get("heartbeat", True))
        self._desired: dict[str, CoinAPISubscription] = {s.name: s for s in subscriptions}
        self._key: str | None = None
        self._connection = 0
        self._context: dict[str, Any] = {"connection": 0}
        self._labels: dict[tuple[str, str | None], str] = {}
        self._last: dict[tuple[str, str], tuple[int, int]] = {}  # (type, symbol) -> (sequence, received_at)
        self._outbox: list[str] = []

    def set_key(self, key: str | None) -> None:
        """The API key for `hello` (auth in = "message"); never part of any event."""
        self._key = key

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], where: str) -> Mapping[str, Any]:
        heartbeat = raw.get("heartbeat", True)
        if not isinstance(heartbeat, bool):
            raise ConfigError(f"{where}.heartbeat: expected true or false")
        return {"heartbeat": heartbeat}

    @classmethod
    def parse_subscription(
        cls, raw: Mapping[str, Any], where: str, base_dir: Path | None = None
    ) -> CoinAPISubscription:
        allowed = {"name", "data_types", *_FILTERS, *_LIMITS}
        if unknown := sorted(set(raw) - allowed):
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: every CoinAPI subscription needs a name")
        types = _strings(raw, "data_types", where)
        if not types:
            raise ConfigError(f"{where}.data_types: at least one of {', '.join(sorted(DATA_TYPES))}")
        if bad := [t for t in types if t not in DATA_TYPES]:
            raise ConfigError(f"{where}.data_types: unknown data type {bad[0]!r}")
        filters = {key: _strings(raw, key, where) for key in _FILTERS}
        if any(t.startswith("book") for t in types) and not any(filters.values()):
            raise ConfigError(
                f"{where}.symbols: order books need a symbol, exchange or asset filter (CoinAPI refuses)"
            )
        if "exrate" in types and not filters["assets"]:
            raise ConfigError(f"{where}.assets: exrate needs an asset filter (CoinAPI refuses)")
        limits = []
        for key, field in _LIMITS.items():
            if key in raw:
                if not isinstance(raw[key], int) or raw[key] < 0:
                    raise ConfigError(f"{where}.{key}: expected a non-negative integer (milliseconds)")
                limits.append((field, raw[key]))
        return CoinAPISubscription(name, types, **filters, limits=tuple(limits))

    # -- live scope changes ----------------------------------------------------------------------

    def subscribe(self, sub: CoinAPISubscription) -> None:
        """Add a subscription on the live connection (and to every later hello)."""
        self._desired[sub.name] = sub
        self._labels.clear()
        self._outbox.append(_encode(self._scope("subscribe", [sub])).decode())

    def unsubscribe(self, name: str) -> None:
        sub = self._desired.pop(name, None)
        if sub is not None:
            self._labels.clear()
            self._outbox.append(_encode(self._scope("unsubscribe", [sub])).decode())

    # -- driver inputs ---------------------------------------------------------------------------

    def connect(self) -> None:
        self._connection += 1
        self._context = {"connection": self._connection}
        self._outbox.append(_encode(self._scope("hello", list(self._desired.values()))).decode())

    def receive(self, frame: str | bytes, received_at: int) -> list[Event]:
        raw = frame if type(frame) is bytes else frame.encode()  # type: ignore[union-attr]
        try:
            head = _decode_head(raw)
        except msgspec.MsgspecError as exc:
            return [Rejected(self.name, raw, f"unreadable frame: {exc}", received_at)]
        batch = Batch()
        self._read(raw, head, received_at, 0, batch)
        return batch.events

    def receive_many(self, frames: list[bytes], received_at: int, positions: Iterable[int]) -> list[Event]:
        return read_decoded(self, _decode_head, self._read, frames, received_at, positions)

    def _read(self, raw: bytes, head: _Head, received_at: int, position: int, batch: Batch) -> None:
        """Append what one decoded frame means to the batch."""
        events = batch.events
        kind, symbol, seq = head.type, head.symbol_id, head.sequence
        if kind in DATA_TYPES:
            # The hot path (one market message per frame): two dict lookups, and one Rows per
            # run of frames of one read that share table and label, not one per frame.
            key = (kind, symbol)
            label = self._labels.get(key)
            if label is None:
                label = self._label(kind, symbol)
            if seq is not None and symbol is not None:
                last = self._last.get(key)
                if last is not None and seq != last[0] + 1:
                    gap = self._check_sequence(kind, symbol, seq, received_at, label)
                    if gap is not None:
                        gap.position = position
                        events.append(gap)
                else:
                    self._last[key] = (seq, received_at)
            dataset = DATASETS.get(kind, GENERIC_DATASET)
            run = batch.run
            if run is not None and run.subscription is label and run.dataset is dataset:
                run.join(raw, position)
            else:
                run = batch.run = Rows(self.name, dataset, label, [raw], received_at, self._context)
                run.position = position
                events.append(run)
        elif kind in _HEARTBEATS:
            pass
        elif kind == "error":
            message = head.message or "error without a message"
            if "buffered messages" in message:
                # The server's buffer for a slow reader overflowed; it closes, and a reconnect may do.
                events.append(Notice("", f"server dropped the connection: {message}"))
            else:
                events.append(FatalError(f"CoinAPI error: {message}"))
        elif kind == "reconnect":
            events.append(Reconnect(f"planned server restart within {head.within_seconds or 0:g} s"))
        else:
            reason = f"unknown message type {kind!r}"
            events.append(Rejected(self.name, raw, reason, received_at, position=position))

    def data_to_send(self) -> list[str]:
        out, self._outbox = self._outbox, []
        return out

    def keepalive(self) -> None:
        pass  # liveness is the server's heartbeat messages and WebSocket pings

    def close(self) -> None:
        # Unsubscribing every data type empties the scope, so what is in flight is all there is.
        types = sorted({t for s in self._desired.values() for t in s.data_types})
        self._outbox.append(_encode({"type": "unsubscribe", "subscribe_data_type": types}).decode())

    @property
    def closed(self) -> bool:
        return True

    @property
    def active(self) -> int:
        return len(self._desired)

    def connection_lost(self) -> None:
        self._last.clear()  # sequence numbers restart with the next connection

    def state(self) -> dict[str, Any]:
        last = [[kind, symbol, seq, at] for (kind, symbol), (seq, at) in self._last.items()]
        return {"connection": self._connection, "last": last}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._connection = int(state.get("connection", self._connection))
        self._context = {"connection": self._connection}
        self._last = {(k, s): (int(q), int(t)) for k, s, q, t in state.get("last", [])}

    # -- internals -------------------------------------------------------------------------------

    def _scope(self, kind: str, subs: list[CoinAPISubscription]) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": kind}
        if kind == "hello":
            if self._key is not None:
                msg["apikey"] = self._key
            msg["heartbeat"] = self.heartbeat
        msg["subscribe_data_type"] = sorted({t for s in subs for t in s.data_types})
        for key, field in _FILTERS.items():
            values = sorted({v for s in subs for v in getattr(s, key)})
            if values:
                msg[field] = values
        for s in subs:
            msg.update(dict(s.limits))
        return msg

    def _label(self, kind: str, symbol_id: str | None) -> str:
        key = (kind, symbol_id)
        label = self._labels.get(key)
        if label is None:
            label = next((s.name for s in self._desired.values() if s.matches(kind, symbol_id)), "")
            self._labels[key] = label
        return label

    def _check_sequence(self, kind: str, symbol: str, seq: int, received_at: int, label: str) -> Gap | None:
        key = (kind, symbol)
        last = self._last.get(key)
        if last is not None and seq <= last[0]:
            return None  # a repeat or a late one: not a hole, and not the new high-water mark
        self._last[key] = (seq, received_at)
        if last is None or seq == last[0] + 1:
            return None
        return Gap(self.name, label, "sequence", last[1], received_at, f"{kind}:{symbol}", last[0] + 1, seq)
