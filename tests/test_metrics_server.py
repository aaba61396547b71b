"""/metrics speaks the Prometheus text format from the daemon's counters; /health applies its rule."""

from __future__ import annotations

import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.buffer import CHUNK_OVERHEAD, RECORD_OVERHEAD, Buffer
from ingest.config import FlushPolicy
from ingest.errors import ConfigError
from ingest.events import Rows
from ingest.exposition import CONTENT_TYPE, Histogram, escape_label
from ingest.log import forget_secret, register_secret
from ingest.metrics import Metrics, SinkFailure
from ingest.metrics_server import Extras, health, start_metrics_server

ODD_SUB = 'we"ird\\sub\nname'  # a quote, a backslash and a line feed
ODD_REASON = 'not JSON: "x"\\y\nz'
RECORDS = [b'{"number": 1}', b'{"number": 2, "hash": "0xab"}']


def known_state(registry) -> tuple[Metrics, Buffer]:
    metrics = Metrics()
    blockdb = metrics.provider("blockdb")
    blockdb.state, blockdb.connects, blockdb.frames, blockdb.keepalives = "connected", 3, 120, 7
    blockdb.disconnected_seconds = 1.5
    blockdb.subscriptions = {"eth_blocks": "active", ODD_SUB: 'failed: bad "param"'}
    coinapi = metrics.provider("coinapi")
    coinapi.state, coinapi.connects, coinapi.frames = "backoff", 1, 5
    metrics.rows_by_provider["blockdb"] = 100
    blocks = metrics.dataset("blockdb_blocks")
    blocks.rows_written, blocks.flushes, blocks.files, blocks.reorg_rows = 100, 4, 4, 2
    blocks.last_event_time, blocks.last_flush_seconds = 1_762_992_000 * 10**9, 0.25
    metrics.quarantined[ODD_REASON] += 3
    metrics.sink_errors = 1
    metrics.files_written = 2
    buffer = Buffer(registry, FlushPolicy())
    buffer.add(Rows("blockdb", "blockdb_blocks", "eth_blocks", list(RECORDS), 1))
    return metrics, buffer


@pytest.fixture
async def served(registry):
    metrics, buffer = known_state(registry)
    ages = {"blockdb": 0.5, "coinapi": 2.0}
    extras = Extras(
        gaps=lambda: {("coinapi", "sequence"): 2, ("blockdb", "disconnected"): 1},
        journal_bytes=lambda: 4096,
        last_frame_age=ages.get,
    )
    server = await start_metrics_server(metrics, buffer, extras=extras, max_frame_age=10.0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            yield server, http, metrics, ages
    finally:
        await server.stop()


async def scrape(server, http) -> str:
    async with http.get(f"{server.url}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPE
        return await resp.text()


async def test_metric_lines_follow_from_the_state(served):
    """Each counter, gauge and label is the value set in Metrics and the Buffer."""
    server, http, _, _ = served
    assert server.url.startswith("http://127.0.0.1:")
    lines = set((await scrape(server, http)).splitlines())
    sub = escape_label(ODD_SUB)
    # One Rows of several records, as the buffer counts it.
    outstanding = CHUNK_OVERHEAD + RECORD_OVERHEAD * (len(RECORDS) - 1) + sum(map(len, RECORDS))
    for line in [
        "# TYPE ingest_provider_frames_total counter",
        'ingest_provider_frames_total{provider="blockdb"} 120',
        'ingest_provider_frames_total{provider="coinapi"} 5',
        'ingest_provider_keepalives_total{provider="blockdb"} 7',
        'ingest_provider_reconnects_total{provider="blockdb"} 2',
        'ingest_provider_reconnects_total{provider="coinapi"} 0',
        'ingest_provider_connected{provider="blockdb"} 1',
        'ingest_provider_connected{provider="coinapi"} 0',
        'ingest_provider_state{provider="coinapi",state="backoff"} 1',
        'ingest_provider_disconnected_seconds_total{provider="blockdb"} 1.5',
        'ingest_provider_last_frame_age_seconds{provider="coinapi"} 2.0',
        f'ingest_subscription_state{{provider="blockdb",subscription="{sub}",'
        'state="failed: bad \\"param\\""} 1',
        'ingest_provider_rows_total{provider="blockdb"} 100',
        'ingest_dataset_rows_written_total{dataset="blockdb_blocks"} 100',
        'ingest_dataset_flushes_total{dataset="blockdb_blocks"} 4',
        'ingest_dataset_files_total{dataset="blockdb_blocks"} 4',
        'ingest_dataset_reorg_rows_total{dataset="blockdb_blocks"} 2',
        'ingest_dataset_last_flush_seconds{dataset="blockdb_blocks"} 0.25',
        'ingest_dataset_last_event_time_seconds{dataset="blockdb_blocks"} 1762992000.0',
        'ingest_flush_duration_seconds_bucket{dataset="blockdb_blocks",le="0.1"} 0',
        'ingest_flush_duration_seconds_bucket{dataset="blockdb_blocks",le="0.25"} 1',
        'ingest_flush_duration_seconds_bucket{dataset="blockdb_blocks",le="+Inf"} 1',
        'ingest_flush_duration_seconds_count{dataset="blockdb_blocks"} 1',
        'ingest_dataset_received_rows_total{dataset="blockdb_blocks"} 2',
        'ingest_buffer_rows{dataset="blockdb_blocks"} 2',
        f"ingest_buffer_outstanding_bytes {outstanding}",
        'ingest_quarantined_frames_total{reason="not JSON: \\"x\\"\\\\y\\nz"} 3',
        "ingest_sink_errors_total 1",
        "ingest_parquet_files_total 2",
        'ingest_gaps_total{provider="coinapi",kind="sequence"} 2',
        "ingest_journal_bytes 4096",
    ]:
        assert line in lines, line


async def test_a_third_party_parser_reads_every_family_and_label_back(served):
    """prometheus_client parses the page and recovers the odd label values exactly."""
    server, http, metrics, _ = served
    families = {f.name: f for f in text_string_to_metric_families(await scrape(server, http))}
    assert families["ingest_provider_frames"].type == "counter"
    assert families["ingest_flush_duration_seconds"].type == "histogram"
    subs = {
        s.labels["subscription"]: s.labels["state"] for s in families["ingest_subscription_state"].samples
    }
    assert subs == metrics.providers["blockdb"].subscriptions
    (reason,) = families["ingest_quarantined_frames"].samples
    assert (reason.labels["reason"], reason.value) == (ODD_REASON, 3)


async def test_flush_durations_are_sampled_when_the_flush_counter_moves(served):
    """A new flush (the counter moved) adds its duration to the histogram; no flush adds nothing."""
    server, http, metrics, _ = served
    await scrape(server, http)
    stats = metrics.datasets["blockdb_blocks"]
    stats.flushes, stats.last_flush_seconds = 5, 3.0
    await scrape(server, http)
    lines = set((await scrape(server, http)).splitlines())
    assert 'ingest_flush_duration_seconds_count{dataset="blockdb_blocks"} 2' in lines
    assert 'ingest_flush_duration_seconds_sum{dataset="blockdb_blocks"} 3.25' in lines
    assert 'ingest_flush_duration_seconds_bucket{dataset="blockdb_blocks",le="2.5"} 1' in lines


async def test_health_is_200_while_every_stream_is_up_or_briefly_reconnecting(served):
    """Connected, or in backoff with a frame within max_frame_age: healthy; otherwise 503."""
    server, http, metrics, ages = served
    async with http.get(f"{server.url}/health") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok"
    assert body["providers"]["blockdb"] == {
        "state": "connected",
        "connected": True,
        "last_frame_age_seconds": 0.5,
        "reconnects": 2,
        "healthy": True,
        "last_error": "",
        "silent_subscriptions": [],
    }
    assert body["providers"]["coinapi"]["connected"] is False and body["providers"]["coinapi"]["healthy"]
    # A subscription the provider ignores is named, and the stream is still up: healthy.
    metrics.providers["blockdb"].subscriptions["eth_blocks"] = "silent"
    async with http.get(f"{server.url}/health") as resp:
        blockdb = (await resp.json())["providers"]["blockdb"]
        assert resp.status == 200 and blockdb["silent_subscriptions"] == ["eth_blocks"] and blockdb["healthy"]
    metrics.providers["blockdb"].subscriptions["eth_blocks"] = "active"

    ages["coinapi"] = 60.0  # the outage outlived max_frame_age
    async with http.get(f"{server.url}/health") as resp:
        assert resp.status == 503
        assert (await resp.json())["providers"]["coinapi"]["healthy"] is False
    ages["coinapi"] = 1.0
    metrics.providers["blockdb"].state = "failed"
    async with http.get(f"{server.url}/health") as resp:
        assert resp.status == 503 and (await resp.json())["status"] == "unhealthy"


async def test_a_sink_failing_for_longer_than_max_frame_age_is_unhealthy(served):
    """Every stream up, but DuckDB's writes fail: rows wait in memory and nothing is stored."""
    server, http, metrics, _ = served
    register_secret("s3-secret-key-0042")  # what the log masks, /health masks too
    metrics.sink_failures["duckdb"] = SinkFailure(time.monotonic() - 2, "IOException: disk full", 3)
    async with http.get(f"{server.url}/health") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["failing_sinks"]["duckdb"]["healthy"]  # a blip, so far
    metrics.sink_failures["duckdb"].since -= 60
    metrics.sink_failures["duckdb"].attempts = 9
    metrics.sink_failures["duckdb"].error = "IOException: disk full at s3-secret-key-0042"
    async with http.get(f"{server.url}/health") as resp:
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "unhealthy"
        failing = body["failing_sinks"]["duckdb"]
        assert failing["attempts"] == 9 and failing["last_error"] == "IOException: disk full at ***"
        assert 62 <= failing["failing_for_seconds"] < 70 and failing["healthy"] is False
    lines = (await scrape(server, http)).splitlines()
    (gauge,) = [line for line in lines if line.startswith("ingest_sink_failing_seconds{")]
    assert gauge.startswith('ingest_sink_failing_seconds{sink="duckdb"} 6')
    del metrics.sink_failures["duckdb"]  # a write went through
    async with http.get(f"{server.url}/health") as resp:
        assert resp.status == 200 and (await resp.json())["failing_sinks"] == {}
    forget_secret("s3-secret-key-0042")


async def test_a_subscription_state_quoting_a_secret_is_masked_in_the_metrics(served):
    server, http, metrics, _ = served
    register_secret("bdb-key-51c9")
    metrics.providers["blockdb"].subscriptions["eth_blocks"] = "failed: bad key bdb-key-51c9"
    try:
        text = await scrape(server, http)
    finally:
        forget_secret("bdb-key-51c9")
    assert "bdb-key-51c9" not in text and 'state="failed: bad key ***"' in text


async def test_without_a_frame_clock_a_reconnecting_stream_is_unhealthy(registry):
    """With no last-frame source, only connected streams count as healthy."""
    metrics, buffer = known_state(registry)
    server = await start_metrics_server(metrics, buffer)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as resp:
            assert resp.status == 503
            assert (await resp.json())["providers"]["coinapi"]["last_frame_age_seconds"] is None
    finally:
        await server.stop()


def test_health_is_starting_until_there_are_collectors():
    """The server starts before the collectors (a crash's journal may replay for a while first):
    nothing connected is no health, however empty the list of providers."""
    metrics = Metrics()
    assert health(metrics, Extras(), 30.0) == (
        503,
        {"status": "starting", "providers": {}, "failing_sinks": {}},
    )
    metrics.provider("blockdb").state = "connected"
    assert health(metrics, Extras(), 30.0)[0] == 200


async def test_a_host_name_that_is_no_loopback_name_is_refused(served):
    """A page served from rebind.example whose name resolves to 127.0.0.1 reaches the port, but
    asks for rebind.example: refused, so its script cannot read the pages as its own."""
    server, http, _, _ = served
    port = server.url.rsplit(":", 1)[1]
    for name, status in (("rebind.example", 421), ("localhost", 200), ("127.0.0.1", 200), ("[::1]", 200)):
        async with http.get(f"{server.url}/metrics", headers={"Host": f"{name}:{port}"}) as resp:
            assert resp.status == status, name


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.org"])
async def test_non_loopback_hosts_are_refused_unless_allowed(registry, host):
    """The pages name subscriptions and errors, so they stay on loopback by default."""
    metrics, buffer = known_state(registry)
    with pytest.raises(ConfigError, match="not a loopback address"):
        await start_metrics_server(metrics, buffer, host=host)


async def test_a_port_already_taken_is_a_config_error_naming_it(registry):
    metrics, buffer = known_state(registry)
    first = await start_metrics_server(metrics, buffer)
    port = int(first.url.rsplit(":", 1)[1])
    try:
        with pytest.raises(ConfigError, match=rf"metrics: cannot listen on 127.0.0.1:{port} \(.*in use"):
            await start_metrics_server(metrics, buffer, port=port)
    finally:
        await first.stop()


def test_histogram_buckets_are_cumulative():
    """An observation counts in its bucket and every larger one, and in +Inf."""
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.5, 5.0):
        h.observe(v, dataset="d")
    values = [(suffix, labels.get("le"), v) for suffix, labels, v in h.family("x", "x").samples]
    assert values == [
        ("_bucket", "0.1", 1),
        ("_bucket", "1.0", 2),
        ("_bucket", "+Inf", 3),
        ("_sum", None, 5.55),
        ("_count", None, 3),
    ]
