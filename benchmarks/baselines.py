"""What a user would write instead, against the same load server, frames and machine.

`python -m benchmarks.baselines KIND SPEC.json`, KIND one of:

- `naive`: the client the provider docs lead to: aiohttp, `json.loads` per message, and one
  DuckDB `INSERT` per message in autocommit (for Bitquery, one `executemany` per message, one
  row per Transfers entry). Nothing is journaled and nothing goes to Parquet.
- `dlt`: the same reading loop, the decoded dicts (BlockDB: naive's columns, the envelope's
  `chain_id` and `is_reorg` with the record's fields) collected and loaded into DuckDB with dlt's
  duckdb destination, a batch at a time, on the daemon's own default flush policy (50k rows or
  1 s, whichever first). `pipeline.run()` blocks the loop while it loads, as it would for a user.
- `dlt-arrow`: as `dlt`, but each batch is handed to dlt as a pyarrow Table (`from_pylist`),
  which dlt loads without its own normalisation: its fast path.

Each prints one JSON line: messages read, rows stored, when the first message came and when the
last row was committed, CPU and RSS samples, peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.probe import Control, Sampler, cpu_seconds, emit, peak_rss_bytes

__all__ = ["TABLES", "run"]

TABLES = {"coinapi": "coinapi_trades", "blockdb": "blockdb_transfers", "bitquery": "bitquery_transfers"}

_DDL = {
    "coinapi": """CREATE TABLE IF NOT EXISTS coinapi_trades (symbol_id VARCHAR, sequence BIGINT,
        time_exchange TIMESTAMPTZ, time_coinapi TIMESTAMPTZ, uuid VARCHAR, price DOUBLE, size DOUBLE,
        taker_side VARCHAR)""",
    "blockdb": """CREATE TABLE IF NOT EXISTS blockdb_transfers (chain_id BIGINT, block_number BIGINT,
        block_time TIMESTAMPTZ, tx_index BIGINT, log_index BIGINT, trace_address VARCHAR,
        from_address VARCHAR, to_address VARCHAR, token_address VARCHAR, amount_raw VARCHAR,
        amount_adj VARCHAR, token_id VARCHAR, transfer_type INTEGER, tracing_id VARCHAR, is_reorg BOOLEAN)""",
    "bitquery": """CREATE TABLE IF NOT EXISTS bitquery_transfers (block_number BIGINT, block_hash VARCHAR,
        block_time TIMESTAMPTZ, tx_hash VARCHAR, tx_from VARCHAR, tx_to VARCHAR, tx_index BIGINT,
        log_index BIGINT, call_index BIGINT, amount VARCHAR, sender VARCHAR, receiver VARCHAR,
        type VARCHAR, currency_symbol VARCHAR, currency_contract VARCHAR, currency_decimals INTEGER)""",
}


# Column names of each table, in the order of its DDL (and of the row functions below).
_COLUMNS = {
    mix: [column.split()[0] for column in ddl.split("(", 1)[1].rsplit(")", 1)[0].split(",")]
    for mix, ddl in _DDL.items()
}


def _coinapi_row(m: dict[str, Any]) -> list[Any]:
    return [m["symbol_id"], m["sequence"], m["time_exchange"], m["time_coinapi"], m["uuid"],
            m["price"], m["size"], m["taker_side"]]  # fmt: skip


def _blockdb_row(m: dict[str, Any]) -> list[Any]:
    d = m["data"]
    return [m["chain_id"], d["block_number"], d["block_time"], d["tx_index"], d["log_index"],
            d["trace_address"], d["from_address"], d["to_address"], d["token_address"], d["amount_raw"],
            d["amount_adj"], d["token_id"], d["transfer_type"], d["_tracing_id"], m["is_reorg"]]  # fmt: skip


def _bitquery_row(r: dict[str, Any]) -> list[Any]:
    b, t, x, c = r["Block"], r["Transaction"], r["Transfer"], r["Transfer"]["Currency"]
    return [b["Number"], b["Hash"], b["Time"], t["Hash"], t["From"], t["To"], t["Index"], r["Log"]["Index"],
            r["Call"]["Index"], x["Amount"], x["Sender"], x["Receiver"], x["Type"], c["Symbol"],
            c["SmartContract"], c["Decimals"]]  # fmt: skip


def _records(mix: str, msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The data records of one decoded message (none for acks, heartbeats, pongs)."""
    if mix == "coinapi":
        return [msg] if msg.get("type") == "trade" else []
    if mix == "blockdb":
        return [msg] if "data" in msg else []
    if msg.get("type") == "next":
        return msg["payload"]["data"]["EVM"]["Transfers"]
    return []


async def _open(session: aiohttp.ClientSession, url: str, mix: str) -> aiohttp.ClientWebSocketResponse:
    """Connect and subscribe the way each provider's docs show."""
    if mix == "bitquery":
        ws = await session.ws_connect(url, protocols=("graphql-transport-ws",), max_msg_size=0)
        await ws.send_json({"type": "connection_init"})
        while (await ws.receive_json()).get("type") != "connection_ack":
            pass
        from benchmarks.frames import BITQUERY_TRANSFERS_QUERY

        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": BITQUERY_TRANSFERS_QUERY}})
        return ws
    ws = await session.ws_connect(url, max_msg_size=0)
    if mix == "coinapi":
        await ws.send_json({"type": "hello", "apikey": "bench", "heartbeat": False,
                            "subscribe_data_type": ["trade"]})  # fmt: skip
    else:
        await ws.send_json({"action": "subscribe", "chain_id": 1, "dataset_id": "0304", "params": {}})
    return ws


class _Loader:
    """Where decoded records go: per-message INSERTs, or batches handed to dlt."""

    def __init__(self, kind: str, mix: str, spec: dict[str, Any]) -> None:
        self.kind, self.mix = kind, mix
        self.rows = 0
        self.messages = 0
        self.loads = 0
        self.batch: list[dict[str, Any]] = []
        self.batch_started = 0.0
        self.max_rows, self.max_age = spec.get("max_rows", 50_000), spec.get("max_age", 1.0)
        if kind == "naive":
            import duckdb

            self.con = duckdb.connect(spec["db"])
            self.con.execute(_DDL[mix])
            self.sql = f"INSERT INTO {TABLES[mix]} VALUES ({', '.join('?' * len(_COLUMNS[mix]))})"
            self.row: Callable[[dict[str, Any]], list[Any]] = {
                "coinapi": _coinapi_row,
                "blockdb": _blockdb_row,
                "bitquery": _bitquery_row,
            }[mix]
        else:
            os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
            import dlt

            self.pipeline = dlt.pipeline(
                pipeline_name=f"bench_{mix}",
                destination=dlt.destinations.duckdb(spec["db"]),
                dataset_name="bench",
                pipelines_dir=str(Path(spec["workdir"]) / "dlt"),
            )

    def add(self, records: list[dict[str, Any]]) -> None:
        if self.kind == "naive":
            if self.mix == "bitquery":
                self.con.executemany(self.sql, [self.row(r) for r in records])
            else:
                self.con.execute(self.sql, self.row(records[0]))
            self.rows += len(records)
            return
        if not self.batch:
            self.batch_started = time.monotonic()
        if self.mix == "blockdb":  # naive's columns: the envelope's chain_id and is_reorg with the record's
            records = [dict(zip(_COLUMNS["blockdb"], _blockdb_row(r), strict=True)) for r in records]
        self.batch += records
        if len(self.batch) >= self.max_rows or time.monotonic() - self.batch_started >= self.max_age:
            self.flush()

    def tick(self) -> None:
        if self.batch and time.monotonic() - self.batch_started >= self.max_age:
            self.flush()

    def flush(self) -> None:
        if self.kind == "naive" or not self.batch:
            return
        data: Any = self.batch
        if self.kind == "dlt-arrow":
            import pyarrow as pa

            data = pa.Table.from_pylist(self.batch)
        self.pipeline.run(data, table_name=TABLES[self.mix], write_disposition="append")
        self.rows += len(self.batch)
        self.loads += 1
        self.batch = []


async def run(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    mix = spec["mix"]
    control = Control(asyncio.get_running_loop())
    loader = _Loader(kind, mix, spec)
    sampler = Sampler(lambda: loader.messages)
    first = None
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, spec["url"], mix)
        while not control.stop.is_set():
            try:
                msg = await ws.receive(timeout=0.2)
            except TimeoutError:
                loader.tick()
                continue
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            records = _records(mix, json.loads(msg.data))
            if not records:
                if mix == "bitquery" and '"ping"' in msg.data:
                    await ws.send_json({"type": "pong"})
                continue
            if first is None:
                first = time.monotonic()
            loader.messages += 1
            loader.add(records)
        stopped = time.monotonic()
        loader.flush()  # what was read is stored before the run ends
        done = time.monotonic()
        sampler.stop()
        await ws.close()
    return {
        "ok": True,
        "messages": loader.messages,
        "rows": loader.rows,
        "loads": loader.loads,
        "first_frame": first,
        "stopped": stopped,
        "all_durable": done,
        "samples": sampler.samples,
        "cpu_seconds": cpu_seconds(),
        "peak_rss": peak_rss_bytes(),
    }


if __name__ == "__main__":
    kind = sys.argv[1]
    spec = json.loads(Path(sys.argv[2]).read_text())
    emit(asyncio.run(run(kind, spec)))
