"""CoinAPI hello/subscribe/unsubscribe: validation, the per-connection scope and filter matching."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ingest.emulators.coinapi_market import Symbol

__all__ = [
    "BOOK_TYPES",
    "DATA_TYPES",
    "SERVED_TYPES",
    "Request",
    "Scope",
    "ScopeError",
    "parse_request",
    "symbol_matches",
]

SERVED_TYPES = frozenset({"trade", "quote", "book", "book5", "book20", "book50", "ohlcv", "exrate"})
# Documented types this emulator accepts but produces nothing for (no L3 or metadata synthesis).
UNSERVED_TYPES = frozenset({"book_l3", "asset", "exchange", "symbol"})
DATA_TYPES = SERVED_TYPES | UNSERVED_TYPES
BOOK_TYPES = frozenset({"book", "book5", "book20", "book50", "book_l3"})
# Filter field -> atom kind; every entry of every kind is one atom, atoms combine as a union.
_FILTERS = {
    "subscribe_filter_symbol_id": "symbol",
    "subscribe_filter_exchange_id": "exchange",
    "subscribe_filter_asset_id": "asset",
}
_LIMITS = {
    "subscribe_update_limit_ms_quote": ("quote",),
    "subscribe_update_limit_ms_book_snapshot": ("book5", "book20", "book50"),
    "subscribe_update_limit_ms_exrate": ("exrate",),
}

# (data type, filter kind, value); kind "all" (value "") when a message names no filter.
Atom = tuple[str, str, str]
Route = tuple[str, str]


class ScopeError(Exception):
    """A request CoinAPI answers with `{"type":"error"}` and a disconnect."""


@dataclass(slots=True)
class Request:
    """A validated hello, subscribe or unsubscribe."""

    kind: str
    apikey: str | None
    heartbeat: bool | None
    data_types: tuple[str, ...]
    filters: tuple[tuple[str, str], ...]
    periods: frozenset[str]
    limits: dict[str, int]

    def atoms(self) -> set[Atom]:
        """The cross product of data types and filter entries, as CoinAPI combines them."""
        filters = self.filters or (("all", ""),)
        return {(t, kind, value) for t in self.data_types for kind, value in filters}


def _strings(msg: dict[str, Any], name: str) -> list[str]:
    value = msg.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScopeError(f"Parameter '{name}' must be an array of strings.")
    return value


def parse_request(msg: dict[str, Any], kind: str) -> Request:
    """Validate the parameters of a hello/subscribe/unsubscribe (its `type` already checked)."""
    apikey = msg.get("apikey")
    if apikey is not None and not isinstance(apikey, str):
        raise ScopeError("Parameter 'apikey' must be a string.")
    heartbeat = msg.get("heartbeat")
    if heartbeat is not None and not isinstance(heartbeat, bool):
        raise ScopeError("Parameter 'heartbeat' must be true or false.")
    if kind != "unsubscribe" and msg.get("subscribe_data_type") is None:
        raise ScopeError("Parameter 'subscribe_data_type' is required.")
    data_types = _strings(msg, "subscribe_data_type")
    if kind != "unsubscribe" and not data_types:
        raise ScopeError("Parameter 'subscribe_data_type' must list at least one data type.")
    for data_type in data_types:
        if data_type not in DATA_TYPES:
            raise ScopeError(f"Unknown data type '{data_type}' in 'subscribe_data_type'.")
    filters = tuple((kind_, v) for name, kind_ in _FILTERS.items() for v in _strings(msg, name))
    if kind != "unsubscribe":
        for data_type in data_types:
            if data_type in BOOK_TYPES and not filters:
                raise ScopeError(
                    f"Data type '{data_type}' requires a symbol, exchange or asset filter "
                    "(subscribe_filter_symbol_id, subscribe_filter_exchange_id or subscribe_filter_asset_id)."
                )
            if data_type == "exrate" and not any(k == "asset" for k, _ in filters):
                raise ScopeError("Data type 'exrate' requires 'subscribe_filter_asset_id'.")
    limits: dict[str, int] = {}
    for name, types in _LIMITS.items():
        value = msg.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ScopeError(f"Parameter '{name}' must be a non-negative integer.")
        limits.update(dict.fromkeys(types, value))
    periods = frozenset(_strings(msg, "subscribe_filter_period_id"))
    return Request(kind, apikey, heartbeat, tuple(data_types), filters, periods, limits)


def symbol_matches(symbol: Symbol, kind: str, value: str) -> bool:
    """One filter entry against one symbol, per the hello parameter table."""
    if kind == "all":
        return True
    if kind == "symbol":
        # A trailing `$` switches the entry from prefix to exact match.
        return symbol.symbol_id == value[:-1] if value.endswith("$") else symbol.symbol_id.startswith(value)
    if kind == "exchange":
        return symbol.exchange_id == value
    base, slash, quote = value.partition("/")
    if slash:  # an asset pair matches that pair only
        return (symbol.asset_id_base, symbol.asset_id_quote) == (base, quote)
    return value in (symbol.asset_id_base, symbol.asset_id_quote)


def _exrate_routes(value: str) -> list[str]:
    """Exrate routes for one asset filter entry: an asset, or both legs of a non-USD pair."""
    base, slash, quote = value.partition("/")
    if not slash:
        return [value]
    if quote == "USD":
        return [base]
    return [f"{asset}@pair" for asset in (base, quote) if asset != "USD"]


@dataclass(slots=True)
class Scope:
    """One connection's subscription scope: a set of atoms plus the OHLCV period filter and limits."""

    atoms: set[Atom] = field(default_factory=set)
    periods: set[str] | None = None  # None: every period
    limits: dict[str, int] = field(default_factory=dict)
    heartbeat: bool = False

    def apply(self, request: Request) -> None:
        """hello replaces the scope, subscribe adds to it, unsubscribe removes from it."""
        atoms = request.atoms()
        had_ohlcv = any(a[0] == "ohlcv" for a in self.atoms)
        if request.kind == "hello":
            self.atoms = atoms
            self.periods = set(request.periods) or None
            self.limits = dict(request.limits)
            self.heartbeat = bool(request.heartbeat)
            return
        if request.heartbeat is not None:
            self.heartbeat = request.heartbeat
        if request.kind == "subscribe":
            self.atoms |= atoms
            if request.periods:
                # Adding periods cannot narrow "every period", unless no bars were subscribed yet.
                if not had_ohlcv:
                    self.periods = set(request.periods)
                elif self.periods is not None:
                    self.periods |= request.periods
            self.limits.update(request.limits)
            return
        self._remove(request)

    def _remove(self, request: Request) -> None:
        types, filters = set(request.data_types), set(request.filters)
        if types and filters:
            self.atoms -= request.atoms()
        elif types:
            self.atoms = {a for a in self.atoms if a[0] not in types}
        elif filters:
            self.atoms = {a for a in self.atoms if (a[1], a[2]) not in filters}
        if request.periods and self.periods is not None:
            self.periods -= request.periods

    def routes(self, symbols: Iterable[Symbol]) -> set[Route]:
        """Every (data type, route) the scope selects; a route is a symbol_id or an exrate key."""
        symbols = tuple(symbols)
        routes: set[Route] = set()
        for data_type, kind, value in self.atoms:
            if data_type in UNSERVED_TYPES:
                continue
            if data_type == "exrate":
                if kind == "asset":
                    routes.update(("exrate", r) for r in _exrate_routes(value))
                continue
            routes.update((data_type, s.symbol_id) for s in symbols if symbol_matches(s, kind, value))
        return routes
