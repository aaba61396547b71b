"""structlog set-up: readable in a terminal, JSON lines unattended, and no secret ever printed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog

__all__ = ["configure_logging", "forget_secret", "redact", "redact_bytes", "register_secret", "secret_forms"]

_SECRETS: set[str] = set()


def secret_forms(value: str) -> set[str]:
    """The value as it is and as a URL carries it (a redirect, a query string): percent-encoded."""
    return {value, quote(value, safe=""), quote_plus(value, safe="")}


def register_secret(value: str | None) -> None:
    """Every later log line has this value, raw or percent-encoded, replaced by ***, wherever it appears."""
    if value and len(value) >= 4:  # a very short value would mask ordinary words
        _SECRETS.update(secret_forms(value))


def forget_secret(value: str) -> None:
    """Stop masking a value that can no longer appear (a replaced token): every secret costs each log line."""
    _SECRETS.difference_update(secret_forms(value))


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def redact_bytes(data: bytes) -> bytes:
    """`redact` for bytes as received: a frame a server echoed a key in, before it is kept."""
    for secret in _SECRETS:
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
