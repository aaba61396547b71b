"""Fault injection against the emulators: bad frames mixed into good ones, hostile values, a hung
handshake, bursts, oversized frames. Each test compares what was sent with what was stored."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import duckdb
from aiohttp import web

from ingest.app import Daemon
from ingest.config import load_config
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.log import configure_logging, forget_secret, register_secret
from ingest.protocols.bitquery import BitqueryProtocol
from ingest.views import connect_for_query
from tests.helpers import Drain, blockdb_config, collector, eventually

KEY = "fault-key-0987654321"
GARBAGE = [
    b"not json at all",
    b"\xff\xfe\xfd not utf-8",
    b'{"unexpected": "shape"}',
    b"[1, 2, 3]",
    b'{"chain_id": "one", "dataset_id": "0101", "data": {}}',
    b'{"chain_id": 1, "dataset_id": "0101", "is_reorg": false, "data": {"block_number": "twelve"}}',
    b'{"chain_id": 1, "dataset_id": "0304", "is_reorg": false, "data": {"amount_raw": {"nested": true}}}',
]
HOSTILE = [
    # a dataset id that looks like a path, and SQL in every string the wire can carry
    b'{"chain_id": 1, "dataset_id": "../../../../tmp/x", "is_reorg": false,'
    b' "data": {"_tracing_id": "../../y"}}',
    b'{"chain_id": 1, "dataset_id": "t\\"; DROP TABLE blockdb_blocks; --", "is_reorg": false,'
    b' "data": {"_tracing_id": "z\'); DROP TABLE quarantine; --"}}',
]


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "ingest.toml"
    path.write_text(f"""
[storage]
data_dir = "{tmp_path / "data"}"

[flush]
max_age_seconds = 0.1

[providers.blockdb]
url = "{url}"
auth = {{ env = "BLOCKDB_API_KEY" }}
{extra}

[[providers.blockdb.subscriptions]]
name = "blocks"
chain_id = 1
dataset_id = "0101"

[[providers.blockdb.subscriptions]]
name = "transfers"
chain_id = 1
dataset_id = "0304"
""")
    return path


async def run_daemon_with(tmp_path, monkeypatch, emulator, inject, extra: str = "", seconds: float = 1.5):
    """Run the daemon in-process against `emulator`, calling inject(emulator) once it streams."""
    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    daemon = Daemon(load_config(write_config(tmp_path, emulator.url, extra)))
    task = asyncio.create_task(daemon.run(duration=seconds))
    await eventually(lambda: emulator.blocks_produced >= 3, what="streaming")
    await inject(emulator)
    return await asyncio.wait_for(task, 60), daemon


async def test_malformed_frames_mixed_into_good_ones_are_quarantined_and_the_rest_stored(
    tmp_path, monkeypatch
):
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=5) as emulator:

        async def inject(emu):
            for frame in GARBAGE * 3:
                for conn in emu.connections:
                    emu.offer(conn, frame)
                await asyncio.sleep(0.01)

        result, _ = await run_daemon_with(tmp_path, monkeypatch, emulator, inject)
    con, _ = connect_for_query(
        Daemon(load_config(tmp_path / "ingest.toml")).registry, tmp_path / "data" / "ingest.duckdb", None
    )
    stored = con.execute(
        "SELECT (SELECT count(*) FROM blockdb_blocks) + (SELECT count(*) FROM blockdb_transfers)"
    ).fetchone()[0]
    assert stored == sum(emulator.sent.values())  # every good record, none of the bad ones
    quarantined = con.execute("SELECT raw, reason FROM quarantine").fetchall()
    # Unreadable frames are kept whole; a record its schema cannot take is kept as that record
    # (its dataset and the frame's journal position are columns beside it).
    expected = [*GARBAGE[:5], b'{"block_number": "twelve"}', b'{"amount_raw": {"nested": true}}']
    assert sorted(bytes(raw) for raw, _ in quarantined) == sorted(expected * 3)
    assert all(reason for _, reason in quarantined)
    assert result.failed == []


async def test_hostile_values_stay_data(tmp_path, monkeypatch):
    """Path- or SQL-looking wire values never become a path, a table or a statement."""
    async with BlockDBEmulator(key=KEY, block_interval=0.02) as emulator:

        async def inject(emu):
            for frame in HOSTILE:
                for conn in emu.connections:
                    emu.offer(conn, frame)

        await run_daemon_with(tmp_path, monkeypatch, emulator, inject)
    data = tmp_path / "data"
    assert not Path("/tmp/x").exists()
    written = {p.relative_to(data).parts[:2] for p in data.rglob("*.parquet")}
    assert all(part[0] == "parquet" and part[1].startswith("dataset=") for part in written)
    assert {part[1] for part in written} <= {
        f"dataset={n}" for n in ("blockdb_blocks", "blockdb_transfers", "blockdb_generic")
    }
    db = duckdb.connect(str(data / "ingest.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) > 0 FROM blockdb_blocks").fetchone() == (True,)  # not dropped
    rows = db.execute("SELECT dataset_id, _tracing_id FROM blockdb_generic ORDER BY 1").fetchall()
    assert rows == [
        ("../../../../tmp/x", "../../y"),
        ('t"; DROP TABLE blockdb_blocks; --', "z'); DROP TABLE quarantine; --"),
    ]


def test_hostile_bitquery_names_stay_data(registry, tmp_path):
    """A cube or root named like a path or a statement lands in the generic table as text."""
    from ingest.arrow_batch import build_table
    from ingest.sinks.parquet import ParquetSink

    p = BitqueryProtocol(
        "bitquery",
        [
            BitqueryProtocol.parse_subscription(
                {"name": "b", "query": "subscription { EVM(network: eth) { Blocks { Block { Number } } } }"},
                "s",
            )
        ],
    )
    p.connect()
    p.receive(b'{"type":"connection_ack"}', 1)
    frame = {
        "type": "next",
        "id": "1",
        "payload": {"data": {"../../etc": {'x"; DROP TABLE t; --': [{"a": 1}]}}},
    }
    events = p.receive(json.dumps(frame), 1_763_000_000_000_000_000)
    rows = next(e for e in events if hasattr(e, "records"))
    assert rows.dataset == "bitquery_generic"
    table = build_table(registry["bitquery_generic"], [rows]).table
    assert (table["root"][0].as_py(), table["cube"][0].as_py()) == ("../../etc", 'x"; DROP TABLE t; --')
    sink = ParquetSink(str(tmp_path), "main")
    sink.open([registry["bitquery_generic"]])
    (path,) = sink.write(registry["bitquery_generic"], table, 0, 0)
    assert Path(path).resolve().is_relative_to(tmp_path.resolve() / "dataset=bitquery_generic")


async def test_oversized_frames_are_quarantined_not_parsed(tmp_path, monkeypatch):
    async with BlockDBEmulator(key=KEY, block_interval=0.02) as emulator:
        big = b'{"chain_id":1,"dataset_id":"0101","is_reorg":false,"data":{"pad":"' + b"x" * 5000 + b'"}}'

        async def inject(emu):
            for conn in emu.connections:
                emu.offer(conn, big)

        await run_daemon_with(tmp_path, monkeypatch, emulator, inject, extra="max_frame_bytes = 4096")
    db = duckdb.connect(str(tmp_path / "data" / "ingest.duckdb"), read_only=True)
    assert db.execute("SELECT reason, octet_length(raw) FROM quarantine").fetchall() == [
        (f"frame too large: {len(big)} bytes", len(big))
    ]


async def test_a_handshake_that_never_completes_is_timed_out_and_retried(registry):
    """A server that accepts TCP and then says nothing: connect times out, backoff, no hang."""
    accepted = 0

    async def hang(reader, writer):
        nonlocal accepted
        accepted += 1
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = blockdb_config(
            f"ws://127.0.0.1:{port}/v1/evm/", [{"chain_id": 1, "dataset_id": "0101"}], connect_timeout=0.3
        )
        col, _ = collector(registry, config, KEY)
        task = asyncio.create_task(col.run())
        await eventually(lambda: accepted >= 3, timeout=10, what="three attempts")
        assert col.stats.connects == 0 and "TimeoutError" in col.stats.last_error
        await col.stop()
        await asyncio.wait_for(task, 5)
    finally:
        server.close()


async def test_a_burst_far_above_the_normal_rate_is_absorbed_without_loss(registry):
    async with BlockDBEmulator(key=KEY, block_interval=1.0, txs_per_block=20) as emulator:
        from ingest.config import FlushPolicy

        policy = FlushPolicy(max_rows=500, max_bytes=100_000, max_age=0.05, max_pending_bytes=300_000)
        col, buffer = collector(
            registry,
            blockdb_config(
                emulator.url, [{"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0304"}]
            ),
            KEY,
            policy=policy,
        )
        drain = Drain(buffer)
        task = asyncio.create_task(col.run())
        await eventually(
            lambda: col.stats.subscriptions and all(s == "active" for s in col.stats.subscriptions.values()),
            what="subscribed",
        )
        emulator.burst(300)
        await eventually(lambda: emulator.blocks_produced >= 300, timeout=30, what="the burst")
        await asyncio.sleep(0.3)
        await col.stop()
        await asyncio.wait_for(task, 10)
        await drain.close()
        assert sum(drain.rows.values()) == sum(emulator.sent.values()) > 5_000
        assert col.stats.connects == 1


async def test_a_base64_key_in_the_query_is_masked_in_a_redirect_loops_error(registry, capsys):
    """aiohttp's TooManyRedirects quotes the URL as yarl re-encodes it ('/' kept, '+' and '=' as %2B
    and %3D): neither the key as given nor the URL the collector was given, but masked all the same."""
    key = "Zm9vYmFy/c2VjcmV0+a2V5="

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path_qs)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    configure_logging("json", logging.INFO)
    register_secret(key)  # as the daemon does for every key it reads
    try:
        config = blockdb_config(
            f"ws://127.0.0.1:{port}/v1/evm/", [{"chain_id": 1, "dataset_id": "0101"}], location="query"
        )
        col, _ = collector(registry, config, key)
        task = asyncio.create_task(col.run())
        await eventually(lambda: "TooManyRedirects" in col.stats.last_error, what="a redirect loop")
        await col.stop()
        await asyncio.wait_for(task, 5)
    finally:
        forget_secret(key)
        await runner.cleanup()
    error = col.stats.last_error
    assert "api_key=***" in error
    assert "c2VjcmV0" not in error and "Zm9vYmFy" not in error
    logged = capsys.readouterr().err
    assert "TooManyRedirects" in logged and "c2VjcmV0" not in logged


async def test_a_sink_that_fails_to_close_leaves_the_others_closed_and_the_journal_for_a_replay(
    tmp_path, monkeypatch
):
    """A close that raises (the disk gone at the last checkpoint) is logged: the other sinks still
    close, and the journal is kept, since that sink may not hold everything it was given."""
    from ingest.journal import Journal, segment_files
    from ingest.sinks.duckdb import DuckDBSink
    from ingest.sinks.parquet import ParquetSink

    closed: list[str] = []
    close_duckdb = DuckDBSink.close

    def parquet_close(self):  # type: ignore[no-untyped-def]
        raise OSError(5, "Input/output error")

    def duckdb_close(self):  # type: ignore[no-untyped-def]
        close_duckdb(self)
        closed.append("duckdb")

    monkeypatch.setattr(ParquetSink, "close", parquet_close)
    monkeypatch.setattr(DuckDBSink, "close", duckdb_close)
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=3) as emulator:

        async def inject(emu):
            pass

        result, daemon = await run_daemon_with(tmp_path, monkeypatch, emulator, inject, seconds=0.5)
    assert closed == ["duckdb"] and result.failed == []
    assert daemon.journal is not None and segment_files(daemon.journal.directory)  # kept for a replay
    again = Journal(daemon.journal.directory)
    again.lock()  # the run let go of it
    again.unlock()
