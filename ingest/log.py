"""structlog set-up: readable in a terminal, JSON lines unattended, and no secret ever printed."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog
from yarl import URL

__all__ = ["configure_logging", "forget_secret", "redact", "redact_bytes", "register_secret", "secret_forms"]

_SECRETS: set[str] = set()
_BY_LENGTH: tuple[str, ...] = ()  # the same, longest first: no form masked leaving part of a longer one
_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-f]{4}")
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def secret_forms(value: str) -> set[str]:
    """The value as it is, as a URL carries it (a redirect, a query string) and as a server's JSON
    echoes it. Each form is masked on its own, so each encoding a library may choose must be here:
    a base64 key (`a/b+c=d`) shows as `a%2Fb%2Bc%3Dd` from urlencode, `a/b%2Bc%3Dd` from yarl (what
    aiohttp's errors print), `a/b+c=d` in a yarl path, `a\\/b+c=d` from a JSON encoder escaping '/'."""
    url = {
        value,
        quote(value, safe=""),
        quote(value),  # '/' kept
        quote_plus(value, safe=""),
        quote_plus(value),
        *_yarl_forms(value),
    }
    url |= {_PERCENT.sub(lambda m: m[0].lower(), form) for form in url}  # %2f: hex in either case
    return url | {escaped for form in url for escaped in _json_forms(form)}


def _yarl_forms(value: str) -> set[str]:
    """The value as yarl (aiohttp's URL type) writes it in a query or a path, asked of yarl itself:
    it re-encodes whatever it is given, its own way (it keeps '/', encodes '+' and '=' in a query)."""
    encoded = (quote(value, safe=""), quote(value), quote_plus(value, safe=""))
    urls = [
        lambda: URL.build(query={"k": value}),
        lambda: URL.build(path="/" + value),
        *(lambda e=e: URL(f"/{e}?k={e}") for e in encoded),  # as received in a URL: requoted
    ]
    forms: set[str] = set()
    for url in urls:
        try:
            built = url()
        except ValueError:  # a form yarl refuses is one no aiohttp URL carries, hence prints
            continue
        forms |= {built.raw_path[1:], built.raw_query_string.removeprefix("k=")} - {""}
    return forms


def _json_forms(value: str) -> set[str]:
    """The value inside a JSON string, as encoders write it: non-ASCII as is or as \\uXXXX (either
    case of hex), '/' as is or escaped as '\\/' (PHP, some Java encoders)."""
    forms = {json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]}
    forms |= {_UNICODE_ESCAPE.sub(lambda m: m[0].upper().replace("\\U", "\\u"), f) for f in forms}
    return forms | {f.replace("/", "\\/") for f in forms}


def register_secret(value: str | None) -> None:
    """Every later log line has this value, raw or percent-encoded, replaced by ***, wherever it appears."""
    if value and len(value) >= 4:  # a very short value would mask ordinary words
        _SECRETS.update(secret_forms(value))
        _order()


def forget_secret(value: str) -> None:
    """Stop masking a value that can no longer appear (a replaced token): every secret costs each log line."""
    _SECRETS.difference_update(secret_forms(value))
    _order()


def _order() -> None:
    global _BY_LENGTH
    _BY_LENGTH = tuple(sorted(_SECRETS, key=len, reverse=True))


def redact(text: str) -> str:
    for secret in _BY_LENGTH:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def redact_bytes(data: bytes) -> bytes:
    """`redact` for bytes as received: a frame a server echoed a key in, before it is kept."""
    for secret in _BY_LENGTH:
        encoded = secret.encode()
        if encoded in data:
            data = data.replace(encoded, b"***")
    return data


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _SECRETS:
        return event
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif value is not None and not isinstance(value, int | float | bool):
            event[key] = redact(str(value))
    return event


class _StderrLogger:
    """Looks sys.stderr up at each call, so rich's live display can redirect it."""

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(fmt: str = "console", level: int = logging.INFO) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
