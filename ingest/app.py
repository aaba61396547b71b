"""Composition root: emulators (when asked), collectors -> buffer -> writer -> sinks, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ingest.auth import build_target, read_secret
from ingest.buffer import Buffer
from ingest.config import Config, ProviderConfig
from ingest.driver import Collector
from ingest.emulators import EMULATORS
from ingest.errors import ConfigError
from ingest.log import register_secret
from ingest.metrics import Metrics
from ingest.protocols import PROTOCOLS
from ingest.schema import Registry, load_registry
from ingest.sinks.base import Sink
from ingest.sinks.duckdb import DuckDBSink
from ingest.sinks.parquet import ParquetSink
from ingest.writer import Writer

__all__ = ["Daemon", "RunResult"]

log = structlog.get_logger("ingest.app")


@dataclass(slots=True)
class RunResult:
    metrics: Metrics
    buffer_received: dict[str, int]
    emulator_sent: dict[str, int] = field(default_factory=dict)  # provider -> data frames sent
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)  # collectors stopped by a fatal error


class Daemon:
    """One ingestion daemon; `run()` returns once everything received is flushed to every sink."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or load_registry()
        self.metrics = Metrics()
        self.buffer = Buffer(self.registry, config.flush)
        self.collectors: list[Collector] = []
        self._emulators: dict[str, Any] = {}
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def _sinks(self) -> list[Sink]:
        sinks: list[Sink] = []
        storage = self.config.storage
        if storage.parquet_root is not None:
            sinks.append(ParquetSink(storage.parquet_root, self.config.instance))
        if storage.duckdb_path is not None:
            sinks.append(DuckDBSink(storage.duckdb_path))
        return sinks

    async def _start_emulator(self, provider: ProviderConfig, key: str) -> str:
        factory = EMULATORS.get(provider.kind)
        if factory is None:
            raise ConfigError(f"providers.{provider.name}.url: no emulator for {provider.kind}")
        try:
            emulator = factory(key=key, **provider.emulator)
        except TypeError as exc:
            raise ConfigError(f"providers.{provider.name}.emulator: {exc}") from None
        self._emulators[provider.name] = emulator
        return str(await emulator.start(host="127.0.0.1", port=0))

    async def _collectors(self) -> list[Collector]:
        """Resolve every key and URL first: a missing key fails before any connection is made."""
        keys: dict[str, str | None] = {}
        for p in self.config.providers:
            if p.emulated and p.auth.env is not None and not _env_set(p.auth.env):
                keys[p.name] = secrets.token_urlsafe(16)  # the demo needs no real key
            else:
                keys[p.name] = read_secret(p.auth, f"providers.{p.name}")
            register_secret(keys[p.name])
        collectors = []
        for p in self.config.providers:
            key = keys[p.name]
            url = await self._start_emulator(p, key or "demo") if p.emulated else p.url
            protocol = PROTOCOLS[p.kind](p.name, list(p.subscriptions), p.options)
            if p.auth.location == "message":
                protocol.set_key(key)  # the protocol puts it in its first message (CoinAPI hello)
                key = None
            stats = self.metrics.provider(p.name)
            collectors.append(Collector(p, protocol, build_target(url, p.auth, key), self.buffer, stats))
        return collectors

    async def run(
        self, *, duration: float | None = None, on_start: Callable[[], None] | None = None
    ) -> RunResult:
        started = time.monotonic()
        sinks = self._sinks()
        for sink in sinks:
            await asyncio.to_thread(sink.open, self.registry.values())
        writer = Writer(self.registry, self.buffer, sinks, self.metrics)
        try:
            self.collectors = await self._collectors()
            if on_start is not None:
                on_start()
            async with asyncio.TaskGroup() as tg:
                writer_task = tg.create_task(writer.run(), name="writer")
                ticker = tg.create_task(self._tick(), name="flush-ticker")
                tasks = [tg.create_task(c.run(), name=f"collector-{c.config.name}") for c in self.collectors]
                await self._wait_for_stop(tasks, duration)
                log.info("stopping: unsubscribing and flushing")
                await asyncio.gather(*(c.stop() for c in self.collectors))
                await asyncio.gather(*tasks)
                self.buffer.close()
                await writer_task
                ticker.cancel()
        finally:
            for sink in sinks:
                await asyncio.to_thread(sink.close)
            sent = {name: sum(e.sent.values()) for name, e in self._emulators.items()}
            for emulator in self._emulators.values():
                await emulator.stop()
        failed = [c.config.name for c in self.collectors if c.stats.state == "failed"]
        return RunResult(self.metrics, dict(self.buffer.received), sent, time.monotonic() - started, failed)

    async def _tick(self) -> None:
        period = min(0.1, self.config.flush.max_age / 4)
        while True:
            await asyncio.sleep(period)
            self.buffer.flush_due()

    async def _wait_for_stop(self, tasks: list[asyncio.Task[None]], duration: float | None) -> None:
        """Until a signal, the duration, or every collector has stopped on its own (fatal errors)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        # asyncio.wait (unlike gather) leaves the collector tasks running when this waiter is cancelled.
        waiters = {asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(asyncio.wait(tasks))}
        try:
            await asyncio.wait(waiters, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)


def _env_set(name: str) -> bool:
    return bool(os.environ.get(name))
