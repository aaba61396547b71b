"""Journal records (or captured raw frames) back through the same protocol code, into the buffer."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ingest.buffer import Buffer
from ingest.events import Gap, Rejected, Rows
from ingest.journal import Kind, Record, read_records, segment_files
from ingest.protocols.base import ProviderProtocol

__all__ = ["ReplayStats", "capture_records", "journal_records", "replay"]


@dataclass(slots=True)
class ReplayStats:
    frames: int = 0
    rows: int = 0
    segments: int = 0
    unknown_streams: Counter[str] = field(default_factory=Counter)


def journal_records(paths: Iterable[Path]) -> Iterator[Record]:
    """Every intact record of these segments (or of every segment in these directories), in order."""
    for path in paths:
        for segment in segment_files(path) if path.is_dir() else [path]:
            yield from read_records(segment)


def capture_records(path: Path, stream: str) -> Iterator[Record]:
    """A capture of raw frames, one per line (as `wscat` or a log prints them), as frame records.

    A capture has no receive times: each frame is stamped with the time it is read here, one
    nanosecond after the one before, so later frames stay the newer versions (the views pick
    the newest version of an event by receive time).
    """
    received_at = time.time_ns()
    with path.open("rb") as fh:
        for line in fh:
            frame = line.rstrip(b"\r\n")
            if frame:
                received_at += 1
                yield Record(0, received_at, Kind.FRAME, stream, frame)  # position 0: not from a journal


async def replay(
    records: Iterable[Record], protocols: Mapping[str, ProviderProtocol], buffer: Buffer
) -> ReplayStats:
    """Feed records through the protocols; rows keep their journal positions so sinks skip what they hold."""
    stats = ReplayStats()
    for record in records:
        protocol = protocols.get(record.stream)
        if protocol is None:
            # A provider no longer configured: its frames are kept in quarantine, not dropped.
            stats.unknown_streams[record.stream] += 1
            if record.kind is Kind.FRAME:
                reason = f"journal: no provider named {record.stream!r} in the config"
                buffer.reject(
                    Rejected(
                        record.stream, record.payload, reason, record.received_at, position=record.position
                    )
                )
            continue
        if record.kind is Kind.STATE:
            protocol.load_state(msgspec.json.decode(record.payload))
        elif record.kind is Kind.GAP:
            gap = msgspec.json.decode(record.payload, type=Gap)
            gap.position = record.position
            buffer.gap(gap, record.received_at)
        else:
            stats.frames += 1
            stats.rows += _route(protocol, record, buffer)
        if buffer.congested:
            await buffer.wait_for_room()
    for protocol in protocols.values():
        protocol.connection_lost()  # what follows is a new connection
    return stats


def _route(protocol: ProviderProtocol, record: Record, buffer: Buffer) -> int:
    rows = 0
    try:
        events: list[Any] = protocol.receive(record.payload, record.received_at)
    except Exception as exc:  # a protocol bug must not stop a recovery: keep the frame
        events = [Rejected(protocol.name, record.payload, f"protocol error: {exc}"[:500], record.received_at)]
    for event in events:
        if type(event) is Rows:
            event.position = record.position
            buffer.add(event)
            rows += len(event.records)
        elif isinstance(event, Rejected):
            event.position = record.position
            buffer.reject(event)
        elif isinstance(event, Gap):
            event.position = record.position
            buffer.gap(event, record.received_at)
    return rows
