"""Bitquery emulator, driven by raw aiohttp clients on both subprotocols and by the third-party gql library.

Expected values come from `synth.Chain` run with the emulator's seed and from the formats of
/work/shared/PROTOCOLS.md section 1, written out here independently of the emulator's row builders.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import WSMsgType

from ingest.emulators.bitquery import BitqueryEmulator
from ingest.emulators.bitquery_schema import CUBES, Leaf
from ingest.emulators.synth import FIRST_BLOCK, POOLS, TOKENS, Chain, Emission

KEY = "ory_at_test-5f0c7d"
LEGACY, MODERN = "graphql-ws", "graphql-transport-ws"
DATA = {LEGACY: "data", MODERN: "next"}
BOTH = pytest.mark.parametrize("protocol", [LEGACY, MODERN])
ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
HEX64 = re.compile(r"0x[0-9a-f]{64}")
HEX40 = re.compile(r"0x[0-9a-f]{40}")
ISO_S = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
DECIMAL = re.compile(r"-?\d+(\.\d*[1-9])?")
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
WETH, USDT = TOKENS["WETH"].address, TOKENS["USDT"].address
BLOCKS = "subscription { EVM(network: eth) { Blocks { Block { Number Hash ParentHash } } } }"


@pytest.fixture
async def bitquery() -> AsyncIterator[Callable[..., Any]]:
    """Start Bitquery emulators on 127.0.0.1:0 with fast blocks and heartbeats; stop them after the test."""
    started: list[BitqueryEmulator] = []

    async def start(**kwargs: Any) -> BitqueryEmulator:
        defaults = {"key": KEY, "block_interval": 0.02, "ka_interval": 0.05, "pong_interval": 0.05}
        emulator = BitqueryEmulator(**{**defaults, **kwargs})
        await emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        await emulator.stop()


class Client:
    """One socket speaking either subprotocol; keeps every frame read and the close code if any."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, protocol: str | None) -> None:
        self.ws, self.protocol = ws, protocol
        self.frames: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.arrivals: list[float] = []
        self.closed: tuple[int | None, str] | None = None

    async def send(self, **message: Any) -> None:
        await self.ws.send_json(message)

    async def init(self) -> None:
        await self.send(type="connection_init")
        await self.pump(lambda: bool(self.of("connection_ack")))

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        await self.send(type="start" if self.protocol == LEGACY else "subscribe", id=op_id, payload=payload)

    async def pump(self, done: Callable[[], bool], timeout: float = 15.0) -> None:
        """Read frames until done() or the socket closes."""
        async with asyncio.timeout(timeout):
            while not done() and self.closed is None:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.TEXT:
                    self.frames.append(json.loads(msg.data))
                    self.raw.append(msg.data)
                    self.arrivals.append(time.monotonic())
                elif msg.type in ENDED:
                    code = msg.data if msg.type is WSMsgType.CLOSE else self.ws.close_code
                    self.closed = (code, msg.extra or "")

    async def closure(self, timeout: float = 3.0) -> tuple[int | None, str]:
        await self.pump(lambda: False, timeout)
        assert self.closed is not None
        return self.closed

    def of(self, kind: str, op_id: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind and (op_id is None or f.get("id") == op_id)]

    def data(self, op_id: str = "1") -> list[dict[str, Any]]:
        return [f["payload"]["data"] for f in self.of(DATA[self.protocol or MODERN], op_id)]

    def rows(self, root: str, cube: str, op_id: str = "1") -> list[dict[str, Any]]:
        return [row for d in self.data(op_id) for row in d[root].get(cube, [])]


async def connect(
    session: aiohttp.ClientSession,
    emulator: BitqueryEmulator,
    protocol: str | None = MODERN,
    *,
    token: str | None = KEY,
    init: bool = True,
    **kwargs: Any,
) -> Client:
    params = {"token": token} if token is not None else {}
    ws = await session.ws_connect(
        emulator.url, params=params, protocols=(protocol,) if protocol else (), **kwargs
    )
    client = Client(ws, protocol)
    if init:
        await client.init()
    return client


def synth(blocks: int, seed: int = 1, **kwargs: Any) -> list[list[Emission]]:
    """The synthetic chain's emissions per step, as the BlockDB emulator would send them."""
    chain = Chain(seed, 1, **kwargs)
    return [chain.advance() for _ in range(blocks)]


def records(steps: list[list[Emission]], dataset_id: str) -> list[dict[str, Any]]:
    return [e.record for step in steps for e in step if e.dataset_id == dataset_id]


def b58decode(text: str) -> bytes:
    n = 0
    for char in text:
        n = n * 58 + B58.index(char)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def is_tron_address(text: str) -> bool:
    raw = b58decode(text)
    checksum = hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()[:4]
    return text.startswith("T") and len(raw) == 25 and raw[0] == 0x41 and raw[-4:] == checksum


# -- handshake ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "token", "accepted"),
    [(KEY, KEY, True), (KEY, "wrong", False), (KEY, None, False), (KEY, "", False),
     (None, "anything", True), (None, "", False)],
)  # fmt: skip
async def test_token_in_url_opens_the_socket(bitquery, session, key, token, accepted) -> None:
    """Only ?token= authenticates; a missing, empty or wrong token is refused with HTTP 401."""
    emulator = await bitquery(key=key)
    if accepted:
        client = await connect(session, emulator, token=token)
        assert client.of("connection_ack")
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(session, emulator, token=token)
        assert refused.value.status == 401


async def test_refusal_body_and_headers_are_not_accepted(bitquery, session) -> None:
    """The 401 body reads Unauthorized, and a Bearer header alone does not authenticate (WSS rule)."""
    emulator = await bitquery()
    async with session.get(emulator.url.replace("ws://", "http://"), params={"token": "nope"}) as response:
        assert (response.status, await response.text()) == (401, "Unauthorized")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(
            emulator.url, headers={"Authorization": f"Bearer {KEY}"}, protocols=(MODERN,)
        )
    assert refused.value.status == 401


async def test_eap_path_serves_the_same_stream(bitquery, session) -> None:
    """The early-access /eap endpoint speaks the same protocol as /graphql."""
    emulator = await bitquery()
    url = emulator.url.removesuffix("/graphql") + "/eap"
    async with session.ws_connect(url, params={"token": KEY}, protocols=(LEGACY,)) as ws:
        client = Client(ws, LEGACY)
        await client.init()
        await client.subscribe("1", BLOCKS)
        await client.pump(lambda: len(client.data()) >= 1)


async def test_token_never_reaches_the_logs(bitquery, session, caplog) -> None:
    """Neither structlog events nor stdlib logs (aiohttp's included) contain the token."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        emulator = await bitquery()
        client = await connect(session, emulator)
        await client.subscribe("1", BLOCKS)
        await client.pump(lambda: len(client.data()) >= 1)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await connect(session, emulator, token=KEY + "-bad")
        await emulator.stop()
    assert events, "the emulator should log something to check"
    assert KEY not in repr(events) and KEY not in caplog.text


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [((LEGACY,), LEGACY), ((MODERN,), MODERN), ((MODERN, LEGACY), MODERN), ((LEGACY, MODERN), LEGACY)],
)
async def test_subprotocol_is_echoed(bitquery, session, offered, chosen) -> None:
    """The server picks the first offered subprotocol it speaks and echoes it in the 101 response."""
    emulator = await bitquery()
    async with session.ws_connect(emulator.url, params={"token": KEY}, protocols=offered) as ws:
        assert ws.protocol == chosen


@pytest.mark.parametrize("offered", [(), ("graphql-foo",)])
async def test_missing_or_unknown_subprotocol_closes_4406(bitquery, session, offered) -> None:
    """Without graphql-ws or graphql-transport-ws the upgrade succeeds, then closes 4406."""
    emulator = await bitquery()
    ws = await session.ws_connect(emulator.url, params={"token": KEY}, protocols=offered)
    assert ws.protocol is None
    assert await Client(ws, None).closure() == (4406, "Subprotocol not acceptable")


# -- keep-alives ------------------------------------------------------------------------------------


async def test_legacy_ack_then_ka_at_once_and_periodically(bitquery, session) -> None:
    """graphql-ws: connection_ack, a ka right after it, then a ka every ka_interval."""
    client = await connect(session, await bitquery(), LEGACY)
    await client.pump(lambda: len(client.of("ka")) >= 4, timeout=2)
    assert client.frames[:2] == [{"type": "connection_ack"}, {"type": "ka"}]
    assert {f["type"] for f in client.frames} == {"connection_ack", "ka"}


async def test_modern_ping_pong_and_unsolicited_pongs(bitquery, session) -> None:
    """graphql-transport-ws: ping gets a pong (payload echoed) even before init; pongs flow after the ack."""
    emulator = await bitquery()
    client = await connect(session, emulator, init=False)
    await client.send(type="ping", payload={"n": 1})
    await client.pump(lambda: bool(client.frames))
    assert client.frames == [{"type": "pong", "payload": {"n": 1}}]
    await client.init()
    assert client.frames[1] == {"type": "connection_ack"}
    await client.pump(lambda: len(client.of("pong")) >= 4, timeout=2)
    await client.send(type="ping", payload={"n": 2})
    await client.pump(lambda: {"type": "pong", "payload": {"n": 2}} in client.frames)


@BOTH
async def test_go_silent_stops_keepalives_and_data(bitquery, session, protocol) -> None:
    """go_silent: no ka/pong and no data for the window, then both resume."""
    emulator = await bitquery()
    client = await connect(session, emulator, protocol)
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.data()) >= 2)
    emulator.go_silent(0.4)
    silenced, seen = time.monotonic(), len(client.frames)
    heartbeat = "ka" if protocol == LEGACY else "pong"

    def resumed(kind: str) -> bool:
        late = zip(client.frames[seen:], client.arrivals[seen:], strict=True)
        return any(f["type"] == kind and t - silenced > 0.4 for f, t in late)

    await client.pump(lambda: resumed(heartbeat) and resumed(DATA[protocol]), timeout=3)
    # Frames already on the wire may land just after go_silent; then nothing until the window ends.
    assert not [t for t in client.arrivals[seen:] if 0.05 < t - silenced < 0.35]
    assert sum(emulator.dropped.values()) > 0


# -- operations and data ----------------------------------------------------------------------------


@BOTH
async def test_only_requested_fields_with_aliases(bitquery, session, protocol) -> None:
    """Aliases on the root, cubes and fields name the response; only selected fields arrive."""
    emulator = await bitquery(max_blocks=3)
    client = await connect(session, emulator, protocol)
    query = """subscription { chain: EVM(network: eth) {
        blocks: Blocks { b: Block { n: Number Hash } }
        Blocks { Block { ParentHash } } } }"""
    await client.subscribe("1", query)
    await client.pump(lambda: len(client.data()) >= 3)
    chain = Chain(1, 1)
    assert client.data() == [
        {"chain": {"blocks": [{"b": {"n": str(n), "Hash": "0x" + chain.block_hash(n, 0)}}],
                   "Blocks": [{"Block": {"ParentHash": "0x" + chain.block_hash(n - 1, 0)}}]}}
        for n in range(FIRST_BLOCK, FIRST_BLOCK + 3)
    ]  # fmt: skip


async def test_seed_document_aliased_cubes(bitquery, session) -> None:
    """Bitquery's own sample (count: Blocks / hash: Blocks) gets one row per block in each alias."""
    emulator = await bitquery(max_blocks=2)
    client = await connect(session, emulator, LEGACY)
    query = """subscription MyQuery { EVM(network: eth) {
        count: Blocks { Block { TxCount } }  hash: Blocks { Block { TxHash } } } }"""
    await client.subscribe("1", query)
    await client.pump(lambda: len(client.data()) >= 2)
    steps = synth(2)
    for data, step in zip(client.data(), steps, strict=True):
        assert data["EVM"]["count"] == [{"Block": {"TxCount": len(records([step], "0102"))}}]
        assert HEX64.fullmatch(data["EVM"]["hash"][0]["Block"]["TxHash"])


@BOTH
async def test_balance_updates_with_lps_variables(bitquery, session, protocol) -> None:
    """The seed's RealTimeLP document: $lps substituted, filters honoured, sum grouped per address."""
    blocks = 25
    emulator = await bitquery(max_blocks=blocks)
    client = await connect(session, emulator, protocol)
    lps = ["0x" + p.uid[:40] for p in POOLS[:3]]
    lps[0] = lps[0].upper().replace("0X", "0x")  # checksum-style case still matches
    query = """subscription RealTimeLP($lps: [String!]) { EVM(network: eth) { BalanceUpdates(
          where: {BalanceUpdate: {Address: {in: $lps}},
                  Currency: {SmartContract: {is: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"}}}) {
        balance: sum(of: BalanceUpdate_Amount)
        Address: BalanceUpdate { Address } } } }"""
    await client.subscribe("1", query, {"lps": lps})
    await emulator.wait_blocks(blocks)
    wanted = {a.lower() for a in lps}
    expected = []
    for step in synth(blocks):
        sums: dict[str, Decimal] = {}
        for r in records([step], "0304"):
            if r["token_address"] != WETH:
                continue
            for address, sign in ((r["from_address"], -1), (r["to_address"], 1)):
                if "0x" + address in wanted:
                    sums["0x" + address] = sums.get("0x" + address, Decimal(0)) + sign * Decimal(
                        r["amount_adj"]
                    )
        if sums:
            expected.append(sums)
    assert len(expected) >= 5
    await client.pump(lambda: len(client.data()) >= len(expected))
    got = [{row["Address"]["Address"]: Decimal(row["balance"]) for row in d["EVM"]["BalanceUpdates"]}
           for d in client.data()]  # fmt: skip
    assert got == expected
    assert all(
        set(row) == {"balance", "Address"} for d in client.data() for row in d["EVM"]["BalanceUpdates"]
    )


async def test_many_rows_per_message_capped_at_800(bitquery, session) -> None:
    """A block's rows share one message, 800 per cube at most; limit.count sets another batch size."""
    emulator = await bitquery(max_blocks=1, txs_per_block=1200)
    client = await connect(session, emulator)
    await client.subscribe("1", "subscription { EVM { Transactions { Transaction { Index } } } }")
    await client.subscribe(
        "2", "subscription { EVM { Transfers(limit: {count: 7}) { Transfer { Amount } } } }"
    )
    txs, transfers = (len(records(synth(1, txs_per_block=1200), d)) for d in ("0102", "0304"))
    assert txs > 800
    await client.pump(lambda: len(client.rows("EVM", "Transactions")) >= txs and
                      len(client.rows("EVM", "Transfers", "2")) >= transfers)  # fmt: skip
    sizes = [len(d["EVM"]["Transactions"]) for d in client.data()]
    assert sizes == [800, txs - 800]
    assert [r["Transaction"]["Index"] for r in client.rows("EVM", "Transactions")] == [
        str(i) for i in range(txs)
    ]
    batches = [len(d["EVM"]["Transfers"]) for d in client.data("2")]
    assert batches[:-1] == [7] * (len(batches) - 1) and 0 < batches[-1] <= 7
    assert emulator.messages_sent == {"1": 2, "2": len(batches)}


async def test_several_cubes_ride_in_one_message(bitquery, session) -> None:
    """Cubes under one root share the block's message; each keeps its own rows."""
    emulator = await bitquery(max_blocks=3)
    client = await connect(session, emulator)
    query = "subscription { EVM { Transfers { Transfer { Amount } } Transactions { Transaction { Hash } } } }"
    await client.subscribe("1", query)
    await client.pump(lambda: len(client.data()) >= 3)
    for data, step in zip(client.data(), synth(3), strict=True):
        assert len(data["EVM"]["Transfers"]) == len(records([step], "0304"))
        assert [r["Transaction"]["Hash"] for r in data["EVM"]["Transactions"]] == [
            "0x" + t["tx_hash"] for t in records([step], "0102")
        ]


WHERE_USDT = 'where: {Transfer: {Currency: {SmartContract: {is: "0x' + USDT.upper() + '"}}}}'
WHERE_ANY = "where: {any: [{Transfer: {Type: {is: transaction}}}, {Transfer: {Type: {is: call}}}]}"


@pytest.mark.parametrize(
    ("where", "keep"),
    [(WHERE_USDT, lambda r: r["token_address"] == USDT), (WHERE_ANY, lambda r: r["transfer_type"] in (0, 1))],
)
async def test_where_filters_rows(bitquery, session, where, keep) -> None:
    """where on nested fields (case-insensitive addresses, enums, any = OR) keeps only matching rows."""
    blocks = 12
    emulator = await bitquery(max_blocks=blocks)
    client = await connect(session, emulator)
    query = """subscription { EVM { Transfers(WHERE) {
        Transaction { Hash } Transfer { Type Currency { SmartContract } } } } }"""
    await client.subscribe("1", query.replace("WHERE", where))
    await emulator.wait_blocks(blocks)
    want = [r for r in records(synth(blocks), "0304") if keep(r)]
    assert want
    await client.pump(lambda: len(client.rows("EVM", "Transfers")) >= len(want))
    got = client.rows("EVM", "Transfers")
    assert len(got) == len(want)
    assert [r["Transfer"]["Currency"]["SmartContract"] for r in got] == ["0x" + (r["token_address"] or "")
                                                                         for r in want]  # fmt: skip


async def test_order_limit_by_metrics_and_operation_name(bitquery, session) -> None:
    """orderBy and limitBy shape a block's rows; metrics group by the plain leaves; operationName picks."""
    blocks = 6
    emulator = await bitquery(max_blocks=blocks)
    client = await connect(session, emulator)
    document = """subscription Other { Tron { Blocks { Block { Number } } } }
    subscription Wanted { EVM {
        top: Transfers(orderBy: {descending: Transfer_Amount}, limitBy: {by: [Transaction_Hash], count: 1}) {
            Transaction { Hash } Transfer { Amount } }
        per: Transfers { Transfer { Type } n: count total: sum(of: Transfer_Amount)
            Block { Number(maximum: Block_Number) } } } }"""
    await client.send(type="subscribe", id="1", payload={"query": document, "operationName": "Wanted"})
    await emulator.wait_blocks(blocks)
    steps = synth(blocks)
    await client.pump(lambda: len(client.data()) >= blocks)
    kinds = {0: "transaction", 1: "call"}
    for data, step in zip(client.data(), steps, strict=True):
        txs = {t["tx_index"]: "0x" + t["tx_hash"] for t in records([step], "0102")}
        transfers = [(txs[r["tx_index"]], Decimal(r["amount_adj"] or r["amount_raw"]),
                      kinds.get(r["transfer_type"], "token")) for r in records([step], "0304")]  # fmt: skip
        ranked = sorted(transfers, key=lambda t: t[1], reverse=True)
        best = [t for i, t in enumerate(ranked) if t[0] not in {u[0] for u in ranked[:i]}]
        assert [(r["Transaction"]["Hash"], Decimal(r["Transfer"]["Amount"])) for r in data["EVM"]["top"]] == [
            (h, a) for h, a, _ in best
        ]
        groups: dict[str, list[Decimal]] = {}
        for _, amount, kind in transfers:
            groups.setdefault(kind, []).append(amount)
        number = records([step], "0101")[-1]["block_number"]
        assert {
            r["Transfer"]["Type"]: (r["n"], Decimal(r["total"]), r["Block"]["Number"])
            for r in data["EVM"]["per"]
        } == {kind: (str(len(amounts)), sum(amounts), str(number)) for kind, amounts in groups.items()}


async def test_dex_trades_follow_the_swaps(bitquery, session) -> None:
    """DEXTrades rows come from the chain's swaps, seen from the pool: Buy is what the pool received."""
    blocks = 8
    emulator = await bitquery(max_blocks=blocks)
    client = await connect(session, emulator)
    query = """subscription { EVM { DEXTrades { Transaction { Hash } Log { Index }
        Trade { Buy { Amount Buyer Seller Currency { SmartContract Decimals } }
                Sell { Amount Buyer Seller Currency { SmartContract } }
                Dex { ProtocolName Pair { SmartContract } } }
    } } }"""
    await client.subscribe("1", query)
    await emulator.wait_blocks(blocks)
    steps = synth(blocks)
    swaps = records(steps, "0302")
    await client.pump(lambda: len(client.rows("EVM", "DEXTrades")) >= len(swaps))
    txs = {(t["block_number"], t["tx_index"]): t for t in records(steps, "0102")}
    for row, swap in zip(client.rows("EVM", "DEXTrades"), swaps, strict=True):
        tx, trade, pool = (
            txs[(swap["block_number"], swap["tx_index"])],
            row["Trade"],
            "0x" + swap["pool_uid"][:40],
        )
        assert row["Transaction"]["Hash"] == "0x" + tx["tx_hash"] and row["Log"]["Index"] == swap["log_index"]
        assert trade["Buy"]["Currency"]["SmartContract"] == "0x" + swap["token_in"]
        assert trade["Sell"]["Currency"]["SmartContract"] == "0x" + swap["token_out"]
        assert (
            trade["Buy"]["Buyer"] == trade["Sell"]["Seller"] == trade["Dex"]["Pair"]["SmartContract"] == pool
        )
        assert trade["Buy"]["Seller"] == trade["Sell"]["Buyer"] == "0x" + tx["from_address"]
        scale = Decimal(10) ** trade["Buy"]["Currency"]["Decimals"]
        assert Decimal(trade["Buy"]["Amount"]) * scale == int(swap["amount_in"])
        assert DECIMAL.fullmatch(trade["Sell"]["Amount"]) and trade["Dex"]["ProtocolName"].startswith(
            "uniswap"
        )


# -- errors and operation lifecycle -----------------------------------------------------------------

BAD_DOCUMENTS = [
    ("subscription { EVM { Foo { x } } }", 'Cannot query field "Foo" on type "EVM_Subscription".'),
    ("subscription { EVM { Transfers { Transfer { Bogus } } } }",
     'Cannot query field "Bogus" on type "EVM_Transfer_Fields_Transfer".'),
    ("subscription { EVM { Blocks { Block { Number } }", "Syntax Error: Expected Name, found <EOF>."),
    ("subscription { EVM { Blocks { Block { Number } } } Tron { Blocks { Block { Number } } } }",
     "Anonymous Subscription must select only one top level field."),
    ("query { EVM { Blocks { Block { Number } } } }", "subscription not valid"),
    ("subscription($n: Int) { EVM(network: $n) { Blocks { Block { Number } } } }", "Variable"),
    ("subscription A { EVM { Blocks { Block { Number } } } } "
     "subscription B { Tron { Blocks { Block { Hash } } } }",
     "Must provide operation name if query contains multiple operations."),
]  # fmt: skip


@BOTH
@pytest.mark.parametrize(("query", "message"), BAD_DOCUMENTS)
async def test_refused_document_gets_error_and_others_keep_running(
    bitquery, session, protocol, query, message
) -> None:
    """Validation and syntax errors come back as `error` for that id only; running operations go on."""
    client = await connect(session, await bitquery(), protocol)
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.data()) >= 1)
    await client.subscribe("2", query)
    await client.pump(lambda: bool(client.of("error", "2")))
    (error,) = client.of("error", "2")
    errors = error["payload"]["errors"] if protocol == LEGACY else error["payload"]
    assert isinstance(errors, list) and errors[0]["message"].startswith(message)
    if "Syntax" in message or "Cannot query" in message:
        assert set(errors[0]["locations"][0]) == {"line", "column"}
    seen = len(client.data())
    await client.pump(lambda: len(client.data()) >= seen + 2)
    assert [f for f in client.frames if f.get("id") == "2"] == [error]  # no data, no complete


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        (["{not json"], 4400, "Invalid message received"),
        ([{"type": "bogus"}], 4400, "Unexpected message of type bogus received"),
        ([{"type": "connection_init"}, {"type": "subscribe", "payload": {"query": BLOCKS}}], 4400, None),
        ([{"type": "subscribe", "id": "1", "payload": {"query": BLOCKS}}], 4401, "Unauthorized"),
        ([{"type": "connection_init"}, {"type": "connection_init"}], 4429,
         "Too many initialisation requests"),
        ([{"type": "connection_init"}, {"type": "subscribe", "id": "1", "payload": {"query": BLOCKS}},
          {"type": "subscribe", "id": "1", "payload": {"query": BLOCKS}}], 4409,
         "Subscriber for 1 already exists"),
        ([], 4408, "Connection initialisation timeout"),
    ],
)  # fmt: skip
async def test_graphql_transport_ws_close_codes(bitquery, session, messages, code, reason) -> None:
    """Each protocol violation closes the socket with the graphql-ws reference server's code."""
    client = await connect(session, await bitquery(init_timeout=0.2), init=False)
    for message in messages:
        await (client.ws.send_str(message) if isinstance(message, str) else client.send(**message))
    got_code, got_reason = await client.closure()
    assert got_code == code and (reason is None or got_reason == reason)


@pytest.mark.parametrize(("code", "reason"), [(4403, "Forbidden"), (4500, "Internal server error")])
async def test_injected_close_codes(bitquery, session, code, reason) -> None:
    """close_connections(code, reason) covers the codes no client message triggers (4403, 4500)."""
    emulator = await bitquery()
    client = await connect(session, emulator)
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.data()) >= 1)
    await emulator.close_connections(code, reason)
    assert await client.closure() == (code, reason)


@BOTH
async def test_complete_stops_one_operation(bitquery, session, protocol) -> None:
    """A client complete ends that id server-side; the other keeps streaming and the id is reusable."""
    client = await connect(session, await bitquery(), protocol)
    await client.subscribe("1", BLOCKS)
    await client.subscribe("2", BLOCKS)
    await client.pump(lambda: len(client.data("1")) >= 2)
    await client.send(type="complete", id="1")
    await client.pump(lambda: len(client.data("2")) >= len(client.data("1")) + 1)
    stopped = len(client.data("1"))
    await client.pump(lambda: len(client.data("2")) >= stopped + 5)
    assert len(client.data("1")) <= stopped + 1  # at most one frame already in flight
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.data("1")) >= stopped + 3)
    assert client.closed is None


async def test_legacy_stop_is_not_honoured(bitquery, session) -> None:
    """Bitquery ignores `stop`: data keeps coming for that id (PROTOCOLS.md 1.6)."""
    client = await connect(session, await bitquery(), LEGACY)
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.data()) >= 1)
    await client.send(type="stop", id="1")
    seen = len(client.data())
    await client.pump(lambda: len(client.data()) >= seen + 3)
    assert not client.of("complete")


async def test_legacy_errors_keep_the_socket(bitquery, session) -> None:
    """graphql-ws: unparsable frames and operations before init get connection_error, not a close."""
    client = await connect(session, await bitquery(), LEGACY, init=False)
    await client.ws.send_str("{not json")
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.of("connection_error")) >= 2)
    assert client.of("connection_error")[0]["payload"]["message"].startswith("Message must be JSON-parseable")
    await client.init()
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.data()) >= 1)
    await client.send(type="connection_terminate")
    assert (await client.closure())[0] == 1000


# -- chain data ---------------------------------------------------------------------------------------


async def test_same_seed_same_frames(bitquery, session) -> None:
    """Two emulators with one seed send byte-identical frames; another seed sends different ones."""
    query = """subscription { EVM { Transfers { Transaction { Hash } Transfer { Amount Receiver } }
        DEXTrades { Trade { Buy { Amount } } } BalanceUpdates { BalanceUpdate { Address Amount } } } }"""

    async def run(seed: int) -> list[str]:
        emulator = await bitquery(seed=seed, max_blocks=4)
        client = await connect(session, emulator)
        await client.subscribe("1", query)
        await emulator.wait_blocks(4)
        await client.pump(lambda: len(client.data()) >= emulator.messages_sent["1"])
        return [raw for raw, f in zip(client.raw, client.frames, strict=True) if f["type"] == "next"]

    first = await run(7)
    assert first == await run(7)
    assert first != await run(8)


async def test_reorg_resends_replacement_blocks(bitquery, session) -> None:
    """Hashes equal synth.Chain's (with 0x); after a reorg the replaced heights come again, no flag."""
    blocks = 10
    emulator = await bitquery(max_blocks=blocks, reorg_every=3)
    client = await connect(session, emulator, LEGACY)
    await client.subscribe("1", BLOCKS)
    want = [("0x" + b["block_hash"], "0x" + b["parent_block_hash"], str(b["block_number"]))
            for b in records(synth(blocks, reorg_every=3), "0101")]  # fmt: skip
    await client.pump(lambda: len(client.data()) >= len(want))
    got = [
        (r["Block"]["Hash"], r["Block"]["ParentHash"], r["Block"]["Number"])
        for r in client.rows("EVM", "Blocks")
    ]
    assert got == want
    assert all(set(f["payload"]) == {"data"} for f in client.of("data"))
    current: dict[int, str] = {}
    replaced = 0
    for block_hash, parent, number in got:
        n = int(number)
        replaced += n in current
        if n - 1 in current:
            assert parent == current[n - 1]
        current[n] = block_hash
    chain = Chain(1, 1, reorg_every=3)
    for _ in range(blocks):
        chain.advance()
    assert replaced == sum(depth for *_, depth in chain.reorgs) > 0


async def test_counters_and_log_equal_what_arrived(bitquery, session) -> None:
    """sent counts rows per (id, response path), messages_sent frames per id; sent_log holds the rows."""
    emulator = await bitquery(max_blocks=5, record_log=True)
    client = await connect(session, emulator, LEGACY)
    await client.subscribe(
        "1", "subscription { EVM { t: Transfers { Transfer { Amount } } Blocks { Block { Number } } } }"
    )
    await client.subscribe("7", "subscription { Tron(mempool: true) { Transfers { Transfer { Amount } } } }")
    await emulator.wait_blocks(5)
    await asyncio.sleep(0.1)
    await client.pump(lambda: len(client.of("data")) >= sum(emulator.messages_sent.values()))
    assert emulator.messages_sent == {"1": len(client.data("1")), "7": len(client.data("7"))}
    assert emulator.sent == {
        ("1", "EVM.t"): len(client.rows("EVM", "t", "1")),
        ("1", "EVM.Blocks"): 5,
        ("7", "Tron.Transfers"): len(client.rows("Tron", "Transfers", "7")),
    }
    assert emulator.rows_sent == sum(emulator.sent.values())
    logged = [(op, path, row) for op, path, row in emulator.sent_log or [] if op == "1" and path == "EVM.t"]
    assert [row for *_, row in logged] == client.rows("EVM", "t", "1")


async def test_tron_mempool_transfers(bitquery, session) -> None:
    """The seed's Tron(mempool: true) document: base58 T-addresses; pending transfers get mined next."""
    emulator = await bitquery()
    client = await connect(session, emulator, LEGACY)
    seed_query = """subscription { Tron(mempool: true) { Transfers { Transfer {
        Sender Receiver Amount AmountInUSD Currency { Symbol } } } } }"""
    await client.subscribe("1", seed_query)
    pending = (
        "subscription { Tron(mempool: true) { Transfers { Block { Number Hash } Transaction { Hash } } } }"
    )
    mined = "subscription { Tron { Transfers { Block { Number Hash } Transaction { Hash } } } }"
    await client.subscribe("2", pending)
    await client.subscribe("3", mined)
    await client.pump(lambda: len(client.data("3")) >= 4)
    for row in client.rows("Tron", "Transfers", "1"):
        transfer = row["Transfer"]
        assert is_tron_address(transfer["Sender"]) and is_tron_address(transfer["Receiver"])
        assert DECIMAL.fullmatch(transfer["Amount"]) and DECIMAL.fullmatch(transfer["AmountInUSD"])
        assert transfer["Currency"]["Symbol"] in {"TRX", "USDT", "USDC"}
    seen = {d["Tron"]["Transfers"][0]["Block"]["Number"]: d["Tron"]["Transfers"] for d in client.data("2")}
    for data in client.data("3")[1:]:
        rows = data["Tron"]["Transfers"]
        number = rows[0]["Block"]["Number"]
        assert re.fullmatch(r"[0-9a-f]{64}", rows[0]["Block"]["Hash"])
        assert [r["Transaction"]["Hash"] for r in seen[number]] == [r["Transaction"]["Hash"] for r in rows]
        assert all(r["Block"]["Hash"] == "" for r in seen[number])


async def test_evm_mempool_sees_the_next_block(bitquery, session) -> None:
    """EVM(mempool: true) streams the next block's transactions before it is mined, without a hash."""
    client = await connect(session, await bitquery())
    fields = "Transactions { Block { Number Hash } Transaction { Hash } }"
    await client.subscribe("1", f"subscription {{ EVM(network: eth, mempool: true) {{ {fields} }} }}")
    await client.subscribe("2", f"subscription {{ EVM(network: eth) {{ {fields} }} }}")
    await client.pump(lambda: len(client.data("2")) >= 4)
    pending = {
        d["EVM"]["Transactions"][0]["Block"]["Number"]: d["EVM"]["Transactions"] for d in client.data("1")
    }
    for data in client.data("2")[1:]:
        rows = data["EVM"]["Transactions"]
        before = pending[rows[0]["Block"]["Number"]]
        assert [r["Transaction"]["Hash"] for r in before] == [r["Transaction"]["Hash"] for r in rows]
        assert {r["Block"]["Hash"] for r in before} == {""} and HEX64.fullmatch(rows[0]["Block"]["Hash"])


async def test_solana_slots_and_transfers(bitquery, session) -> None:
    """Solana: consecutive blocks link by ParentSlot/ParentHash, slots skip; base58 signatures."""
    emulator = await bitquery(max_blocks=20)
    client = await connect(session, emulator)
    query = """subscription { Solana { Blocks { Block { Slot ParentSlot Height Hash ParentHash Time } }
        Transfers { Transaction { Signature }
                    Transfer { Amount Sender { Address Owner } Currency { MintAddress } } } } }"""
    await client.subscribe("1", query)
    await client.pump(lambda: len(client.data()) >= 20)
    blocks = [r["Block"] for r in client.rows("Solana", "Blocks")]
    for before, after in itertools.pairwise(blocks):
        assert (after["ParentSlot"], after["ParentHash"]) == (before["Slot"], before["Hash"])
        assert int(after["Height"]) == int(before["Height"]) + 1 and ISO_S.fullmatch(after["Time"])
    assert any(int(b["Slot"]) - int(b["ParentSlot"]) > 1 for b in blocks)
    for row in client.rows("Solana", "Transfers"):
        assert len(b58decode(row["Transaction"]["Signature"])) == 64
        assert len(b58decode(row["Transfer"]["Sender"]["Owner"])) == 32


async def test_every_catalogued_field_has_a_value(bitquery, session) -> None:
    """Selecting every field of every cube returns no nulls and the documented scalar types."""

    def selection(spec: dict[str, Any]) -> str:
        return " ".join(k if isinstance(v, Leaf) else f"{k} {{ {selection(v)} }}" for k, v in spec.items())

    def check(spec: dict[str, Any], row: dict[str, Any], path: str) -> None:
        for name, sub in spec.items():
            value, where = row[name], f"{path}.{name}"
            if not isinstance(sub, Leaf):
                check(sub, value, where)
            elif where.endswith("EVM.Transaction.Index"):
                assert isinstance(value, str) and value.isdigit(), where  # as Bitquery's examples show
            else:
                kind = {
                    "String": str,
                    "enum": str,
                    "DateTime": str,
                    "Int": int,
                    "Float": float,
                    "Boolean": bool,
                }
                assert type(value) is kind[sub.output], where

    emulator = await bitquery(max_blocks=3, txs_per_block=16)
    client = await connect(session, emulator)
    roots = sorted({root for root, _ in CUBES})
    for op_id, root in enumerate(roots):
        cubes = " ".join(f"{f} {{ {selection(c.dims)} }}" for (r, f), c in CUBES.items() if r == root)
        await client.subscribe(str(op_id), f"subscription {{ {root} {{ {cubes} }} }}")
    await client.pump(lambda: all(len(client.data(str(i))) >= 3 for i in range(len(roots))))
    for op_id, root in enumerate(roots):
        for (r, field), cube in CUBES.items():
            rows = client.rows(root, field, str(op_id)) if r == root else []
            assert rows or r != root, (root, field)
            for row in rows:
                check(cube.dims, row, root)


# -- production controls and faults -----------------------------------------------------------------


async def test_burst_produces_blocks_back_to_back(bitquery, session) -> None:
    """burst(n) delivers n blocks at once even when the regular interval is far away."""
    emulator = await bitquery(block_interval=60)
    client = await connect(session, emulator)
    await client.subscribe("1", BLOCKS)
    async with asyncio.timeout(10):  # no ack for an operation: wait until the server holds it
        while not any(c.subscriptions for c in emulator.connections):
            await asyncio.sleep(0.005)
    emulator.burst(30)
    await client.pump(lambda: len(client.data()) >= 30)
    assert [r["Block"]["Number"] for r in client.rows("EVM", "Blocks")] == [
        str(n) for n in range(FIRST_BLOCK, FIRST_BLOCK + 30)
    ]
    assert emulator.blocks_produced == 30


async def test_clock_can_start_at_once_and_max_blocks_ends_data_not_keepalives(bitquery, session) -> None:
    """start_on_subscribe=False runs the chain from start(); after max_blocks only ka frames flow."""
    emulator = await bitquery(start_on_subscribe=False, max_blocks=2)
    async with asyncio.timeout(2):
        await emulator.wait_blocks(2)
    client = await connect(session, emulator, LEGACY)
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.of("ka")) >= 5)
    assert client.data() == [] and emulator.blocks_produced == 2 and client.closed is None


async def test_drop_connections_cuts_without_close_frame(bitquery, session) -> None:
    """drop_connections looks like a network cut (1006); a new socket streams again."""
    emulator = await bitquery()
    client = await connect(session, emulator)
    await client.subscribe("1", BLOCKS)
    await client.pump(lambda: len(client.data()) >= 1)
    await emulator.drop_connections()
    assert (await client.closure())[0] == 1006
    again = await connect(session, emulator, LEGACY)
    await again.subscribe("1", BLOCKS)
    await again.pump(lambda: len(again.data()) >= 1)
    assert emulator.connections_total == 2


# -- third-party client ---------------------------------------------------------------------------------


@BOTH
async def test_gql_library_receives_results(bitquery, protocol) -> None:
    """The gql library (Bitquery's documented Python client) streams results over both subprotocols."""
    from gql import Client as GqlClient
    from gql import GraphQLRequest, gql
    from gql.transport.websockets import WebsocketsTransport

    emulator = await bitquery()
    subprotocol = {
        LEGACY: WebsocketsTransport.APOLLO_SUBPROTOCOL,
        MODERN: WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL,
    }
    transport = WebsocketsTransport(
        url=f"{emulator.url}?token={KEY}", subprotocols=[subprotocol[protocol]], close_timeout=2
    )
    document = gql("""subscription MyQuery($net: evm_network) { EVM(network: $net) {
        count: Blocks { Block { TxCount Number } } } }""")
    request = GraphQLRequest(document, variable_values={"net": "eth"})
    results: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        async with GqlClient(transport=transport) as gql_session:
            async for result in gql_session.subscribe(request):
                results.append(result)
                if len(results) == 5:
                    break
    assert transport.subprotocol == protocol
    assert [r["EVM"]["count"][0]["Block"]["Number"] for r in results] == [
        str(n) for n in range(FIRST_BLOCK, FIRST_BLOCK + 5)
    ]
    assert all(isinstance(r["EVM"]["count"][0]["Block"]["TxCount"], int) for r in results)
    assert emulator.sent[("1", "EVM.count")] >= 5
