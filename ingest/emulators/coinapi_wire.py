"""CoinAPI WebSocket V1 wire formats: 7-digit timestamps, 9-decimal numbers and pre-split data frames."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

__all__ = [
    "HEARTBEAT_FRAME",
    "TICKS_PER_SECOND",
    "Event",
    "book_frame",
    "control_frame",
    "exrate_frame",
    "iso7",
    "num",
    "ohlcv_frame",
    "quote_frame",
    "to_ticks",
    "trade_frame",
]

TICKS_PER_SECOND = 10_000_000  # CoinAPI times carry 100 ns ticks: 7 fractional digits
# Spelt exactly as CoinAPI sends it (documented example); clients must accept this spelling.
HEARTBEAT_FRAME = b'{"type":"hearbeat"}'

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Event:
    """One market message, split around its `sequence` value so each connection numbers it cheaply.

    A frame is `head + str(sequence) + tail`; unsequenced types (exrate) are the whole of `head`.
    For `book`, `snapshot` is the full-book tail a new listener gets instead of the delta `tail`
    (None when the book did not change: only new listeners receive anything).
    """

    dtype: str
    route: str  # what subscriptions match: a symbol_id, or an exrate asset key
    key: str  # what the emulator's `sent` counter is keyed by, beside dtype
    time: int  # market time (100 ns ticks) that update-rate limits compare
    time_coinapi: int  # arrival order within a tick
    head: bytes
    tail: bytes | None
    sequenced: bool = True
    uuid: str | None = None
    period_id: str | None = None
    snapshot: bytes | None = None


def to_ticks(seconds: float) -> int:
    """Seconds (possibly a Unix timestamp) to 100 ns ticks."""
    return round(seconds * TICKS_PER_SECOND)


_second_cache: dict[int, str] = {}


def iso7(ticks: int) -> str:
    """`yyyy-MM-ddTHH:mm:ss.fffffffZ` for a Unix time in 100 ns ticks."""
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    prefix = _second_cache.get(seconds)
    if prefix is None:
        if len(_second_cache) > 4096:
            _second_cache.clear()
        prefix = _second_cache[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{prefix}.{fraction:07d}Z"


def num(value: float) -> str:
    """A JSON number with 9 decimals, as CoinAPI prints them (`770.000000000`)."""
    return f"{value:.9f}"


def control_frame(**fields: object) -> bytes:
    """A control message (error, reconnect) encoded as JSON."""
    return _encode(fields)


def _head(dtype: str, symbol_id: str) -> bytes:
    return f'{{"type":"{dtype}","symbol_id":"{symbol_id}","sequence":'.encode()


def _times(t_exchange: int, t_coinapi: int) -> str:
    return f',"time_exchange":"{iso7(t_exchange)}","time_coinapi":"{iso7(t_coinapi)}"'


def trade_frame(
    symbol_id: str, t_exchange: int, t_coinapi: int, uuid: str, price: float, size: float, side: str
) -> Event:
    tail = (
        f'{_times(t_exchange, t_coinapi)},"uuid":"{uuid}","price":{num(price)},"size":{num(size)},'
        f'"taker_side":"{side}"}}'
    )
    head = _head("trade", symbol_id)
    return Event("trade", symbol_id, symbol_id, t_exchange, t_coinapi, head, tail.encode(), uuid=uuid)


def quote_frame(
    symbol_id: str, t_exchange: int, t_coinapi: int, ask: float, ask_size: float, bid: float, bid_size: float
) -> Event:
    tail = (
        f'{_times(t_exchange, t_coinapi)},"ask_price":{num(ask)},"ask_size":{num(ask_size)},'
        f'"bid_price":{num(bid)},"bid_size":{num(bid_size)}}}'
    )
    return Event(
        "quote", symbol_id, symbol_id, t_exchange, t_coinapi, _head("quote", symbol_id), tail.encode()
    )


def _levels(levels: Sequence[tuple[int, float]], step: float) -> str:
    return ",".join(f'{{"price":{num(level * step)},"size":{num(size)}}}' for level, size in levels)


def book_frame(
    dtype: str,
    symbol_id: str,
    t_exchange: int,
    t_coinapi: int,
    asks: Sequence[tuple[int, float]],
    bids: Sequence[tuple[int, float]],
    step: float,
    *,
    is_snapshot: bool | None = None,
) -> Event:
    """book (with `is_snapshot`) or book5/20/50 (without); levels are (grid index, size), best first."""
    flag = "" if is_snapshot is None else f',"is_snapshot":{"true" if is_snapshot else "false"}'
    sides = f'"asks":[{_levels(asks, step)}],"bids":[{_levels(bids, step)}]'
    tail = f"{_times(t_exchange, t_coinapi)}{flag},{sides}}}"
    return Event(dtype, symbol_id, symbol_id, t_exchange, t_coinapi, _head(dtype, symbol_id), tail.encode())


def ohlcv_frame(
    symbol_id: str,
    period_id: str,
    start: int,
    end: int,
    time_open: int,
    time_close: int,
    prices: tuple[float, float, float, float],
    volume: float,
    count: int,
    at: int,
) -> Event:
    p_open, p_high, p_low, p_close = prices
    tail = (
        f',"period_id":"{period_id}","time_period_start":"{iso7(start)}","time_period_end":"{iso7(end)}",'
        f'"time_open":"{iso7(time_open)}","time_close":"{iso7(time_close)}","price_open":{num(p_open)},'
        f'"price_high":{num(p_high)},"price_low":{num(p_low)},"price_close":{num(p_close)},'
        f'"volume_traded":{num(volume)},"trades_count":{count}}}'
    )
    return Event("ohlcv", symbol_id, symbol_id, at, at, _head("ohlcv", symbol_id), tail.encode(),
                 period_id=period_id)  # fmt: skip


def exrate_frame(route: str, asset: str, rate_type: str, t: int, rate: float) -> Event:
    """An exchange rate against USD (the only quote on the wire); exrate carries no sequence."""
    frame = (
        f'{{"type":"exrate","asset_id_base":"{asset}","asset_id_quote":"USD","rate_type":"{rate_type}",'
        f'"time":"{iso7(t)}","rate":{num(rate)}}}'
    )
    return Event("exrate", route, f"{asset}/USD", t, t, frame.encode(), b"", sequenced=False)
