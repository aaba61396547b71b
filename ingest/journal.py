"""Write-ahead journal: every received frame is on disk before it counts as received.

A journal is a directory of segment files named by the position of their first record. A
record is `length | crc32 | body`, the body `position | received_at | kind | stream | payload`.
Positions number frames from 1 and never repeat, so a row's position says which frame it came
from and how far each sink got. The frames of one socket read go in one record (kind FRAMES:
a count, their lengths, then the frames), which takes positions `position .. position+count-1`
and reads back as that many FRAME records: one header and one checksum per read, not per frame.
Records are queued and written out in large gathered writes (writev), and the file is fsynced
on a short interval rather than per frame. A record torn by a crash (short, or failing its
checksum) ends its segment's readable part and is skipped with a log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import structlog

from ingest.errors import Fatal
from ingest.file_lock import Lock, try_lock

__all__ = ["Journal", "Kind", "Record", "read_records", "segment_files"]

log = structlog.get_logger("ingest.journal")

_PREFIX = struct.Struct("<II")  # body length, crc32 of the body
_HEAD = struct.Struct("<QqBH")  # position, received_at (ns), kind, stream name length
_COUNT = struct.Struct("<I")  # frames in a FRAMES record, followed by their lengths (u32 each)
_SUFFIX = ".seg"
_LOCK = "owner.lock"  # held (flock) by the process whose journal this is
_BIG_ENDIAN = sys.byteorder == "big"  # array("I") is native order; the file is little-endian
assert array("I").itemsize == 4, "FRAMES records store frame lengths as 32-bit integers"


class Kind(IntEnum):
    FRAME = 0  # a frame as read off the socket
    STATE = 1  # a protocol's routing state (JSON), after a change the frames alone do not show
    GAP = 2  # a gap the driver saw (JSON): a disconnect until the resubscribe
    FRAMES = 3  # the frames of one socket read; written only, read back as FRAME records


@dataclass(frozen=True, slots=True)
class Record:
    position: int
    received_at: int
    kind: Kind
    stream: str
    payload: bytes


def segment_files(directory: Path) -> list[Path]:
    """Segments in position order (their names are the zero-padded first position)."""
    return sorted(directory.glob(f"*{_SUFFIX}"))


def read_records(path: Path, *, after: int = 0) -> Iterator[Record]:
    """The intact records of one segment with position > after; stops at a torn tail."""
    data = path.read_bytes()
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _PREFIX.size:
            _torn(path, offset, end, "a short header")
            return
        length, crc = _PREFIX.unpack_from(data, offset)
        body = data[offset + _PREFIX.size : offset + _PREFIX.size + length]
        if len(body) < length or length < _HEAD.size:
            _torn(path, offset, end, "a short record")
            return
        if zlib.crc32(body) != crc:
            _torn(path, offset, end, "a checksum mismatch")
            return
        position, received_at, kind, name_len = _HEAD.unpack_from(body)
        offset += _PREFIX.size + length
        stream = body[_HEAD.size : _HEAD.size + name_len].decode()
        if kind == Kind.FRAMES:
            yield from _frames(body, _HEAD.size + name_len, position, received_at, stream, after)
        elif position > after:
            yield Record(position, received_at, Kind(kind), stream, body[_HEAD.size + name_len :])


def _frames(
    body: bytes, start: int, first: int, received_at: int, stream: str, after: int
) -> Iterator[Record]:
    """The FRAME records a FRAMES record holds (its checksum already passed)."""
    (count,) = _COUNT.unpack_from(body, start)
    lengths = array("I")
    lengths.frombytes(body[start + _COUNT.size : start + _COUNT.size + 4 * count])
    if _BIG_ENDIAN:
        lengths.byteswap()
    offset = start + _COUNT.size + 4 * count
    for i, size in enumerate(lengths):
        if first + i > after:
            yield Record(first + i, received_at, Kind.FRAME, stream, body[offset : offset + size])
        offset += size


def _torn(path: Path, offset: int, end: int, why: str) -> None:
    # Only a crash mid-write leaves this, at the very end of a segment: the frame was never durable.
    log.warning(
        "journal: skipping a torn record", segment=path.name, offset=offset, bytes=end - offset, reason=why
    )


class Journal:
    """Appends records to the active segment; rotates, syncs and deletes released segments."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 << 20,
        write_bytes: int = 1 << 20,
        sync_interval: float = 0.2,
    ) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._write_bytes = write_bytes
        self._sync_interval = sync_interval
        self._pieces: list[bytes] = []  # headers and payloads not yet handed to the OS
        self._pending = 0  # their bytes
        self._fd = -1
        self._segment: Path | None = None
        self._segment_size = 0
        self._dirty = False  # written to the active segment since its last fsync
        # Rotated-out segments' descriptors, fsynced and closed by the next sync: a rotation on the
        # event loop would otherwise wait for a 64 MB segment's fsync.
        self._retired: collections.deque[int] = collections.deque()
        self._dir_dirty = False  # a segment was created since the directory's last fsync
        # Held while the active segment, its dirty flag or the directory's change together: the
        # sync in its worker thread must see a descriptor with its own flag, never a rotation's half.
        self._lock = threading.Lock()
        self._names: dict[str, bytes] = {}
        # Each stream's routing state, written again at the head of every new segment: a replay
        # that starts there (the segments before it released) routes its frames as live did.
        self._state_of: dict[str, Callable[[], bytes]] = {}
        self._states_due = False
        self.next_position = 1
        self.bytes_written = 0
        self._owner_fd = -1  # holds the directory's lock file while this journal is open
        self._write_at = write_bytes  # queued bytes at which an append writes them out
        # The first write that failed (a full disk): the queued records stay queued, and
        # `on_error` is told once, so the daemon can stop and store what it buffered.
        self.error: OSError | None = None
        self.on_error: Callable[[OSError], None] | None = None

    # -- opening ---------------------------------------------------------------------------------

    def open(self, *, after: int = 0) -> list[Path]:
        """Find where the journal left off; returns the segments left from earlier runs.

        `after`: the highest position the sinks already hold for this instance. Positions always
        continue past it, so a daemon that lost its journal (a new machine) never reuses one.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock()
        existing = segment_files(self.directory)
        for path in reversed(existing):
            last = 0
            for record in read_records(path):
                last = record.position
            if last:
                self.next_position = last + 1
                break
            self.next_position = max(self.next_position, int(path.stem))
        self.next_position = max(self.next_position, after + 1)
        if existing and int(existing[-1].stem) == self.next_position:
            # The last run died in its segment's first write: the new segment would take its name
            # and append behind bytes that end every reading of the file. It holds no record.
            log.warning("journal: removing a segment with no intact record", segment=existing[-1].name)
            existing.pop().unlink()
        self._start_segment()
        return existing

    def lock(self) -> None:
        """Own the directory for as long as this journal is open; Fatal if another process does.

        A second daemon of the same instance would read the first one's live segments as a crashed
        run's and store their frames again (DuckDB's own lock stops it only where DuckDB is on).
        The kernel drops the lock with the process, so a crash leaves nothing to clean up.
        """
        if self._owner_fd >= 0:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, lock = try_lock(self.directory / _LOCK)
        except OSError as exc:  # a data_dir on a read-only disk, or not the user's: said, not a traceback
            raise Fatal(f"cannot write the journal in {self.directory}: {exc}") from None
        if lock is Lock.BUSY:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Fatal(
                f"the journal {self.directory} is in use by another process (pid {owner}), a daemon of "
                "this instance: stop it first (replay), or give each daemon its own `instance`"
            )
        if lock is Lock.UNSUPPORTED:
            log.warning("journal: the directory cannot be locked; run one daemon per instance")
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._owner_fd = fd

    def unlock(self) -> None:
        """Let another process own the directory (close does it too)."""
        if self._owner_fd >= 0:
            os.close(self._owner_fd)
            self._owner_fd = -1

    def _start_segment(self) -> None:
        # A new segment per start: a torn tail of the last run stays behind in its own file.
        segment = self.directory / f"{self.next_position:020d}{_SUFFIX}"
        fd = os.open(segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with self._lock:
            if self._fd >= 0:
                self._retired.append(self._fd)
            self._segment, self._fd = segment, fd
            self._segment_size = 0
            self._dirty = False
            self._dir_dirty = True
        self._states_due = bool(self._state_of)

    def track_state(self, stream: str, state: Callable[[], bytes]) -> None:
        """Have `state()`, the stream's routing state as a STATE payload, open every new segment.

        It is taken at the next append, not at the rotation: a rotation may come in the middle of
        appending a read whose frames the protocol has not read yet.
        """
        self._state_of[stream] = state

    def _append_states(self) -> None:
        self._states_due = False
        now = time.time_ns()
        for stream, state in self._state_of.items():
            try:
                payload = state()
            except Exception:  # a protocol's bug must not stop the appends: its last state stays
                log.exception("journal: a stream's state could not be taken", stream=stream)
                continue
            position = self.next_position
            self.next_position = position + 1
            self._queue(position, now, Kind.STATE, stream, b"", payload)

    # -- appending (the hot path) ----------------------------------------------------------------

    def append(self, kind: Kind, stream: str, received_at: int, payload: bytes) -> int:
        """Append one record; returns its position. Durable after the next write and sync."""
        if self._states_due:
            self._append_states()
        position = self.next_position
        self.next_position = position + 1
        self._queue(position, received_at, kind, stream, b"", payload)
        return position

    def append_frames(self, stream: str, received_at: int, frames: list[bytes]) -> int:
        """Append the frames of one socket read as one record; returns the first one's position.

        Frame i gets position first + i. One header, one checksum and one join per read: this is
        the hot path's share of durability, a small fraction of a microsecond per frame.
        """
        if len(frames) == 1:
            return self.append(Kind.FRAME, stream, received_at, frames[0])
        if self._states_due:
            self._append_states()
        position = self.next_position
        self.next_position = position + len(frames)
        lengths = array("I", map(len, frames))
        if _BIG_ENDIAN:
            lengths.byteswap()
        counts = _COUNT.pack(len(frames)) + lengths.tobytes()
        self._queue(position, received_at, Kind.FRAMES, stream, counts, b"".join(frames))
        return position

    def _queue(
        self, position: int, received_at: int, kind: Kind, stream: str, extra: bytes, payload: bytes
    ) -> None:
        """Queue a record: its header (and `extra`, the FRAMES counts) then the payload as is."""
        name = self._names.get(stream)
        if name is None:
            name = self._names[stream] = stream.encode()
        head = _HEAD.pack(position, received_at, kind, len(name)) + name + extra
        # The checksum runs over head then payload without joining them: no copy of the frame.
        crc = zlib.crc32(payload, zlib.crc32(head))
        size = len(head) + len(payload)
        self._pieces += (_PREFIX.pack(size, crc) + head, payload)
        self._pending += _PREFIX.size + size
        if self._pending >= self._write_at:
            self.write()

    def write(self) -> None:
        """Hand the queued records to the OS (they survive a killed process from here on).

        A write that fails (ENOSPC, EIO) raises nothing: the frames being appended must still
        reach the buffer. The segment is cut back to its last whole record, since a torn one
        would end every later record's reading, and the records stay queued for the next write.
        """
        if not self._pieces:
            return
        pieces, size = self._pieces, self._pending
        self._pieces, self._pending = [], 0
        try:
            _write_all(self._fd, pieces)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._segment_size)
            self._pieces, self._pending = pieces, size
            self._write_at = size + self._write_bytes  # not again at every append
            self._failed(exc)
            return
        self._write_at = self._write_bytes
        self._segment_size += size
        self.bytes_written += size
        with self._lock:
            self._dirty = True
        if self._segment_size >= self._segment_bytes:
            try:
                self._start_segment()  # the full one is synced with the rest, at the next sync
            except OSError as exc:  # no room for a new file: the full one goes on, and we stop
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self.error is not None:
            return  # said once; the records stay queued meanwhile
        self.error = exc
        log.error("journal: cannot write", directory=str(self.directory), error=str(exc))
        if self.on_error is not None:
            self.on_error(exc)

    def sync(self) -> None:
        """Write what is queued and fsync it (survives power loss from here on)."""
        self.write()
        self._sync_files()

    def _sync_files(self) -> None:
        """fsync what was written since the last sync: rotated-out segments (then closed), the
        active one, and the directory where a segment was created.

        Runs in a worker thread while the event loop appends (`run`): the active descriptor and
        the flags are taken and cleared together, before the fsyncs, so a write or a rotation
        meanwhile marks them again for the next sync instead of being taken as synced.
        """
        while True:
            try:
                fd = self._retired.popleft()  # one at a time: close() may be taking them too
            except IndexError:
                break
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        with self._lock:
            fd, dirty, dir_dirty = self._fd, self._dirty, self._dir_dirty
            self._dirty = self._dir_dirty = False
        if dirty and fd >= 0:
            with contextlib.suppress(OSError):  # closed by close() meanwhile: it synced it
                os.fsync(fd)
        if dir_dirty:
            _fsync_dir(self.directory)

    # -- housekeeping ----------------------------------------------------------------------------

    def release(self, below: int) -> list[Path]:
        """Delete every closed segment whose records all have positions < below (all flushed)."""
        segments = segment_files(self.directory)
        removed = []
        for path, following in itertools.pairwise(segments):
            if path == self._segment or int(following.stem) > below:
                break
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    @property
    def size_bytes(self) -> int:
        total = 0
        for path in segment_files(self.directory):
            # The sync thread may delete a released segment between the listing and its size.
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    async def run(self, low_water: Callable[[], int]) -> None:
        """Write, sync and release on an interval until cancelled; `low_water()` gives the bound.

        The fsyncs and the deletions run in a worker thread: deleting a 64 MB segment takes
        ~18 ms and an fsync up to tens, which the event loop would otherwise spend blocked.
        """
        while True:
            await asyncio.sleep(self._sync_interval)
            self.write()
            await asyncio.to_thread(self._sync_and_release, low_water())

    def _sync_and_release(self, below: int) -> None:
        self._sync_files()
        # Safe beside appends: only segments closed before the listing are deleted, and by their
        # names alone, which a rotation meanwhile does not change.
        self.release(below)

    def close(self, *, delete: bool = False) -> None:
        """Sync and close; with delete, remove every segment (all of it is stored elsewhere)."""
        self.sync()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if delete:
            for path in segment_files(self.directory):
                path.unlink(missing_ok=True)
        self.unlock()


_IOV_MAX = 1024  # Linux's limit of buffers per writev


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """Write every piece in order with as few system calls as the kernel allows."""
    for start in range(0, len(pieces), _IOV_MAX):
        batch = pieces[start : start + _IOV_MAX]
        written = os.writev(fd, batch)
        if written < sum(map(len, batch)):  # a short write (rare for files): finish piece by piece
            rest = memoryview(b"".join(batch))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
