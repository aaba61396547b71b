"""The daemon end to end: emulator -> collector -> buffer -> writer -> DuckDB and Parquet -> views.

Expected counts and values come from the emulator itself (its send counters, its send log, and
the deterministic chain it serves), never from pasted numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from ingest.app import Daemon
from ingest.cli import main as cli_main
from ingest.cli import with_default_verb, write_table
from ingest.config import load_config
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.protocols.blockdb import DATASETS, GENERIC_DATASET
from tests.helpers import eventually, run_cli

ROOT = Path(__file__).resolve().parent.parent
KEY = "e2e-secret-key-9f8e7d6c5b"
SUBSCRIPTIONS = """
[[providers.blockdb.subscriptions]]
name = "blocks"
chain_id = 1
dataset_id = "0101"

[[providers.blockdb.subscriptions]]
name = "transfers"
chain_id = 1
dataset_id = "0304"

[[providers.blockdb.subscriptions]]
name = "txs"
chain_id = 1
dataset_id = "0102"

[[providers.blockdb.subscriptions]]
name = "ohlc"
chain_id = 1
dataset_id = "0404"
params.base_token_address = "c02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
params.quote_token_address = "a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
"""


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "ingest.toml"
    path.write_text(f"""
[storage]
data_dir = "{tmp_path / "data"}"

[flush]
max_rows = 500
max_age_seconds = 0.2

[providers.blockdb]
url = "{url}"
auth = {{ env = "BLOCKDB_API_KEY", in = "header" }}
{extra}
{SUBSCRIPTIONS}
""")
    return path


def dataset_of(dataset_id: str) -> str:
    return DATASETS.get(dataset_id, GENERIC_DATASET)


def expected_rows(sent: Counter) -> Counter:
    out: Counter = Counter()
    for (_, dataset_id), n in sent.items():
        out[dataset_of(dataset_id)] += n
    return out


def store_counts(db: Path) -> Counter:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return Counter(
            {
                t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for t in ("blockdb_blocks", "blockdb_transfers", "blockdb_transactions", "blockdb_generic")
            }
        )
    finally:
        con.close()


def parquet_counts(root: Path) -> Counter:
    out: Counter = Counter()
    for name in ("blockdb_blocks", "blockdb_transfers", "blockdb_transactions", "blockdb_generic"):
        directory = root / f"dataset={name}"
        if directory.exists():
            out[name] = pads.dataset(str(directory), format="parquet", partitioning="hive").count_rows()
    return out


async def test_daemon_stores_exactly_what_the_embedded_emulator_sent(tmp_path, monkeypatch):
    """The demo path: url = "emulator", rows per table equal the emulator's sends, in both sinks."""
    monkeypatch.delenv("BLOCKDB_API_KEY", raising=False)
    # max_blocks: the chain is complete before the daemon stops, so its final state is what was sent
    options = "emulator = { block_interval = 0.02, txs_per_block = 4, reorg_every = 7, max_blocks = 50 }"
    cfg = write_config(tmp_path, "emulator", options)
    daemon = Daemon(load_config(cfg))
    result = await daemon.run(duration=2.0)
    emulator = daemon._emulators["blockdb"]
    expected = expected_rows(emulator.sent)
    assert sum(expected.values()) > 100
    assert result.emulator_sent == {"blockdb": sum(emulator.sent.values())}
    assert store_counts(tmp_path / "data" / "ingest.duckdb") == expected
    assert parquet_counts(tmp_path / "data" / "parquet") == expected
    assert result.failed == []

    # values: the canonical blocks view holds the emulator's canonical chain, hash for hash
    con = duckdb.connect(str(tmp_path / "data" / "ingest.duckdb"), read_only=True)
    chain = emulator.chains[1]
    blocks = con.execute("SELECT number, hash, parent_hash FROM blocks ORDER BY number").fetchall()
    assert [b[0] for b in blocks] == list(range(chain.first_block, chain.head + 1))
    for number, hash_, parent in blocks:
        assert hash_ == "0x" + chain.canonical_hash(number)
        if number > chain.first_block:
            assert parent == "0x" + chain.canonical_hash(number - 1)
    reorged = con.execute("SELECT count(*) FROM blockdb_blocks WHERE _is_reorg").fetchone()[0]
    assert reorged == emulator.sent_reorg[(1, "0101")] > 0
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0


def spawn_daemon(cfg: Path, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "BLOCKDB_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest",
            "run",
            "--config",
            str(cfg),
            "--no-live",
            "--log-format",
            "json",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def query(cfg: Path, sql: str) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest",
        "query",
        sql,
        "--format",
        "json",
        "--config",
        str(cfg),
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_mid_stream_keeps_every_received_message_and_queries_work_meanwhile(tmp_path, sig):
    """SIGTERM flushes everything: each record the emulator sent is in DuckDB and Parquet once, unchanged.

    Meanwhile a second process queries the store: it sees rows, and never fewer than before.
    """
    emulator = BlockDBEmulator(key=KEY, block_interval=0.01, txs_per_block=4, reorg_every=9, record_log=True)
    url = await emulator.start()
    try:
        cfg = write_config(tmp_path, url)
        proc = spawn_daemon(cfg, tmp_path)
        seen = []
        try:
            await eventually(lambda: emulator.blocks_produced >= 20, timeout=30, what="20 blocks")
            for _ in range(3):
                rows = await query(cfg, "SELECT count(*) AS n FROM blockdb_transfers")
                seen.append(rows[0]["n"])
            assert seen == sorted(seen) and seen[-1] > 0
            proc.send_signal(sig)
            stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, stderr.decode()[-3000:]
        assert KEY not in stdout.decode() + stderr.decode()
    finally:
        await emulator.stop()

    sent = Counter((dataset_of(d), t) for _, d, t, _ in emulator.sent_log)
    db = duckdb.connect(str(tmp_path / "data" / "ingest.duckdb"), read_only=True)
    stored = Counter(
        db.execute(
            " UNION ALL ".join(
                f"SELECT _dataset, _tracing_id FROM {t}"
                for t in ("blockdb_blocks", "blockdb_transfers", "blockdb_transactions", "blockdb_generic")
            )
        ).fetchall()
    )
    assert stored == sent  # every record, once, nothing extra
    assert parquet_counts(tmp_path / "data" / "parquet") == expected_rows(emulator.sent)

    # values survive the trip: each stored payload is the record the emulator built for that id
    chain = emulator.chains[1]
    for number, hash_ in db.execute("SELECT block_number, block_hash FROM blockdb_blocks").fetchall():
        assert hash_ in {chain.block_hash(number, b) for b in range(len(chain.reorgs) + 1)}
    # `_raw` lives in the lake (DuckDB leaves it out by default): it must be the record as sent
    raws = duckdb.sql(
        f"SELECT amount_raw, _raw FROM '{tmp_path}/data/parquet/dataset=blockdb_transfers/*/*.parquet'"
    ).fetchall()
    assert raws and all(json.loads(raw)["amount_raw"] == amount for amount, raw in raws)
    columns = {row[0] for row in db.execute("DESCRIBE blockdb_transfers").fetchall()}
    assert "_raw" not in columns and "amount_raw" in columns


async def test_bad_config_fails_before_connecting(tmp_path):
    emulator = BlockDBEmulator(key=KEY)
    url = await emulator.start()
    try:
        cfg = write_config(tmp_path, url, "idle_timeout = -3")
        proc = spawn_daemon(cfg, tmp_path)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 2
        assert "providers.blockdb.idle_timeout" in stderr.decode()
        assert emulator.connections_total == 0
    finally:
        await emulator.stop()


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("", "cannot write the journal in"),
        ("journal = false\nparquet = false", "cannot open the duckdb sink"),
    ],
)
def test_a_data_dir_that_cannot_be_written_is_an_error_not_a_traceback(
    tmp_path, monkeypatch, capsys, storage, message
):
    """A data_dir on a read-only disk, or another user's: said with the path, exit 1 (a traceback
    of mkdir came before, from the journal's lock or a sink's open)."""
    cfg = write_config(tmp_path, "emulator", "emulator = { block_interval = 0.05 }")
    cfg.write_text(cfg.read_text().replace("[storage]", f"[storage]\n{storage}"))
    data = tmp_path / "data"
    mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == data or data in self.parents:
            raise PermissionError(13, "Permission denied", str(data))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code = cli_main(["run", "--config", str(cfg), "--duration", "1", "--no-live"])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Permission denied" in err
    assert "Traceback" not in err
    capture = tmp_path / "capture.jsonl"
    capture.write_text("{}\n")
    code = cli_main(["replay", str(capture), "--provider", "blockdb", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1 and message in err


def test_compact_of_a_lake_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path, "emulator")

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("ingest.compact.try_lock", refuse)
    code = cli_main(["compact", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1 and "error: cannot compact" in err and "Permission denied" in err


async def test_missing_key_variable_is_named_and_nothing_connects(tmp_path):
    emulator = BlockDBEmulator(key=KEY)
    url = await emulator.start()
    try:
        cfg = write_config(tmp_path, url)
        env = {k: v for k, v in os.environ.items() if k != "BLOCKDB_API_KEY"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ingest",
            "run",
            "--config",
            str(cfg),
            "--no-live",
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2
        assert "BLOCKDB_API_KEY" in stderr.decode() and "providers.blockdb.auth.env" in stderr.decode()
        assert emulator.connections_total == 0
    finally:
        await emulator.stop()


async def test_a_bad_key_stops_the_daemon_with_a_clear_error_and_no_key_in_the_output(tmp_path):
    emulator = BlockDBEmulator(key="the-right-key-123")
    url = await emulator.start()
    try:
        cfg = write_config(
            tmp_path, url, 'auth = { env = "BLOCKDB_API_KEY", in = "query" }'.replace("auth", "#")
        )
        cfg.write_text(cfg.read_text().replace('in = "header"', 'in = "query"'))
        proc = spawn_daemon(cfg, tmp_path, "--duration", "20")
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
        text = stdout.decode() + stderr.decode()
        assert proc.returncode == 1
        assert "401" in text and "collector stopped" in text
        assert KEY not in text and "***" in text  # the endpoint is shown, its key masked
    finally:
        await emulator.stop()


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
async def test_query_formats(tmp_path, fmt):
    cfg = write_config(tmp_path, "emulator", "emulator = { block_interval = 0.02, max_blocks = 3 }")
    await Daemon(load_config(cfg)).run(duration=0.8)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest",
        "query",
        "SELECT number, hash FROM blocks ORDER BY number",
        "--format",
        fmt,
        "--config",
        str(cfg),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    if fmt == "csv":
        assert text.splitlines()[0] == '"number","hash"' and len(text.splitlines()) == 4
    elif fmt == "json":
        assert [json.loads(line)["number"] for line in text.splitlines()] == [21000000, 21000001, 21000002]
    else:
        assert "21000002" in text and "(3 rows)" in text


@contextlib.asynccontextmanager
async def emulate(*args: str) -> AsyncIterator[str]:
    """`python -m ingest emulate ARGS...` in a subprocess; the URL it listens on, until SIGINT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest", "emulate", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        yield line.split(" on ")[1].split(" ")[0]
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)


async def test_emulate_verb_serves_a_standalone_emulator(tmp_path):
    import aiohttp

    async with (
        emulate("blockdb", "--port", "0", "--key", "k-123456") as url,
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers={"Authorization": "Bearer k-123456"}) as ws,
    ):
        await ws.send_json({"action": "subscribe", "chain_id": 1, "dataset_id": "0101", "params": {}})
        ack = await asyncio.wait_for(ws.receive_json(), 10)
        assert ack["status"] == "success"


async def test_emulate_verb_takes_the_emulators_options(tmp_path):
    """`--set OPTION=VALUE` (TOML values), as in a config's `emulator = {...}`; a bad one exits 2."""
    import aiohttp

    code, _, err = await run_cli("emulate", "helius", "--set", "fork_every=1", cwd=tmp_path)
    assert code == 2 and "fork_every must be 0" in err
    code, _, err = await run_cli("emulate", "blockdb", "--set", "seed=abc", cwd=tmp_path)
    assert code == 2 and "is not TOML" in err
    code, _, err = await run_cli("emulate", "blockdb", "--set", "port=1", cwd=tmp_path)
    assert code == 2 and "give the port with --port" in err
    code, _, err = await run_cli("emulate", "blockdb", "--set", 'block_interval="fast"', cwd=tmp_path)
    assert code == 2 and "block_interval: expected a number, got 'fast'" in err
    async with (
        emulate("blockdb", "--set", "max_blocks=3", "--set", "block_interval=0.01") as url,
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers={"Authorization": "Bearer any-key"}) as ws,
    ):
        await ws.send_json({"action": "subscribe", "chain_id": 1, "dataset_id": "0101", "params": {}})
        blocks = []
        with contextlib.suppress(TimeoutError):
            while len(blocks) < 20:  # without the option, blocks would keep coming
                msg = await asyncio.wait_for(ws.receive_json(), 2.0)
                if "data" in msg:
                    blocks.append(msg["data"]["block_number"])
        assert len(blocks) == 3  # max_blocks = 3


async def test_emulate_on_a_port_in_use_says_so(tmp_path):
    """A second `emulate blockdb --port 8765` (the README's) gave aiohttp's bind traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_cli("emulate", "blockdb", "--port", str(port), cwd=tmp_path)
    assert code == 1 and f"emulate blockdb: cannot listen on 127.0.0.1:{port}:" in err
    assert "Traceback" not in err


async def test_an_emulator_option_of_the_wrong_type_is_a_config_error(tmp_path):
    """Taken as it was, `block_interval = "fast"` stopped the emulator's clock: nothing was sent
    for the whole run, and a TypeError came at the stop."""
    cfg = tmp_path / "ingest.toml"
    cfg.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n\n[providers.blockdb]\nurl = "emulator"\n'
        'emulator = { block_interval = "fast", subscribe_limit = [1, 5] }\n'
        '[[providers.blockdb.subscriptions]]\nchain_id = 1\ndataset_id = "0101"\n'
    )
    code, _, err = await run_cli("run", "--config", str(cfg), "--duration", "5", "--no-live", cwd=tmp_path)
    assert code == 2
    assert "config error: providers.blockdb.emulator: block_interval: expected a number, got 'fast'" in err
    # A misspelt option too, named with the ones there are, before anything is made on disk.
    cfg.write_text(cfg.read_text().replace('block_interval = "fast"', "block_intervl = 0.1"))
    code, _, err = await run_cli("run", "--config", str(cfg), "--duration", "5", "--no-live", cwd=tmp_path)
    assert code == 2 and "config error: providers.blockdb.emulator: block_intervl: unknown option" in err
    assert "block_interval" in err and not (tmp_path / "data").exists()


@pytest.mark.parametrize("off", ["duckdb", "parquet"])
async def test_either_sink_can_be_switched_off(tmp_path, off):
    """With one sink off the other still gets every row, and `query` reads whichever is on."""
    cfg = write_config(tmp_path, "emulator", "emulator = { block_interval = 0.02, max_blocks = 5 }")
    cfg.write_text(cfg.read_text().replace("[storage]", f"[storage]\n{off} = false"))
    daemon = Daemon(load_config(cfg))
    await daemon.run(duration=1.0)
    sent = sum(daemon._emulators["blockdb"].sent.values())
    assert (tmp_path / "data" / "ingest.duckdb").exists() == (off != "duckdb")
    assert (tmp_path / "data" / "parquet").exists() == (off != "parquet")
    rows = await query(
        cfg,
        "SELECT (SELECT count(*) FROM blockdb_blocks) + (SELECT count(*) FROM blockdb_transfers)"
        " + (SELECT count(*) FROM blockdb_transactions) + (SELECT count(*) FROM blockdb_generic) AS n",
    )
    assert rows == [{"n": sent}]


async def test_query_explains_when_there_is_nothing_it_can_read(tmp_path):
    cfg = write_config(tmp_path, "emulator")
    code, _, err = await run_cli("query", "SELECT 1", "--config", str(cfg), cwd=tmp_path)
    assert code == 0  # no DuckDB file yet, but the Parquet views exist (empty)

    cfg.write_text(cfg.read_text().replace("[storage]", "[storage]\nparquet = false"))
    code, _, err = await run_cli("query", "SELECT 1", "--config", str(cfg), cwd=tmp_path)
    assert code == 1 and "no data yet" in err


def test_a_damaged_store_file_is_named_not_a_traceback(tmp_path, capsys):
    """A file at the DuckDB path that is no database, or a damaged Parquet file: `query`, `status`
    and `reconcile` say what DuckDB found, exit 1 (a traceback of its exception came before)."""
    cfg = write_config(tmp_path, "emulator")
    data = tmp_path / "data"
    data.mkdir()
    (data / "ingest.duckdb").write_text("not a database\n")
    for argv in (["query", "SELECT 1"], ["status"], ["reconcile"]):
        assert cli_main([*argv, "--config", str(cfg)]) == 1, argv
        assert "cannot read" in capsys.readouterr().err
    (data / "ingest.duckdb").unlink()
    day = data / "parquet" / "dataset=blockdb_blocks" / "date=2025-01-01"
    day.mkdir(parents=True)
    (day / "main-1-2.parquet").write_text("not parquet\n")
    for argv in (["status"], ["reconcile"]):
        assert cli_main([*argv, "--config", str(cfg)]) == 1, argv
        assert "main-1-2.parquet" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_a_query_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path, fmt):
    """`query ... | head`: the closed pipe is the reader's choice, not an error with a traceback."""
    cfg = write_config(tmp_path, "emulator")
    query = [sys.executable, "-m", "ingest", "query", "SELECT range AS n FROM range(20000)"]
    proc = subprocess.Popen(
        [*query, "--format", fmt, "--config", str(cfg)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.read(100)
    proc.stdout.close()  # as head does once it has its lines
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b""


async def test_the_built_in_demo_ingests_all_four_providers(tmp_path, monkeypatch):
    """`python run.py`'s config: every provider's rows equal what its emulator sent, in both sinks."""
    monkeypatch.chdir(tmp_path)
    for var in ("BLOCKDB_API_KEY", "BITQUERY_TOKEN", "COINAPI_KEY", "HELIUS_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(None)
    assert {p.kind for p in config.providers} == {"blockdb", "bitquery", "coinapi", "helius"}
    daemon = Daemon(config)
    result = await daemon.run(duration=4.0)
    assert result.failed == []
    for name, emulator in daemon._emulators.items():
        assert result.metrics.rows_by_provider[name] == sum(emulator.sent.values()) > 0, name
    registry = daemon.registry
    db = duckdb.connect(str(tmp_path / "data" / "ingest.duckdb"), read_only=True)
    from ingest.views import connect_for_query

    via_parquet, _ = connect_for_query(registry, None, str(tmp_path / "data" / "parquet"))
    for name in registry:
        sql = (
            f'SELECT count(*), count(DISTINCT _dedup_key) FROM "{name}"'
            if registry[name].kind == "records"
            else (f'SELECT count(*), 0 FROM "{name}"')
        )
        assert db.execute(sql).fetchone() == via_parquet.execute(sql).fetchone(), name
    assert db.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM solana_transactions").fetchone()[0] > 0  # every provider's kinds


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_query_prints_nanosecond_times_and_lists_in_every_format(fmt, capsys):
    """Every dataset has `_received_at` (ns), which a Python datetime cannot hold; CSV has no lists."""
    received = pa.array([1_763_078_400_123_456_789], pa.timestamp("ns", tz="UTC"))
    topics = pa.array([["0xa", "0xb"]], pa.list_(pa.string()))
    write_table(pa.table({"_received_at": received, "topics": topics}), fmt)
    text = capsys.readouterr().out
    assert "2025-11-14 00:00:00.123456789" in text
    if fmt == "json":
        assert json.loads(text)["topics"] == ["0xa", "0xb"]
    elif fmt == "csv":
        assert '"[""0xa"", ""0xb""]"' in text


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_query_prints_an_interval_as_duckdb_does_in_every_format(fmt, tmp_path, capsys):
    """`SELECT now() - max(_received_at)` (how fresh is the store?) gives an interval: CSV failed
    with a traceback (Arrow cannot cast it to text), JSON gave [months, days, nanoseconds]."""
    cfg = write_config(tmp_path, "emulator")
    sql = (
        "SELECT TIMESTAMP '2025-01-03 01:30:00.5' - TIMESTAMP '2025-01-01' AS lag, "
        "-INTERVAL 14 MONTH AS back, NULL::INTERVAL AS none"
    )
    assert cli_main(["query", sql, "--format", fmt, "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    if fmt == "json":
        assert json.loads(text) == {"lag": "2 days 01:30:00.5", "back": "-1 year -2 months", "none": None}
    else:
        assert "2 days 01:30:00.5" in text and "-1 year -2 months" in text


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_query_prints_a_frame_that_is_not_utf8_in_every_format(fmt, capsys):
    """`SELECT raw FROM quarantine`: a frame quarantined as not UTF-8 made the CSV writer fail
    ("Invalid UTF8 payload", a traceback); one that is UTF-8 stays its text."""
    raw = pa.array([b"\xff\x00ab", b'{"a": 1}', None], pa.binary())
    write_table(pa.table({"raw": raw}), fmt)
    text = capsys.readouterr().out
    if fmt == "csv":
        assert text.splitlines() == ['"raw"', '"\\xFF\\x00ab"', '"{""a"": 1}"', ""]
    else:
        assert "ab" in text  # as before: Python shows the bytes


def test_no_verb_means_run_with_its_options():
    assert with_default_verb([]) == ["run"]
    assert with_default_verb(["--duration", "5"]) == ["run", "--duration", "5"]
    assert with_default_verb(["--help"]) == ["--help"] and with_default_verb(["status"]) == ["status"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["emulate", "blockdb", "--port", "99999"], "--port: expected a port from 0 to 65535"),
        (["compact", "--target-rows", "0"], "--target-rows: expected a positive integer"),
        (["run", "--duration", "nan"], "--duration: expected a finite number of seconds"),
        (["compact", "--grace", "-1"], "--grace: expected a finite number of seconds"),
    ],
)
def test_bad_arguments_are_usage_errors_not_tracebacks(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
