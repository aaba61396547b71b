"""Where a key goes on the wire, and how URLs are shown without it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ingest.config import AuthConfig, has_control_characters
from ingest.errors import ConfigError
from ingest.log import secret_forms

__all__ = ["Target", "build_target", "env_secret", "read_secret", "redact_url"]

_SENSITIVE = ("key", "token", "secret", "auth", "password", "sig")
_CONVENTIONAL_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Target:
    """Everything the driver needs to open a socket; repr() never shows the key."""

    url: str = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    display_url: str = ""


def env_secret(name: str, key: str) -> str:
    """The value of environment variable `name`, which config key `key` names; a clear error
    naming both (never a value) if it is unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"{key}: {_variable(name)} is not set or empty")
    if has_control_characters(value):
        raise ConfigError(f"{key}: {_variable(name)} holds control characters")
    return value


def _variable(name: str) -> str:
    """The variable for an error, by name where it is one by convention (upper case): a key pasted
    where its variable's name belongs may well look like a name too (`sk_live_4eC39Hq...`)."""
    if _CONVENTIONAL_NAME.match(name):
        return f"the environment variable {name}"
    return "the environment variable it names (not shown: not upper case, so perhaps the key itself)"


def read_secret(auth: AuthConfig, where: str) -> str | None:
    """The key from the environment variable the config names; a clear error if it is unset."""
    return None if auth.env is None else env_secret(auth.env, f"{where}.auth.env")


def redact_url(url: str, *, also: str | None = None) -> str:
    """The URL with every credential-looking query value (and that of parameter `also`) and any
    userinfo replaced by ***."""
    parts = urlsplit(url)
    query = [
        (k, "***" if k == also or any(s in k.lower() for s in _SENSITIVE) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))


def build_target(url: str, auth: AuthConfig, secret: str | None) -> Target:
    headers: dict[str, str] = {}
    if secret is not None:
        if auth.location == "header":
            headers[auth.header] = f"{auth.scheme} {secret}".strip()
        else:
            parts = urlsplit(url)
            query = [*parse_qsl(parts.query, keep_blank_values=True), (auth.query_param, secret)]
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
    # The key's own parameter is masked whatever it is called (`?access=...` has no telling name).
    in_query = secret is not None and auth.location == "query"
    display = redact_url(url, also=auth.query_param if in_query else None)
    if secret is not None:  # a key inside a path segment or host, as written or percent-encoded
        for form in secret_forms(secret):
            display = display.replace(form, "***")
    return Target(url=url, headers=headers, display_url=display)
