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
from ingest.protocols.base import ProviderProtocol, read_socket_read

__all__ = ["ReplayStats", "capture_records", "journal_records", "replay"]

_NO_LIMIT = 1 << 62  # a stream without a limit given: every frame is read


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
    records: Iterable[Record],
    protocols: Mapping[str, ProviderProtocol],
    buffer: Buffer,
    max_frames: Mapping[str, int] | None = None,
) -> ReplayStats:
    """Feed records through the protocols; rows keep their journal positions so sinks skip what they hold.

    The frames of one socket read go in together, read as the driver read them (read_socket_read):
    a protocol may read a frame in the light of the others (Helius maps the ids its subscribe
    responses give before the notifications that came ahead of them), and must do so alike; a
    frame above its provider's `max_frames` limit (the config's max_frame_bytes) is quarantined.
    """
    stats = ReplayStats()
    for read in _reads(records):
        record = read[0]
        protocol = protocols.get(record.stream)
        if protocol is None:
            # A provider no longer configured: its frames are kept in quarantine, not dropped.
            stats.unknown_streams[record.stream] += len(read)
            if record.kind is Kind.FRAME:
                reason = f"journal: no provider named {record.stream!r} in the config"
                for r in read:
                    buffer.reject(Rejected(r.stream, r.payload, reason, r.received_at, position=r.position))
            continue
        if record.kind is Kind.STATE:
            protocol.load_state(msgspec.json.decode(record.payload))
        elif record.kind is Kind.GAP:
            gap = msgspec.json.decode(record.payload, type=Gap)
            gap.position = record.position
            buffer.gap(gap, record.received_at)
        else:
            stats.frames += len(read)
            limit = (max_frames or {}).get(record.stream, _NO_LIMIT)
            stats.rows += _route(protocol, read, buffer, limit)
        if buffer.congested:
            await buffer.wait_for_room()
    for protocol in protocols.values():
        protocol.connection_lost()  # what follows is a new connection
    return stats


def _reads(records: Iterable[Record]) -> Iterator[list[Record]]:
    """Records as the driver met them: the frames of one socket read (one FRAMES record: one
    stream, one receive time, consecutive positions) together, every other record alone."""
    read: list[Record] = []
    for record in records:
        if read:
            last = read[-1]
            if (
                record.kind is Kind.FRAME
                and record.stream == last.stream
                and record.received_at == last.received_at
                and record.position == last.position + 1
                and record.position  # a capture's frames have none: each is a read of its own
            ):
                read.append(record)
                continue
            yield read
        read = [record]
        if record.kind is not Kind.FRAME:
            yield read
            read = []
    if read:
        yield read


def _route(protocol: ProviderProtocol, read: list[Record], buffer: Buffer, max_frame: int) -> int:
    received_at = read[0].received_at
    frames, positions = [r.payload for r in read], [r.position for r in read]
    events: list[Any] = read_socket_read(protocol, frames, received_at, positions, max_frame)
    rows = 0
    for event in events:
        if type(event) is Rows:
            buffer.add(event)
            rows += len(event.records)
        elif isinstance(event, Rejected):
            buffer.reject(event)
        elif isinstance(event, Gap):
            buffer.gap(event, received_at)
    return rows
