"""One measured run: the load server here, one consumer process there, then the rows are counted.

A run streams one mix to one consumer (the project's daemon, a baseline, or the null reader)
for `seconds`, at full speed or a fixed offered rate, then tells the consumer how many rows were
sent and waits for its result. For the daemon the run ends once every row sent is durable in
DuckDB and in Parquet; the rows and the distinct `_dedup_key`s are then counted in both, and the
run is `ok` only if each equals the rows sent, nothing was quarantined, no gap was recorded
(unless the spec expects gaps), the drain did not time out, no collector failed, no sink
erred and, at a fixed rate, the sender got the offered rate out (`problems` lists what was
not). A run that is not ok counts as failed. The latency of every row is taken from the files
themselves:

    send → queryable     = the moment its Parquet file appeared (rename done; `query` reads it)
                           - the moment the load server wrote its frame (CoinAPI: the trade's
                           uuid names the frame, and each write was noted)
    receive → queryable  = the same moment - its `_received_at` (when the daemon read the frame)
    send → read          = `_received_at` - the write: time in the socket, the kernel, the pacing
    durable              = the moment `rows_written` covered it (DuckDB committed too) - either

Only whole files flushed as a running daemon flushes them count: a file whose first row came in
the first `warmup` seconds is left out (first allocations, page faults, DuckDB's first inserts),
and so is every file that appeared after the harness asked the daemon to stop (the stop flushes
the open batch before its `max_age`); durable latency also leaves out files that DuckDB
committed only at the stop. CPU figures leave out the warm-up too; counts and throughput include
everything. Throughput is end to end: messages stored (each record once, in both sinks) /
(last row durable - first frame sent), so a backlog that the daemon buffered and drained after
the load stopped is paid for.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.baselines import TABLES
from benchmarks.frames import BITQUERY_TRANSFERS_QUERY, SendLog
from benchmarks.load import LoadServer, RoundResult

__all__ = ["DATASETS", "SYSTEMS", "RunSpec", "daemon_config", "run_once"]

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("ingest", "naive", "dlt", "dlt-arrow", "null")
DATASETS = {"coinapi": "coinapi_trades", "blockdb": "blockdb_transfers", "bitquery": "bitquery_evm_transfers"}
# The stored column that names a row's frame (frames.FramePool.ordinals): latency from the send.
_FRAME_ID = {"coinapi": "uuid"}


@dataclass(frozen=True, slots=True)
class RunSpec:
    system: str
    mix: str
    rate: float | None = None  # frames/s offered, over all connections; None = full speed
    seconds: float = 5.0
    subs: int = 1  # concurrent subscriptions, one connection (one collector) each
    max_rows: int = 50_000  # the daemon's defaults (ingest/config.py FlushPolicy)
    max_age: float = 1.0
    warmup: float = 1.0
    latency: bool = False
    gaps_expected: bool = False  # a scenario that provokes gaps; none does yet, so a gap fails a run

    def label(self) -> str:
        rate = "full" if self.rate is None else f"{self.rate / 1000:g}k/s"
        # The length too: the soak is the throughput run made long, and the results file keys by label.
        return (f"{self.system}:{self.mix}:{rate}:{self.seconds:g}s:subs={self.subs}:rows={self.max_rows}"
                f":age={self.max_age:g}")  # fmt: skip


def daemon_config(spec: RunSpec, url: str, data_dir: Path) -> dict[str, Any]:
    """The daemon's config for a run: default storage (journal on, DuckDB and Parquet on)."""
    providers: dict[str, Any] = {}
    for i in range(spec.subs):
        name = spec.mix if spec.subs == 1 else f"{spec.mix}_{i + 1}"
        # Generous idle timeouts: the load server sends nothing between the end of a round and stop.
        provider: dict[str, Any] = {"kind": spec.mix, "url": url, "idle_timeout": 60}
        if spec.mix == "coinapi":
            provider |= {"auth": {"in": "message"}, "heartbeat": True}
            provider["subscriptions"] = [{"name": "trades", "data_types": ["trade"]}]
        elif spec.mix == "blockdb":
            provider |= {"auth": {"in": "header"}}
            provider["subscriptions"] = [{"name": "transfers", "chain_id": 1, "dataset_id": "0304"}]
        else:
            provider |= {"auth": {"in": "query"}, "subprotocol": "graphql-transport-ws"}
            provider["subscriptions"] = [{"name": "eth_transfers", "query": BITQUERY_TRANSFERS_QUERY}]
        providers[name] = provider
    return {
        "instance": "bench",
        "log_format": "json",
        "storage": {"data_dir": str(data_dir), "duckdb": True, "parquet": True},
        "flush": {"max_rows": spec.max_rows, "max_age_seconds": spec.max_age},
        "providers": providers,
    }


def _consumer_command(spec: RunSpec, url: str, run_dir: Path) -> list[str]:
    py = [sys.executable, "-m"]
    if spec.system == "null":
        return [*py, "benchmarks.null_client", url, spec.mix]
    spec_file = run_dir / "spec.json"
    if spec.system == "ingest":
        body: dict[str, Any] = {
            "config": daemon_config(spec, url, run_dir / "data"),
            "base": str(run_dir),
            "datasets": [DATASETS[spec.mix]],
            "max_seconds": spec.seconds + 120,
        }
        spec_file.write_text(json.dumps(body))
        return [*py, "benchmarks.daemon_host", str(spec_file)]
    body = {
        "mix": spec.mix,
        "url": url,
        "db": str(run_dir / f"{spec.system}.duckdb"),
        "workdir": str(run_dir),
        "max_rows": spec.max_rows,
        "max_age": spec.max_age,
    }
    spec_file.write_text(json.dumps(body))
    return [*py, "benchmarks.baselines", spec.system, str(spec_file)]


async def run_once(
    spec: RunSpec, workdir: Path, *, keep: bool = False, profile: list[str] | None = None
) -> dict[str, Any]:
    """Run one spec; returns its measurements (and `error` instead when it failed).

    `profile`: a command (e.g. py-spy record ... --pid) started with the consumer's pid appended
    once every client has subscribed, so it sees the streaming and not the start-up.
    """
    run_dir = Path(workdir) / f"run-{time.time_ns()}"
    run_dir.mkdir(parents=True)
    server = LoadServer(spec.mix)
    url = await server.start()
    await asyncio.to_thread(server.prepare)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNTIME__DLTHUB_TELEMETRY": "false"}
    stderr = (run_dir / "stderr.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *_consumer_command(spec, url, run_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=str(run_dir),
        env=env,
        limit=64 << 20,
    )
    result: dict[str, Any] = {"spec": asdict(spec), "label": spec.label()}
    profiler = None
    if profile is not None:
        profiler = asyncio.ensure_future(_profile(server, spec, [*profile, str(proc.pid)]))
    try:
        rnd = await _round(server, proc, spec)
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(json.dumps({"stop": True, "target_rows": rnd.rows}).encode() + b"\n")
            await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=spec.seconds + 150)
        await asyncio.wait_for(proc.wait(), timeout=30)
        if not line:
            raise RuntimeError(f"consumer exited {proc.returncode} without a result: {_tail(run_dir)}")
        out = json.loads(line)
        result |= _sent(rnd, spec)
        result |= await asyncio.to_thread(_measure, spec, rnd, out, run_dir)
    except Exception as exc:  # one failed run is reported, the benchmark goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["ok"] = False
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()
        if profiler is not None:
            with contextlib.suppress(Exception):  # a profiler that never started is no reason to fail
                await profiler
        await server.stop()
        if not keep and result.get("ok"):  # a failed run keeps its data to be looked at
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            result["run_dir"] = str(run_dir)
    return result


async def _round(server: LoadServer, proc: asyncio.subprocess.Process, spec: RunSpec) -> RoundResult:
    """Stream once every client has subscribed; fail fast if the consumer dies before that."""
    stream = asyncio.ensure_future(
        server.run_round(spec.subs, rate=spec.rate, seconds=spec.seconds, close_after=spec.system == "null")
    )
    died = asyncio.ensure_future(proc.wait())
    await asyncio.wait({stream, died}, return_when=asyncio.FIRST_COMPLETED)
    if not stream.done():
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream
        raise RuntimeError(f"consumer exited {proc.returncode} before the round ended")
    died.cancel()
    return stream.result()


async def _profile(server: LoadServer, spec: RunSpec, command: list[str]) -> None:
    await server.wait_ready(spec.subs, timeout=60)
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()


def _tail(run_dir: Path, n: int = 800) -> str:
    try:
        return (run_dir / "stderr.log").read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _sent(rnd: RoundResult, spec: RunSpec) -> dict[str, Any]:
    seconds = rnd.seconds
    return {
        "sent_frames": rnd.frames,
        "sent_rows": rnd.rows,
        "sent_bytes": rnd.nbytes,
        "send_seconds": rnd.seconds,
        "sender_frames_per_s": rnd.frames / seconds,
        "sender_rows_per_s": rnd.rows / seconds,
        "sender_mb_per_s": rnd.nbytes / seconds / 1e6,
        "sender_cpu_cores": rnd.cpu_seconds / seconds,  # the harness process, sender and all
        "offered_rate": spec.rate,
        "kept_up": _kept_up(rnd, spec),
    }


def _kept_up(rnd: RoundResult, spec: RunSpec) -> bool | None:
    """Whether the sender got the offered rate out (None at full speed): below it, the consumer's
    socket filled and flow control slowed the sender, so the run was not at the rate it names."""
    return None if spec.rate is None else rnd.frames >= 0.97 * spec.rate * spec.seconds


def _measure(spec: RunSpec, rnd: RoundResult, out: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A run's figures, with `ok` and the `problems` that make it not ok."""
    problems: list[str] = []
    if spec.system == "null":
        if not out.get("ok") or not rnd.frames:
            problems.append("the null reader read nothing")
        return {"consumer_cpu_s": out.get("cpu_seconds"), "problems": problems, "ok": not problems}
    done = out.get("all_durable") or out.get("exited") or time.monotonic()
    elapsed = max(done - rnd.started, 1e-9)
    m: dict[str, Any] = {
        "elapsed_s": elapsed,
        "drain_s": done - rnd.ended,
        "peak_rss_mb": out["peak_rss"] / 2**20,
    }
    samples = out.get("samples", [])
    if spec.system == "ingest":
        stored = _count_ingest(spec, run_dir)
        m |= stored
        m["rows_match"] = stored["duckdb_rows"] == stored["parquet_rows"] == rnd.rows
        m["unique_match"] = stored["duckdb_distinct_keys"] == stored["parquet_distinct_keys"] == rnd.rows
        m["drain_timed_out"] = "all_durable" not in out  # stopped by max_seconds instead
        m["flushes"] = out.get("flushes", {}).get(DATASETS[spec.mix])
        m["reconnects"] = sum(out.get("reconnects", {}).values())
        m["failed"] = out.get("failed")
        m["sink_errors"] = out.get("sink_errors")
        problems += _ingest_problems(spec, rnd, out, m)
        # What was stored, each record once in both sinks (all that was sent, in a run that is ok).
        stored_rows = min(stored["duckdb_distinct_keys"], stored["parquet_distinct_keys"])
        messages = round(rnd.frames * stored_rows / rnd.rows) if rnd.rows else 0  # Bitquery: ~117 rows each
        if spec.latency:
            m |= _latency(spec, out, rnd)
            problems += m.pop("latency_problems")
    else:
        messages = out["messages"]
        db = run_dir / f"{spec.system}.duckdb"
        table = TABLES[spec.mix] if spec.system == "naive" else f"bench.{TABLES[spec.mix]}"
        with duckdb.connect(str(db), read_only=True) as con:
            m["duckdb_rows"] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        m["rows_match"] = m["duckdb_rows"] == out["rows"]
        if not m["rows_match"]:
            problems.append(f"{m['duckdb_rows']} rows in its table, {out['rows']} read")
        stored_rows = m["duckdb_rows"]
        m["loads"] = out.get("loads")
        rnd_rows_per_frame = rnd.rows / max(rnd.frames, 1)
        m["messages_read"] = messages
        m["unread_frames"] = rnd.frames - messages
        m["rows_read"] = round(messages * rnd_rows_per_frame)
    m["messages_stored"] = messages
    m["msgs_per_s"] = messages / elapsed
    m["rows_per_s"] = stored_rows / elapsed
    m["read_msgs_per_s"] = _read_rate(samples, rnd.started, rnd.ended)
    cpu = _cpu_between(samples, rnd.started, done)  # all work: from the first frame to the last row
    if cpu is None:
        problems.append("no CPU sample before the first frame and after the last row: no CPU figure")
    m["cpu_s"] = cpu
    m["cpu_us_per_msg"] = cpu / messages * 1e6 if cpu is not None and messages else None
    m["cpu_cores"] = cpu / elapsed if cpu is not None else None  # average cores busy
    m["cpu_us_per_msg_steady"] = _cpu_steady(samples, rnd.started + spec.warmup, rnd.ended)
    m |= rss_drift(samples, rnd.started + spec.warmup, rnd.ended)
    m["timeline"] = _timeline(samples, rnd.started)
    m["problems"] = problems
    m["ok"] = not problems
    return m


def _ingest_problems(spec: RunSpec, rnd: RoundResult, out: dict[str, Any], m: dict[str, Any]) -> list[str]:
    """Why a run of the daemon is not ok: anything but every row sent, once each, in both sinks."""
    sent = rnd.rows
    problems = [] if sent else ["nothing was sent"]
    for sink in ("duckdb", "parquet"):
        if m[f"{sink}_rows"] != sent:
            problems.append(f"{sink}: {m[f'{sink}_rows']} rows, {sent} sent")
        if m[f"{sink}_distinct_keys"] != sent:
            problems.append(f"{sink}: {m[f'{sink}_distinct_keys']} distinct _dedup_key, {sent} sent")
    if m["quarantined"]:
        problems.append(f"{m['quarantined']} quarantined")
    if m["gaps"] and not spec.gaps_expected:
        problems.append(f"{m['gaps']} gaps recorded")
    if m["drain_timed_out"]:
        problems.append("not every row sent was durable before max_seconds")
    if m["failed"]:
        problems.append(f"collectors failed: {', '.join(m['failed'])}")
    if m["sink_errors"]:
        problems.append(f"{m['sink_errors']} sink errors")
    if out.get("exit_code", 0) != 0:
        problems.append(f"the daemon exited {out['exit_code']}")
    if _kept_up(rnd, spec) is False:
        # Each row's latency runs from its frame's actual write: frames the sender wrote late
        # (held back by a full socket) would hide the wait, and the figures would name a rate
        # the daemon did not take.
        rate = rnd.frames / rnd.seconds
        problems.append(f"the sender got {rate:,.0f} frames/s out of {spec.rate:,.0f} offered: not kept up")
    return problems


def rss_drift(samples: Sequence[Sequence[float]], start: float, end: float) -> dict[str, float]:
    """Whether RSS stays flat over [start, end]: the peak of its first and last thirds, their
    difference, and the least-squares slope of RSS over time. Empty if too few samples."""
    inside = [(t, rss / 2**20) for t, _, rss, _ in samples if start <= t <= end]
    if len(inside) < 6:
        return {}
    third = len(inside) // 3
    first = max(r for _, r in inside[:third])
    last = max(r for _, r in inside[-third:])
    n = len(inside)
    mean_t = sum(t for t, _ in inside) / n
    mean_r = sum(r for _, r in inside) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in inside)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in inside) / var_t if var_t else 0.0
    return {
        "rss_first_third_peak_mb": first,
        "rss_last_third_peak_mb": last,
        "rss_growth_mb": last - first,
        "rss_slope_mb_per_min": slope * 60,
    }


def _timeline(samples: list[list[float]], started: float, every: float = 0.25) -> list[list[float]]:
    """[seconds since the first frame, CPU s, RSS MB, messages] every `every` s: where memory goes."""
    out: list[list[float]] = []
    for t, cpu, rss, n in samples:
        if not out or t - started >= out[-1][0] + every:
            out.append([round(t - started, 3), round(cpu, 3), round(rss / 2**20, 1), n])
    return out


def _cpu_between(samples: list[list[float]], started: float, done: float) -> float | None:
    """CPU seconds the consumer used from `started` until `done` (its samples on either side)."""
    before = [s for s in samples if s[0] <= started]
    after = [s for s in samples if s[0] >= done]
    if not before or not after:
        return None
    return after[0][1] - before[-1][1]


def _cpu_steady(samples: list[list[float]], start: float, end: float) -> float | None:
    """CPU µs per message read over [start, end], the steady part of the round."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return None
    (_, c0, _, m0), (_, c1, _, m1) = inside[0], inside[-1]
    return (c1 - c0) / (m1 - m0) * 1e6 if m1 > m0 else None


def _read_rate(samples: list[list[float]], started: float, ended: float) -> float | None:
    """Messages the consumer had read by the end of the round, per second of the round."""
    inside = [s for s in samples if started < s[0] <= ended]
    if not inside:
        return None
    t, _, _, n = inside[-1]
    return n / (t - started)


def _parquet_files(run_dir: Path, dataset: str) -> list[str]:
    return sorted(glob.glob(str(run_dir / "data" / "parquet" / f"dataset={dataset}" / "*" / "*.parquet")))


def _count_ingest(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    dataset = DATASETS[spec.mix]
    files = _parquet_files(run_dir, dataset)
    parquet_rows = sum(pq.read_metadata(f).num_rows for f in files)
    with duckdb.connect(str(run_dir / "data" / "ingest.duckdb"), read_only=True) as con:
        rows, distinct = con.execute(f"SELECT count(*), count(DISTINCT _dedup_key) FROM {dataset}").fetchone()  # type: ignore[misc]
        parquet_distinct = 0
        if files:  # a record stored twice in the lake shows only here
            parquet_distinct = con.execute(
                "SELECT count(DISTINCT _dedup_key) FROM read_parquet(?, hive_partitioning = false)", [files]
            ).fetchone()[0]  # type: ignore[index]
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]  # type: ignore[index]
        gaps = con.execute("SELECT count(*) FROM gaps").fetchone()[0]  # type: ignore[index]
    return {
        "duckdb_rows": rows,
        "duckdb_distinct_keys": distinct,
        "parquet_rows": parquet_rows,
        "parquet_distinct_keys": parquet_distinct,
        "parquet_files": len(files),
        "quarantined": quarantined,
        "gaps": gaps,
    }


@dataclass(slots=True)
class _File:
    """One Parquet file of the measured dataset: each row's receive and send time (ns), and when
    the file appeared and when its rows were durable in both sinks."""

    received: np.ndarray
    sent: np.ndarray | None
    queryable_ns: int
    durable_ns: int


def _latency(spec: RunSpec, out: dict[str, Any], rnd: RoundResult) -> dict[str, Any]:
    """Per-row latencies from the Parquet files this run wrote (see the module docstring)."""
    dataset = f"dataset={DATASETS[spec.mix]}"
    seen = [(path, ns) for path, ns in out.get("files_seen", []) if dataset in path]
    steps = out.get("rows_steps", [])  # flushes are written one after another, in file order
    stop_ns = out.get("stop_requested_ns")
    log = rnd.send_log
    frame_id = _FRAME_ID.get(spec.mix) if log is not None and log.pool.ids is not None else None
    files: list[_File] = []
    cumulative, k = 0, 0
    for path, seen_ns in seen:
        table = pq.read_table(path, columns=["_received_at", *([frame_id] if frame_id else [])])
        received = table.column(0).cast(pa.int64()).to_numpy()
        cumulative += len(received)
        while k < len(steps) and steps[k][1] < cumulative:
            k += 1
        durable_ns = max(steps[k][0] if k < len(steps) else seen_ns, seen_ns)
        if len(received):
            sent = _send_times(log, table.column(1)) if frame_id and log is not None else None
            files.append(_File(received, sent, seen_ns, durable_ns))
    res: dict[str, Any] = {"latency_rows": 0, "latency_from": "receive", "latency_problems": []}
    if not files:
        res["latency_problems"].append("no Parquet file: no latency figure")
        return res
    from_send = frame_id is not None and all(f.sent is not None for f in files)
    if from_send:  # a frame read before it was written would mean the ordinals are wrong
        late = sum(int((f.sent > f.received).sum()) for f in files)  # type: ignore[operator]
        if late:
            from_send = False
            res["latency_problems"].append(f"{late} rows read before their frame was written: no send times")
    elif frame_id is not None:
        res["latency_problems"].append(f"a stored {frame_id} names no frame sent: no send times")
    res["latency_from"] = "send" if from_send else "receive"
    cut = min(int(f.received.min()) for f in files) + int(spec.warmup * 1e9)
    natural = [f for f in files if f.received.min() >= cut and (stop_ns is None or f.queryable_ns < stop_ns)]
    durable = [f for f in natural if stop_ns is None or f.durable_ns < stop_ns]
    res["latency_rows"] = sum(len(f.received) for f in natural)
    res["latency_files"] = len(natural)
    res["latency_files_left_out"] = len(files) - len(natural)  # warm-up, or flushed by the stop
    res["durable_latency_rows"] = sum(len(f.received) for f in durable)
    if not natural:
        res["latency_problems"].append("no file after the warm-up and before the stop: no latency figure")
        return res
    res |= _quantiles("queryable", [f.queryable_ns - f.received for f in natural])
    res |= _quantiles("durable", [f.durable_ns - f.received for f in durable])
    if from_send:
        res |= _quantiles("send_queryable", [f.queryable_ns - f.sent for f in natural])  # type: ignore[operator]
        res |= _quantiles("send_durable", [f.durable_ns - f.sent for f in durable])  # type: ignore[operator]
        res |= _quantiles("socket_wait", [f.received - f.sent for f in natural])  # type: ignore[operator]
    return res


def _send_times(log: SendLog, ids: pa.ChunkedArray) -> np.ndarray | None:
    """When the load server wrote each row's frame (wall ns), from the id that names the frame."""
    ordinals = log.pool.ordinals(ids)
    return None if ordinals is None else log.send_ns(ordinals)


def _quantiles(name: str, parts: list[np.ndarray]) -> dict[str, float]:
    """p50, p99 (exact, over every row) and max of latencies in ns, as `{name}_p50_ms` etc."""
    if not parts:
        return {}
    ns = np.concatenate(parts)
    p50, p99 = np.quantile(ns, [0.5, 0.99])
    return {
        f"{name}_p50_ms": float(p50) / 1e6,
        f"{name}_p99_ms": float(p99) / 1e6,
        f"{name}_max_ms": float(ns.max()) / 1e6,
    }


@dataclass(slots=True)
class Summary:
    """Median, min and max of one metric over repeated runs."""

    median: float | None
    min: float | None
    max: float | None
    values: list[float] = field(default_factory=list)


def summarise(values: list[Any]) -> Summary:
    xs = sorted(float(v) for v in values if v is not None)
    if not xs:
        return Summary(None, None, None, [])
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    return Summary(median, xs[0], xs[-1], xs)
