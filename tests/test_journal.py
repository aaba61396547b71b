"""The journal: records round-trip, positions never repeat, torn tails are skipped, flushed segments go."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from ingest.app import Daemon
from ingest.buffer import Buffer
from ingest.config import FlushPolicy, load_config
from ingest.errors import Fatal
from ingest.events import Rows
from ingest.journal import Journal, Kind, read_records, segment_files
from ingest.protocols import PROTOCOLS
from ingest.replay import journal_records, replay
from ingest.schema import load_registry


def fill(journal: Journal, n: int, stream: str = "blockdb") -> list[int]:
    return [journal.append(Kind.FRAME, stream, 1_000 + i, b'{"n":%d}' % i) for i in range(n)]


def records(directory):
    return [r for seg in segment_files(directory) for r in read_records(seg)]


def test_records_round_trip_in_order(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    positions = fill(journal, 5)
    journal.append(Kind.STATE, "helius", 7, b'{"ids":[[1,"slots"]]}')
    journal.close()
    got = records(tmp_path)
    assert positions == [1, 2, 3, 4, 5]
    assert [(r.position, r.kind, r.stream, r.received_at) for r in got[:2]] == [
        (1, Kind.FRAME, "blockdb", 1000),
        (2, Kind.FRAME, "blockdb", 1001),
    ]
    assert got[4].payload == b'{"n":4}' and got[5].kind is Kind.STATE and got[5].stream == "helius"


def test_positions_continue_after_a_reopen(tmp_path):
    first = Journal(tmp_path)
    first.open()
    fill(first, 3)
    first.close()
    second = Journal(tmp_path)
    leftover = second.open()
    assert len(leftover) == 1 and second.next_position == 4
    assert fill(second, 2) == [4, 5]


def test_nothing_is_on_disk_before_write_and_everything_after(tmp_path):
    """Appends are buffered; write() hands them to the OS (a killed process loses nothing after it)."""
    journal = Journal(tmp_path, write_bytes=1 << 30)
    journal.open()
    fill(journal, 10)
    assert records(tmp_path) == []
    journal.write()
    assert len(records(tmp_path)) == 10


def test_a_torn_tail_is_skipped_with_a_log_line(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    fill(journal, 4)
    journal.close()
    (segment,) = segment_files(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # a crash in the middle of the last record
    with capture_logs() as logs:
        assert [r.position for r in read_records(segment)] == [1, 2, 3]
    assert logs[0]["event"] == "journal: skipping a torn record" and logs[0]["reason"] == "a short record"
    corrupt = bytearray(data)
    corrupt[-3] ^= 0xFF  # a flipped byte in the last record's payload
    segment.write_bytes(bytes(corrupt))
    with capture_logs() as logs:
        assert [r.position for r in read_records(segment)] == [1, 2, 3]
    assert logs[0]["reason"] == "a checksum mismatch"
    reopened = Journal(tmp_path)
    reopened.open()
    assert reopened.next_position == 4  # the torn record never counted


def test_segments_rotate_and_go_once_everything_in_them_is_flushed(tmp_path):
    journal = Journal(tmp_path, segment_bytes=200, write_bytes=1)
    journal.open()
    fill(journal, 30)
    segments = segment_files(tmp_path)
    assert len(segments) > 3
    starts = [int(p.stem) for p in segments]
    # Position starts[2] - 1, the last of the second segment, is not in every sink yet: it stays.
    journal.release(below=starts[2] - 1)
    assert [int(p.stem) for p in segment_files(tmp_path)] == starts[1:]
    journal.release(below=starts[2])  # positions < starts[2] are in every sink
    assert [int(p.stem) for p in segment_files(tmp_path)] == starts[2:]
    journal.release(below=10**9)
    assert segment_files(tmp_path) == [journal._segment]  # never the active one
    assert [r.position for r in records(tmp_path)] == [] or records(tmp_path)[-1].position == 30
    journal.close(delete=True)
    assert segment_files(tmp_path) == []


def test_a_new_run_starts_a_new_segment(tmp_path):
    for _ in range(2):
        journal = Journal(tmp_path)
        journal.open()
        fill(journal, 2)
        journal.close()
    assert [int(p.stem) for p in segment_files(tmp_path)] == [1, 3]
    assert os.path.getsize(segment_files(tmp_path)[0]) > 0


def test_the_frames_of_one_read_are_one_record_and_read_back_frame_by_frame(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    journal.append(Kind.STATE, "coinapi", 5, b"{}")
    frames = [b'{"n":%d}' % i for i in range(300)] + [b"", b"x" * 70_000]
    first = journal.append_frames("coinapi", 9, frames)
    after = journal.append_frames("coinapi", 10, [b"solo"])
    journal.close()
    assert first == 2 and after == 2 + len(frames) and journal.next_position == after + 1
    got = records(tmp_path)
    assert [r.payload for r in got[1:]] == [*frames, b"solo"]
    assert [r.position for r in got] == list(range(1, after + 1))
    assert {(r.kind, r.stream) for r in got[1:]} == {(Kind.FRAME, "coinapi")}
    assert {r.received_at for r in got[1:-1]} == {9}
    (segment,) = segment_files(tmp_path)
    assert [r.position for r in read_records(segment, after=250)] == list(range(251, after + 1))
    reopened = Journal(tmp_path)
    reopened.open()
    assert reopened.next_position == after + 1


def test_a_torn_frames_record_loses_only_that_read(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    journal.append_frames("blockdb", 1, [b"a", b"b", b"c"])
    journal.append_frames("blockdb", 2, [b"d", b"e"])
    journal.close()
    (segment,) = segment_files(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[:-1])
    with capture_logs() as logs:
        assert [r.payload for r in read_records(segment)] == [b"a", b"b", b"c"]
    assert logs[0]["reason"] == "a short record"
    reopened = Journal(tmp_path)
    reopened.open()
    assert reopened.next_position == 4  # the torn read never counted: its positions are reused


def _fsyncs(monkeypatch) -> list[tuple[int, str]]:
    """Record each fsync (the file's path, the calling thread) and still do it."""
    calls: list[tuple[int, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_a_rotated_segment_is_synced_and_closed_by_the_next_sync_not_by_the_append(tmp_path, monkeypatch):
    journal = Journal(tmp_path, segment_bytes=200, write_bytes=1)
    journal.open()
    calls = _fsyncs(monkeypatch)
    before = set(os.listdir("/proc/self/fd"))
    fill(journal, 30)  # rotates several times
    journal.append(Kind.FRAME, "blockdb", 2_000, b"{}")  # and writes to the active one
    rotated = segment_files(tmp_path)[:-1]
    assert len(rotated) > 3 and calls == []  # appending never waits for a disk
    assert len(set(os.listdir("/proc/self/fd")) - before) == len(
        rotated
    )  # each rotated after the first, held until synced, and the active one
    journal.sync()
    synced = [path for path, _ in calls]
    assert synced[: len(rotated)] == [str(p) for p in rotated]  # each rotated one, in order
    assert str(journal._segment) in synced and str(tmp_path) in synced  # the active one, the directory
    assert set(os.listdir("/proc/self/fd")) - before == {str(journal._fd)}  # only the active one open
    journal.close()
    assert [r.position for r in records(tmp_path)] == list(range(1, 32))


def test_a_write_during_a_sync_is_synced_by_the_next_one(tmp_path, monkeypatch):
    """The sync runs in a thread while the loop appends: a write that lands while the active
    segment's fsync is under way may not be in it, so it must leave the segment marked dirty."""
    journal = Journal(tmp_path)
    journal.open()
    fill(journal, 1)
    journal.sync()
    fill(journal, 1)
    journal.write()
    real = os.fsync

    def fsync_with_a_write_meanwhile(fd: int) -> None:
        real(fd)
        fill(journal, 1)  # the loop's append and write, after the fsync took its snapshot
        journal.write()

    monkeypatch.setattr(os, "fsync", fsync_with_a_write_meanwhile)
    journal._sync_files()
    calls = _fsyncs(monkeypatch)
    journal._sync_files()
    assert [path for path, _ in calls] == [str(journal._segment)]
    journal.close()


async def test_run_syncs_and_deletes_segments_off_the_event_loop(tmp_path, monkeypatch):
    journal = Journal(tmp_path, segment_bytes=200, write_bytes=1, sync_interval=0.01)
    journal.open()
    fill(journal, 30)
    calls = _fsyncs(monkeypatch)
    unlinked: list[str] = []
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        unlinked.append(threading.current_thread().name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    task = asyncio.create_task(journal.run(lambda: journal.next_position))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(segment_files(tmp_path)) == 1:
            break
    task.cancel()
    assert segment_files(tmp_path) == [journal._segment]  # everything below the bound went
    loop_thread = threading.current_thread().name
    assert unlinked and loop_thread not in unlinked
    assert calls and loop_thread not in {thread for _, thread in calls}
    journal.close()


def test_each_new_segment_opens_with_every_streams_state_so_a_replay_from_it_routes_as_live(tmp_path):
    """Routing state that frames do not show (Bitquery's operation ids) was journaled only on
    connect and every keep-alive: once the segment holding it was released, a crash made the
    replay of the next segments send their rows to the generic table."""
    query = (
        "subscription { EVM(network: eth) { Transfers { Block { Number Hash Time } Transaction { Hash } } } }"
    )
    protocol_class = PROTOCOLS["bitquery"]
    subscriptions = [
        protocol_class.parse_subscription({"name": "eth_transfers", "query": query}, "s[0]", None)
    ]

    def frame(i: int) -> bytes:
        row = {"Block": {"Number": i, "Hash": f"0x{i:064x}", "Time": "2024-01-01T00:00:00Z"}}
        row["Transaction"] = {"Hash": f"0x{i:064x}"}
        return json.dumps(
            {"type": "next", "id": "1", "payload": {"data": {"EVM": {"Transfers": [row]}}}}
        ).encode()

    journal = Journal(tmp_path, segment_bytes=4096)
    journal.open()
    live = protocol_class("bitquery", subscriptions, {})
    journal.track_state("bitquery", lambda: msgspec.json.encode(live.state()))  # as the collector does
    live.connect()
    journal.append(Kind.STATE, "bitquery", 1, msgspec.json.encode(live.state()))
    for raw in (b'{"type":"connection_ack"}', *map(frame, range(60))):
        position = journal.append_frames("bitquery", 2, [raw])
        for event in live.receive(raw, 2):
            if isinstance(event, Rows):
                assert (event.dataset, event.subscription) == ("bitquery_evm_transfers", "eth_transfers")
        journal.write()
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    journal.release(below=int(segments[-2].stem))  # all but the last two are in every sink
    journal.close()

    replayed: list[tuple[int, str, str]] = []
    buffer = Buffer(load_registry(), FlushPolicy(max_rows=10**6, max_age=1e9))
    buffer.add = lambda rows: replayed.append((rows.position, rows.dataset, rows.subscription))
    fresh = {"bitquery": protocol_class("bitquery", subscriptions, {})}
    asyncio.run(replay(journal_records(segment_files(tmp_path)), fresh, buffer))
    assert replayed and replayed[-1][0] == position
    assert {(dataset, sub) for _, dataset, sub in replayed} == {("bitquery_evm_transfers", "eth_transfers")}


def test_a_segment_torn_in_its_first_record_is_not_reused_by_the_next_run(tmp_path):
    first = Journal(tmp_path)
    first.open()
    fill(first, 100)
    first.close()
    second = Journal(tmp_path)
    second.open(after=100)
    torn = second._segment
    second.close()
    torn.write_bytes(b"\x00" * 20)  # killed in its first write: a few bytes, no whole record
    third = Journal(tmp_path)
    with capture_logs() as logs:
        leftover = third.open(after=100)
    assert torn not in leftover
    assert [e["event"] for e in logs][-1] == "journal: removing a segment with no intact record"
    fill(third, 50)
    third.close()
    # Readable, not behind the torn bytes:
    assert [r.position for r in records(tmp_path)][-50:] == list(range(101, 151))


def test_the_journals_size_skips_a_segment_deleted_while_it_is_counted(tmp_path, monkeypatch):
    """Released segments are deleted in the sync thread, which may come between the listing and
    a segment's size (a /metrics scrape failed with FileNotFoundError)."""
    journal = Journal(tmp_path)
    journal.open()
    fill(journal, 3)
    journal.write()
    listed = [*segment_files(tmp_path), tmp_path / "00000000000000000002.seg"]  # gone meanwhile
    monkeypatch.setattr("ingest.journal.segment_files", lambda directory: listed)
    assert journal.size_bytes == os.path.getsize(listed[0])
    journal.close()


def test_a_journal_in_use_by_another_daemon_is_refused_until_it_closes(tmp_path):
    """A second daemon of the same instance would take the live segments for a crashed run's and
    store their frames again: it stops at once, naming the owner."""
    first = Journal(tmp_path / "main")
    first.open()
    first.append(Kind.FRAME, "blockdb", 1, b"{}")
    second = Journal(tmp_path / "main")
    with pytest.raises(Fatal, match=rf"in use by another process \(pid {os.getpid()}\).*`instance`"):
        second.open()
    assert len(segment_files(tmp_path / "main")) == 1  # it created and removed nothing
    first.close()
    assert second.open() == segment_files(tmp_path / "main")[:1]  # the closed run's segment
    second.close()


def test_a_replay_reads_the_frames_of_one_socket_read_together_as_the_driver_did(tmp_path):
    """A Helius notification ahead of the subscribe response naming its id, in one read: live, the
    protocol maps the id before reading the read's frames in order; the replay must route alike."""
    pubkey = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
    protocol_class = PROTOCOLS["helius"]
    spec = {"name": "usdc", "method": "accountSubscribe", "params": [pubkey, {"commitment": "confirmed"}]}
    subscriptions = [protocol_class.parse_subscription(spec, "s[0]", None)]
    note = {"jsonrpc": "2.0", "method": "accountNotification", "params": {"subscription": 10, "result": {
        "context": {"slot": 5}, "value": {"lamports": 1, "owner": "o", "executable": False, "rentEpoch": 0,
                                          "space": 0, "data": ["", "base64"]}}}}  # fmt: skip
    read = [json.dumps(note).encode(), b'{"jsonrpc":"2.0","result":10,"id":1}']
    journal = Journal(tmp_path)
    journal.open()
    live = protocol_class("helius", subscriptions, {})
    live.connect()
    journal.append(Kind.STATE, "helius", 1, msgspec.json.encode(live.state()))
    first = journal.append_frames("helius", 2, read)
    events = live.receive_many(read, 2, [first, first + 1])
    routed = [(e.position, e.subscription) for e in events if isinstance(e, Rows)]
    journal.close()
    assert routed == [(first, "usdc")]

    replayed: list[tuple[int, str]] = []
    buffer = Buffer(load_registry(), FlushPolicy(max_rows=10**6, max_age=1e9))
    buffer.add = lambda rows: replayed.append((rows.position, rows.subscription))
    fresh = {"helius": protocol_class("helius", subscriptions, {})}
    asyncio.run(replay(journal_records([tmp_path]), fresh, buffer))
    assert replayed == routed


def test_a_directory_that_cannot_be_locked_is_used_with_a_warning(tmp_path, monkeypatch):
    """NFS without its lock service refuses flock (ENOLCK): the daemon runs as before, warned."""
    import errno
    import fcntl

    def refuse(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    journal = Journal(tmp_path / "main")
    with capture_logs() as logs:
        journal.open()
    assert [e["event"] for e in logs] == [
        "journal: the directory cannot be locked; run one daemon per instance"
    ]
    journal.append(Kind.FRAME, "blockdb", 1, b"{}")
    journal.close()


async def test_the_replay_verb_waits_for_no_daemon_of_its_instance(tmp_path, monkeypatch):
    """`replay` writes as the config's instance: beside its running daemon both would store the
    same positions, so it is refused as a second daemon is."""
    monkeypatch.setenv("BLOCKDB_API_KEY", "k")
    cfg = tmp_path / "ingest.toml"
    cfg.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nduckdb = false\n[providers.blockdb]\n'
        'url = "ws://127.0.0.1:9/"\n[[providers.blockdb.subscriptions]]\nchain_id = 1\ndataset_id = "0101"\n'
    )
    running = Journal(tmp_path / "data" / "journal" / "main")
    running.open()  # the daemon's
    with pytest.raises(Fatal, match=r"in use by another process.*stop it first"):
        await Daemon(load_config(cfg)).ingest_offline([])
    running.close()
    await Daemon(load_config(cfg)).ingest_offline([])  # and once it is gone, it runs


def test_a_replay_quarantines_a_frame_above_its_providers_limit_as_the_driver_did(tmp_path):
    """The driver quarantines a frame above max_frame_bytes unparsed; read again by a replay, the
    same frame must not become rows."""
    protocol_class = PROTOCOLS["helius"]
    subscriptions = [
        protocol_class.parse_subscription({"name": "slots", "method": "slotSubscribe"}, "s", None)
    ]
    live = protocol_class("helius", subscriptions, {})
    live.connect()
    live.receive(b'{"jsonrpc":"2.0","result":7,"id":1}', 1)
    slot = {"jsonrpc": "2.0", "method": "slotNotification", "params": {"subscription": 7, "result": {}}}
    small = json.dumps({**slot, "params": {**slot["params"], "result": {"slot": 5, "parent": 4, "root": 3}}})
    big = json.dumps({**slot, "params": {**slot["params"], "result": {"slot": 6, "pad": "x" * 500}}})
    journal = Journal(tmp_path)
    journal.open()
    journal.append(Kind.STATE, "helius", 1, msgspec.json.encode(live.state()))
    journal.append_frames("helius", 2, [small.encode(), big.encode()])
    journal.close()

    rows: list[int] = []
    rejected: list[str] = []
    buffer = Buffer(load_registry(), FlushPolicy(max_rows=10**6, max_age=1e9))
    buffer.add = lambda r: rows.append(r.position)
    buffer.reject = lambda r: rejected.append(r.reason)
    fresh = {"helius": protocol_class("helius", subscriptions, {})}
    asyncio.run(replay(journal_records([tmp_path]), fresh, buffer, {"helius": 400}))
    assert len(rows) == 1 and rejected == [f"frame too large: {len(big)} bytes"]


def test_a_write_the_disk_refuses_leaves_no_torn_record_and_is_made_again(tmp_path, monkeypatch):
    """A full disk mid-write (a short write, then ENOSPC) must not raise into the append, whose
    frames still have to reach the buffer, nor leave half a record that would end the reading of
    every record written after it; the records stay queued, and the failure is told once."""
    import errno

    import ingest.journal

    write_all = ingest.journal._write_all
    full = True

    def short_then_full(fd: int, pieces: list[bytes]) -> None:
        if not full:
            return write_all(fd, pieces)
        data = b"".join(pieces)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ingest.journal, "_write_all", short_then_full)
    journal = Journal(tmp_path, write_bytes=64)
    told: list[OSError] = []
    journal.on_error = told.append
    journal.open()
    fill(journal, 3)
    journal.write()
    fill(journal, 20)  # appends while the disk is full: no error, no write at every one
    assert [e.errno for e in told] == [errno.ENOSPC] and journal.error is told[0]
    full = False
    fill(journal, 2)
    journal.close()
    assert [r.payload for r in records(tmp_path)] == [b'{"n":%d}' % i for i in (0, 1, 2, *range(20), 0, 1)]
