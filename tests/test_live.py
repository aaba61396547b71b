"""The live view and summary render what the metrics hold."""

from __future__ import annotations

from rich.console import Console

from ingest.buffer import Buffer
from ingest.config import FlushPolicy
from ingest.events import Rows
from ingest.live import LiveView
from ingest.metrics import Metrics


def test_live_view_shows_each_dataset_and_provider(registry):
    metrics = Metrics()
    buffer = Buffer(registry, FlushPolicy(max_age=60))
    for i in range(7):
        buffer.add(Rows("blockdb", "blockdb_blocks", "s", [b"{}"], i))
    metrics.dataset("blockdb_blocks").rows_written = 5
    metrics.dataset("blockdb_blocks").last_event_time = 1_762_886_535_123_000_000
    p = metrics.provider("blockdb")
    p.state, p.connects, p.display_url = "connected", 3, "wss://h/?api_key=***"
    p.subscriptions = {"a": "active", "b": "failed: x"}
    console = Console(record=True, width=200)
    console.print(LiveView(metrics, buffer, console).render())
    text = console.export_text()
    assert "blockdb_blocks" in text and "2025-11-11 18:42:15" in text
    cells = [c.strip() for c in next(ln for ln in text.splitlines() if "blockdb_blocks" in ln).split("│")]
    assert cells[1:7] == [
        "blockdb_blocks",
        "0",
        "7",
        "5",
        "7",
        "0",
    ]  # rows/s, rows, written, buffered, reorgs
    provider = [c.strip() for c in next(ln for ln in text.splitlines() if "connected" in ln).split("│")]
    assert provider[1:7] == ["blockdb", "connected", "wss://h/?api_key=***", "0", "2", "1/2 active"]
