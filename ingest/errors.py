"""One error tree for the pipeline: Transient errors are retried, Fatal ones stop what raised them."""

from __future__ import annotations

__all__ = [
    "AuthRejected",
    "ConfigError",
    "Disconnected",
    "Fatal",
    "IngestError",
    "ProtocolFatal",
    "Silent",
    "SinkError",
    "Transient",
]


class IngestError(Exception):
    """Base of every error the pipeline raises on purpose."""


class Transient(IngestError):
    """Worth retrying after a backoff: the cause may go away by itself.

    `retry_after`: seconds the provider asked us to wait at least (a Retry-After header, close
    1013 TRY_AGAIN_LATER), honoured even where the backoff would be shorter.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Fatal(IngestError):
    """Retrying cannot help (bad key, bad config): stop the component that raised it."""


class ConfigError(Fatal):
    """The configuration is invalid; the message names the key at fault."""


class Disconnected(Transient):
    """The socket closed or failed."""

    def __init__(self, message: str, *, code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.code = code


class Silent(Transient):
    """Nothing (no data, no keep-alive) arrived for longer than the idle timeout."""


class AuthRejected(Fatal):
    """The provider refused the credentials."""


class ProtocolFatal(Fatal):
    """The provider said something that reconnecting will not fix."""


class SinkError(Transient):
    """A sink could not write a batch; the batch is kept and retried."""
