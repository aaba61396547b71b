"""Composition root: emulators (when asked), collectors -> buffer -> writer -> sinks, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from ingest.auth import build_target, read_secret
from ingest.buffer import Buffer
from ingest.compact import compact
from ingest.config import Config, ProviderConfig
from ingest.downtime import Downtime, Hole
from ingest.driver import Collector
from ingest.emulators import EMULATORS, check_options, make_emulator
from ingest.errors import ConfigError, Fatal
from ingest.journal import Journal, Record
from ingest.log import register_secret
from ingest.metrics import Metrics
from ingest.metrics_server import Extras, MetricsServer, start_metrics_server
from ingest.protocols import PROTOCOLS
from ingest.reorgs import BLOCK_STREAMS, recent_blocks_sql
from ingest.replay import ReplayStats, journal_records, replay
from ingest.schema import Registry, load_registry
from ingest.sinks.base import Sink
from ingest.sinks.duckdb import DuckDBSink
from ingest.sinks.parquet import ParquetSink
from ingest.tokens import TokenSource, read_client_credentials
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
        self.metrics_url: str | None = None
        storage = config.storage
        self.journal = Journal(storage.journal_dir / config.instance) if storage.journal_dir else None
        self.downtime = Downtime(storage.data_dir / "state" / f"{config.instance}.json")
        self._emulators: dict[str, Any] = {}
        self._stop = asyncio.Event()
        self._stopping = threading.Event()  # read by the compaction's thread, which stops early
        self._replaying = False  # a journal replay is due or running: no segment may be released

    def request_stop(self) -> None:
        self._stop.set()

    def _sinks(self) -> list[Sink]:
        sinks: list[Sink] = []
        storage = self.config.storage
        if storage.parquet_root is not None:
            sinks.append(ParquetSink(storage.lake(), self.config.instance))
        if storage.duckdb_path is not None:
            sinks.append(
                DuckDBSink(
                    storage.duckdb_path,
                    instance=self.config.instance,
                    keep_raw=storage.duckdb_raw,
                    commit_seconds=storage.duckdb_commit_seconds,
                )
            )
        return sinks

    async def _start_emulator(
        self, provider: ProviderConfig, key: str, client: tuple[str, str] | None
    ) -> str:
        factory = EMULATORS.get(provider.kind)
        if factory is None:
            raise ConfigError(f"providers.{provider.name}.url: no emulator for {provider.kind}")
        auth: dict[str, Any] = {"key": key}
        if client is not None:
            if not hasattr(factory, "token_url"):
                raise ConfigError(
                    f"providers.{provider.name}.auth.oauth: the {provider.kind} emulator issues no tokens"
                )
            # The emulator is the token endpoint too, and accepts only the tokens it issued.
            auth = {"key": None, "client_id": client[0], "client_secret": client[1]}
        try:
            emulator = make_emulator(provider.kind, provider.emulator, **auth)
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"providers.{provider.name}.emulator: {exc}") from None
        self._emulators[provider.name] = emulator
        return str(await emulator.start(host="127.0.0.1", port=0))

    def _keys(self) -> dict[str, str | None]:
        """Every key, before anything else: a missing one fails before any connection is made."""
        keys: dict[str, str | None] = {}
        for p in self.config.providers:
            if p.emulated and p.auth.env is not None and not _env_set(p.auth.env):
                keys[p.name] = secrets.token_urlsafe(16)  # the demo needs no real key
            else:
                keys[p.name] = read_secret(p.auth, f"providers.{p.name}")
            register_secret(keys[p.name])
        return keys

    def _oauth_clients(self) -> dict[str, tuple[str, str]]:
        """Client id and secret of each provider with auth.oauth, read (as keys are) before connecting."""
        clients: dict[str, tuple[str, str]] = {}
        for p in self.config.providers:
            oauth = p.auth.oauth
            if oauth is None:
                continue
            if p.emulated and not (_env_set(oauth.client_id_env) and _env_set(oauth.client_secret_env)):
                clients[p.name] = ("demo-client", secrets.token_urlsafe(16))  # the demo needs no real client
            else:
                clients[p.name] = read_client_credentials(oauth, f"providers.{p.name}")
            register_secret(clients[p.name][1])
        return clients

    def _token_source(self, p: ProviderConfig, client: tuple[str, str]) -> TokenSource:
        oauth = p.auth.oauth
        assert oauth is not None
        # No token_url in the config with url = "emulator": the emulator's own endpoint.
        token_url = oauth.token_url or str(self._emulators[p.name].token_url)
        return TokenSource(
            token_url,
            *client,
            scope=oauth.scope,
            env_names=(oauth.client_id_env, oauth.client_secret_env),
            where=f"providers.{p.name}.auth.oauth",
            timeout=p.connect_timeout,
        )

    async def _collectors(
        self, protocols: dict[str, Any], keys: dict[str, str | None], clients: dict[str, tuple[str, str]]
    ) -> list[Collector]:
        collectors = []
        for p in self.config.providers:
            key, client = keys[p.name], clients.get(p.name)
            url = await self._start_emulator(p, key or "demo", client) if p.emulated else p.url
            protocol = protocols[p.name]
            if p.auth.location == "message":
                protocol.set_key(key)  # the protocol puts it in its first message (CoinAPI hello)
                key = None
            stats = self.metrics.provider(p.name)
            # With OAuth the key is None here: the driver adds the current token at each connect.
            target = build_target(url, p.auth, key)
            tokens = self._token_source(p, client) if client is not None else None
            collectors.append(
                Collector(
                    p,
                    protocol,
                    target,
                    self.buffer,
                    stats,
                    journal=self.journal,
                    tokens=tokens,
                    on_connect=self._save_holes,
                )
            )
        return collectors

    async def _replay(self, segments: list[Path], protocols: dict[str, Any]) -> None:
        """Frames journaled but maybe not stored by a run that did not stop cleanly, before connecting."""
        log.info("replaying the journal of an unclean stop", segments=len(segments))
        try:
            stats = await replay(journal_records(segments), protocols, self.buffer, self._max_frames())
        finally:
            self._replaying = False
        self.metrics.replayed_frames = stats.frames
        log.info(
            "journal replayed",
            frames=stats.frames,
            rows=stats.rows,
            unknown_providers=dict(stats.unknown_streams) or None,
        )

    async def run(
        self, *, duration: float | None = None, on_start: Callable[[], None] | None = None
    ) -> RunResult:
        started = time.monotonic()
        for p in self.config.providers:  # before anything is created on disk
            if p.emulated:
                try:
                    check_options(p.kind, p.emulator)
                except ConfigError as exc:
                    raise ConfigError(f"providers.{p.name}.emulator: {exc}") from None
        keys = self._keys()
        clients = self._oauth_clients()
        protocols = {
            p.name: PROTOCOLS[p.kind](p.name, list(p.subscriptions), p.options) for p in self.config.providers
        }
        journal = self.journal
        if journal is not None:
            journal.lock()  # before the sinks: DuckDB's lock would make a second daemon wait first
            journal.on_error = self._journal_failed
        try:
            sinks = await self._open_sinks()
            stored = max((s.checkpoint(d) for s in sinks for d in self.registry), default=0)
            leftover = journal.open(after=stored) if journal is not None else []
            # From here, not from the replay's start: the journal's syncer starts first
            # (see _journal_low_water).
            self._replaying = bool(leftover)
            writer = Writer(
                self.registry,
                self.buffer,
                sinks,
                self.metrics,
                before_write=journal.write if journal is not None else None,
            )
            await self._seed_reorg_tracker(writer, sinks)
        except BaseException:
            if journal is not None:
                journal.unlock()  # a start that failed (a sink's lock, its disk) owns nothing
            raise
        drained = False
        try:
            async with asyncio.TaskGroup() as tg:
                writer_task = tg.create_task(writer.run(), name="writer")
                ticker = tg.create_task(self._tick(), name="flush-ticker")
                syncer = tg.create_task(self._sync_journal(), name="journal")
                compactor = tg.create_task(self._compact_on_schedule(), name="compaction")
                server = await self._metrics_server()
                if leftover:
                    await self._replay(leftover, protocols)
                self.collectors = await self._collectors(protocols, keys, clients)
                self._resume_holes()
                beat = tg.create_task(self.downtime.keep(self._holes, time.time_ns), name="downtime")
                if on_start is not None:
                    on_start()
                tasks = [tg.create_task(c.run(), name=f"collector-{c.config.name}") for c in self.collectors]
                await self._wait_for_stop(tasks, duration)
                log.info("stopping: unsubscribing and flushing")
                self._stopping.set()
                await asyncio.gather(*(c.stop() for c in self.collectors))
                await asyncio.gather(*tasks)
                beat.cancel()
                self.buffer.close()
                await writer_task
                drained = True
                now = time.time_ns()  # every gap is in the sinks now: none needs recording again
                holes = {n: msgspec.structs.replace(h, closed=None) for n, h in self._holes(now).items()}
                await self.downtime.save(holes, now)
                ticker.cancel()
                syncer.cancel()
                compactor.cancel()
                if server is not None:
                    await server.stop()
        finally:
            self._stopping.set()  # a compaction at work must not hold up the stop
            closed = await _close_all(sinks)
            if journal is not None:
                # Deleted only when every frame is in every sink; a sink that failed to close may
                # not have committed what it held, and a replay stores nothing twice.
                journal.close(delete=drained and closed)
            sent = {name: sum(e.sent.values()) for name, e in self._emulators.items()}
            for emulator in self._emulators.values():
                await emulator.stop()
        if journal is not None and journal.error is not None:
            raise Fatal(
                f"the journal {journal.directory} could not be written ({journal.error}): the daemon "
                "stopped, and stored what it had received; make room there and start it again"
            )
        failed = [c.config.name for c in self.collectors if c.stats.state == "failed"]
        return RunResult(self.metrics, dict(self.buffer.received), sent, time.monotonic() - started, failed)

    def _journal_failed(self, exc: OSError) -> None:
        """The journal cannot write (its disk is full): frames would count as received with no
        copy on disk. Stop as on a signal: what is buffered is stored, and the run ends in Fatal.
        The journal has logged the error."""
        self._stop.set()

    def _resume_holes(self) -> None:
        """Open, in each collector, the hole the last run of this instance left (ingest.downtime)."""
        configured = {p.name: tuple(s.name for s in p.subscriptions) for p in self.config.providers}
        holes = self.downtime.read(configured)
        for collector in self.collectors:
            hole = holes.get(collector.config.name)
            if hole is not None:
                collector.resume(hole)

    def _holes(self, now: int) -> dict[str, Hole]:
        if self.journal is not None:
            # "Receiving until now" only once the journal holds what was received until now.
            self.journal.write()
        holes = {c.config.name: c.hole(now) for c in self.collectors}
        return {name: hole for name, hole in holes.items() if hole is not None}

    def _save_holes(self) -> None:
        """Write the state at once, without fsync: a killed process keeps what it wrote, and the
        next beat, within seconds, syncs it."""
        now = time.time_ns()
        # A journal that cannot write stops the daemon; a state file that cannot is logged.
        self.downtime.write(self._holes(now), now)

    async def ingest_offline(self, records: Iterable[Record]) -> ReplayStats:
        """`replay`: records through the protocols into the sinks, no sockets, no journal of its own.

        It writes as the config's instance, so it takes that instance's journal lock as the daemon
        does: beside a running daemon of it, both would store the same positions (in Parquet, where
        DuckDB's own lock does not stop them)."""
        journal = self.journal
        if journal is not None:
            journal.lock()
        try:
            return await self._ingest_offline(records)
        finally:
            if journal is not None:
                journal.unlock()

    async def _ingest_offline(self, records: Iterable[Record]) -> ReplayStats:
        sinks = await self._open_sinks()
        protocols = {
            p.name: PROTOCOLS[p.kind](p.name, list(p.subscriptions), p.options) for p in self.config.providers
        }
        writer = Writer(self.registry, self.buffer, sinks, self.metrics)
        # As the daemon's: a reorg of a height stored before is seen only against the stored hash.
        await self._seed_reorg_tracker(writer, sinks)
        try:
            async with asyncio.TaskGroup() as tg:
                writer_task = tg.create_task(writer.run(), name="writer")
                stats = await replay(records, protocols, self.buffer, self._max_frames())
                self.buffer.close()
                await writer_task
        finally:
            for sink in sinks:
                await asyncio.to_thread(sink.close)
        return stats

    async def _open_sinks(self) -> list[Sink]:
        sinks = self._sinks()
        for sink in sinks:
            try:
                await asyncio.to_thread(sink.open, self.registry.values())
            except OSError as exc:  # its directory on a read-only disk, or not the user's
                raise Fatal(f"cannot open the {sink.name} sink: {exc}") from None
        return sinks

    def _max_frames(self) -> dict[str, int]:
        return {p.name: p.max_frame_bytes for p in self.config.providers}

    async def _seed_reorg_tracker(self, writer: Writer, sinks: list[Sink]) -> None:
        """Let the reorg tracker start from the last blocks stored (see ReorgTracker.seed): DuckDB's,
        or without it the lake's last two days."""
        store = next((s for s in sinks if isinstance(s, DuckDBSink)), None)
        lake = next((s for s in sinks if isinstance(s, ParquetSink)), None)
        for dataset in BLOCK_STREAMS:
            if dataset not in self.registry:
                continue
            sql = recent_blocks_sql(dataset)
            if store is not None:
                blocks = await asyncio.to_thread(store.read, sql)
                # A store behind another sink (switched off for a while, say) has no say on gaps.
                settled = all(store.checkpoint(dataset) >= sink.checkpoint(dataset) for sink in sinks)
            elif lake is not None:  # the only sink, so as far as any
                blocks = await asyncio.to_thread(lake.read_recent, self.registry[dataset], sql)
                settled = True
            else:
                return
            writer.reorgs.seed(blocks, settled=settled)

    async def _metrics_server(self) -> MetricsServer | None:
        m = self.config.metrics
        if not m.enabled:
            return None
        journal = self.journal
        extras = Extras(
            gaps=lambda: dict(self.metrics.gaps),
            journal_bytes=(lambda: journal.size_bytes) if journal is not None else None,
            last_frame_age=self._frame_age,
        )
        server = await start_metrics_server(
            self.metrics,
            self.buffer,
            host=m.host,
            port=m.port,
            extras=extras,
            allow_remote=m.allow_remote,
            max_frame_age=m.max_frame_age,
        )
        self.metrics_url = server.url
        log.info("serving metrics", url=f"{server.url}/metrics", health=f"{server.url}/health")
        return server

    def _frame_age(self, provider: str) -> float | None:
        stats = self.metrics.providers.get(provider)
        return (time.time_ns() - stats.last_frame_ns) / 1e9 if stats and stats.last_frame_ns else None

    async def _compact_on_schedule(self) -> None:
        """Merge closed days' small files now and then (one daemon per lake should do this)."""
        c, storage = self.config.compaction, self.config.storage
        if not c.enabled or storage.parquet_root is None:
            return
        lake = storage.lake()
        while True:
            await asyncio.sleep(c.interval)
            if self._stopping.is_set():
                return
            try:
                report = await asyncio.to_thread(
                    compact,
                    lake,
                    self.registry,
                    instance=self.config.instance,
                    target_rows=c.target_rows,
                    grace_seconds=c.grace,
                    stopping=self._stopping,
                )
                if report.busy:
                    log.info("compaction skipped: another one is at work on this lake")
                elif report.stopped:
                    log.info("compaction stopped for the daemon's stop; the next run finishes it")
                else:
                    log.info("compacted", files_before=report.files_before, files_after=report.files_after)
            except Exception as exc:  # the lake stays consistent; try again next time
                log.error("compaction failed", error=f"{type(exc).__name__}: {exc}")

    async def _sync_journal(self) -> None:
        if self.journal is not None:
            await self.journal.run(self._journal_low_water)

    def _journal_low_water(self) -> int:
        """Below this position the journal may delete its segments: every sink holds their rows."""
        journal = self.journal
        assert journal is not None
        if self._replaying:
            # The segments the replay has not read yet are in no buffer: with the buffer empty
            # while the replay waits for room, the low water would be the next position, and
            # every old segment would go, unread (a lost crash's worth of frames).
            return 0
        return self.buffer.low_water(journal.next_position)

    async def _tick(self) -> None:
        # Wake when the oldest buffered record reaches max_age, not up to a polling period later
        # (a quarter of max_age, 25 ms at 0.1 s, was a quarter of the low-latency setting's wait).
        # The period still bounds the sleep: a dataset that starts buffering meanwhile is due later.
        period = min(0.1, self.config.flush.max_age / 4)
        while True:
            due = self.buffer.due_in()
            await asyncio.sleep(period if due is None else min(period, max(due, 0.001)))
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


async def _close_all(sinks: list[Sink]) -> bool:
    """Close every sink, each whatever the others do (an error here must not leave the journal
    open or hide the error the run is ending with); False if any failed, which is logged."""
    closed = True
    for sink in sinks:
        try:
            await asyncio.to_thread(sink.close)
        except Exception as exc:
            log.error("sink close failed", sink=sink.name, error=f"{type(exc).__name__}: {exc}")
            closed = False
    return closed
