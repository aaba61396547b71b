"""Test helpers: wait for a condition, build a collector against a local emulator, drain a buffer."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ingest.auth import build_target
from ingest.buffer import Buffer
from ingest.config import AuthConfig, BackoffConfig, FlushPolicy, ProviderConfig
from ingest.driver import Collector
from ingest.events import Rows
from ingest.metrics import ProviderStats
from ingest.protocols import PROTOCOLS
from ingest.protocols.blockdb import BlockDBProtocol
from ingest.schema import Registry


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until predicate() is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def blockdb_config(url: str, subs: list[dict], **overrides) -> ProviderConfig:
    backoff = overrides.pop("backoff", BackoffConfig(initial=0.02, max=0.1, healthy_after=0.3))
    return ProviderConfig(
        name="blockdb",
        kind="blockdb",
        url=url,
        auth=AuthConfig(
            env="BLOCKDB_API_KEY",
            location=overrides.pop("location", "header"),
            header="Authorization",
            scheme="Bearer",
            query_param="api_key",
        ),
        subscriptions=tuple(BlockDBProtocol.parse_subscription(s, f"s[{i}]") for i, s in enumerate(subs)),
        backoff=backoff,
        **overrides,
    )


class Drain:
    """Stands in for the writer: takes every flush and counts rows per dataset and subscription."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.rows: Counter[str] = Counter()
        self.records: list[bytes] = []
        self.chunks: list[Rows] = []
        self.rejected = 0
        self.values: dict[str, list[dict]] = {}
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while (flush := await self.buffer.next_flush()) is not None:
            for chunk in flush.chunks:
                self.rows[chunk.dataset] += len(chunk.records)
                self.records.extend(chunk.records)
                self.chunks.append(chunk)
            self.rejected += len(flush.values) if flush.dataset == "quarantine" else 0
            self.values.setdefault(flush.dataset, []).extend(flush.values)
            self.buffer.done(flush)

    async def close(self) -> None:
        self.buffer.close()
        await asyncio.wait_for(self.task, 5)


def provider_config(
    kind: str, url: str, subs: list[dict], options: dict | None = None, **overrides
) -> ProviderConfig:
    """A ProviderConfig for any provider, through the same validation a config file gets."""
    protocol = PROTOCOLS[kind]
    defaults = protocol.auth
    location = overrides.pop("location", defaults.location)
    backoff = overrides.pop("backoff", BackoffConfig(initial=0.02, max=0.1, healthy_after=0.3))
    return ProviderConfig(
        name=overrides.pop("name", kind),
        kind=kind,
        url=url,
        auth=AuthConfig(
            env="KEY",
            location=location,
            header=defaults.header,
            scheme=defaults.scheme,
            query_param=defaults.query_param,
        ),
        subscriptions=tuple(protocol.parse_subscription(s, f"s[{i}]", None) for i, s in enumerate(subs)),
        backoff=backoff,
        idle_timeout=overrides.pop("idle_timeout", protocol.default_idle_timeout),
        options=protocol.parse_options(options or {}, "p"),
        **overrides,
    )


def collector(
    registry: Registry, config: ProviderConfig, key: str | None, **kwargs
) -> tuple[Collector, Buffer]:
    buffer = Buffer(registry, kwargs.pop("policy", FlushPolicy(max_rows=100, max_age=0.05)))
    protocol = PROTOCOLS[config.kind](config.name, list(config.subscriptions), config.options)
    if config.auth.location == "message":
        protocol.set_key(key)
        key = None
    target = build_target(config.url, config.auth, key)
    return Collector(config, protocol, target, buffer, ProviderStats(config.name), **kwargs), buffer


async def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """`python -m ingest ARGS...` in a subprocess: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()
