"""How long a provider asks a client to wait before it tries again.

The driver's backoff starts at a second; a provider that refuses a connection for a rate limit
says how long the limit lasts, and connecting again sooner only meets the same refusal (CoinAPI's
per-IP connection limit exists "to stop reconnect loops without backoff", PROTOCOLS.md 3.7).
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from collections.abc import Mapping

__all__ = ["MAX_WAIT", "from_headers"]

# A longer hint is taken as this: the collector still tries again within a bounded time, and a
# provider's mistake (or a hostile proxy) cannot park it for days. Each wait is logged.
MAX_WAIT = 600.0
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")  # str.isdigit() would take "²", which float() refuses


def from_headers(headers: Mapping[str, str] | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds to wait from a refused upgrade's headers, at most MAX_WAIT; None: no usable hint.

    `Retry-After` in seconds or as an HTTP date (RFC 9110), and any `...-RetryAfterMs` header
    (CoinAPI: `X-WsRequestsPerIpLimit-RetryAfterMs`, `X-WsHelloPerIpLimit-RetryAfterMs`). Where
    several are given, the longest.
    """
    if not headers:
        return None
    hints: list[float] = []
    for name, value in headers.items():
        key = name.lower()
        if key == "retry-after":
            hints.append(_retry_after(value.strip(), now))
        elif key.endswith("-retryafterms"):
            hints.append(_number(value) / 1000)
    usable = [h for h in hints if h > 0]  # NaN (unreadable) compares false: left out
    return min(max(usable), MAX_WAIT) if usable else None  # 400 digits read as inf: the cap


def _retry_after(value: str, now: datetime.datetime | None) -> float:
    seconds = _number(value)
    if not math.isnan(seconds):
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return math.nan
    if when.tzinfo is None:  # "-0000": an HTTP date is always GMT
        when = when.replace(tzinfo=datetime.UTC)
    return (when - (now or datetime.datetime.now(datetime.UTC))).total_seconds()


def _number(value: str) -> float:
    """A plain decimal number (ASCII digits, maybe a fraction); NaN for anything else ("inf", "²")."""
    value = value.strip()
    return float(value) if _DECIMAL.fullmatch(value) else math.nan
