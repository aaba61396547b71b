"""OAuth2 client-credentials tokens for providers whose keys expire (Bitquery, PROTOCOLS.md 1.2).

A Bitquery token lives ~5 h and is checked only when a socket connects: an open socket outlives
it, a reconnect with it is refused (HTTP 401). So the driver asks for a token at every connect
and gets the cached one, or a new one once less than a margin of its lifetime is left.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import msgspec

from ingest.auth import env_secret, redact_url
from ingest.config import OAuthConfig, has_control_characters
from ingest.errors import Fatal, Transient
from ingest.log import forget_secret, register_secret
from ingest.retry_hints import from_headers

__all__ = [
    "Token",
    "TokenRejected",
    "TokenSource",
    "TokenUnavailable",
    "read_client_credentials",
    "refresh_margin",
]

MAX_MARGIN = 300.0  # refresh at most 5 min before expiry...
MARGIN_SHARE = 0.1  # ...or with 10% of the lifetime left, whichever is sooner to expiry
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")  # an OAuth `error` code, shown only if it looks like one


class TokenRejected(Fatal):
    """The token endpoint refused the client credentials (or the request): retrying will not help.

    Not an AuthRejected: that is the WebSocket server refusing a token, which a new token may fix.
    """


class TokenUnavailable(Transient):
    """The token endpoint is unreachable, slow, or failing (5xx, 429): retried with the driver's backoff."""


def refresh_margin(lifetime: float) -> float:
    """How long before expiry a token is replaced: 10% of its lifetime, at most 5 minutes."""
    return min(lifetime * MARGIN_SHARE, MAX_MARGIN)


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    obtained_at: float  # clock time the request was sent (the server's lifetime counts from then, at latest)
    lifetime: float  # seconds (expires_in); 0 when the server gave none: used for one connect only

    def fresh(self, now: float) -> bool:
        return now < self.obtained_at + self.lifetime - refresh_margin(self.lifetime)


def read_client_credentials(oauth: OAuthConfig, where: str) -> tuple[str, str]:
    """Client id and secret from the environment; a clear error naming the variable if one is unset."""
    return (
        env_secret(oauth.client_id_env, f"{where}.auth.oauth.client_id_env"),
        env_secret(oauth.client_secret_env, f"{where}.auth.oauth.client_secret_env"),
    )


class TokenSource:
    """Fetches a token with the client-credentials grant, caches it, and renews it before expiry.

    The secret and every token are registered with the log redaction; neither is ever put in a
    message. Errors name the environment variables, never their values.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = "api",
        env_names: tuple[str, str] = ("the client id", "the client secret"),
        where: str = "auth.oauth",
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        if scope:
            self._form["scope"] = scope
        self._env_names = env_names
        self._where = where
        self._timeout = timeout
        self._clock = clock
        self._token: Token | None = None
        self.fetches = 0  # tokens obtained so far
        register_secret(client_secret)

    @property
    def display_url(self) -> str:
        return redact_url(self._url)

    def invalidate(self) -> None:
        """Forget the cached token (the server refused it): the next token() fetches a new one."""
        if self._token is not None:
            forget_secret(self._token.value)
        self._token = None

    async def token(self, http: aiohttp.ClientSession) -> str:
        """A token with more than the refresh margin left, fetched only when needed."""
        now = self._clock()
        cached = self._token
        if cached is not None and cached.fresh(now):
            return cached.value
        token = await self._fetch(http, now)
        if cached is not None:
            forget_secret(cached.value)  # the old one is never used again: keep the redaction set small
        register_secret(token.value)
        self._token = token
        self.fetches += 1
        return token.value

    async def _fetch(self, http: aiohttp.ClientSession, now: float) -> Token:
        where, shown = self._where, self.display_url
        try:
            # data=dict: sent as application/x-www-form-urlencoded, as the endpoint expects.
            async with http.post(
                self._url,
                data=self._form,
                headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                status, body, headers = resp.status, await resp.read(), resp.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Only the exception's type: its text may carry the URL or the request.
            raise TokenUnavailable(
                f"{where}: token endpoint {shown} unreachable: {type(exc).__name__}"
            ) from None
        reply = _decode(body)
        if status != 200:
            code = reply.get("error") if isinstance(reply, dict) else None
            detail = f"HTTP {status}" + (
                f" {code}" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
            )
            if status in (408, 429) or status >= 500:
                raise TokenUnavailable(
                    f"{where}: token endpoint {shown} failed ({detail})", retry_after=from_headers(headers)
                )
            if status in (400, 401, 403):
                id_env, secret_env = self._env_names
                raise TokenRejected(
                    f"{where}: the token endpoint refused the client credentials ({detail}); "
                    f"check {id_env} and {secret_env}"
                )
            raise TokenRejected(f"{where}: token endpoint {shown} answered {detail}; check token_url")
        value = reply.get("access_token") if isinstance(reply, dict) else None
        if not isinstance(value, str) or not value:
            raise TokenUnavailable(f"{where}: token endpoint {shown} answered without an access_token")
        if has_control_characters(value):
            message = f"{where}: token endpoint {shown} answered a token with control characters"
            raise TokenUnavailable(message)
        expires_in = reply.get("expires_in")
        # Without a lifetime the token serves one connect, and the next connect fetches another.
        ok = isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0
        return Token(value, now, float(expires_in) if ok else 0.0)


def _decode(body: bytes) -> object:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
