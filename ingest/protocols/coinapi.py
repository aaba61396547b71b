"""CoinAPI market data WebSocket V1 (PROTOCOLS.md section 3): one `hello` scope, one record per frame.

A connection has one scope, sent whole in a `hello` (see `_scope` for how subscriptions combine).
Each message is then labelled with the first subscription that wants it, and its `sequence` (per
type and symbol, restarting on every connection) is checked for jumps.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec

from ingest.errors import ConfigError
from ingest.events import (
    Event,
    FatalError,
    Gap,
    Notice,
    Reconnect,
    Rejected,
    Rows,
    SubscriptionAcked,
    SubscriptionFailed,
)
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
_METADATA = frozenset({"asset", "exchange"})  # records that name no symbol, only their own id
# A key without a plan's data type (CoinAPI FAQ): "Forbidden - Your API key don't have privileges
# to data type 'quote'." Only the subscriptions of that type are refused, not the key.
_FORBIDDEN_TYPE = re.compile(r"privileges to data type '([^']+)'")
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
_LIMITED = {  # hello field -> the data types it throttles
    "subscribe_update_limit_ms_quote": frozenset({"quote"}),
    "subscribe_update_limit_ms_book_snapshot": frozenset({"book5", "book20", "book50"}),
    "subscribe_update_limit_ms_exrate": frozenset({"exrate"}),
}
_SCOPING = ("symbols", "exchanges", "assets")  # the filter kinds that apply to every data type
# CoinAPI refuses these without a filter (books: any of _SCOPING; exrate: assets).
_NEED_FILTER = frozenset({"book", "book5", "book20", "book50", "book_l3", "exrate"})


@dataclass(frozen=True, slots=True)
class CoinAPISubscription:
    name: str
    data_types: tuple[str, ...]
    symbols: tuple[str, ...] = ()
    exchanges: tuple[str, ...] = ()
    assets: tuple[str, ...] = ()
    periods: tuple[str, ...] = ()
    limits: tuple[tuple[str, int], ...] = ()

    @property
    def filtered(self) -> bool:
        """Whether it narrows its data types at all (periods only narrow OHLCV bars)."""
        return bool(self.symbols or self.exchanges or self.assets)

    def matches(
        self,
        kind: str,
        symbol_id: str | None,
        period_id: str | None = None,
        rate: tuple[str | None, str | None] = (None, None),
        record_id: str | None = None,
    ) -> bool:
        """CoinAPI's filter semantics: prefix, or exact with a trailing $; kinds of filter are a union.

        `period_id` is an OHLCV bar's period; `rate` an exrate's (asset_id_base, asset_id_quote);
        `record_id` an asset record's asset_id or an exchange record's exchange_id.
        """
        if kind not in self.data_types:
            return False
        if kind == "ohlcv" and self.periods and period_id not in self.periods:
            return False
        if not self.filtered:
            return True
        if kind == "exrate":  # no symbol: an asset matches either side, a pair its legs' USD rates
            return any(rate[0] in a.split("/") if "/" in a else a in rate for a in self.assets)
        if kind in _METADATA:
            # Only the filter kind that names such records narrows them (an asset pair names both
            # its assets); a symbol filter says nothing about an asset or exchange record.
            wanted = self.assets if kind == "asset" else self.exchanges
            return not wanted or any(record_id in a.split("/") for a in wanted)
        if symbol_id is None:
            return False
        for f in self.symbols:
            if (symbol_id == f[:-1]) if f.endswith("$") else symbol_id.startswith(f):
                return True
        if any(symbol_id.startswith(e + "_") for e in self.exchanges):
            return True
        # EXCHANGE_TYPE_BASE_QUOTE, and futures and options go on (_200925, _200327_9000_C): the
        # quote is the 4th part only.
        parts = symbol_id.split("_", 4)
        base, quote = (parts[2], parts[3]) if len(parts) >= 4 else (None, None)
        return any(a in (base, quote) or a == f"{base}/{quote}" for a in self.assets)


# A sequence goes into int64 columns (the trade's, and a gap row's expected / received): one
# beyond int64 fails the head's decode, so its frame is quarantined instead of failing a flush.
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


# How far below the high-water mark a sequence may come and still be a late message of this
# stream rather than a counter that started again.
_LATE_WINDOW = 100_000


class _Head(msgspec.Struct, kw_only=True):
    type: str = ""
    symbol_id: str | None = None
    sequence: _Int64 | None = None
    message: str | None = None
    within_seconds: float | None = None


class _Detail(msgspec.Struct, kw_only=True):
    """What labels an ohlcv, exrate, asset or exchange message beyond its symbol; decoded only for those."""

    period_id: str | None = None
    asset_id_base: str | None = None
    asset_id_quote: str | None = None
    asset_id: str | None = None
    exchange_id: str | None = None


_decode_head = msgspec.json.Decoder(_Head).decode
_decode_detail = msgspec.json.Decoder(_Detail).decode
_encode = msgspec.json.encode


def _strings(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key}: expected a list of non-empty strings")
    return tuple(value)


def _scope_fields(subs: Sequence[CoinAPISubscription], types: set[str]) -> dict[str, Any]:
    """The scope fields for `types` on behalf of `subs`, widened so that none of them loses data."""
    msg: dict[str, Any] = {"subscribe_data_type": sorted(types)}
    if all(s.filtered for s in subs):
        for key in _SCOPING:
            if values := sorted({v for s in subs for v in getattr(s, key)}):
                msg[_FILTERS[key]] = values
    # Periods: their union, or every period when one bar subscription names none.
    bars = [s.periods for s in subs if "ohlcv" in s.data_types]
    if "ohlcv" in types and all(bars):
        msg["subscribe_filter_period_id"] = sorted({p for periods in bars for p in periods})
    # A limit is a least time between updates. The smallest one asked for passes at least every
    # update each subscription asked for (more often is harmless, rarer would withhold data), and
    # there is none when a subscription of those types set none.
    for field, limited in _LIMITED.items():
        if limited & types:
            asked = [dict(s.limits).get(field) for s in subs if limited & set(s.data_types)]
            if asked and None not in asked:
                msg[field] = min(v for v in asked if v is not None)
    return msg


class CoinAPIProtocol:
    """Sans-I/O CoinAPI session: hello, labelled records, sequence checks, live scope changes."""

    kind: ClassVar[str] = "coinapi"
    # The key goes in `hello` by default (PROTOCOLS.md 3.2); header X-CoinAPI-Key or ?apikey= also work.
    auth: ClassVar[AuthDefaults] = AuthDefaults(
        location="message", header="X-CoinAPI-Key", scheme="", query_param="apikey"
    )
    fatal_close_codes: ClassVar[frozenset[int]] = frozenset()
    auth_close_codes: ClassVar[frozenset[int]] = frozenset()  # a bad key is an `error` message
    # With heartbeat on, a message comes every second at least: 5 s of nothing is a dead link.
    default_idle_timeout: ClassVar[float] = 5.0
    # With it off, a quiet stream's only traffic is the server's Ping once a minute (PROTOCOLS.md 3.1).
    quiet_idle_timeout: ClassVar[float] = 90.0
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
        # (type, symbol) -> label; ohlcv, exrate, asset and exchange labels depend on more (`_label`).
        self._labels: dict[tuple[str | None, ...], str] = {}
        # CoinAPI acknowledges no subscription: the first message one receives on a connection is
        # its acknowledgement (the live view then shows it active, not pending).
        self._delivering: set[str] = set()
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
    def idle_timeout_for(cls, options: Mapping[str, Any]) -> float:
        """The idle timeout unless one is configured (config reads it; not in ProviderProtocol)."""
        return cls.default_idle_timeout if options.get("heartbeat", True) else cls.quiet_idle_timeout

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
        if any(t.startswith("book") for t in types) and not any(filters[k] for k in _SCOPING):
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

    # A change re-sends the whole scope as a `hello`, which replaces it in place: once the scope is
    # widened (see `_scope`), a `subscribe`/`unsubscribe` of one subscription's own filters would
    # narrow it, or remove nothing.

    def subscribe(self, sub: CoinAPISubscription) -> None:
        """Add a subscription on the live connection (and to every later hello)."""
        self._desired[sub.name] = sub
        self._send_scope()

    def unsubscribe(self, name: str) -> None:
        sub = self._desired.pop(name, None)
        if sub is None:
            return
        if self._desired:
            self._send_scope()
        else:  # a hello needs a data type: unsubscribing the types empties the scope
            self._labels.clear()
            msg = self._message("unsubscribe", {"subscribe_data_type": sorted(sub.data_types)})
            self._outbox.append(_encode(msg).decode())

    # -- driver inputs ---------------------------------------------------------------------------

    def connect(self) -> None:
        self._connection += 1
        self._context = {"connection": self._connection}
        self._delivering.clear()
        self._send_scope()

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

    def silence_hint(self, subscription: str) -> str:
        """What a subscription without data may mean (the driver's silent_after; not in ProviderProtocol):
        CoinAPI acknowledges nothing, so a subscription is live at its first data."""
        return (
            "no data since the hello: CoinAPI sends nothing for filters that match no symbol, exchange "
            "or asset (a symbol id misspelt, say), nor for a market without activity"
        )

    def _read(self, raw: bytes, head: _Head, received_at: int, position: int, batch: Batch) -> None:
        """Append what one decoded frame means to the batch."""
        events = batch.events
        kind, symbol, seq = head.type, head.symbol_id, head.sequence
        if kind in DATA_TYPES:
            # The hot path (one market message per frame): two dict lookups, and one Rows per
            # run of frames of one read that share table and label, not one per frame.
            key = (kind, symbol)
            label = self._labels.get(key)
            if label is None:  # the first of its kind and symbol on this scope: not per message
                label, wanting = self._label(kind, symbol, raw)
                for name in wanting:  # each one this serves is live, not only the one it is stored under
                    if name not in self._delivering:
                        self._delivering.add(name)
                        events.append(SubscriptionAcked(name))
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
            elif refused := self._refuse_type(message):
                events.extend(refused)
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
        self._outbox.append(_encode(self._message("unsubscribe", {"subscribe_data_type": types})).decode())

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

    def _refuse_type(self, message: str) -> list[SubscriptionFailed]:
        """Fail the subscriptions of a data type the key may not have; [] when the error is not that.

        They leave the scope, so the reconnect after the server's close asks without that type and
        the others go on; asking for it again would only repeat the error. A subscription is failed
        whole, though other types of it are allowed: a part of it served would look like all of it.
        """
        found = _FORBIDDEN_TYPE.search(message)
        if found is None:
            return []
        refused = [s.name for s in self._desired.values() if found[1] in s.data_types]
        for name in refused:
            del self._desired[name]
        self._labels.clear()  # cached labels may name them
        return [SubscriptionFailed(name, f"CoinAPI error: {message}", retryable=False) for name in refused]

    def _send_scope(self) -> None:
        self._labels.clear()
        self._outbox.extend(_encode(m).decode() for m in self._scope(list(self._desired.values())))

    def _scope(self, subs: Sequence[CoinAPISubscription]) -> list[dict[str, Any]]:
        """The `hello` (and at most one `subscribe` after it) that asks for every subscription.

        A message's filters apply to all its data types, and kinds of filter add up, so the union of
        the filters is exact unless a subscription has none: it wants everything of its types, so
        the message then carries no filter at all. Other subscriptions' types widen with it, and
        `_label` sorts the rows. Books and exrate cannot go unfiltered (CoinAPI refuses), so then
        they follow in a `subscribe` with their own filters, which adds to the scope.
        """
        types = {t for s in subs for t in s.data_types}
        later = set() if all(s.filtered for s in subs) else types & _NEED_FILTER
        hello = self._message("hello", _scope_fields(subs, types - later))
        if not later:
            return [hello]
        books_and_rates = [s for s in subs if later & set(s.data_types)]
        return [hello, self._message("subscribe", _scope_fields(books_and_rates, later))]

    def _message(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A hello, subscribe or unsubscribe with the key (auth in = "message") and the heartbeat
        choice, in each as CoinAPI's examples write them: a server that reads each message on its
        own would take a missing `heartbeat` for false and stop the heartbeats the idle timeout
        relies on (PROTOCOLS.md 3.4)."""
        msg: dict[str, Any] = {"type": kind}
        if self._key is not None:
            msg["apikey"] = self._key
        msg["heartbeat"] = self.heartbeat
        msg.update(fields)
        return msg

    def _label(self, kind: str, symbol_id: str | None, raw: bytes) -> tuple[str, tuple[str, ...]]:
        """The first subscription that wants this message ("" when none does), and all that do
        (overlapping filters: the row is stored once, under the first, but serves each).

        The scope may be wider than the subscriptions (`_scope`): a row none of them wants is kept,
        stored with `_subscription` "" (filter on it to leave it out), never dropped. ohlcv, exrate,
        asset and exchange labels depend on the period, the assets or the record's id too, so they
        are cached under a longer key that `_read`'s (type, symbol) look-up never hits.
        """
        key: tuple[str | None, ...] = (kind, symbol_id)
        period = base = quote = record = None
        if kind == "ohlcv" or kind == "exrate" or kind in _METADATA:
            with contextlib.suppress(msgspec.MsgspecError):  # a field of the wrong type: as if absent
                detail = _decode_detail(raw)
                period, base, quote = detail.period_id, detail.asset_id_base, detail.asset_id_quote
                if kind in _METADATA:
                    record = detail.asset_id if kind == "asset" else detail.exchange_id
            key = (kind, symbol_id, period, base, quote, record)
        label = self._labels.get(key)
        if label is not None:
            return label, (label,) if label else ()
        subs = self._desired.values()
        wanting = tuple(s.name for s in subs if s.matches(kind, symbol_id, period, (base, quote), record))
        label = self._labels[key] = wanting[0] if wanting else ""
        return label, wanting

    def _check_sequence(self, kind: str, symbol: str, seq: int, received_at: int, label: str) -> Gap | None:
        key = (kind, symbol)
        last = self._last.get(key)
        if last is not None and seq <= last[0]:
            if last[0] - seq <= _LATE_WINDOW:
                return None  # a repeat or a late one: not a hole, and not the new high-water mark
            # Far below the mark: the counter started again, or the mark came from a bogus value
            # (one 9e18 would leave every later sequence "late", every later hole unseen).
            self._last[key] = (seq, received_at)
            return None
        self._last[key] = (seq, received_at)
        if last is None or seq == last[0] + 1:
            return None
        return Gap(self.name, label, "sequence", last[1], received_at, f"{kind}:{symbol}", last[0] + 1, seq)
