"""Smoke test of the benchmark harness: every scenario's smallest configuration, a second or two each.

Checks the shape of the JSON it writes and that the daemon stored exactly the rows the load
server sent (in DuckDB and in Parquet, each record once); timings are not asserted.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dlt", reason="the bench extra (dlt) is not installed")

from benchmarks.run import SCENARIOS, main

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    code = main(["--quick", "--json", str(out), "--workdir", str(tmp / "runs")])
    doc = json.loads(out.read_text())
    failed = [
        (r["label"], r.get("error") or r.get("problems"), r.get("run_dir"))
        for r in doc["runs"]
        if not r["ok"]
    ]
    assert code == 0 and not failed, failed
    return doc


def test_json_has_machine_options_summaries_tables_and_runs(results):
    """The results file names the machine and packages, every scenario, and every run."""
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["python"]
    assert {"ingest", "duckdb", "pyarrow", "aiohttp", "dlt"} <= set(machine["packages"])
    assert results["options"]["quick"] is True
    assert sorted(results["options"]["only"]) == sorted(SCENARIOS)
    assert {r["spec"]["system"] for r in results["runs"]} == {"ingest", "naive", "dlt", "dlt-arrow", "null"}
    labels = set(results["summaries"])
    distinct_specs = {json.dumps(r["spec"], sort_keys=True) for r in results["runs"] if "error" not in r}
    assert len(labels) == len(distinct_specs)  # one summary per spec: no two share a key
    for rows in results["tables"].values():
        assert rows
        for row in rows:
            assert set(row["specs"].values()) <= labels
    for summary in results["summaries"].values():
        for metric in summary["metrics"].values():
            assert set(metric) == {"median", "min", "max", "values"}


def test_daemon_stores_every_row_sent_once_in_both_sinks(results):
    """For every run of the daemon, DuckDB and Parquet hold exactly the rows sent, each once."""
    runs = [r for r in results["runs"] if r["spec"]["system"] == "ingest"]
    assert {r["spec"]["mix"] for r in runs} == {"coinapi", "blockdb", "bitquery"}
    for r in runs:
        assert r["sent_rows"] > 0
        assert r["duckdb_rows"] == r["parquet_rows"] == r["sent_rows"], r["label"]
        assert r["duckdb_distinct_keys"] == r["parquet_distinct_keys"] == r["sent_rows"], r["label"]
        assert r["quarantined"] == 0 and r["gaps"] == 0 and not r["failed"], r["label"]
        assert r["rows_match"] and r["unique_match"] and not r["drain_timed_out"]
        assert r["ok"] and r["problems"] == [] and r["cpu_us_per_msg"] > 0, r["label"]
        if r["spec"]["latency"]:
            assert r["latency_rows"] > 0 and r["queryable_p99_ms"] >= r["queryable_p50_ms"] > 0
            # CoinAPI: from the load server's write of each frame, which comes before its read
            assert (
                r["latency_from"] == "send" and r["send_queryable_p99_ms"] >= r["send_queryable_p50_ms"] > 0
            )
            assert r["send_queryable_p50_ms"] >= r["queryable_p50_ms"] and r["socket_wait_p50_ms"] >= 0


def test_baselines_store_what_they_read_and_the_sender_is_measured_alone(results):
    """Each baseline's table holds the rows it read; the null reader gives the sender's own rate."""
    for r in results["runs"]:
        system = r["spec"]["system"]
        if system in ("naive", "dlt", "dlt-arrow"):
            assert r["duckdb_rows"] > 0 and r["rows_match"] and r["ok"], r["label"]
            assert r["messages_read"] <= r["sent_frames"]
        elif system == "null":
            assert r["sent_frames"] > 0 and r["sender_frames_per_s"] > 0


def test_profile_groups_threads_by_stage():
    from benchmarks.profile import summarise_collapsed

    lines = [
        "thread (0x1): ingest-build_0;_build_table (ingest/writer.py:1) 3",
        "thread (0x2): asyncio_0;_sync_fd (ingest/journal.py:1) 1",
        "thread (0x3): asyncio_1;_sync_fd (ingest/journal.py:1) 2",
        "thread (0x4): MainThread;run (ingest/app.py:1) 5",
    ]
    groups = summarise_collapsed(lines)
    assert {k: g["total"]["samples"] for k, g in groups.items()} == {
        "ingest-build": 3,
        "asyncio_*": 3,
        "MainThread": 5,
    }


def test_rss_drift_tells_flat_from_growing():
    from benchmarks.bench_pipeline import rss_drift

    mb = 2**20
    flat = [(t, 0.0, (400 + (t % 3)) * mb, 0) for t in range(0, 601, 10)]  # a sawtooth, no trend
    growing = [(t, 0.0, (300 + t / 6) * mb, 0) for t in range(0, 601, 10)]  # +10 MB a minute
    out = rss_drift(flat, 30, 600)
    assert out["rss_first_third_peak_mb"] == out["rss_last_third_peak_mb"] == 402
    assert out["rss_growth_mb"] == 0 and abs(out["rss_slope_mb_per_min"]) < 0.1
    out = rss_drift(growing, 30, 600)
    assert out["rss_growth_mb"] > 60 and abs(out["rss_slope_mb_per_min"] - 10) < 1e-6
    assert rss_drift(flat, 0, 20) == {}  # too few samples to tell


def test_daemon_host_notes_each_file_and_each_durable_step_when_it_happens():
    """The hosted daemon's observers note a Parquet file and a growth of rows_written at the
    moment the writer makes it, and the moment every row sent is durable once the target is known."""
    from types import SimpleNamespace

    from benchmarks.daemon_host import _Durable, _observe
    from ingest.metrics import Metrics

    control = SimpleNamespace(target_rows=None)
    sampled: list[int] = []
    sampler = SimpleNamespace(sample=lambda: sampled.append(1))
    out: dict = {}
    durable = _Durable(control, sampler, out)  # type: ignore[arg-type]
    files: list[tuple[str, int]] = []
    metrics = Metrics()
    _observe(SimpleNamespace(metrics=metrics), {"datasets": ["trades"]}, durable, files)

    metrics.recent_files.extend(["a.parquet", "b.parquet"])  # what the writer does
    stats = metrics.dataset("trades")
    stats.rows_written += 30
    stats.rows_written += 0  # no growth, no step
    metrics.dataset("other").rows_written += 7  # not measured
    stats.rows_written += 20
    assert [path for path, _ in files] == ["a.parquet", "b.parquet"] == list(metrics.recent_files)
    assert [rows for _, rows in durable.steps] == [30, 50] and stats.rows_written == 50
    assert files[0][1] <= durable.steps[0][0] <= durable.steps[1][0]
    assert "all_durable" not in out  # the harness has not said how many rows it sent
    control.target_rows = 50
    durable.check()
    assert "all_durable" in out and sampled == [1]
    durable.check()
    assert sampled == [1]  # noted once


def test_the_watcher_stops_the_daemon_as_soon_as_the_stop_line_comes(monkeypatch):
    """The daemon's run ends when the stop it asks for has flushed the last rows: a watcher that
    polled for the stop line every 100 ms stopped it up to 100 ms late, in its throughput's time."""
    import os
    import time
    from types import SimpleNamespace

    from benchmarks.daemon_host import _watch
    from benchmarks.probe import Control

    read_fd, write_fd = os.pipe()
    monkeypatch.setattr("sys.stdin", os.fdopen(read_fd))
    control = Control()
    asked: list[float] = []
    daemon = SimpleNamespace(buffer=SimpleNamespace(received={"trades": 10}),
                             request_stop=lambda: asked.append(time.monotonic()))  # fmt: skip
    durable = SimpleNamespace(check=lambda: None)

    async def main() -> float:
        watcher = asyncio.create_task(_watch(daemon, control, {"datasets": ["trades"]}, durable, {}))
        await asyncio.sleep(0.03)  # the load runs
        sent = time.monotonic()
        os.write(write_fd, b'{"stop": true, "target_rows": 10}\n')
        await asyncio.wait_for(watcher, 5)
        return sent

    try:
        sent = asyncio.run(main())
    finally:
        os.close(write_fd)
    assert control.target_rows == 10 and len(asked) == 1
    assert asked[0] - sent < 0.04  # polling: ~70 ms


def test_thread_cpu_names_each_thread_and_finds_the_busy_one():
    """Per-thread CPU from the scheduler: a spinning thread, named for the OS, comes out busiest."""
    import os
    import threading

    from benchmarks.thread_cpu import thread_cpu
    from ingest.os_threads import name_os_thread

    if not os.path.exists("/proc/self/task"):
        pytest.skip("Linux only")
    stop = threading.Event()

    def spin() -> None:
        name_os_thread("bench-spin-and-a-long-tail")  # the OS keeps 15 bytes of it
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        rows = thread_cpu(os.getpid(), 0.3)
    finally:
        stop.set()
        spinner.join()
    assert rows[0].name == "bench-spin-and-" and rows[0].cores > 0
    assert rows[0].tid == spinner.native_id
    assert any(r.name == "MainThread" for r in rows)
    assert [r.cores for r in rows] == sorted((r.cores for r in rows), reverse=True)


def test_thread_cpu_counts_the_page_faults_of_the_thread_that_touches_fresh_memory():
    import mmap
    import os
    import threading

    from benchmarks.thread_cpu import thread_cpu

    if not os.path.exists("/proc/self/task"):
        pytest.skip("Linux only")
    pages = 8192  # 32 MiB, each page touched once: one minor fault each
    started, stop = threading.Event(), threading.Event()

    def touch() -> None:
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as memory:
            started.wait()
            for offset in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
                memory[offset] = 1
            stop.wait()

    toucher = threading.Thread(target=touch)
    toucher.start()
    try:
        threading.Timer(0.05, started.set).start()  # the touching starts inside the window
        rows = thread_cpu(os.getpid(), 1.0)
    finally:
        started.set()
        stop.set()
        toucher.join()
    faults = {r.tid: r.faults_per_s for r in rows}
    assert faults[toucher.native_id] >= pages * 0.9  # per second, over a 1 s window
    assert faults[os.getpid()] < pages / 4


# -- a run is ok only if every row sent is stored once in both sinks ------------------------------


def _run_dir(tmp_path: Path, duckdb_keys: list[str], parquet_keys: list[str], quarantined: int = 0) -> Path:
    """What a run of the daemon leaves, reduced to what the counts read."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = tmp_path / "run"
    part = run_dir / "data" / "parquet" / "dataset=coinapi_trades" / "date=2026-12-07"
    part.mkdir(parents=True)
    half = len(parquet_keys) // 2  # two files: a key twice may be in both
    for i, keys in enumerate((parquet_keys[:half], parquet_keys[half:])):
        pq.write_table(pa.table({"_dedup_key": pa.array(keys, pa.string())}), part / f"f{i}.parquet")
    with duckdb.connect(str(run_dir / "data" / "ingest.duckdb")) as con:
        con.execute("CREATE TABLE coinapi_trades (_dedup_key VARCHAR)")
        con.execute("INSERT INTO coinapi_trades SELECT unnest(?)", [duckdb_keys])
        con.execute("CREATE TABLE quarantine (reason VARCHAR)")
        con.execute("INSERT INTO quarantine SELECT 'bad' FROM range(?)", [quarantined])
        con.execute("CREATE TABLE gaps (kind VARCHAR)")
    return run_dir


def _daemon_out(**kw: Any) -> dict[str, Any]:
    """The daemon host's result line for a 1 s round at t=100..101 that drained by 101.5."""
    samples = [[99.9, 1.0, 2**28, 0], [101.5, 2.0, 2**28, 1000], [101.6, 2.0, 2**28, 1000]]
    out = {"all_durable": 101.5, "exited": 101.6, "peak_rss": 2**28, "samples": samples, "failed": [],
           "sink_errors": 0, "exit_code": 0}  # fmt: skip
    return {k: v for k, v in (out | kw).items() if v is not None}  # None: the key is missing


def _measure(tmp_path: Path, duckdb_keys: list[str], parquet_keys: list[str], **kw: Any) -> dict[str, Any]:
    from benchmarks.bench_pipeline import RunSpec, _measure
    from benchmarks.load import RoundResult

    quarantined = kw.pop("quarantined", 0)
    spec = kw.pop("spec", RunSpec("ingest", "coinapi"))
    run_dir = _run_dir(tmp_path, duckdb_keys, parquet_keys, quarantined)
    rnd = RoundResult(frames=1000, rows=1000, nbytes=0, started=100.0, ended=101.0, connections=1)
    return _measure(spec, rnd, _daemon_out(**kw), run_dir)


def test_a_daemon_run_is_ok_only_with_every_row_sent_once_in_both_sinks(tmp_path):
    keys = [f"k{i}" for i in range(1000)]
    m = _measure(tmp_path / "all", keys, keys)
    assert m["ok"] and m["problems"] == [] and m["msgs_per_s"] == pytest.approx(1000 / 1.5)

    m = _measure(tmp_path / "lost", keys[:900], keys[:900])  # 10% never stored
    assert not m["ok"] and not m["rows_match"]
    assert any("duckdb: 900 rows" in p for p in m["problems"]) and any(
        "parquet: 900 rows" in p for p in m["problems"]
    )
    assert m["msgs_per_s"] == pytest.approx(900 / 1.5)  # what was stored, not what was sent

    doubled = [*keys[:999], keys[0]]  # as many rows as sent in the lake, one of them twice
    m = _measure(tmp_path / "doubled", keys, doubled)
    assert (
        m["parquet_rows"] == 1000 and m["parquet_distinct_keys"] == 999 and m["duckdb_distinct_keys"] == 1000
    )
    assert (
        not m["ok"]
        and not m["unique_match"]
        and m["problems"] == ["parquet: 999 distinct _dedup_key, 1000 sent"]
    )

    m = _measure(tmp_path / "quarantine", keys, keys, quarantined=1)
    assert not m["ok"] and m["problems"] == ["1 quarantined"]
    m = _measure(tmp_path / "sink", keys, keys, sink_errors=2, failed=["coinapi"])
    assert not m["ok"] and m["problems"] == ["collectors failed: coinapi", "2 sink errors"]


def test_a_fixed_rate_run_of_the_daemon_that_did_not_keep_up_is_not_ok(tmp_path):
    """1000 frames in the 1 s round: at 1000/s offered that is the rate; at 4000/s offered the
    socket held the sender back, so the figures (latency from each frame's actual write) are not
    at the rate the row names and must not be reported."""
    from benchmarks.bench_pipeline import RunSpec

    keys = [f"k{i}" for i in range(1000)]
    m = _measure(tmp_path / "kept", keys, keys, spec=RunSpec("ingest", "coinapi", rate=1000.0, seconds=1.0))
    assert m["ok"] and m["problems"] == []
    m = _measure(tmp_path / "slow", keys, keys, spec=RunSpec("ingest", "coinapi", rate=4000.0, seconds=1.0))
    assert not m["ok"]
    assert m["problems"] == ["the sender got 1,000 frames/s out of 4,000 offered: not kept up"]


def test_the_sampler_is_close_behind_the_first_message_so_start_up_cpu_stays_out():
    """CPU counts from the last sample before the first frame: sampling every 100 ms while the
    daemon starts up (~0.7 of a core up to its subscription) put up to ~70 ms of start-up CPU,
    ~0.9 us a message at 20k msg/s for 4 s, into the figure. Until the first message it samples
    every few ms; after it, every `every` seconds."""
    import time

    from benchmarks.probe import Sampler

    messages = 0
    sampler = Sampler(lambda: messages, every=0.1)
    time.sleep(0.3)
    messages = 1
    time.sleep(0.35)
    sampler.stop()
    waiting = [t for t, _, _, n in sampler.samples if n == 0]
    streaming = [t for t, _, _, n in sampler.samples if n]
    assert len(waiting) >= 15  # every 100 ms: 3 or 4
    assert 2 <= len(streaming) <= 6


def test_a_drain_that_times_out_fails_the_run_and_keeps_its_cpu_figure(tmp_path):
    """No `all_durable`: the daemon stopped at max_seconds. The run is not ok, and CPU per message
    is still there: the host's last sample comes after its exit time."""
    from benchmarks.daemon_host import _finish
    from benchmarks.probe import Sampler

    out: dict[str, Any] = {}
    sampler = Sampler(lambda: 0, every=0.01)
    _finish(sampler, out)
    assert out["samples"][-1][0] >= out["exited"]

    keys = [f"k{i}" for i in range(1000)]
    samples = [[99.9, 1.0, 2**28, 0], [101.6, 2.0, 2**28, 1000]]  # the last one at the exit
    m = _measure(tmp_path, keys, keys, all_durable=None, exited=101.6, samples=samples)
    assert m["drain_timed_out"] and not m["ok"]
    assert m["cpu_us_per_msg"] == pytest.approx(1000.0)
    m = _measure(tmp_path / "b", keys, keys, samples=samples[:1])  # no sample after: said, not dropped
    assert m["cpu_us_per_msg"] is None and not m["ok"] and "no CPU figure" in m["problems"][0]


def test_a_run_that_is_not_ok_fails_the_benchmark_and_the_table_marks_it(tmp_path, monkeypatch, capsys):
    import benchmarks.run as bench_run

    def canned(lost: bool):
        async def run_once(spec, workdir, keep=False, profile=None):
            await asyncio.sleep(0)
            result = {"spec": asdict(spec), "label": spec.label(), "msgs_per_s": 400_000.0,
                      "peak_rss_mb": 300.0, "send_queryable_p50_ms": 100.0, "send_queryable_p99_ms": 200.0,
                      "rows_match": not lost, "ok": True, "problems": []}  # fmt: skip
            if lost and spec.max_age == 1.0:  # the default flush's run lost rows; the other is fine
                result |= {"ok": False, "problems": ["parquet: 90000 rows, 100000 sent"]}
            return result

        return run_once

    out = tmp_path / "results.json"
    monkeypatch.setattr(bench_run, "run_once", canned(lost=False))
    assert bench_run.main(["--quick", "--only", "latency", "--json", str(out)]) == 0
    capsys.readouterr()

    monkeypatch.setattr(bench_run, "run_once", canned(lost=True))
    assert bench_run.main(["--quick", "--only", "latency", "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "NOT OK: parquet: 90000 rows, 100000 sent" in printed
    # every figure of the failed spec is marked (p50, p99, CPU, RSS, ...); the fine spec's are not
    assert printed.count("1 of 1 runs failed") == 8 and "0/1" in printed and "1/1" in printed
    doc = json.loads(out.read_text())
    failed = {k: v["metrics"]["failed_runs"]["median"] for k, v in doc["summaries"].items()}
    assert sorted(failed.values()) == [0, 1]
    for label, summary in doc["summaries"].items():  # a failed run's figures stay out of the medians
        assert ("send_queryable_p99_ms" in summary["metrics"]) == (failed[label] == 0)


def test_at_a_fixed_rate_each_system_shows_the_rate_its_own_sender_got_out(tmp_path, monkeypatch, capsys):
    """A baseline that falls behind holds the sender back: the table shows each run's own sender
    rate, not the daemon's run's in the column of the sender alone (the null reader)."""
    import benchmarks.run as bench_run

    sent = {"naive": 6_210.0, "dlt": 12_170.0, "dlt-arrow": 17_390.0, "ingest": 19_990.0}

    async def run_once(spec, workdir, keep=False, profile=None):
        await asyncio.sleep(0)
        return {"spec": asdict(spec), "label": spec.label(), "sender_frames_per_s": sent[spec.system],
                "read_msgs_per_s": sent[spec.system] / 2, "cpu_us_per_msg": 20.0, "ok": True}  # fmt: skip

    monkeypatch.setattr(bench_run, "run_once", run_once)
    assert bench_run.main(["--quick", "--only", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "the sender got out" in x)
    assert [c.strip() for c in line.split("│")[2:6]] == ["6.21k", "12.2k", "17.4k", "20k"]


# -- latency: whole files a running daemon flushed, from the frame's send -----------------------


def test_latency_counts_whole_files_after_the_warm_up_and_before_the_stop_from_the_send(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.bench_pipeline import RunSpec, _latency
    from benchmarks.frames import _CYCLE_BASE, FramePool, SendLog
    from benchmarks.load import RoundResult

    n, per_s, t0 = 300, 100, 1_800_000_000 * 10**9  # 3 s of frames at 100 a second
    ids = [f"frame-{i:04d}-" for i in range(n)]
    pool = FramePool("test", b"", [], [0] * (n + 1), [1] * n, ids)
    log = SendLog(pool)
    sent = [t0 + i * 10**9 // per_s for i in range(n)]
    for i, ns in enumerate(sent):
        log.note(ns, i + 1)  # one frame a write
    received = [ns + 5_000_000 for ns in sent]  # 5 ms in the socket
    stop_ns = t0 + 3_020_000_000
    # (rows, when the file appeared, when DuckDB had it too): the first file straddles the 1 s
    # warm-up (its young half must go too); the last was flushed early by the stop.
    layout = [(range(0, 150), t0 + 2_000_000_000, t0 + 2_000_000_000),
              (range(150, 250), t0 + 3_000_000_000, t0 + 3_010_000_000),
              (range(250, 300), t0 + 3_050_000_000, t0 + 3_100_000_000)]  # fmt: skip
    files_seen, steps = [], []
    for k, (rows, seen_ns, durable_ns) in enumerate(layout):
        path = tmp_path / "dataset=coinapi_trades" / f"f{k}.parquet"
        path.parent.mkdir(exist_ok=True)
        uuids = [f"{ids[i]}{_CYCLE_BASE}" for i in rows]  # cycle 0
        stamps = pa.array([received[i] for i in rows], pa.timestamp("ns", "UTC"))
        pq.write_table(pa.table({"_received_at": stamps, "uuid": uuids}), path)
        files_seen.append((str(path), seen_ns))
        steps.append((durable_ns, rows.stop))
    out = {"files_seen": files_seen, "rows_steps": steps, "stop_requested_ns": stop_ns}
    rnd = RoundResult(frames=n, rows=n, nbytes=0, started=0.0, ended=3.0, connections=1, send_log=log)
    spec = RunSpec("ingest", "coinapi", rate=100.0, seconds=3.0, warmup=1.0, latency=True)

    lat = _latency(spec, out, rnd)
    assert lat["latency_problems"] == [] and lat["latency_from"] == "send"
    assert lat["latency_rows"] == lat["durable_latency_rows"] == 100 and lat["latency_files_left_out"] == 2
    # the middle file only: read 1.505..2.495 s, queryable at 3.0 s
    assert lat["queryable_max_ms"] == pytest.approx(1495) and lat["send_queryable_max_ms"] == pytest.approx(
        1500
    )
    assert lat["socket_wait_p99_ms"] == pytest.approx(5) and lat["send_durable_max_ms"] == pytest.approx(1510)

    out["stop_requested_ns"] = t0 + 3_005_000_000  # DuckDB had the middle file only at the stop
    lat = _latency(spec, out, rnd)
    assert lat["latency_rows"] == 100 and lat["durable_latency_rows"] == 0 and "durable_p99_ms" not in lat

    bad = SendLog(FramePool("other", b"", [], [0] * (n + 1), [1] * n, [f"x{i}" for i in range(n)]))
    bad.ns, bad.upto = log.ns, log.upto
    lat = _latency(spec, out, RoundResult(n, n, 0, 0.0, 3.0, 1, send_log=bad))
    assert lat["latency_from"] == "receive" and "names no frame sent" in lat["latency_problems"][0]
