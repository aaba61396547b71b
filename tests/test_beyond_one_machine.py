"""The daemon writing a lake on S3 (moto on 127.0.0.1), several daemons into one lake, and the
metrics endpoints of a running daemon. Counts come from the emulator's own send counters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from ingest.app import Daemon
from ingest.config import load_config
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.schema import load_registry
from ingest.views import connect_for_query
from tests.helpers import eventually, run_cli

pytest_plugins = ["tests.s3"]

KEY = "lake-test-key-424242"
SUBS = {"blocks": "0101", "transfers": "0304", "txs": "0102", "logs": "0103"}


def config(
    tmp_path: Path, url: str, *, instance: str, subs: list[str], storage: str = "", extra: str = ""
) -> Path:
    path = tmp_path / f"{instance}.toml"
    subscriptions = "".join(
        f'\n[[providers.blockdb.subscriptions]]\nname = "{s}"\nchain_id = 1\ndataset_id = "{SUBS[s]}"\n'
        for s in subs
    )
    path.write_text(f"""
instance = "{instance}"
{extra}

[storage]
data_dir = "{tmp_path / instance}"
{storage}

[flush]
max_age_seconds = 0.1

[providers.blockdb]
url = "{url}"
auth = {{ env = "BLOCKDB_API_KEY" }}
{subscriptions}""")
    return path


def counts_in(
    lake, tables=("blockdb_blocks", "blockdb_transfers", "blockdb_transactions", "blockdb_logs")
) -> dict:
    con, source = connect_for_query(load_registry(), None, lake)
    assert source == "parquet"
    return {
        t: con.execute(f"SELECT count(*), count(DISTINCT _dedup_key) FROM {t}").fetchone() for t in tables
    }


async def test_the_daemon_writes_its_lake_to_s3_and_query_reads_it(tmp_path, monkeypatch, s3_server):
    bucket = s3_server.create_bucket()
    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=4, max_blocks=30) as emulator:
        storage = (
            f'parquet = "s3://{bucket}/ingest"\nendpoint = "{s3_server.endpoint}"\n'
            'region = "us-east-1"\nallow_http = true\nduckdb = false'
        )
        cfg = config(tmp_path, emulator.url, instance="s3d", subs=["blocks", "transfers"], storage=storage)
        daemon = Daemon(load_config(cfg))
        await daemon.run(duration=1.5)
    lake = load_config(cfg).storage.lake()
    got = counts_in(lake, ("blockdb_blocks", "blockdb_transfers"))
    assert got == {
        "blockdb_blocks": (emulator.sent[(1, "0101")],) * 2,
        "blockdb_transfers": (emulator.sent[(1, "0304")],) * 2,
    }
    assert all(f.base_name.startswith("s3d-") for f in lake.list_files("blockdb_blocks"))
    # the same query through the CLI, in another process, with no DuckDB extension
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest",
            "query",
            "SELECT count(*) AS n FROM blockdb_blocks",
            "--format",
            "json",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"n": emulator.sent[(1, "0101")]}
    assert s3_server.secret_key not in run.stdout + run.stderr


async def test_several_daemons_one_lake_every_event_once(tmp_path, monkeypatch):
    """Three daemons split the subscriptions, share one lake, never collide, each event once."""
    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    lake_root = tmp_path / "lake"
    split = {"alpha": ["blocks"], "beta": ["transfers", "txs"], "gamma": ["logs"]}
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=5, max_blocks=40) as emulator:
        daemons = [
            Daemon(
                load_config(
                    config(
                        tmp_path, emulator.url, instance=name, subs=subs, storage=f'parquet = "{lake_root}"'
                    )
                )
            )
            for name, subs in split.items()
        ]
        await asyncio.gather(*(d.run(duration=2.0) for d in daemons))
    sent = {
        "blockdb_blocks": emulator.sent[(1, "0101")],
        "blockdb_transfers": emulator.sent[(1, "0304")],
        "blockdb_transactions": emulator.sent[(1, "0102")],
        "blockdb_logs": emulator.sent[(1, "0103")],
    }
    assert counts_in(str(lake_root)) == {t: (n, n) for t, n in sent.items()}
    names = {p.name.split("-")[0] for p in lake_root.rglob("*.parquet")}
    assert names == {"alpha", "beta", "gamma"}  # every file says which daemon wrote it
    # alpha's own DuckDB file holds only its blocks: its queries read the lake, whether or not
    # alpha is running (the file is locked while it runs), so the answer never depends on that.
    alpha = daemons[0].config
    con, source = connect_for_query(
        load_registry(), alpha.storage.duckdb_path, str(lake_root), instance=alpha.instance
    )
    assert source == "parquet"
    assert con.execute("SELECT count(*) FROM blockdb_transfers").fetchone()[0] == sent["blockdb_transfers"]
    code, out, _ = await run_cli(
        "query",
        "--config",
        str(tmp_path / "alpha.toml"),
        "SELECT count(*) AS n FROM blockdb_logs",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    assert code == 0 and out.split() == ['"n"', str(sent["blockdb_logs"])]  # alpha stored no logs itself


async def test_a_daemon_restarted_with_its_journal_picks_up_and_one_without_starts_fresh(
    tmp_path, monkeypatch
):
    """Same instance name + its journal: replayed, nothing twice. Without it: fresh, others untouched."""
    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    lake_root = tmp_path / "lake"
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=3) as emulator:
        first = config(
            tmp_path, emulator.url, instance="alpha", subs=["blocks"], storage=f'parquet = "{lake_root}"'
        )
        await Daemon(load_config(first)).run(duration=1.0)
        other = tmp_path / "elsewhere"
        other.mkdir()
        moved = config(
            other, emulator.url, instance="alpha", subs=["blocks"], storage=f'parquet = "{lake_root}"'
        )
        await Daemon(load_config(moved)).run(duration=1.0)  # a new machine: no journal, no DuckDB file
        n = emulator.sent[(1, "0101")]
    assert counts_in(str(lake_root), ("blockdb_blocks",)) == {"blockdb_blocks": (n, n)}


async def test_metrics_and_health_answer_while_the_daemon_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=3) as emulator:
        cfg = config(
            tmp_path,
            emulator.url,
            instance="m",
            subs=["blocks", "transfers"],
            storage="duckdb_commit_seconds = 0.2",  # rows count as written once DuckDB committed them
            extra="[metrics]\nenabled = true\nport = 0",
        )
        daemon = Daemon(load_config(cfg))
        task = asyncio.create_task(daemon.run(duration=3.0))
        await eventually(
            lambda: (
                daemon.metrics_url is not None
                and all(
                    daemon.metrics.dataset(d).rows_written > 0
                    for d in ("blockdb_blocks", "blockdb_transfers")
                )
            ),
            what="rows written",
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{daemon.metrics_url}/metrics") as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                text = await resp.text()
            async with http.get(f"{daemon.metrics_url}/health") as resp:
                health = await resp.json()
                status = resp.status
        await task
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    rows = {
        s.labels["dataset"]: s.value
        for s in families["ingest_dataset_rows_written"].samples
        if s.name.endswith("_total")
    }
    assert rows["blockdb_blocks"] > 0 and rows["blockdb_transfers"] > 0
    frames = [s for s in families["ingest_provider_frames"].samples if s.labels.get("provider") == "blockdb"]
    assert frames and frames[0].value > 0
    assert status == 200 and health["providers"]["blockdb"]["state"] == "connected"
    assert health["providers"]["blockdb"]["last_frame_age_seconds"] < 5


def test_compact_verb(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[providers.blockdb]\nurl = "emulator"\n'
        '[[providers.blockdb.subscriptions]]\nchain_id = 1\ndataset_id = "0101"\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "ingest", "compact", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert run.returncode == 0, run.stderr
    assert "closed partitions" in run.stdout


async def test_a_daemons_stop_tells_its_compaction_at_work_to_stop(tmp_path, monkeypatch):
    """The compaction runs in a thread a stop cannot cancel: it is told instead, and ends early
    (compact's own test shows how), so that a day's merge does not hold up the daemon's stop."""
    import threading

    from ingest.compact import CompactionReport

    monkeypatch.setenv("BLOCKDB_API_KEY", KEY)
    told: list[bool] = []
    at_work = threading.Event()

    def merging_a_long_day(*args, stopping: threading.Event | None = None, **kwargs) -> CompactionReport:
        at_work.set()
        told.append(stopping is not None and stopping.wait(30))
        return CompactionReport((), stopped=True)

    monkeypatch.setattr("ingest.app.compact", merging_a_long_day)
    async with BlockDBEmulator(key=KEY, block_interval=0.02, txs_per_block=3) as emulator:
        cfg = config(
            tmp_path,
            emulator.url,
            instance="c",
            subs=["blocks"],
            storage=f'parquet = "{tmp_path / "lake"}"',
            extra="[compaction]\nenabled = true\ninterval_seconds = 0.05",
        )
        daemon = Daemon(load_config(cfg))
        task = asyncio.create_task(daemon.run())
        await eventually(at_work.is_set, what="a compaction at work")
        daemon.request_stop()
        await task
    assert told == [True]
