"""The daemon's configuration: TOML -> frozen dataclasses, with errors that name the key at fault.

Keys never live in the config: it names the environment variable that holds each one.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingest.errors import ConfigError
from ingest.lake import Lake, open_lake
from ingest.protocols import PROTOCOLS
from ingest.protocols.base import SubscriptionSpec

__all__ = [
    "DEFAULT_CONFIG",
    "EMULATOR_URL",
    "AuthConfig",
    "BackoffConfig",
    "Config",
    "FlushPolicy",
    "OAuthConfig",
    "ProviderConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
    "read_coalesce_for",
]

DEFAULT_CONFIG = Path(__file__).with_name("default.toml")
EMULATOR_URL = "emulator"  # start the provider's local emulator and connect to it
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a value that is no variable name gets; the value is never shown, as it may be a key.
_NOT_A_VARIABLE = (
    "expected the name of an environment variable (letters, digits and _, not starting with a digit);"
    " a key itself goes in the environment, under the name given here (the value is not shown)"
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110 5.6.2)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(text: str) -> bool:
    """Whether a value could not go in an HTTP header or URL as it is (a pasted newline, say)."""
    return _CONTROL.search(text) is not None


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """OAuth2 client credentials: the key is a token fetched (and refreshed) from `token_url`."""

    client_id_env: str  # environment variables holding the client id and secret
    client_secret_env: str
    token_url: str | None  # None only with url = "emulator": the emulator's own endpoint
    scope: str = "api"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    env: str | None  # name of the environment variable holding the key; None = no auth (or oauth)
    location: str  # "header" or "query"
    header: str
    scheme: str
    query_param: str
    oauth: OAuthConfig | None = None  # the key is an expiring token from a token endpoint


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    initial: float = 1.0
    max: float = 30.0
    healthy_after: float = 10.0  # a session that lived this long resets the backoff


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str
    url: str
    auth: AuthConfig
    subscriptions: tuple[SubscriptionSpec, ...]
    idle_timeout: float = 30.0  # no frame at all (data, ack, ping) for this long -> reconnect
    ping_interval: float = 0.0  # client WebSocket pings; 0 = rely on the server's
    keepalive_interval: float = 20.0
    # A subscription with neither an ack nor data this long after it was sent is reported as
    # silent (Bitquery over a plan's concurrent-subscription cap answers nothing); 0 = never.
    silent_after: float = 120.0
    connect_timeout: float = 10.0  # TCP connect plus the WebSocket upgrade
    # Connected, but the protocol's own handshake unanswered this long -> reconnect (Bitquery's
    # connection_ack; gql's ack timeout, PROTOCOLS.md 1.11).
    handshake_timeout: float = 10.0
    max_frame_bytes: int = 64 << 20  # larger frames are quarantined, not parsed
    # A fast stream's frames gather this long between reads; 0 = off. Default: read_coalesce_for().
    read_coalesce: float = 0.025
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    emulator: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # protocol-specific provider keys

    @property
    def emulated(self) -> bool:
        return self.url == EMULATOR_URL


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: Path
    duckdb_path: Path | None
    parquet_root: str | None  # a local directory or a filesystem URI
    journal_dir: Path | None = None  # write-ahead journal of every frame; None = off
    duckdb_raw: bool = False  # also keep each row's raw JSON in DuckDB (the lake always has it)
    duckdb_commit_seconds: float = 5.0  # longest DuckDB holds rows to commit a row group at once
    endpoint: str | None = None  # S3-compatible endpoint for an s3:// Parquet root
    region: str | None = None
    allow_http: bool = False

    def lake(self) -> Lake:
        """The Parquet root as a Lake (local directory or s3://bucket/prefix)."""
        assert self.parquet_root is not None, "the Parquet sink is off"
        return open_lake(
            self.parquet_root, endpoint=self.endpoint, region=self.region, allow_http=self.allow_http
        )


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    enabled: bool = False  # run it in one daemon per lake only (or `compact` from cron)
    interval: float = 3600.0
    target_rows: int = 1_000_000
    grace: float = 3600.0  # replaced files stay this long for queries that started before


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9108
    allow_remote: bool = False
    max_frame_age: float = 30.0


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    max_rows: int = 50_000
    # A flush's transient memory (records, decoded columns, table, Parquet pages) grows with its
    # bytes: 24 MB caps wide rows (Bitquery's ~700 B) below 50k rows, not trades or transfers.
    max_bytes: int = 24 << 20
    max_age: float = 1.0
    max_pending_bytes: int = 96 << 20  # buffered + being written; readers wait above it


@dataclass(frozen=True, slots=True)
class Config:
    instance: str
    storage: StorageConfig
    flush: FlushPolicy
    providers: tuple[ProviderConfig, ...]
    log_format: str = "console"
    source: str = "<built-in>"
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_BACKOFF = BackoffConfig()
_FLUSH = FlushPolicy()


class _Table:
    """A TOML table being read: typed getters that name the key on error, and unknown-key checks."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table")
        self.raw: dict[str, Any] = raw
        self.where = where

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def only(self, *allowed: str) -> None:
        if unknown := sorted(set(self.raw) - set(allowed)):
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (allowed: {', '.join(allowed)})")

    def get(self, name: str, typ: type | tuple[type, ...], default: Any) -> Any:
        value = self.raw.get(name, default)
        if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
            raise ConfigError(f"{self.key(name)}: expected {_typename(typ)}, got {value!r}")
        if not isinstance(value, typ):
            raise ConfigError(f"{self.key(name)}: expected {_typename(typ)}, got {value!r}")
        return value

    def positive(self, name: str, default: float, *, integer: bool = False, zero: bool = False) -> Any:
        value = self.get(name, int if integer else (int, float), default)
        if not math.isfinite(value):  # nan slips past every comparison; inf is no duration or size
            raise ConfigError(f"{self.key(name)}: expected a finite number, got {value!r}")
        if value < 0 or (value == 0 and not zero):
            raise ConfigError(f"{self.key(name)}: expected a {'non-negative' if zero else 'positive'} number")
        return value

    def table(self, name: str) -> _Table:
        return _Table(self.raw.get(name, {}), self.key(name))


def _toml_type(value: object) -> str:
    return "list" if isinstance(value, list) else "table"


def _typename(typ: type | tuple[type, ...]) -> str:
    types = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(
        {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            t.__name__, t.__name__
        )
        for t in types
    )


def _storage(t: _Table, base: Path) -> StorageConfig:
    t.only(
        "data_dir",
        "duckdb",
        "duckdb_raw",
        "duckdb_commit_seconds",
        "parquet",
        "journal",
        "endpoint",
        "region",
        "allow_http",
    )
    for name in ("data_dir", "duckdb", "parquet", "journal"):
        if t.raw.get(name) == "":
            raise ConfigError(f"{t.key(name)}: an empty path; leave it out for the default")
    data_dir = base / t.get("data_dir", str, "data")
    duckdb = t.get("duckdb", (bool, str), True)
    parquet = t.get("parquet", (bool, str), True)
    duckdb_path = (data_dir / "ingest.duckdb" if duckdb is True else base / duckdb) if duckdb else None
    parquet_root: str | None = None
    if parquet is True:
        parquet_root = str(data_dir / "parquet")
    elif isinstance(parquet, str):
        parquet_root = parquet if "://" in parquet else str(base / parquet)
    journal = t.get("journal", (bool, str), True)
    journal_dir = (data_dir / "journal" if journal is True else base / journal) if journal else None
    if duckdb_path is None and parquet_root is None:
        raise ConfigError(
            f"{t.where}: both sinks are off (duckdb = false, parquet = false): nothing would be kept"
        )
    _can_be_directory(data_dir, t.key("data_dir"))
    if duckdb_path is not None:
        _can_be_directory(duckdb_path.parent, t.key("duckdb"))
    if journal_dir is not None:
        _can_be_directory(journal_dir, t.key("journal"))
    if parquet_root is not None and "://" not in parquet_root:
        _can_be_directory(Path(parquet_root), t.key("parquet"))
    storage = StorageConfig(
        data_dir=data_dir,
        duckdb_path=duckdb_path,
        parquet_root=parquet_root,
        journal_dir=journal_dir,
        duckdb_raw=t.get("duckdb_raw", bool, False),
        duckdb_commit_seconds=float(t.positive("duckdb_commit_seconds", 5.0)),
        endpoint=t.get("endpoint", (str, type(None)), None),
        region=t.get("region", (str, type(None)), None),
        allow_http=t.get("allow_http", bool, False),
    )
    if parquet_root is not None:
        try:
            storage.lake()  # a bad root or endpoint fails here, before any connection
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{t.where}: the Parquet lake {parquet_root!r} cannot be used: {exc}") from None
    return storage


def _can_be_directory(path: Path, key: str) -> None:
    """A directory the daemon may create: it, or its nearest existing parent, is a directory."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{key}: {existing} is a file, where a directory is needed")


def _compaction(t: _Table) -> CompactionConfig:
    t.only("enabled", "interval_seconds", "target_rows", "grace_seconds")
    return CompactionConfig(
        enabled=t.get("enabled", bool, False),
        interval=float(t.positive("interval_seconds", 3600.0)),
        target_rows=t.positive("target_rows", 1_000_000, integer=True),
        grace=float(t.positive("grace_seconds", 3600.0, zero=True)),
    )


def _metrics(t: _Table) -> MetricsConfig:
    t.only("enabled", "host", "port", "allow_remote", "max_frame_age_seconds")
    port = t.get("port", int, 9108)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{t.key('port')}: expected a TCP port, 0 (any free port) to 65535, got {port}")
    return MetricsConfig(
        enabled=t.get("enabled", bool, False),
        host=t.get("host", str, "127.0.0.1"),
        port=port,
        allow_remote=t.get("allow_remote", bool, False),
        max_frame_age=float(t.positive("max_frame_age_seconds", 30.0)),
    )


def _flush(t: _Table) -> FlushPolicy:
    t.only("max_rows", "max_bytes", "max_age_seconds", "max_pending_bytes")
    policy = FlushPolicy(
        max_rows=t.positive("max_rows", _FLUSH.max_rows, integer=True),
        max_bytes=t.positive("max_bytes", _FLUSH.max_bytes, integer=True),
        max_age=float(t.positive("max_age_seconds", _FLUSH.max_age)),
        max_pending_bytes=t.positive("max_pending_bytes", _FLUSH.max_pending_bytes, integer=True),
    )
    if policy.max_pending_bytes < policy.max_bytes:
        raise ConfigError(f"{t.key('max_pending_bytes')}: must be at least max_bytes ({policy.max_bytes})")
    return policy


def _check_url(url: str, key: str) -> None:
    expected = f'expected a ws:// or wss:// URL, or "{EMULATOR_URL}"'
    if not re.match(r"^wss?://[^/\s]+", url):
        raise ConfigError(f"{key}: {expected}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed for its check: out of range raises
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"
        raise ConfigError(f"{key}: {expected} ({exc})") from None
    if parts.port == 0:  # parses, but no server listens on port 0: a client cannot connect there
        raise ConfigError(f"{key}: {expected} (port 0 is out of range 1-65535)")
    if not parts.hostname:
        raise ConfigError(f"{key}: {expected} (no host)")
    # user:password@ would be a secret in the file, and beside header auth aiohttp refuses it with
    # a ValueError at the first connect (a traceback). Not printed: it holds the password.
    if "@" in parts.netloc:
        raise ConfigError(
            f"{key}: {expected} without user:password@ (keys come from the environment: auth.env)"
        )


def _auth(t: _Table, kind: str, emulated: bool) -> AuthConfig:
    t.only("env", "oauth", "in", "header", "scheme", "query_param")
    defaults = PROTOCOLS[kind].auth
    env = t.get("env", (str, type(None)), None)
    if env is not None and not _ENV.match(env):
        # Most likely the key itself pasted here: the message must not print it.
        raise ConfigError(f"{t.key('env')}: {_NOT_A_VARIABLE}")
    location = t.get("in", str, defaults.location)
    # "message": the protocol sends the key itself (CoinAPI's hello); only where a protocol can.
    allowed = ("header", "query", "message") if hasattr(PROTOCOLS[kind], "set_key") else ("header", "query")
    if location not in allowed:
        raise ConfigError(f"{t.key('in')}: expected one of {', '.join(allowed)}, got {location!r}")
    oauth = None
    if "oauth" in t.raw:
        if env is not None:
            raise ConfigError(
                f"{t.key('oauth')}: env and oauth are mutually exclusive (a static key or a token)"
            )
        if location == "message":
            # The token is renewed per connection, which only a URL or header built at connect can carry.
            raise ConfigError(f'{t.key("oauth")}: needs in = "header" or "query", not "message"')
        oauth = _oauth(t.table("oauth"), defaults.token_url, emulated)
    header = t.get("header", str, defaults.header)
    if not _HEADER_NAME.match(header):
        raise ConfigError(f"{t.key('header')}: expected an HTTP header name, got {header!r}")
    scheme = t.get("scheme", str, defaults.scheme)
    if has_control_characters(scheme):
        raise ConfigError(f"{t.key('scheme')}: control characters cannot go in a header, got {scheme!r}")
    query_param = t.get("query_param", str, defaults.query_param)
    if not query_param:
        raise ConfigError(f"{t.key('query_param')}: expected a parameter name, got an empty one")
    return AuthConfig(
        env=env, location=location, header=header, scheme=scheme, query_param=query_param, oauth=oauth
    )


def _oauth(t: _Table, default_url: str | None, emulated: bool) -> OAuthConfig:
    t.only("client_id_env", "client_secret_env", "token_url", "scope")
    names = []
    for key in ("client_id_env", "client_secret_env"):
        if key not in t.raw:
            raise ConfigError(f"{t.key(key)}: required (the environment variable that holds it)")
        name = t.get(key, str, None)
        if not _ENV.match(name):  # most likely the credential itself: not printed
            raise ConfigError(f"{t.key(key)}: {_NOT_A_VARIABLE}")
        names.append(name)
    token_url = t.get("token_url", (str, type(None)), None)
    if token_url is not None and not re.match(r"^https?://[^/\s]+", token_url):
        raise ConfigError(f"{t.key('token_url')}: expected an http:// or https:// URL")
    # Explicit, else the emulator's (filled in when it starts), else the provider's documented one.
    token_url = token_url or (None if emulated else default_url)
    if token_url is None and not emulated:
        raise ConfigError(f"{t.key('token_url')}: required, this provider has no default token endpoint")
    return OAuthConfig(
        client_id_env=names[0],
        client_secret_env=names[1],
        token_url=token_url,
        scope=t.get("scope", str, "api"),
    )


def read_coalesce_for(flush: FlushPolicy) -> float:
    """How long a fast stream's reads pause by default: 25 ms, or a tenth of the flush age.

    Each pause saves the event loop wake-ups (CoinAPI trades at 20k msg/s: ~155 -> ~85 a
    second, the daemon's CPU ~0.6-1 us a message lower than with 10 ms), and a frame waits
    in the kernel for at most that long. Tied to the flush age, so that wait stays small
    beside the time a row takes to become queryable: 25 ms of the default 1 s flush, 10 ms
    of the low-latency 0.1 s one.
    """
    return min(0.025, flush.max_age / 10)


def _provider(name: str, t: _Table, config_dir: Path, flush: FlushPolicy) -> ProviderConfig:
    kind = t.get("kind", str, name)
    if kind not in PROTOCOLS:
        raise ConfigError(
            f"{t.key('kind')}: unknown provider {kind!r} (known: {', '.join(sorted(PROTOCOLS))})"
        )
    protocol = PROTOCOLS[kind]
    t.only(
        *protocol.option_keys,
        "kind",
        "url",
        "auth",
        "subscriptions",
        "idle_timeout",
        "ping_interval",
        "keepalive_interval",
        "silent_after",
        "backoff",
        "emulator",
        "enabled",
        "connect_timeout",
        "handshake_timeout",
        "max_frame_bytes",
        "read_coalesce",
    )
    if not _NAME.match(name):
        raise ConfigError(f"{t.where}: provider names are lower-case identifiers, got {name!r}")
    url = t.get("url", str, "")
    if url != EMULATOR_URL:
        _check_url(url, t.key("url"))
    subs_raw = t.get("subscriptions", list, [])
    if not subs_raw:
        raise ConfigError(f"{t.key('subscriptions')}: at least one subscription is needed")
    raw_options = {k: t.raw[k] for k in protocol.option_keys if k in t.raw}
    for k, value in raw_options.items():
        # Every protocol's provider-level options are single values (subprotocol, heartbeat): a list
        # or table would reach a set or dict lookup there as an unhashable key.
        if isinstance(value, list | dict):
            raise ConfigError(f"{t.key(k)}: expected a single value, not a {_toml_type(value)}")
    options = protocol.parse_options(raw_options, t.where)
    subs = []
    for i, raw in enumerate(subs_raw):
        where = f"{t.key('subscriptions')}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table")
        subs.append(protocol.parse_subscription(raw, where, config_dir))
    names = [s.name for s in subs]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{t.key('subscriptions')}: the subscription name {dup[0]!r} is used twice")
    if check := getattr(protocol, "check_subscriptions", None):  # what subscriptions exclude each other
        check(subs, t.key("subscriptions"))
    b = t.table("backoff")
    b.only("initial", "max", "healthy_after")
    backoff = BackoffConfig(
        initial=float(b.positive("initial", _BACKOFF.initial)),
        max=float(b.positive("max", _BACKOFF.max)),
        healthy_after=float(b.positive("healthy_after", _BACKOFF.healthy_after)),
    )
    # A default that depends on the options: CoinAPI's without heartbeats waits for the minute's ping.
    idle_for = getattr(protocol, "idle_timeout_for", None)  # not in ProviderProtocol: absent is fixed
    idle_default = idle_for(options) if idle_for else protocol.default_idle_timeout
    return ProviderConfig(
        name=name,
        kind=kind,
        url=url,
        auth=_auth(t.table("auth"), kind, url == EMULATOR_URL),
        subscriptions=tuple(subs),
        idle_timeout=float(t.positive("idle_timeout", idle_default)),
        ping_interval=float(t.positive("ping_interval", protocol.default_ping_interval, zero=True)),
        keepalive_interval=float(t.positive("keepalive_interval", 20.0)),
        silent_after=float(t.positive("silent_after", 120.0, zero=True)),
        backoff=backoff,
        emulator=t.get("emulator", dict, {}),
        options=options,
        connect_timeout=float(t.positive("connect_timeout", 10.0)),
        handshake_timeout=float(t.positive("handshake_timeout", 10.0)),
        max_frame_bytes=t.positive("max_frame_bytes", 64 << 20, integer=True),
        read_coalesce=float(t.positive("read_coalesce", read_coalesce_for(flush), zero=True)),
    )


def parse_config(
    doc: Mapping[str, Any], *, base: Path, source: str = "<built-in>", config_dir: Path | None = None
) -> Config:
    """Validate a parsed TOML document; raises ConfigError naming the first key at fault."""
    top = _Table(dict(doc), "")
    top.only("instance", "log_format", "storage", "flush", "providers", "compaction", "metrics")
    instance = top.get("instance", str, "main")
    if not _NAME.match(instance):
        raise ConfigError(f"instance: expected a lower-case identifier, got {instance!r}")
    log_format = top.get("log_format", str, "console")
    if log_format not in ("console", "json"):
        raise ConfigError(f'log_format: expected "console" or "json", got {log_format!r}')
    flush = _flush(top.table("flush"))
    providers_t = top.table("providers")
    providers = []
    for name, raw in providers_t.raw.items():
        pt = _Table(raw, f"providers.{name}")
        if pt.get("enabled", bool, True):
            providers.append(_provider(name, pt, config_dir or base, flush))
    if not providers:
        raise ConfigError("providers: no enabled provider")
    return Config(
        instance=instance,
        storage=_storage(top.table("storage"), base),
        flush=flush,
        providers=tuple(providers),
        log_format=log_format,
        source=source,
        compaction=_compaction(top.table("compaction")),
        metrics=_metrics(top.table("metrics")),
    )


def load_config(path: Path | None) -> Config:
    """Read a TOML config file, or the built-in demo config against the local emulators."""
    file = path or DEFAULT_CONFIG
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")  # TOML is UTF-8, whatever the locale
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{file}: not UTF-8 text (byte {data[exc.start]:#04x}, line {line})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    # Paths in a user's config are relative to where the daemon runs; the demo writes to ./data.
    # Files a config names (GraphQL queries) sit next to it.
    return parse_config(
        doc,
        base=Path(os.getcwd()),
        source=str(path) if path else "<built-in>",
        config_dir=file.resolve().parent,
    )
