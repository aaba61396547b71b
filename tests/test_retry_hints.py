"""What a refused upgrade's headers ask a client to wait."""

from __future__ import annotations

import datetime

import pytest

from ingest.retry_hints import from_headers

TEN_MINUTES = 600.0  # the README's cap on a provider's hint, written out (not the module's constant)

NOW = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "12"}, 12.0),
        ({"retry-after": " 3 "}, 3.0),  # names are case-insensitive, values may be padded
        ({"Retry-After": "Mon, 07 Dec 2026 12:00:30 GMT"}, 30.0),  # an HTTP date
        ({"X-WsRequestsPerIpLimit-RetryAfterMs": "2500"}, 2.5),  # CoinAPI's per-IP connection limit
        ({"x-wshelloperiplimit-retryafterms": "750"}, 0.75),
        ({"Retry-After": "1", "X-WsRequestsPerIpLimit-RetryAfterMs": "4000"}, 4.0),  # the longest
        ({"Retry-After": "86400"}, TEN_MINUTES),  # a day is taken as the cap
        ({"Retry-After": "9" * 400}, TEN_MINUTES),  # beyond a double too
        ({"X-WsRequestsPerIpLimit-RetryAfterMs": "1" + "0" * 400}, TEN_MINUTES),
    ],
)
def test_a_hint_in_the_headers_is_the_wait(headers, seconds):
    assert from_headers(headers, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"Content-Type": "text/plain"},
        {"Retry-After": "soon"},
        {"Retry-After": "-5"},
        {"Retry-After": "0"},
        {"Retry-After": "Mon, 07 Dec 2026 11:59:00 GMT"},  # already past
        {"X-WsRequestsPerIpLimit-RetryAfterMs": "nan"},
        {"X-WsRequestsPerIpLimit-RetryAfterMs": "inf"},
        {"X-WsRequestsPerIpLimit-RetryAfterMs": ""},
        {"X-WsRequestsPerIpLimit-RetryAfterMs": "1e3"},
        {"Retry-After": "²"},  # a digit to str.isdigit(), not to float()
        {"Retry-After": "١٢"},  # Arabic-Indic digits
        {"X-WsRequestsPerIpLimit-RetryAfterMs": "²"},
    ],
)
def test_no_usable_hint_is_none(headers):
    assert from_headers(headers, NOW) is None
