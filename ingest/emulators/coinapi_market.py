"""Deterministic synthetic crypto market for the CoinAPI emulator: symbols, books, trades, quotes, bars."""

from __future__ import annotations

import random
import uuid
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest.emulators.coinapi_wire import (
    TICKS_PER_SECOND,
    Event,
    book_frame,
    exrate_frame,
    ohlcv_frame,
    quote_frame,
    to_ticks,
    trade_frame,
)

__all__ = ["BOOK_DEPTH", "DEFAULT_CLOCK_START", "DERIVATIVES", "PERIODS", "SYMBOLS", "Market", "Symbol"]

DEFAULT_CLOCK_START = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
BOOK_DEPTH = 50  # levels per side of the synthetic full book; book50 shows all of them
PERIODS = (("1SEC", 1), ("1MIN", 60))  # the WS data-type table promises 1SEC and 1MIN bars
OHLCV_INTERIM = 5 * TICKS_PER_SECOND  # an open bar is re-sent every 5 s while it changes
SLOW_BOOK = TICKS_PER_SECOND  # book20/book50 go out at most once a second


@dataclass(frozen=True, slots=True)
class Symbol:
    """A traded instrument; prices live on an integer grid of `step` so books diff exactly."""

    symbol_id: str
    exchange_id: str
    symbol_type: str
    asset_id_base: str
    asset_id_quote: str
    price: float
    step: float
    lot: float
    size_decimals: int
    activity: float
    estimated_sides: bool = False  # the exchange does not report the aggressor: CoinAPI estimates it


# BITSTAMP_SPOT_BTC_USD beside BITSTAMP_SPOT_BTC_USDT makes prefix and exact (`$`) filters observable.
SYMBOLS = (
    Symbol("BITSTAMP_SPOT_BTC_USD", "BITSTAMP", "SPOT", "BTC", "USD", 64000.0, 1.0, 0.05, 8, 0.6),
    Symbol("BITSTAMP_SPOT_BTC_USDT", "BITSTAMP", "SPOT", "BTC", "USDT", 64012.0, 1.0, 0.04, 8, 0.3),
    Symbol("BITSTAMP_SPOT_BTC_EUR", "BITSTAMP", "SPOT", "BTC", "EUR", 59050.0, 1.0, 0.03, 8, 0.3),
    Symbol("BITSTAMP_SPOT_ETH_USD", "BITSTAMP", "SPOT", "ETH", "USD", 3200.0, 0.1, 0.5, 8, 0.4),
    Symbol("COINBASE_SPOT_BTC_USD", "COINBASE", "SPOT", "BTC", "USD", 64005.0, 0.5, 0.03, 8, 1.0),
    Symbol("COINBASE_SPOT_ETH_USD", "COINBASE", "SPOT", "ETH", "USD", 3201.0, 0.05, 0.4, 8, 0.8),
    Symbol("COINBASE_SPOT_SOL_USD", "COINBASE", "SPOT", "SOL", "USD", 145.0, 0.01, 6.0, 8, 0.6),
    Symbol("KRAKEN_SPOT_BTC_EUR", "KRAKEN", "SPOT", "BTC", "EUR", 59040.0, 0.5, 0.04, 8, 0.5, True),
    Symbol("KRAKEN_SPOT_ETH_EUR", "KRAKEN", "SPOT", "ETH", "EUR", 2952.0, 0.05, 0.5, 8, 0.3, True),
    Symbol("BINANCE_SPOT_BTC_USDT", "BINANCE", "SPOT", "BTC", "USDT", 64020.0, 0.5, 0.02, 5, 1.0),
    Symbol("BINANCE_SPOT_ETH_USDT", "BINANCE", "SPOT", "ETH", "USDT", 3202.0, 0.05, 0.3, 4, 0.9),
    Symbol("BINANCE_PERP_BTC_USDT", "BINANCE", "PERP", "BTC", "USDT", 64030.0, 0.5, 0.05, 3, 0.9),
    Symbol("BITMEX_PERP_BTC_USD", "BITMEX", "PERP", "BTC", "USD", 64040.0, 0.5, 100.0, 0, 0.5),
)
# A future and an option, whose ids go on past the quote (expiry; expiry, strike and kind). Not in
# SYMBOLS, so the default market (tests' expected symbol sets, the benchmarks' frame pool) stays as
# it is: pass `symbols=SYMBOLS + DERIVATIVES` to serve them.
DERIVATIVES = (
    Symbol("BITMEX_FTS_BTC_USD_200925", "BITMEX", "FTS", "BTC", "USD", 64100.0, 0.5, 100.0, 0, 0.5),
    Symbol("DERIBIT_OPT_BTC_USD_200327_9000_C", "DERIBIT", "OPT", "BTC", "USD", 2500.0, 5.0, 0.1, 1, 0.4),
)


@dataclass(slots=True)
class _Bar:
    period_id: str
    start: int
    end: int
    time_open: int
    time_close: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    count: int = 0
    dirty: bool = True
    last_emit: int = 0


@dataclass(slots=True)
class _Book:
    """One symbol's state: its own random stream, top of book, full L2 book and open bars."""

    sym: Symbol
    rng: random.Random
    flood_rng: random.Random
    center: int
    spread: int = 1
    bid_size: float = 0.0
    ask_size: float = 0.0
    bids: dict[int, float] = field(default_factory=dict)
    asks: dict[int, float] = field(default_factory=dict)
    top5: tuple[tuple[int, float], ...] = ()
    slow_dirty: bool = True
    bars: dict[str, _Bar | None] = field(default_factory=dict)

    def size(self, rng: random.Random) -> float:
        sym = self.sym
        size = round(sym.lot * rng.lognormvariate(0.0, 0.7), sym.size_decimals)
        return size or 10.0**-sym.size_decimals

    def rebuild(self) -> tuple[dict[int, float], dict[int, float]]:
        """Lay the book around the current top; return the previous sides for diffing."""
        rng, old_bids, old_asks = self.rng, self.bids, self.asks
        best_bid, best_ask = self.center, self.center + self.spread
        bids = {best_bid - i: old_bids.get(best_bid - i) or self.size(rng) for i in range(BOOK_DEPTH)}
        asks = {best_ask + i: old_asks.get(best_ask + i) or self.size(rng) for i in range(BOOK_DEPTH)}
        # A few resting orders come and go deeper in the book each tick.
        for _ in range(rng.randint(0, 3)):
            side = bids if rng.random() < 0.5 else asks
            depth = rng.randrange(1, BOOK_DEPTH)
            side[best_bid - depth if side is bids else best_ask + depth] = self.size(rng)
        bids[best_bid], asks[best_ask] = self.bid_size, self.ask_size
        self.bids, self.asks = bids, asks
        return old_bids, old_asks


class Market:
    """Advances every symbol one tick at a time; the same seed yields the same events, whoever listens.

    Randomness is drawn per symbol and never depends on `wanted` (which routes have listeners): that
    only decides which events are encoded, so subscriptions cannot change the market.
    """

    def __init__(
        self,
        seed: int = 1,
        *,
        clock_start: datetime = DEFAULT_CLOCK_START,
        tick_duration: float = 0.1,
        trades_per_tick: float = 2.0,
        quotes_per_tick: float = 3.0,
        book_snapshot_every: int = 0,
        symbols: Iterable[Symbol] = SYMBOLS,
    ) -> None:
        self.symbols = {s.symbol_id: s for s in symbols}
        self.tick_duration = max(to_ticks(tick_duration), 1)
        self.trades_per_tick = trades_per_tick
        self.quotes_per_tick = quotes_per_tick
        self.book_snapshot_every = book_snapshot_every
        self.now = to_ticks(clock_start.timestamp())
        self.ticks = 0
        self._books: dict[str, _Book] = {}
        for sym in self.symbols.values():
            rng = random.Random(f"coinapi:{seed}:{sym.symbol_id}")
            book = _Book(
                sym, rng, random.Random(f"coinapi-flood:{seed}:{sym.symbol_id}"), round(sym.price / sym.step)
            )
            book.bid_size, book.ask_size = book.size(rng), book.size(rng)
            book.bars = {period: None for period, _ in PERIODS}
            book.rebuild()
            self._books[sym.symbol_id] = book

    def mid(self, symbol_id: str) -> float:
        book = self._books[symbol_id]
        return (book.center + book.spread / 2) * book.sym.step

    # -- ticks -----------------------------------------------------------------------------------

    def step(self, wanted: Container[tuple[str, str]]) -> list[Event]:
        """Advance the clock one tick; return the events of the routes in `wanted`, in arrival order."""
        start, end = self.now, self.now + self.tick_duration
        self.now = end
        self.ticks += 1
        events: list[Event] = []
        crossed = start // SLOW_BOOK != end // SLOW_BOOK
        for book in self._books.values():
            self._trade_and_quote(book, start, wanted, events)
            self._book_events(book, end, wanted, crossed=crossed, out=events)
            self._close_bars(book, end, wanted, events)
        if crossed:
            self._rates(end, wanted, events)
        events.sort(key=lambda e: e.time_coinapi)
        return events

    def flood(self, symbol_ids: Iterable[str], n: int, wanted: Container[tuple[str, str]]) -> list[Event]:
        """`n` extra trades per symbol at the current top of book, 1 microsecond apart.

        The market clock moves past them, so later ticks never stamp a trade before a flooded one.
        """
        events: list[Event] = []
        base = self.now
        for sid in symbol_ids:
            book = self._books[sid]
            for k in range(1, n + 1):
                self._trade(book, book.flood_rng, base + 10 * k, 10, wanted, events)
        self.now = base + 10 * n
        events.sort(key=lambda e: e.time_coinapi)
        return events

    def _trade_and_quote(
        self, book: _Book, start: int, wanted: Container[tuple[str, str]], out: list[Event]
    ) -> None:
        rng, sym = book.rng, book.sym
        n_trades = rng.randint(0, round(2 * self.trades_per_tick * sym.activity))
        n_quotes = rng.randint(0, round(2 * self.quotes_per_tick * sym.activity))
        kinds = [True] * n_trades + [False] * n_quotes
        rng.shuffle(kinds)
        offsets = sorted(rng.randrange(self.tick_duration) for _ in kinds)
        for is_trade, offset in zip(kinds, offsets, strict=True):
            latency = rng.randrange(5_000, 200_000)  # 0.5-20 ms from exchange to CoinAPI
            if is_trade:
                self._trade(book, rng, start + offset, latency, wanted, out)
                continue
            book.center = max(book.center + round(rng.gauss(0.0, 1.5)), BOOK_DEPTH + 1)
            book.spread = rng.choice((1, 1, 1, 2, 3))
            book.bid_size, book.ask_size = book.size(rng), book.size(rng)
            if ("quote", sym.symbol_id) in wanted:
                t = start + offset
                bid, ask = book.center * sym.step, (book.center + book.spread) * sym.step
                out.append(quote_frame(sym.symbol_id, t, t + latency, ask, book.ask_size, bid, book.bid_size))

    def _trade(
        self,
        book: _Book,
        rng: random.Random,
        t: int,
        latency: int,
        wanted: Container[tuple[str, str]],
        out: list[Event],
    ) -> None:
        sym = book.sym
        buy = rng.random() < 0.5
        price = (book.center + book.spread if buy else book.center) * sym.step
        size = book.size(rng)
        if rng.random() < 0.02:
            side = "UNKNOWN"
        elif sym.estimated_sides:
            side = "BUY_ESTIMATED" if buy else "SELL_ESTIMATED"
        else:
            side = "BUY" if buy else "SELL"
        trade_id = str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper()
        for period, _ in PERIODS:
            self._add_to_bar(book, period, t, price, size, wanted, out)
        if ("trade", sym.symbol_id) in wanted:
            out.append(trade_frame(sym.symbol_id, t, t + latency, trade_id, price, size, side))

    # -- books -----------------------------------------------------------------------------------

    def _book_events(
        self, book: _Book, end: int, wanted: Container[tuple[str, str]], *, crossed: bool, out: list[Event]
    ) -> None:
        rng, sid, step = book.rng, book.sym.symbol_id, book.sym.step
        t_exchange = end - rng.randrange(1, 10_000)
        t_coinapi = end + rng.randrange(5_000, 200_000)
        old_bids, old_asks = book.rebuild()
        changed = old_bids != book.bids or old_asks != book.asks
        book.slow_dirty |= changed
        bids = sorted(book.bids.items(), reverse=True)
        asks = sorted(book.asks.items())
        if ("book", sid) in wanted:
            snapshot = book_frame("book", sid, t_exchange, t_coinapi, asks, bids, step, is_snapshot=True)
            every = self.book_snapshot_every
            if every and self.ticks % every == 0:
                event = snapshot  # mid-stream snapshot (FAQ): clients reset their book from it
            else:
                d_asks = _diff(old_asks, book.asks, reverse=False)
                d_bids = _diff(old_bids, book.bids, reverse=True)
                event = book_frame(
                    "book", sid, t_exchange, t_coinapi, d_asks, d_bids, step, is_snapshot=False
                )
                if not changed:
                    event.tail = None  # nothing for existing listeners; a new one still gets the snapshot
            event.snapshot = snapshot.tail
            out.append(event)
        top5 = tuple(bids[:5] + asks[:5])
        if top5 != book.top5:
            book.top5 = top5
            if ("book5", sid) in wanted:
                out.append(book_frame("book5", sid, t_exchange, t_coinapi, asks[:5], bids[:5], step))
        if crossed and book.slow_dirty:
            book.slow_dirty = False
            for dtype, depth in (("book20", 20), ("book50", 50)):
                if (dtype, sid) in wanted:
                    out.append(
                        book_frame(dtype, sid, t_exchange, t_coinapi, asks[:depth], bids[:depth], step)
                    )

    # -- bars and rates --------------------------------------------------------------------------

    def _add_to_bar(
        self,
        book: _Book,
        period: str,
        t: int,
        price: float,
        size: float,
        wanted: Container[tuple[str, str]],
        out: list[Event],
    ) -> None:
        bar = book.bars[period]
        if bar is not None and t >= bar.end:
            self._emit_bar(book, bar, bar.end, wanted, out)
            bar = None
        if bar is None:
            length = dict(PERIODS)[period] * TICKS_PER_SECOND
            start = t - t % length
            bar = _Bar(period, start, start + length, t, t, price, price, price, price, last_emit=start)
            book.bars[period] = bar
        bar.high, bar.low, bar.close = max(bar.high, price), min(bar.low, price), price
        bar.time_close = t
        bar.volume += size
        bar.count += 1
        bar.dirty = True

    def _close_bars(
        self, book: _Book, end: int, wanted: Container[tuple[str, str]], out: list[Event]
    ) -> None:
        for period, bar in book.bars.items():
            if bar is None:
                continue
            if end >= bar.end:
                self._emit_bar(book, bar, bar.end, wanted, out)
                book.bars[period] = None
            elif bar.dirty and end - bar.last_emit >= OHLCV_INTERIM:
                self._emit_bar(book, bar, end, wanted, out)

    def _emit_bar(
        self, book: _Book, bar: _Bar, at: int, wanted: Container[tuple[str, str]], out: list[Event]
    ) -> None:
        bar.dirty, bar.last_emit = False, at
        sym = book.sym
        if ("ohlcv", sym.symbol_id) in wanted:
            volume = round(bar.volume, sym.size_decimals)
            prices = (bar.open, bar.high, bar.low, bar.close)
            out.append(
                ohlcv_frame(sym.symbol_id, bar.period_id, bar.start, bar.end, bar.time_open, bar.time_close,
                            prices, volume, bar.count, at)
            )  # fmt: skip

    def rates(self) -> dict[str, float]:
        """USD rate per asset: mean spot mid against USD; EUR and USDT through their BTC crosses."""
        usd: dict[str, list[float]] = {}
        for sym in self.symbols.values():
            if sym.symbol_type == "SPOT" and sym.asset_id_quote == "USD":
                usd.setdefault(sym.asset_id_base, []).append(self.mid(sym.symbol_id))
        rates = {asset: sum(mids) / len(mids) for asset, mids in usd.items()}
        btc = rates.get("BTC")
        for quote in ("EUR", "USDT"):
            mids = [
                self.mid(s.symbol_id)
                for s in self.symbols.values()
                if s.symbol_type == "SPOT" and s.asset_id_base == "BTC" and s.asset_id_quote == quote
            ]
            if btc and mids:
                rates[quote] = btc / (sum(mids) / len(mids))
        return rates

    def _rates(self, end: int, wanted: Container[tuple[str, str]], out: list[Event]) -> None:
        for asset, rate in self.rates().items():
            for route, rate_type in (
                (asset, "BASE_ALL_CROSSES_TO_REF"),
                (f"{asset}@pair", "BASE_AND_QUOTE_TO_REF"),
            ):
                if ("exrate", route) in wanted:
                    out.append(exrate_frame(route, asset, rate_type, end, round(rate, 9)))


def _diff(old: dict[int, float], new: dict[int, float], *, reverse: bool) -> list[tuple[int, float]]:
    """Levels whose size changed, best first; a level that left the book has size 0."""
    changed = [
        (level, new.get(level, 0.0)) for level in old.keys() | new.keys() if old.get(level) != new.get(level)
    ]
    return sorted(changed, reverse=reverse)
