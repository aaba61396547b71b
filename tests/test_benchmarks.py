"""Smoke test of the benchmark harness: every scenario's smallest configuration, a second or two each.

Checks the shape of the JSON it writes and that the daemon stored exactly the rows the load
server sent (in DuckDB and in Parquet, each record once); timings are not asserted.
"""

from __future__ import annotations

import json

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
    failed = [(r["label"], r["error"], r.get("run_dir")) for r in doc["runs"] if "error" in r]
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
        assert r["duckdb_distinct_keys"] == r["sent_rows"], r["label"]
        assert r["quarantined"] == 0 and r["gaps"] == 0 and not r["failed"], r["label"]
        assert r["rows_match"] and r["unique_match"] and not r["drain_timed_out"]
        if r["spec"]["latency"]:
            assert r["latency_rows"] > 0 and r["queryable_p99_ms"] >= r["queryable_p50_ms"] > 0


def test_baselines_store_what_they_read_and_the_sender_is_measured_alone(results):
    """Each baseline's table holds the rows it read; the null reader gives the sender's own rate."""
    for r in results["runs"]:
        system = r["spec"]["system"]
        if system in ("naive", "dlt", "dlt-arrow"):
            assert r["duckdb_rows"] > 0 and r["rows_match"], r["label"]
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
