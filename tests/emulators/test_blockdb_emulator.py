"""BlockDB emulator, driven by a plain aiohttp client: auth, acks, updates, reorgs, counters and faults.

Expected records come from `synth.Chain` run with the emulator's seed; field names and formats come
from /work/shared/PROTOCOLS.md section 2, written out here independently of the emulator.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import WSMsgType

from ingest.emulators import EMULATORS, BlockDBEmulator
from ingest.emulators.synth import FIRST_BLOCK, REORG_DEPTHS, TOKENS, Chain, Emission

KEY = "test-key-5f0c7d"
AUTH = {"Authorization": f"Bearer {KEY}"}
WETH, USDC = TOKENS["WETH"].address, TOKENS["USDC"].address
PAIR = {"base_token_address": WETH, "quote_token_address": USDC}
ALL_SUBS: dict[str, dict[str, Any]] = {
    "0101": {},
    "0102": {},
    "0103": {},
    "0302": PAIR,
    "0304": {},
    "0404": PAIR,
}
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)

_LINEAGE = {"_tracing_id", "_parent_tracing_ids", "_is_reorg", "_created_at", "_updated_at"}
# PROTOCOLS.md 2.8: field tables, plus the 0101/0102 fields shown in published examples.
FIELDS = {
    "0101": {"block_number", "block_hash", "parent_block_hash", "miner", "timestamp_utc", "receipt_root",
             "gas_limit", "extra_data", "size", "_tracing_id", "_is_reorg", "_created_at", "_updated_at"},
    "0102": {"tx_hash", "block_number", "block_time", "tx_index", "from_address", "to_address",
             "created_contract_address", "gas_used", "effective_gas_price_wei", "status_success", "root",
             "tx_type", "trace_failed", "value_wei", "input", "nonce", "gas_limit", "block_hash",
             "_tracing_id", "_is_reorg"},
    "0103": {"contract_address", "topic_zero", "data_topics", "data", "block_number", "block_time",
             "tx_index", "log_index", "_tracing_id", "_is_reorg", "_created_at", "_updated_at"},
    "0302": {"pool_uid", "exchange_id", "type_id", "block_number", "block_time", "tx_index", "log_index",
             "token_in", "token_out", "amount_in", "amount_out", "exec_price"} | _LINEAGE,
    "0304": {"block_number", "block_time", "tx_index", "log_index", "trace_address", "from_address",
             "to_address", "token_address", "amount_raw", "amount_adj", "token_id",
             "transfer_type"} | _LINEAGE,
    "0404": {"pool_uid", "exchange_id", "type_id", "bucket_start", "bucket_end", "bucket_seconds", "token_in",
             "token_out", "open", "high", "low", "close", "volume_in_raw", "volume_in", "volume_out_raw",
             "volume_out", "trades_count"} | _LINEAGE,
}  # fmt: skip


class Client:
    """One socket: sends control messages and sorts incoming frames (has status: ack; has data: update)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.acks: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.raw: list[str] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send_json(message)

    async def subscribe(
        self, dataset_id: str, params: dict[str, Any] | None = None, chain_id: int = 1
    ) -> None:
        await self.send(action="subscribe", chain_id=chain_id, dataset_id=dataset_id, params=params or {})

    async def pump(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                msg = await self.ws.receive()
                if msg.type in (WSMsgType.PING, WSMsgType.PONG):
                    continue  # seen only with autoping off; left unanswered on purpose
                assert msg.type is WSMsgType.TEXT, msg
                frame = json.loads(msg.data)
                if "status" in frame:
                    self.acks.append(frame)
                else:
                    self.updates.append(frame)
                    self.raw.append(msg.data)

    async def ack(self) -> dict[str, Any]:
        seen = len(self.acks)
        await self.pump(lambda: len(self.acks) > seen)
        return self.acks[-1]

    def of(self, dataset_id: str) -> list[dict[str, Any]]:
        return [u for u in self.updates if u["dataset_id"] == dataset_id]


async def connect(session: aiohttp.ClientSession, emulator: BlockDBEmulator, **kwargs: Any) -> Client:
    return Client(await session.ws_connect(emulator.url, headers=AUTH, **kwargs))


def pair_ok(emission: Emission) -> bool:
    record = emission.record
    return emission.dataset_id not in ("0302", "0404") or {record["token_in"], record["token_out"]} == {
        WETH,
        USDC,
    }


def expected(
    blocks: int, datasets: Any, *, seed: int = 1, chain_id: int = 1, **kwargs: Any
) -> list[Emission]:
    """What the emulator must send for `blocks` steps of the synthetic chain, before params filters."""
    chain = Chain(seed, chain_id, **kwargs)
    return [e for _ in range(blocks) for e in chain.advance() if e.dataset_id in datasets]


def as_frames(emissions: list[Emission], chain_id: int = 1) -> list[dict[str, Any]]:
    return [{"chain_id": chain_id, "dataset_id": d, "is_reorg": r, "data": rec} for d, rec, r in emissions]


async def collect_all(
    blockdb: Any, session: aiohttp.ClientSession, blocks: int, seed: int
) -> tuple[Any, Client]:
    """Subscribe to every served dataset for a `blocks`-long run and read every update it produces."""
    emulator = await blockdb(key=KEY, seed=seed, max_blocks=blocks, record_log=True)
    client = await connect(session, emulator)
    for dataset_id, params in ALL_SUBS.items():
        await client.subscribe(dataset_id, params)
    want = [e for e in expected(blocks, ALL_SUBS, seed=seed) if pair_ok(e)]
    await client.pump(lambda: len(client.updates) >= len(want) and len(client.acks) == len(ALL_SUBS))
    assert client.updates == as_frames(want)
    return emulator, client


# -- handshake ------------------------------------------------------------------------------------


def test_registry_names_blockdb() -> None:
    """The emulator registry maps "blockdb" to the BlockDB emulator class."""
    assert EMULATORS["blockdb"] is BlockDBEmulator


@pytest.mark.parametrize(
    ("key", "headers", "query", "accepted"),
    [
        (KEY, AUTH, None, True),
        (KEY, {}, {"api_key": KEY}, True),
        (KEY, {"Authorization": "Bearer wrong"}, None, False),
        (KEY, {}, {"api_key": "wrong"}, False),
        (KEY, {}, None, False),
        (None, {"Authorization": "Bearer anything"}, None, True),
        (None, {}, {"api_key": "x"}, True),
        (None, {"Authorization": "Bearer "}, None, False),
        (None, {"Authorization": "Basic abc"}, None, False),
    ],
)
async def test_handshake_auth(blockdb, session, key, headers, query, accepted) -> None:
    """Bearer header or ?api_key= opens the socket; a missing, empty or wrong key gets HTTP 401."""
    emulator = await blockdb(key=key)
    if accepted:
        async with session.ws_connect(emulator.url, headers=headers, params=query) as ws:
            assert not ws.closed
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(emulator.url, headers=headers, params=query)
        assert refused.value.status == 401


async def test_refused_upgrade_carries_blockdb_error_object(blockdb, session) -> None:
    """The 401 body is BlockDB's error object with code UNAUTHORIZED, not retryable."""
    emulator = await blockdb(key=KEY)
    async with session.get(emulator.url.replace("ws://", "http://"), params={"api_key": "nope"}) as response:
        assert response.status == 401
        error = (await response.json())["error"]
    assert error["code"] == "UNAUTHORIZED"
    assert error["severity"] == "error" and error["retryable"] is False
    assert isinstance(error["message"], str) and isinstance(error["hint"], str)


@pytest.mark.parametrize("path", ["/v1/evm/", "/v1/evm", "/v1/evm/stream"])
async def test_all_documented_paths_accept_the_upgrade(blockdb, session, path) -> None:
    """The current path, its slashless form and the older /v1/evm/stream all serve the stream."""
    emulator = await blockdb()
    url = emulator.url.removesuffix("/v1/evm/") + path
    async with session.ws_connect(url, headers=AUTH) as ws:
        client = Client(ws)
        await client.subscribe("0101")
        assert (await client.ack())["status"] == "success"


async def test_key_never_reaches_the_logs(blockdb, session, caplog) -> None:
    """Neither structlog events nor stdlib logs (aiohttp's included) contain the API key."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        emulator = await blockdb(key=KEY)
        async with session.ws_connect(emulator.url, params={"api_key": KEY}) as ws:
            client = Client(ws)
            await client.subscribe("0101")
            await client.pump(lambda: len(client.updates) >= 1)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(emulator.url, params={"api_key": KEY + "-bad"})
        await emulator.stop()
    assert events, "the emulator should log something to check"
    assert KEY not in repr(events)
    assert KEY not in caplog.text


# -- control messages -----------------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_acks_echo_the_pair(blockdb, session) -> None:
    """Acks carry action, chain_id, dataset_id and status success, nothing else."""
    client = await connect(session, await blockdb())
    await client.subscribe("0101")
    assert await client.ack() == {
        "action": "subscribe",
        "chain_id": 1,
        "dataset_id": "0101",
        "status": "success",
    }
    await client.send(action="unsubscribe", chain_id=1, dataset_id="0101")
    assert await client.ack() == {
        "action": "unsubscribe",
        "chain_id": 1,
        "dataset_id": "0101",
        "status": "success",
    }


def _sub(dataset_id: Any = "0101", **overrides: Any) -> dict[str, Any]:
    return {"action": "subscribe", "chain_id": 1, "dataset_id": dataset_id, "params": {}, **overrides}


BAD_REQUESTS = [
    ("not json", "{nope", "BAD_REQUEST", ["message"]),
    ("not an object", "[1, 2]", "BAD_REQUEST", ["message"]),
    ("unknown action", _sub(action="listen"), "BAD_REQUEST", ["action"]),
    ("missing action", {"chain_id": 1, "dataset_id": "0101", "params": {}}, "BAD_REQUEST", ["action"]),
    ("missing chain_id", {"action": "subscribe", "dataset_id": "0101", "params": {}}, "BAD_REQUEST",
     ["chain_id"]),
    ("string chain_id", _sub(chain_id="1"), "BAD_REQUEST", ["chain_id"]),
    ("bool chain_id", _sub(chain_id=True), "BAD_REQUEST", ["chain_id"]),
    ("chain not served", _sub(chain_id=56), "NOT_FOUND", ["chain_id"]),
    ("dataset_id too short", _sub("101"), "BAD_REQUEST", ["dataset_id"]),
    ("dataset_id a number", _sub(101), "BAD_REQUEST", ["dataset_id"]),
    ("dataset_id not in BlockDB's list", _sub("9999"), "BAD_REQUEST", ["dataset_id"]),
    ("known dataset not served", _sub("0111"), "NOT_FOUND", ["dataset_id"]),
    ("missing params", {"action": "subscribe", "chain_id": 1, "dataset_id": "0101"}, "BAD_REQUEST",
     ["params"]),
    ("params not an object", _sub(params=[]), "BAD_REQUEST", ["params"]),
    ("0302 without its pair", _sub("0302"), "BAD_REQUEST",
     ["params.base_token_address", "params.quote_token_address"]),
    ("0404 without quote", _sub("0404", params={"base_token_address": WETH}), "BAD_REQUEST",
     ["params.quote_token_address"]),
    ("0x-prefixed address", _sub("0304", params={"token_addresses": [USDC, "0x" + WETH]}), "BAD_REQUEST",
     ["params.token_addresses[1]"]),
    ("unknown param", _sub(params={"foo": 1}), "BAD_REQUEST", ["params.foo"]),
    ("unknown transfer type", _sub("0304", params={"transfer_types": ["erc999"]}), "BAD_REQUEST",
     ["params.transfer_types[0]"]),
    ("OHLC interval not served", _sub("0404", params={**PAIR, "aggregation_interval": "1h"}), "NOT_FOUND",
     ["params.aggregation_interval"]),
    ("unsubscribe unknown dataset", {"action": "unsubscribe", "chain_id": 1, "dataset_id": "0000"},
     "BAD_REQUEST", ["dataset_id"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "message", "code", "names"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_invalid_request_gets_error_ack_and_socket_stays_usable(
    blockdb, session, case, message, code, names
):
    """A malformed or unservable request gets status error and BlockDB's error object; the socket lives on."""
    client = await connect(session, await blockdb())
    await client.ws.send_str(message if isinstance(message, str) else json.dumps(message))
    ack = await client.ack()
    assert ack["status"] == "error"
    for field in ("action", "chain_id", "dataset_id"):
        if isinstance(message, dict) and field in message:
            assert ack[field] == message[field]
    error = ack["error"]
    assert error["code"] == code
    assert error["severity"] == "error" and error["retryable"] is False
    assert isinstance(error["message"], str) and isinstance(error["hint"], str)
    assert [p["name"] for p in error["details"]["invalid_parameters"]] == names
    await client.subscribe("0101")
    assert (await client.ack())["status"] == "success"
    await client.pump(lambda: len(client.of("0101")) >= 1)


async def test_dataset_outside_the_plan_is_forbidden_and_the_socket_stays_usable(blockdb, session) -> None:
    """With a plan, another dataset gets FORBIDDEN with details.required_plan (doc 2.4); the rest flows."""
    client = await connect(session, await blockdb(key=KEY, plan=["0101"]))
    await client.subscribe("0304")
    ack = await client.ack()
    assert (ack["action"], ack["chain_id"], ack["dataset_id"], ack["status"]) == (
        "subscribe",
        1,
        "0304",
        "error",
    )
    error = ack["error"]
    assert (error["code"], error["retryable"], error["severity"]) == ("FORBIDDEN", False, "error")
    assert error["details"] == {"required_plan": "pro"} and isinstance(error["hint"], str)
    await client.subscribe("0101")
    assert (await client.ack())["status"] == "success"
    await client.pump(lambda: len(client.of("0101")) >= 3)
    assert not client.of("0304")
    await client.send(action="unsubscribe", chain_id=1, dataset_id="0304")  # idempotent, not refused
    assert (await client.ack())["status"] == "success"


async def test_unsubscribe_stops_only_that_stream(blockdb, session) -> None:
    """After the unsubscribe ack no 0101 update arrives, while 0102 keeps flowing."""
    client = await connect(session, await blockdb())
    await client.subscribe("0101")
    await client.subscribe("0102")
    await client.pump(lambda: len(client.of("0101")) >= 2)
    await client.send(action="unsubscribe", chain_id=1, dataset_id="0101")
    await client.pump(lambda: client.acks[-1]["action"] == "unsubscribe")
    cut, last = len(client.updates), client.of("0101")[-1]["data"]["block_number"]
    await client.pump(lambda: client.updates[-1]["data"]["block_number"] >= last + 3)
    assert not [u for u in client.updates[cut:] if u["dataset_id"] == "0101"]


async def test_repeated_subscribe_is_one_stream(blockdb, session) -> None:
    """Subscribing twice to the same pair acks twice but delivers each block once."""
    client = await connect(session, await blockdb(max_blocks=4))
    await client.subscribe("0101")
    await client.subscribe("0101")
    await client.pump(lambda: len(client.of("0101")) >= 4 and len(client.acks) == 2)
    await asyncio.sleep(0.1)
    numbers = [u["data"]["block_number"] for u in client.of("0101")]
    assert numbers == list(range(FIRST_BLOCK, FIRST_BLOCK + 4))


# -- updates --------------------------------------------------------------------------------------


async def test_updates_equal_synth_and_counters_equal_what_arrived(blockdb, session) -> None:
    """Every stream carries exactly the synth chain's records in order; sent/sent_log match the client."""
    emulator, client = await collect_all(blockdb, session, blocks=8, seed=7)
    assert {u["dataset_id"] for u in client.updates} == set(ALL_SUBS)
    assert client.of("0101")[0]["data"]["block_number"] == FIRST_BLOCK  # the clock starts on subscribe
    with pytest.raises(TimeoutError):
        await client.ws.receive(timeout=0.1)
    assert emulator.blocks_produced == 8
    assert emulator.sent == Counter((1, u["dataset_id"]) for u in client.updates)
    assert emulator.sent_log == [
        (1, u["dataset_id"], u["data"]["_tracing_id"], False) for u in client.updates
    ]
    assert not emulator.sent_reorg and not emulator.dropped
    assert emulator.connections_total == 1


async def test_envelope_fields_and_encodings(blockdb, session) -> None:
    """Envelopes are {chain_id, dataset_id, is_reorg, data}; data fields and formats follow PROTOCOLS 2.8."""
    _, client = await collect_all(blockdb, session, blocks=12, seed=3)
    for update in client.updates:
        assert set(update) == {"chain_id", "dataset_id", "is_reorg", "data"}
        data, dataset_id = update["data"], update["dataset_id"]
        assert set(data) == FIELDS[dataset_id]
        assert data["_tracing_id"].startswith(dataset_id) and re.fullmatch(r"[0-9a-f]+", data["_tracing_id"])
        assert data["_is_reorg"] is update["is_reorg"] is False
        for name in (
            "timestamp_utc",
            "block_time",
            "bucket_start",
            "bucket_end",
            "_created_at",
            "_updated_at",
        ):
            assert name not in data or ISO_MS.fullmatch(data[name]), (name, data)
    for block in client.of("0101"):
        assert HEX64.fullmatch(block["data"]["block_hash"]) and HEX64.fullmatch(
            block["data"]["parent_block_hash"]
        )
        assert HEX40.fullmatch(block["data"]["miner"])
    transfers = [u["data"] for u in client.of("0304")]
    for t in transfers:
        assert re.fullmatch(r"\d+", t["amount_raw"]) and HEX40.fullmatch(t["from_address"])
        assert (t["log_index"] is None) == (t["transfer_type"] in (0, 1))  # native rows have no log
        assert (t["trace_address"] is not None) == (t["transfer_type"] == 1)  # only internal ones a trace
        assert (t["token_address"] is None) == (t["transfer_type"] in (0, 1))  # null token = native coin
    assert {t["transfer_type"] for t in transfers} == {0, 1, 2, 3, 4}
    assert any(int(t["amount_raw"]) > 2**128 for t in transfers)
    assert any(len(t["amount_raw"]) >= 24 and t["transfer_type"] == 2 for t in transfers)
    assert any(u["data"]["topic_zero"] is None for u in client.of("0103"))


async def test_same_seed_same_frames(blockdb, session) -> None:
    """Two emulators with one seed send byte-identical frames; another seed sends different ones."""
    runs = []
    for seed in (5, 5, 6):
        client = await connect(session, await blockdb(seed=seed, max_blocks=4))
        for dataset_id in ("0101", "0102", "0304"):
            await client.subscribe(dataset_id)
        want = len(expected(4, ("0101", "0102", "0304"), seed=seed))
        await client.pump(lambda c=client, n=want: len(c.updates) >= n)
        runs.append(client.raw)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_records_are_consistent_across_datasets(blockdb, session) -> None:
    """Parents link blocks, and txs, logs and transfers point at blocks, txs and logs that were sent."""
    _, client = await collect_all(blockdb, session, blocks=10, seed=11)
    blocks = [u["data"] for u in client.of("0101")]
    for previous, block in itertools.pairwise(blocks):
        assert block["parent_block_hash"] == previous["block_hash"]
        assert block["block_number"] == previous["block_number"] + 1
    hashes = {b["block_number"]: b["block_hash"] for b in blocks}
    txs = {(t["block_number"], t["tx_index"]): t for t in (u["data"] for u in client.of("0102"))}
    logs = {(g["block_number"], g["log_index"]): g for g in (u["data"] for u in client.of("0103"))}
    assert all(hashes[n] == tx["block_hash"] for (n, _), tx in txs.items())
    assert all((n, g["tx_index"]) in txs for (n, _), g in logs.items())
    for t in (u["data"] for u in client.of("0304")):
        tx = txs[(t["block_number"], t["tx_index"])]
        assert t["_parent_tracing_ids"][0] == tx["_tracing_id"]
        if t["log_index"] is not None:
            log = logs[(t["block_number"], t["log_index"])]
            assert log["contract_address"] == t["token_address"] and log["tx_index"] == t["tx_index"]
            assert t["_parent_tracing_ids"][1] == log["_tracing_id"]
    for s in (u["data"] for u in client.of("0302")):
        assert logs[(s["block_number"], s["log_index"])]["contract_address"] == s["pool_uid"][:40]


async def test_filters_select_matching_records(blockdb, session) -> None:
    """0304 token/type and 0102 from filters deliver exactly the synth records that match them."""
    chain = Chain(2, 1)
    token, wallet = chain.tokens[0].address, chain.wallets[0]
    client = await connect(session, await blockdb(seed=2, max_blocks=20))
    await client.subscribe("0304", {"token_addresses": [token.upper()], "transfer_types": ["erc20"]})
    await client.subscribe("0102", {"from_addresses": [wallet], "to_addresses": []})
    want = [
        e
        for e in expected(20, ("0102", "0304"), seed=2)
        if (e.dataset_id == "0304" and e.record["token_address"] == token and e.record["transfer_type"] == 2)
        or (e.dataset_id == "0102" and e.record["from_address"] == wallet)
    ]
    assert {e.dataset_id for e in want} == {"0102", "0304"}
    await client.pump(lambda: len(client.updates) >= len(want))
    await asyncio.sleep(0.1)
    with pytest.raises(TimeoutError):
        await client.ws.receive(timeout=0.1)
    assert client.updates == as_frames(want)


async def test_resends_on_subscribe_go_only_where_the_filter_matches(blockdb, session) -> None:
    """A new subscription is first sent the stream's recent updates again (doc 2.6: re-delivery),
    but only those its params select, as live updates are: never rows it did not ask for."""
    emulator = await blockdb(max_blocks=20, start_on_subscribe=False, resend_on_subscribe=10_000)
    await asyncio.wait_for(emulator.wait_blocks(20), 5)
    client = await connect(session, emulator)
    await client.subscribe("0304", {"transfer_types": ["erc721"]})
    want = [e for e in expected(20, ("0304",)) if e.record["transfer_type"] == 3]
    assert 0 < len(want) < len(expected(20, ("0304",)))
    await client.pump(lambda: len(client.updates) >= len(want) and len(client.acks) == 1)
    with pytest.raises(TimeoutError):
        await client.ws.receive(timeout=0.2)
    assert client.updates == as_frames(want)
    assert emulator.resent[(1, "0304")] == len(want)


async def test_each_chain_is_its_own_stream(blockdb, session) -> None:
    """With two chains served, each (chain_id, dataset_id) pair streams its own chain."""
    client = await connect(session, await blockdb(chains=(1, 8453), max_blocks=3))
    await client.subscribe("0101", chain_id=1)
    await client.subscribe("0101", chain_id=8453)
    await client.pump(lambda: len(client.updates) >= 6)
    by_chain = {c: [u["data"] for u in client.updates if u["chain_id"] == c] for c in (1, 8453)}
    assert [b["block_hash"] for b in by_chain[8453]] == [Chain(1, 8453).block_hash(n, 0) for n in
                                                         range(FIRST_BLOCK, FIRST_BLOCK + 3)]  # fmt: skip
    assert {b["block_hash"] for b in by_chain[1]}.isdisjoint(b["block_hash"] for b in by_chain[8453])


async def test_reorg_replaces_blocks_and_their_records(blockdb, session) -> None:
    """Replaced heights are re-sent with is_reorg and _is_reorg true, new hashes, linked parents, new ids."""
    emulator = await blockdb(max_blocks=10, reorg_every=3)
    client = await connect(session, emulator)
    await client.subscribe("0101")
    await client.subscribe("0304")
    want = expected(10, ("0101", "0304"), reorg_every=3)
    await client.pump(lambda: len(client.updates) >= len(want))
    assert client.updates == as_frames(want)

    current: dict[int, str] = {}  # block_number -> hash as the client would know it
    runs: list[list[int]] = []  # heights replaced by each reorg
    in_reorg = False
    for update in client.of("0101"):
        block, number = update["data"], update["data"]["block_number"]
        assert block["_is_reorg"] is update["is_reorg"]
        if update["is_reorg"]:
            assert current[number] != block["block_hash"]
            if in_reorg:
                runs[-1].append(number)
            else:
                runs.append([number])
        else:
            assert number not in current
        in_reorg = update["is_reorg"]
        if number - 1 in current:  # first replaced block: unchanged ancestor; later ones: the new branch
            assert block["parent_block_hash"] == current[number - 1]
        current[number] = block["block_hash"]
    assert [(1, run[0], len(run)) for run in runs] == emulator.reorgs
    assert [depth for *_, depth in emulator.reorgs] == list(REORG_DEPTHS)

    originals = [u["data"] for u in client.of("0304") if not u["is_reorg"]]
    replacements = [u["data"] for u in client.of("0304") if u["is_reorg"]]
    assert replacements and all(r["_is_reorg"] for r in replacements)
    assert {r["_tracing_id"] for r in replacements}.isdisjoint(o["_tracing_id"] for o in originals)
    for _, first, depth in emulator.reorgs:  # every natural key of a replaced height comes back
        heights = range(first, first + depth)
        keys = Counter((o["block_number"], o["tx_index"], o["log_index"], o["trace_address"])
                       for o in originals if o["block_number"] in heights)  # fmt: skip
        again = [(r["block_number"], r["tx_index"], r["log_index"], r["trace_address"])
                 for r in replacements if r["block_number"] in heights]  # fmt: skip
        assert Counter(again) == keys
    assert emulator.sent_reorg == Counter((1, u["dataset_id"]) for u in client.updates if u["is_reorg"])


# -- liveness and limits --------------------------------------------------------------------------


async def test_server_sends_ping_frames(blockdb, session) -> None:
    """With autoping off, the client sees the server's WebSocket PING control frames."""
    emulator = await blockdb(ping_interval=0.05)
    client = await connect(session, emulator, autoping=False)
    msg = await client.ws.receive(timeout=2)
    assert msg.type is WSMsgType.PING


async def test_missing_pongs_end_the_connection(blockdb, session) -> None:
    """A subscribed client that never answers pings is cut once the pong timeout passes."""
    emulator = await blockdb(ping_interval=0.05, idle_timeout=0.3, block_interval=1.0)
    client = await connect(session, emulator, autoping=False)
    await client.subscribe("0101")
    started = time.monotonic()
    async with asyncio.timeout(3):
        while (await client.ws.receive()).type not in ENDED:
            pass
    assert time.monotonic() - started >= 0.25


async def test_answered_pings_keep_the_connection(blockdb, session) -> None:
    """The same limits with automatic pongs (aiohttp answers while reading) keep the stream open."""
    emulator = await blockdb(ping_interval=0.05, idle_timeout=0.3)
    client = await connect(session, emulator)
    await client.subscribe("0101")
    started = time.monotonic()
    await client.pump(lambda: time.monotonic() - started > 0.8)
    assert not client.ws.closed and len(client.of("0101")) >= 25


async def test_idle_connection_is_closed_normally(blockdb, session) -> None:
    """A socket with no subscription for idle_timeout is closed with 1000; so is one that unsubscribed."""
    emulator = await blockdb(idle_timeout=0.2)
    client = await connect(session, emulator)
    started = time.monotonic()
    msg = await client.ws.receive(timeout=2)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)
    assert time.monotonic() - started >= 0.15

    client = await connect(session, emulator)
    await client.subscribe("0101")
    await asyncio.sleep(0.3)
    await client.send(action="unsubscribe", chain_id=1, dataset_id="0101")
    async with asyncio.timeout(2):
        while (msg := await client.ws.receive()).type is WSMsgType.TEXT:
            pass
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)


async def test_max_blocks_stops_production_but_not_pings(blockdb, session) -> None:
    """After max_blocks the stream stops while the socket stays open and keeps pinging."""
    emulator = await blockdb(max_blocks=3, ping_interval=0.05)
    client = await connect(session, emulator, autoping=False)
    await client.subscribe("0101")
    async with asyncio.timeout(2):
        await emulator.wait_blocks(3)
    kinds: Counter[WSMsgType] = Counter()
    deadline = time.monotonic() + 0.4
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await client.ws.receive(timeout=left)
        except TimeoutError:
            break
        kinds[msg.type] += 1
        if msg.type is WSMsgType.TEXT and "data" in (frame := json.loads(msg.data)):
            client.updates.append(frame)
    assert [u["data"]["block_number"] for u in client.updates] == list(range(FIRST_BLOCK, FIRST_BLOCK + 3))
    assert kinds[WSMsgType.PING] >= 3 and not client.ws.closed
    assert emulator.blocks_produced == 3


async def test_burst_produces_blocks_back_to_back(blockdb, session) -> None:
    """burst(n) delivers n blocks at once even when the regular interval is far away."""
    emulator = await blockdb(block_interval=60)
    client = await connect(session, emulator)
    await client.subscribe("0101")
    await client.subscribe("0304")
    await client.ack()
    emulator.burst(40)
    await client.pump(lambda: len(client.of("0101")) >= 40, timeout=5)
    assert [u["data"]["block_number"] for u in client.of("0101")] == list(
        range(FIRST_BLOCK, FIRST_BLOCK + 40)
    )
    assert emulator.blocks_produced == 40


async def test_queue_overflow_closes_with_try_again_later(blockdb, session) -> None:
    """More queued frames than max_queue closes the socket with 1013 TRY_AGAIN_LATER (backpressure)."""
    emulator = await blockdb(max_queue=3, txs_per_block=16)
    client = await connect(session, emulator)
    await client.subscribe("0102")
    async with asyncio.timeout(3):
        while (msg := await client.ws.receive()).type is WSMsgType.TEXT:
            pass
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1013)
    assert emulator.dropped[(1, "0102")] > 0


# -- faults ---------------------------------------------------------------------------------------


async def test_drop_connections_cuts_without_close_frame(blockdb, session) -> None:
    """drop_connections looks like a network cut: no CLOSE frame, close code 1006; reconnecting works."""
    emulator = await blockdb()
    client = await connect(session, emulator)
    await client.subscribe("0101")
    await client.pump(lambda: len(client.updates) >= 1)
    await emulator.drop_connections()
    async with asyncio.timeout(2):
        while (msg := await client.ws.receive()).type is WSMsgType.TEXT:
            pass
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
    assert client.ws.close_code == 1006
    again = await connect(session, emulator)
    await again.subscribe("0101")
    await again.pump(lambda: len(again.updates) >= 1)
    assert emulator.connections_total == 2


@pytest.mark.parametrize(
    ("code", "reason"), [(1001, "deploy"), (1008, "scope"), (1011, "boom"), (1013, "busy")]
)
async def test_close_connections_sends_that_code(blockdb, session, code, reason) -> None:
    """close_connections(code, reason) reaches the client as a CLOSE frame with that code and reason."""
    emulator = await blockdb()
    client = await connect(session, emulator)
    await client.subscribe("0101")
    await client.pump(lambda: len(client.updates) >= 1)
    await emulator.close_connections(code, reason)
    async with asyncio.timeout(2):
        while (msg := await client.ws.receive()).type is WSMsgType.TEXT:
            pass
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, code, reason)
    assert client.ws.close_code == code


async def test_stop_closes_with_going_away(blockdb, session) -> None:
    """stop() closes open sockets with 1001 GOING_AWAY."""
    emulator = await blockdb()
    client = await connect(session, emulator)
    await client.subscribe("0101")
    await client.ack()
    stopping = asyncio.create_task(emulator.stop())
    async with asyncio.timeout(3):
        while (msg := await client.ws.receive()).type is WSMsgType.TEXT:
            pass
    await stopping
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)


async def test_go_silent_sends_nothing_then_resumes(blockdb, session) -> None:
    """go_silent: no data and no pings for the window, then frames resume; blocks of the window are lost."""
    emulator = await blockdb(ping_interval=0.05)
    client = await connect(session, emulator, autoping=False)
    await client.subscribe("0101")
    await client.pump(lambda: len(client.updates) >= 3)
    emulator.go_silent(0.4)
    silenced = time.monotonic()
    before = client.updates[-1]["data"]["block_number"]
    arrivals: list[tuple[float, WSMsgType]] = []
    async with asyncio.timeout(3):
        while True:
            msg = await client.ws.receive()
            arrivals.append((time.monotonic() - silenced, msg.type))
            if msg.type is WSMsgType.TEXT:
                client.updates.append(json.loads(msg.data))
                if arrivals[-1][0] > 0.4:
                    break
    # Frames already on the wire may land just after go_silent; then nothing until the window ends.
    assert not [t for t, _ in arrivals if 0.05 < t < 0.35]
    after = client.updates[-1]["data"]["block_number"]
    assert after - before > 5
    assert emulator.dropped[(1, "0101")] >= 5
