"""Helius PubSub emulator, driven by raw aiohttp clients, solders' parsers and the solana-py client."""

# Expected notifications come from `helius_chain.Chain` run with the emulator's seed; frame shapes and error
# texts come from /work/shared/PROTOCOLS.md section 4 and Agave's rpc_pubsub, written out here independently.

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import WSMsgType

from ingest.emulators.helius import HeliusEmulator
from ingest.emulators.helius_chain import (
    COUNTER_PROGRAM,
    COUNTERS,
    MINTS,
    NODES,
    POOLS,
    SYSTEM_PROGRAM,
    TOKEN_ACCOUNTS,
    TOKEN_PROGRAM,
    VOTE_PROGRAM,
    WALLETS,
    Account,
    Block,
    Chain,
    TxPlan,
)
from ingest.emulators.helius_encode import b58decode, b58encode

KEY = "helius-test-key-8c1e"
F, C = 4, 1  # finality_lag and confirm_lag used by most tests
U64_MAX = 18446744073709551615
COUNTER_TAG = hashlib.sha256(b"account:Counter").digest()[:8]
NO_PARAMS = "Invalid parameters: No parameters were expected"
ENCODINGS = "`binary`, `base58`, `base64`, `jsonParsed`, `base64+zstd`."


class Client:
    """One raw socket: sends JSON-RPC requests and sorts frames into replies (by id) and notifications."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.replies: dict[Any, dict[str, Any]] = {}
        self.orphans: list[dict[str, Any]] = []  # replies with id null
        self.batches: list[list[dict[str, Any]]] = []
        self.notes: list[dict[str, Any]] = []
        self.raw_notes: list[str] = []
        self.raw_replies: list[str] = []
        self._ids = iter(range(1, 1_000_000))

    async def send(self, payload: Any) -> None:
        await self.ws.send_str(payload if isinstance(payload, str) else json.dumps(payload))

    async def request(self, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
        if params is not None:
            message["params"] = params
        await self.send(message)
        await self.pump(lambda: request_id in self.replies)
        return self.replies[request_id]

    async def subscribe(self, method: str, params: Any = None) -> int:
        reply = await self.request(method, params)
        assert set(reply) == {"jsonrpc", "result", "id"} and isinstance(reply["result"], int), reply
        return reply["result"]

    async def pump(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                msg = await self.ws.receive()
                assert msg.type is WSMsgType.TEXT, msg
                self.take(msg.data)

    def take(self, text: str) -> None:
        frame = json.loads(text)
        if isinstance(frame, list):
            self.batches.append(frame)
        elif "method" in frame:
            self.notes.append(frame)
            self.raw_notes.append(text)
        elif frame.get("id") is None:
            self.orphans.append(frame)
        else:
            self.replies[frame["id"]] = frame
            self.raw_replies.append(text)

    def of(self, sub_id: int) -> list[Any]:
        return [n["params"]["result"] for n in self.notes if n["params"]["subscription"] == sub_id]

    async def quiet(self, seconds: float) -> None:
        """Read whatever arrives for `seconds`."""
        with pytest.raises(TimeoutError):
            await self.pump(lambda: False, timeout=seconds)


@pytest.fixture
async def helius() -> AsyncIterator[Callable[..., Any]]:
    """Start Helius emulators on 127.0.0.1:0 (fast slots, short lags) and stop them after the test."""
    started: list[HeliusEmulator] = []

    async def start(**kwargs: Any) -> HeliusEmulator:
        kwargs.setdefault("key", KEY)
        kwargs.setdefault("slot_interval", 0.02)
        kwargs.setdefault("finality_lag", F)
        kwargs.setdefault("confirm_lag", C)
        emulator = HeliusEmulator(**kwargs)
        await emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        await emulator.stop()


async def connect(session: aiohttp.ClientSession, emulator: HeliusEmulator, **kwargs: Any) -> Client:
    return Client(await session.ws_connect(emulator.url, params={"api-key": KEY}, **kwargs))


def ledger(count: int, *, seed: int = 1, skip_every: int = 0) -> list[Block]:
    """The first `count` blocks of the synthetic ledger (skipped slots left out)."""
    chain, blocks = Chain(seed, skip_every=skip_every), []
    while len(blocks) < count:
        if (block := chain.advance()) is not None:
            blocks.append(block)
    return blocks


def seen_at(level: str, ticks: int, *, seed: int = 1, f: int = F, c: int = C) -> list[Block]:
    """Blocks a `level` subscription sees over `ticks` produced slots: root lags f blocks, confirmed c."""
    blocks = ledger(ticks + f, seed=seed)
    start = {"processed": f, "confirmed": f - c, "finalized": 0}[level]
    return blocks[start : start + ticks]


def ui_base64(account: Account) -> dict[str, Any]:
    """The UiAccount object PROTOCOLS.md 4.5 describes, for base64 encoding."""
    return {
        "lamports": account.lamports,
        "data": [base64.b64encode(account.data).decode(), "base64"],
        "owner": account.owner,
        "executable": False,
        "rentEpoch": U64_MAX,
        "space": len(account.data),
    }


def ticks_until(predicate: Callable[[Block], bool], *, least: int = 1) -> int:
    """How many processed slots it takes until `least` blocks satisfied `predicate`."""
    hits = 0
    for n, block in enumerate(ledger(400 + F)[F:], start=1):
        hits += predicate(block)
        if hits >= least:
            return n
    raise AssertionError("predicate never holds")


# -- handshake ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "query", "accepted"),
    [
        (KEY, {"api-key": KEY}, True),
        (KEY, {"api-key": "wrong"}, False),
        (KEY, {}, False),
        (KEY, {"api_key": KEY}, False),
        (None, {"api-key": "anything"}, True),
        (None, {"api-key": ""}, False),
    ],
)
async def test_handshake_auth(helius, session, key, query, accepted) -> None:
    """Only ?api-key= opens the socket; a missing, empty or wrong key gets HTTP 401 at the upgrade."""
    emulator = await helius(key=key)
    if accepted:
        async with session.ws_connect(emulator.url, params=query) as ws:
            assert not ws.closed
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(emulator.url, params=query)
        assert refused.value.status == 401


async def test_key_never_reaches_the_logs(helius, session, caplog) -> None:
    """Neither structlog events nor stdlib logs contain the API key, accepted or refused."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        emulator = await helius()
        client = await connect(session, emulator)
        sub = await client.subscribe("slotSubscribe")
        await client.pump(lambda: len(client.of(sub)) >= 1)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(emulator.url, params={"api-key": KEY + "-bad"})
        await emulator.stop()
    assert events
    assert KEY not in repr(events)
    assert KEY not in caplog.text


# -- subscribe / notification shapes --------------------------------------------------------------


async def test_every_method_answers_with_an_integer_id_and_matching_notifications(helius, session) -> None:
    """Each subscribe gets {jsonrpc, result: int, id}; notifications are {jsonrpc, method, params{result,
    subscription}}, RpcResponse-wrapped for account/program/logs/signature and bare for slot and root."""
    emulator = await helius(slot_interval=60)
    client = await connect(session, emulator)
    slot_n, sig = emulator.upcoming_signature(1)
    processed = {"commitment": "processed"}
    subs = {
        "slotNotification": await client.subscribe("slotSubscribe"),
        "rootNotification": await client.subscribe("rootSubscribe", []),
        "accountNotification": await client.subscribe(
            "accountSubscribe", [WALLETS["A"], {**processed, "encoding": "base64"}]
        ),
        "programNotification": await client.subscribe("programSubscribe", [SYSTEM_PROGRAM, processed]),
        "logsNotification": await client.subscribe("logsSubscribe", ["allWithVotes", processed]),
        "signatureNotification": await client.subscribe("signatureSubscribe", [sig, processed]),
    }
    assert len(set(subs.values())) == len(subs)
    ticks = max(
        slot_n - ledger(F)[-1].slot, ticks_until(lambda b: WALLETS["A"] in {a.pubkey for a in b.writes})
    )
    emulator.burst(ticks)
    await client.pump(lambda: all(client.of(s) for s in subs.values()))
    by_id = {s: m for m, s in subs.items()}
    for note in client.notes:
        assert set(note) == {"jsonrpc", "method", "params"} and note["jsonrpc"] == "2.0"
        assert set(note["params"]) == {"result", "subscription"}
        assert note["method"] == by_id[note["params"]["subscription"]]
        result = note["params"]["result"]
        if note["method"] == "slotNotification":
            assert set(result) == {"slot", "parent", "root"}
            assert result["parent"] == result["slot"] - 1 and result["root"] == result["slot"] - F
        elif note["method"] == "rootNotification":
            assert isinstance(result, int)
        else:
            assert set(result) == {"context", "value"} and set(result["context"]) == {"slot"}
    account = client.of(subs["accountNotification"])[0]["value"]
    assert set(account) == {"lamports", "data", "owner", "executable", "rentEpoch", "space"}
    assert account["data"] == ["", "base64"] and account["rentEpoch"] == U64_MAX
    program = client.of(subs["programNotification"])[0]["value"]
    assert set(program) == {"pubkey", "account"} and program["account"]["owner"] == SYSTEM_PROGRAM
    logs = client.of(subs["logsNotification"])[0]["value"]
    assert set(logs) == {"signature", "err", "logs"} and logs["logs"][0].endswith("invoke [1]")
    assert client.of(subs["signatureNotification"]) == [{"context": {"slot": slot_n}, "value": {"err": None}}]


async def test_notifications_equal_the_ledger(helius, session) -> None:
    """Account, program and logs notifications carry exactly the ledger's writes and transactions."""
    ticks = 12
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    processed = {"commitment": "processed", "encoding": "base64"}
    account = await client.subscribe("accountSubscribe", [TOKEN_ACCOUNTS[("USDC", "A")], processed])
    program = await client.subscribe("programSubscribe", [COUNTER_PROGRAM, processed])
    logs = await client.subscribe("logsSubscribe", ["all", {"commitment": "processed"}])
    emulator.burst(ticks)
    blocks = seen_at("processed", ticks)
    want_account = [
        {"context": {"slot": b.slot}, "value": ui_base64(a)}
        for b in blocks
        for a in b.writes
        if a.pubkey == TOKEN_ACCOUNTS[("USDC", "A")]
    ]
    want_program = [
        {"context": {"slot": b.slot}, "value": {"pubkey": a.pubkey, "account": ui_base64(a)}}
        for b in blocks
        for a in b.writes
        if a.owner == COUNTER_PROGRAM
    ]
    want_logs = [
        {"context": {"slot": b.slot}, "value": {"signature": t.signature, "err": t.err, "logs": list(t.logs)}}
        for b in blocks
        for t in b.txs
        if not t.is_vote
    ]
    await client.pump(lambda: emulator.slots_produced == ticks and len(client.of(logs)) >= len(want_logs))
    await client.quiet(0.1)
    assert client.of(account) == want_account
    assert client.of(program) == want_program
    assert client.of(logs) == want_logs
    assert any(r["value"]["err"] == {"InstructionError": [0, {"Custom": 1}]} for r in want_logs)


# -- subscription ids -----------------------------------------------------------------------------


async def test_ids_are_unique_and_change_on_reconnect(helius, session) -> None:
    """Ids never repeat across sockets or reconnects; another socket's id cannot be unsubscribed."""
    emulator = await helius()
    first = await connect(session, emulator)
    a = [await first.subscribe("slotSubscribe") for _ in range(3)]
    second = await connect(session, emulator)
    b = await second.subscribe("slotSubscribe")
    refused = await second.request("slotUnsubscribe", [a[0]])
    assert refused["error"] == {"code": -32602, "message": "Invalid subscription id."}
    await first.ws.close()
    third = await connect(session, emulator)
    c = await third.subscribe("slotSubscribe")
    assert len({*a, b, c}) == 5 and c > b > max(a)


async def test_routing_by_subscription_id(helius, session) -> None:
    """Two sockets with the same subscription each get only their own id; one socket's ids split cleanly."""
    emulator = await helius()
    one, two = await connect(session, emulator), await connect(session, emulator)
    s1 = await one.subscribe("slotSubscribe")
    r1 = await one.subscribe("rootSubscribe")
    s2 = await two.subscribe("slotSubscribe")
    await one.pump(lambda: len(one.of(s1)) >= 3 and len(one.of(r1)) >= 3)
    await two.pump(lambda: len(two.of(s2)) >= 3)
    assert {n["params"]["subscription"] for n in one.notes} == {s1, r1}
    assert {n["params"]["subscription"] for n in two.notes} == {s2}
    assert all(isinstance(r, int) for r in one.of(r1))


async def test_unsubscribe_true_then_silence_and_unknown_id_error(helius, session) -> None:
    """Unsubscribe answers true and stops that id; repeating it (or any unknown id) is -32602."""
    emulator = await helius()
    client = await connect(session, emulator)
    slot = await client.subscribe("slotSubscribe")
    root = await client.subscribe("rootSubscribe")
    await client.pump(lambda: len(client.of(slot)) >= 2)
    reply = await client.request("slotUnsubscribe", [slot])
    assert reply == {"jsonrpc": "2.0", "result": True, "id": reply["id"]}
    count = len(client.of(slot))
    await client.pump(lambda: len(client.of(root)) >= count + 3)
    assert len(client.of(slot)) == count
    for bad in ([slot], [987654]):
        again = await client.request("slotUnsubscribe", bad)
        assert again["error"] == {"code": -32602, "message": "Invalid subscription id."}


# -- signatureSubscribe ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["processed", "confirmed", "finalized"])
async def test_signature_is_single_shot(helius, session, level) -> None:
    """One terminal notification at the requested commitment, context slot = the transaction's slot; the
    id is gone afterwards, so unsubscribing it is -32602."""
    emulator = await helius(slot_interval=60)
    client = await connect(session, emulator)
    slot_n, sig = emulator.upcoming_signature(2)
    sub = await client.subscribe("signatureSubscribe", [sig, {"commitment": level}])
    roots = await client.subscribe("rootSubscribe")
    slots = await client.subscribe("slotSubscribe")
    lag = {"processed": 0, "confirmed": C, "finalized": F}[level]
    emulator.burst(slot_n - ledger(F)[-1].slot + lag + 2)
    await client.pump(lambda: bool(client.of(sub)))
    assert client.of(sub) == [{"context": {"slot": slot_n}, "value": {"err": None}}]
    assert client.of(slots)[-1]["slot"] == slot_n + lag
    if level == "finalized":
        assert client.of(roots)[-1] == slot_n
    seen = len(client.of(slots))
    await client.pump(lambda: len(client.of(slots)) >= seen + 2)
    assert len(client.of(sub)) == 1
    gone = await client.request("signatureUnsubscribe", [sub])
    assert gone["error"] == {"code": -32602, "message": "Invalid subscription id."}


async def test_signature_received_then_terminal_with_error(helius, session) -> None:
    """enableReceivedNotification: "receivedSignature" at the processed slot first, then the terminal
    notification carrying the transaction's error at finalized."""
    emulator = await helius()
    client = await connect(session, emulator)
    slot_n, sig = emulator.upcoming_signature(2, fails=True)
    config = {"commitment": "finalized", "enableReceivedNotification": True}
    sub = await client.subscribe("signatureSubscribe", [sig, config])
    await client.pump(lambda: len(client.of(sub)) >= 2)
    err = {"InstructionError": [0, {"Custom": 1}]}
    assert client.of(sub) == [
        {"context": {"slot": slot_n}, "value": "receivedSignature"},
        {"context": {"slot": slot_n}, "value": {"err": err}},
    ]
    assert emulator.sent["signatureNotification"] == 2


# -- logsSubscribe --------------------------------------------------------------------------------


async def test_logs_filters(helius, session) -> None:
    """all leaves votes out, allWithVotes keeps them, mentions keeps transactions naming the address."""
    ticks = 6
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    processed = {"commitment": "processed"}
    subs = {
        "all": await client.subscribe("logsSubscribe", ["all", processed]),
        "votes": await client.subscribe("logsSubscribe", ["allWithVotes", processed]),
        "node": await client.subscribe("logsSubscribe", [{"mentions": [NODES["A"]]}, processed]),
        "token": await client.subscribe("logsSubscribe", [{"mentions": [TOKEN_PROGRAM]}, processed]),
    }
    emulator.burst(ticks)
    txs = [t for b in seen_at("processed", ticks) for t in b.txs]
    want = {
        "all": [t.signature for t in txs if not t.is_vote],
        "votes": [t.signature for t in txs],
        "node": [t.signature for t in txs if NODES["A"] in t.keys],
        "token": [t.signature for t in txs if TOKEN_PROGRAM in t.keys],
    }
    await client.pump(lambda: len(client.of(subs["votes"])) == len(want["votes"]))
    await client.quiet(0.1)
    for name, sub in subs.items():
        assert [r["value"]["signature"] for r in client.of(sub)] == want[name], name
    assert want["node"] and all(t.is_vote for t in txs if t.signature in want["node"])


@pytest.mark.parametrize(
    ("mentions", "message"),
    [
        ([WALLETS["A"], WALLETS["B"]], "Invalid Request: Only 1 address supported"),
        ([], "Invalid Request: Only 1 address supported"),
        (["not-a-key"], "Invalid Request: Invalid mentions provided"),
    ],
)
async def test_logs_mentions_needs_exactly_one_address(helius, session, mentions, message) -> None:
    """mentions with zero or several addresses, or a bad one, is -32602 Invalid params."""
    client = await connect(session, await helius())
    reply = await client.request("logsSubscribe", [{"mentions": mentions}])
    assert reply["error"] == {"code": -32602, "message": message}


# -- transactionSubscribe (Helius Enhanced WebSockets) --------------------------------------------

V0 = {"maxSupportedTransactionVersion": 0}
# Agave's DEFAULT_COMPUTE_UNITS of the builtins, which log no "consumed" line of their own.
BUILTIN_UNITS = {VOTE_PROGRAM: 2_100, SYSTEM_PROGRAM: 150}
TX_ERR = {"InstructionError": [0, {"Custom": 1}]}
TX_DETAILS_MESSAGE = 'Invalid Request: transactionDetails "{}" needs maxSupportedTransactionVersion (0)'


def planned(emulator: HeliusEmulator, blocks: list[Block]) -> list[tuple[int, int, TxPlan]]:
    """(slot, index, plan) of every transaction of `blocks`, from the emulator's own script."""
    return [(b.slot, i, p) for b in blocks for i, p in enumerate(emulator.transactions_at(b.slot))]


def tx_row(result: dict[str, Any]) -> tuple[int, int, str]:
    return result["slot"], result["transactionIndex"], result["signature"]


async def test_transaction_subscribe_answers_notifies_and_unsubscribes(helius, session) -> None:
    """transactionSubscribe answers {jsonrpc, result: int, id}; transactionNotification carries
    {transaction, signature, slot, transactionIndex}; transactionUnsubscribe answers true, then silence."""
    emulator = await helius()
    client = await connect(session, emulator)
    reply = await client.request("transactionSubscribe", [{"vote": True}, {"commitment": "processed", **V0}])
    assert set(reply) == {"jsonrpc", "result", "id"} and isinstance(reply["result"], int)
    sub = reply["result"]
    slots = await client.subscribe("slotSubscribe")
    await client.pump(lambda: len(client.of(sub)) >= 3)
    note = next(n for n in client.notes if n["params"]["subscription"] == sub)
    assert note["jsonrpc"] == "2.0" and note["method"] == "transactionNotification"
    assert set(note["params"]) == {"result", "subscription"}
    result = note["params"]["result"]
    assert list(result) == ["transaction", "signature", "slot", "transactionIndex"]
    assert list(result["transaction"]) == ["transaction", "meta", "version"]
    assert result["transaction"]["version"] == "legacy"
    gone = await client.request("transactionUnsubscribe", [sub])
    assert gone == {"jsonrpc": "2.0", "result": True, "id": gone["id"]}
    count, seen = len(client.of(sub)), len(client.of(slots))
    await client.pump(lambda: len(client.of(slots)) >= seen + 3)
    assert len(client.of(sub)) == count
    again = await client.request("transactionUnsubscribe", [sub])
    assert again["error"] == {"code": -32602, "message": "Invalid subscription id."}


async def test_plain_node_has_no_transaction_subscribe(helius, session) -> None:
    """enhanced=False is a standard Agave node: both Enhanced WebSockets methods are Method not found."""
    client = await connect(session, await helius(enhanced=False))
    for method, params in (("transactionSubscribe", [{}, V0]), ("transactionUnsubscribe", [0])):
        reply = await client.request(method, params)
        assert reply["error"] == {"code": -32601, "message": "Method not found"}, method


async def test_transaction_filters(helius, session) -> None:
    """vote, failed, signature, accountInclude (any), accountExclude (none) and accountRequired (all)
    select exactly the planned transactions they describe; sent and sent_log count what arrived."""
    ticks = 12
    emulator = await helius(slot_interval=60, max_slots=ticks, record_log=True)
    client = await connect(session, emulator)
    txs = planned(emulator, seen_at("processed", ticks))
    failing = next(p.signature for _, _, p in txs if p.fails)
    cases: dict[str, tuple[dict[str, Any], Callable[[TxPlan], bool]]] = {
        "default": ({}, lambda p: p.kind != "vote"),
        "votes": ({"vote": True}, lambda p: True),
        "no votes": ({"vote": False, "failed": True}, lambda p: p.kind != "vote"),
        "succeeded": ({"failed": False}, lambda p: p.kind != "vote" and not p.fails),
        "votes, succeeded": ({"vote": True, "failed": False}, lambda p: not p.fails),
        "signature": ({"signature": failing}, lambda p: p.signature == failing),
        "signature, succeeded": ({"signature": failing, "failed": False}, lambda p: False),
        "include": (
            {"vote": True, "accountInclude": [NODES["A"], COUNTERS["A"]]},
            lambda p: NODES["A"] in p.keys or COUNTERS["A"] in p.keys,
        ),
        "exclude": (
            {"accountExclude": [SYSTEM_PROGRAM, COUNTER_PROGRAM]},
            lambda p: p.kind != "vote" and not {SYSTEM_PROGRAM, COUNTER_PROGRAM} & set(p.keys),
        ),
        "required": (
            {"accountRequired": [WALLETS["A"], TOKEN_PROGRAM]},
            lambda p: p.kind != "vote" and {WALLETS["A"], TOKEN_PROGRAM} <= set(p.keys),
        ),
        "include, exclude": (
            {"accountInclude": [WALLETS["A"], WALLETS["B"]], "accountExclude": [TOKEN_PROGRAM]},
            lambda p: p.kind != "vote" and bool({WALLETS["A"], WALLETS["B"]} & set(p.keys))
            and TOKEN_PROGRAM not in p.keys,
        ),
    }  # fmt: skip
    options = {"commitment": "processed", "transactionDetails": "signatures"}
    subs = {
        name: await client.subscribe("transactionSubscribe", [f, options]) for name, (f, _) in cases.items()
    }
    emulator.burst(ticks)
    want = {name: [(s, i, p.signature) for s, i, p in txs if keep(p)] for name, (_, keep) in cases.items()}
    await client.pump(lambda: len(client.of(subs["votes"])) == len(want["votes"]))
    await client.quiet(0.1)
    for name, sub in subs.items():
        assert [tx_row(r) for r in client.of(sub)] == want[name], name
        assert want[name] or name == "signature, succeeded", name
        assert all(
            r["transaction"] == {"transaction": {"signatures": [r["signature"]]}} for r in client.of(sub)
        )
    assert emulator.sent["transactionNotification"] == sum(len(w) for w in want.values()) == len(client.notes)
    assert emulator.sent_log == [
        (n["method"], n["params"]["subscription"], n["params"]["result"]["slot"], n["params"]["result"])
        for n in client.notes
    ]


async def test_transaction_meta_matches_the_ledger(helius, session) -> None:
    """Full notifications decode to the planned message; meta's fee, balances, logs, err and compute units
    agree with the ledger, its logsNotification and its account states, transaction after transaction."""
    ticks = 12
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    processed = {"commitment": "processed"}
    sub = await client.subscribe("transactionSubscribe", [{"vote": True}, {**processed, **V0}])
    logs = await client.subscribe("logsSubscribe", ["allWithVotes", processed])
    emulator.burst(ticks)
    blocks = seen_at("processed", ticks)
    txs = planned(emulator, blocks)
    await client.pump(lambda: len(client.of(sub)) == len(client.of(logs)) == len(txs))
    logs_of = {r["value"]["signature"]: r["value"] for r in client.of(logs)}
    balance: dict[str, int] = {}  # lamports after the last transaction that named the key
    transfers = 0
    for (slot, index, plan), result in zip(txs, client.of(sub), strict=True):
        assert tx_row(result) == (slot, index, plan.signature)
        raw = base64.b64decode(result["transaction"]["transaction"][0])
        assert result["transaction"]["transaction"][1] == "base64"
        assert raw[0] == 1 and b58encode(raw[1:65]) == plan.signature  # one signature, then the message
        assert raw[65:68] == bytes([1, 0, 1]) and raw[68] == len(plan.keys)
        assert [b58encode(raw[69 + 32 * i : 101 + 32 * i]) for i in range(len(plan.keys))] == list(plan.keys)
        meta = result["transaction"]["meta"]
        pre, post, fee = meta["preBalances"], meta["postBalances"], meta["fee"]
        assert fee == 5_000 and len(pre) == len(post) == len(plan.keys)
        assert meta["logMessages"] == logs_of[plan.signature]["logs"]
        assert meta["err"] == logs_of[plan.signature]["err"] == (TX_ERR if plan.fails else None)
        assert meta["status"] == ({"Err": TX_ERR} if plan.fails else {"Ok": None})
        consumed = [int(m.split()[3]) for m in meta["logMessages"] if " consumed " in m]
        assert meta["computeUnitsConsumed"] == (consumed or [BUILTIN_UNITS.get(plan.keys[-1])])[0]
        moved = plan.amount if plan.kind == "transfer" and not plan.fails else 0
        transfers += bool(moved)
        # The payer pays the fee, failed or not; only a system transfer moves lamports between keys.
        assert pre[0] - post[0] == fee + moved
        assert post[1] - pre[1] == moved and pre[2:] == post[2:]
        for key, before, after in zip(plan.keys, pre, post, strict=True):
            assert balance.get(key, before) == before, (plan.signature, key)
            balance[key] = after
        assert meta["innerInstructions"] == meta["preTokenBalances"] == meta["postTokenBalances"] == []
        assert meta["rewards"] is None and meta["loadedAddresses"] == {"writable": [], "readonly": []}
    assert transfers and any(p.fails for _, _, p in txs) and any(p.kind == "vote" for _, _, p in txs)
    final = {a.pubkey: a.lamports for b in blocks for a in b.writes}  # last write wins
    assert all(balance[key] == lamports for key, lamports in final.items() if key in balance)


async def test_transaction_details_and_encodings(helius, session) -> None:
    """Each transactionDetails and encoding renders one transaction consistently: base58 and base64 are
    the same bytes, jsonParsed names the same keys, accounts drops logs, signatures drops meta, none
    keeps signature, slot and transactionIndex only; showRewards turns rewards from null into []."""
    emulator = await helius(slot_interval=60, max_slots=1)
    client = await connect(session, emulator)
    slot, index, plan = planned(emulator, seen_at("processed", 1))[0]
    processed = {"commitment": "processed"}
    variants = {
        "base64": {"encoding": "base64", **V0},
        "base58": {"encoding": "base58", "showRewards": True, **V0},
        "parsed": {"encoding": "jsonParsed", **V0},
        "parsed rewards": {"encoding": "jsonParsed", "showRewards": True, **V0},
        "accounts": {"transactionDetails": "accounts", **V0},
        "signatures": {"transactionDetails": "signatures"},
        "none": {"transactionDetails": "none", **V0},
        "default": V0,
    }
    flt = {"signature": plan.signature, "vote": True}
    subs = {
        name: await client.subscribe("transactionSubscribe", [flt, {**processed, **options}])
        for name, options in variants.items()
    }
    emulator.burst(1)
    await client.pump(lambda: all(client.of(s) for s in subs.values()))
    got = {name: client.of(sub)[0] for name, sub in subs.items()}
    assert all(tx_row(r) == (slot, index, plan.signature) for r in got.values())
    full = {name: got[name]["transaction"] for name in ("base64", "base58", "parsed", "parsed rewards")}
    b64, b58 = full["base64"]["transaction"], full["base58"]["transaction"]
    assert (b64[1], b58[1]) == ("base64", "base58") and base64.b64decode(b64[0]) == b58decode(b58[0])
    assert got["default"] == got["base64"]  # base64 unless asked otherwise
    message = full["parsed"]["transaction"]["message"]
    assert full["parsed"]["transaction"]["signatures"] == [plan.signature]
    assert [k["pubkey"] for k in message["accountKeys"]] == list(plan.keys)
    assert [k["signer"] for k in message["accountKeys"]] == [True] + [False] * (len(plan.keys) - 1)
    (instruction,) = message["instructions"]
    assert instruction["programId"] == plan.keys[-1] and instruction["accounts"] == list(plan.keys[:-1])
    meta = {name: t["meta"] for name, t in full.items()}
    assert meta["base64"]["rewards"] is None and meta["base58"]["rewards"] == []
    assert meta["parsed rewards"]["rewards"] == [] and "rewards" not in meta["parsed"]
    assert "loadedAddresses" not in meta["parsed"]  # jsonParsed accountKeys carry each key's source
    assert {k: v for k, v in meta["base64"].items() if k not in ("rewards", "loadedAddresses")} == meta[
        "parsed"
    ]
    accounts = got["accounts"]["transaction"]
    assert accounts["transaction"] == {"signatures": [plan.signature], "accountKeys": message["accountKeys"]}
    assert accounts["meta"] == {
        k: meta["base64"][k]
        for k in (
            "err",
            "status",
            "fee",
            "preBalances",
            "postBalances",
            "preTokenBalances",
            "postTokenBalances",
        )
    }
    assert got["signatures"]["transaction"] == {"transaction": {"signatures": [plan.signature]}}
    assert "transaction" not in got["none"]
    assert all(t["version"] == "legacy" for t in (*full.values(), accounts))


async def test_transaction_notifications_parse_with_solders(helius, session) -> None:
    """solders reads the base64 bytes as a legacy Transaction and every full and accounts payload as an
    EncodedTransactionWithStatusMeta with the same values."""
    pytest.importorskip("solders", reason="solders is a test-only dependency")
    from solders.transaction import Transaction
    from solders.transaction_status import EncodedTransactionWithStatusMeta

    ticks = 3
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    subs = [
        await client.subscribe(
            "transactionSubscribe", [{"vote": True}, {"commitment": "processed", **V0, **options}]
        )
        for options in (
            {"encoding": "base64"},
            {"encoding": "base58"},
            {"encoding": "jsonParsed"},
            {"transactionDetails": "accounts"},
        )
    ]
    emulator.burst(ticks)
    txs = planned(emulator, seen_at("processed", ticks))
    await client.pump(lambda: all(len(client.of(s)) == len(txs) for s in subs))
    for (_, _, plan), *results in zip(txs, *(client.of(s) for s in subs), strict=True):
        tx = Transaction.from_bytes(base64.b64decode(results[0]["transaction"]["transaction"][0]))
        assert str(tx.signatures[0]) == plan.signature
        assert [str(k) for k in tx.message.account_keys] == list(plan.keys)
        assert tx.message.header.num_readonly_unsigned_accounts == 1
        for result in results:
            parsed = EncodedTransactionWithStatusMeta.from_json(json.dumps(result["transaction"]))
            assert parsed.meta is not None and parsed.meta.fee == result["transaction"]["meta"]["fee"]
            assert parsed.meta.pre_balances == result["transaction"]["meta"]["preBalances"]


@pytest.mark.parametrize("level", ["processed", "confirmed", "finalized", None])
async def test_transaction_commitment_levels(helius, session, level) -> None:
    """A transaction subscription sees each block once at its level: processed in its slot, confirmed
    confirm_lag slots later, finalized (the default) only once a rootNotification has rooted it."""
    ticks = 10
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    slots = await client.subscribe("slotSubscribe")
    roots = await client.subscribe("rootSubscribe")
    options = {"transactionDetails": "none"} | ({"commitment": level} if level else {})
    sub = await client.subscribe("transactionSubscribe", [{"vote": True}, options])
    emulator.burst(ticks)
    await client.pump(lambda: emulator.slots_produced == ticks)
    await client.quiet(0.1)
    lag = {"processed": 0, "confirmed": C, "finalized": F, None: F}[level]
    current, rooted = None, -1
    for note in client.notes:
        result, sub_id = note["params"]["result"], note["params"]["subscription"]
        if sub_id == slots:
            current = result["slot"]
        elif sub_id == roots:
            rooted = result
        else:
            assert result["slot"] == current - lag, (level, result)
            assert level not in ("finalized", None) or result["slot"] <= rooted
    want = planned(emulator, seen_at(level or "finalized", ticks))
    assert [tx_row(r) for r in client.of(sub)] == [(s, i, p.signature) for s, i, p in want]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([{}], TX_DETAILS_MESSAGE.format("full")),
        ([{}, {"transactionDetails": "accounts"}], TX_DETAILS_MESSAGE.format("accounts")),
        (["all"], 'Invalid params: invalid type: string "all", expected struct TransactionSubscribeFilter.'),
        ([None, V0], "Invalid params: invalid type: null, expected struct TransactionSubscribeFilter."),
        ([{"vote": "yes"}, V0], 'Invalid params: invalid type: string "yes", expected a boolean.'),
        ([{"failed": 0}, V0], "Invalid params: invalid type: integer `0`, expected a boolean."),
        ([{"signature": 7}, V0], "Invalid params: invalid type: integer `7`, expected a string."),
        ([{"signature": WALLETS["A"]}, V0], "Invalid Request: Invalid signature provided"),
        ([{"accountInclude": WALLETS["A"]}, V0],
         f'Invalid params: invalid type: string "{WALLETS["A"]}", expected a sequence.'),
        ([{"accountExclude": [1]}, V0], "Invalid params: invalid type: integer `1`, expected a string."),
        ([{"accountRequired": ["0OIl"]}, V0], "Invalid Request: Invalid pubkey provided"),
        ([{"accountInclude": [WALLETS["A"]] * 50_001}, V0],
         "Too many addresses in accountInclude; max 50000"),
        ([{}, {"encoding": "binary", **V0}],
         "Invalid params: unknown variant `binary`, expected one of `base58`, `base64`, `jsonParsed`."),
        ([{}, {"transactionDetails": "all"}],
         "Invalid params: unknown variant `all`, expected one of `full`, `signatures`, `accounts`, `none`."),
        ([{}, {"commitment": "max", **V0}],
         "Invalid params: unknown variant `max`, expected one of `processed`, `confirmed`, `finalized`."),
        ([{}, {"showRewards": "yes", **V0}],
         'Invalid params: invalid type: string "yes", expected a boolean.'),
        ([{}, {"maxSupportedTransactionVersion": "0"}],
         'Invalid params: invalid type: string "0", expected u8.'),
        ([{}, {"maxSupportedTransactionVersion": 256}],
         "Invalid params: invalid value: integer `256`, expected u8."),
        ([{}, []], "Invalid params: invalid type: sequence, expected struct TransactionSubscribeOptions."),
        ([], "`params` should have at least 1 argument(s)"),
        ({"accountInclude": []}, "`params` should be an array"),
    ],
)  # fmt: skip
async def test_transaction_bad_params(helius, session, params, message) -> None:
    """Bad filters and options are -32602 in the node's wording; full or accounts details need
    maxSupportedTransactionVersion; at most 50,000 addresses per list."""
    emulator = await helius()
    client = await connect(session, emulator)
    reply = await client.request("transactionSubscribe", params)
    assert reply == {"jsonrpc": "2.0", "error": {"code": -32602, "message": message}, "id": reply["id"]}
    assert emulator.subscriptions_total == 0


async def test_transaction_lists_take_50000_addresses(helius, session) -> None:
    """A list of exactly 50,000 addresses is accepted and served with the other two lists."""

    def wanted(p: TxPlan) -> bool:
        return SYSTEM_PROGRAM in p.keys and WALLETS["A"] not in p.keys

    ticks = ticks_until(lambda b: any(wanted(p) for p in Chain().plan(b.slot)))
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    many = [WALLETS["A"]] * 49_999 + [SYSTEM_PROGRAM]
    # One long list per request: three would pass aiohttp's 4 MiB frame limit on the emulator's side.
    flt = {"accountInclude": many, "accountExclude": many[:1], "accountRequired": many[-1:]}
    sub = await client.subscribe("transactionSubscribe", [flt, {"commitment": "processed", **V0}])
    emulator.burst(ticks)
    want = [(s, i, p.signature) for s, i, p in planned(emulator, seen_at("processed", ticks)) if wanted(p)]
    await client.pump(lambda: len(client.of(sub)) == len(want))
    await client.quiet(0.1)
    assert [tx_row(r) for r in client.of(sub)] == want and want


# -- programSubscribe filters ---------------------------------------------------------------------


def _memcmp(offset: int, raw: bytes, encoding: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"offset": offset, "bytes": b58encode(raw)}
    if encoding == "base64":
        body = {"offset": offset, "bytes": base64.b64encode(raw).decode(), "encoding": "base64"}
    return {"memcmp": body}


FILTER_CASES: dict[str, tuple[str, list[Any], Callable[[bytes], bool]]] = {
    "token accounts": (TOKEN_PROGRAM, [{"dataSize": 165}], lambda d: len(d) == 165),
    "mints": (TOKEN_PROGRAM, [{"dataSize": 82}], lambda d: len(d) == 82),
    "usdc holders": (
        TOKEN_PROGRAM,
        [_memcmp(0, b58decode(MINTS["USDC"].address))],
        lambda d: d[:32] == b58decode(MINTS["USDC"].address),
    ),
    "owned by B (base64)": (
        TOKEN_PROGRAM,
        [{"dataSize": 165}, _memcmp(32, b58decode(WALLETS["B"]), "base64")],
        lambda d: len(d) == 165 and d[32:64] == b58decode(WALLETS["B"]),
    ),
    "token state": (TOKEN_PROGRAM, ["tokenAccountState"], lambda d: len(d) == 165),
    "counters": (COUNTER_PROGRAM, [_memcmp(0, COUNTER_TAG)], lambda d: d[:8] == COUNTER_TAG),
    "none": (COUNTER_PROGRAM, [{"dataSize": 1}], lambda d: False),
}


async def test_program_filters_select_exactly_the_matching_accounts(helius, session) -> None:
    """dataSize, memcmp (base58 and base64 bytes) and tokenAccountState pick out exactly the accounts whose
    data matches; all filters of a subscription must match."""
    ticks = 30
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    subs = {}
    for name, (program, filters, _) in FILTER_CASES.items():
        config = {"commitment": "processed", "encoding": "base64", "filters": filters}
        subs[name] = await client.subscribe("programSubscribe", [program, config])
    emulator.burst(ticks)
    await client.pump(lambda: emulator.slots_produced == ticks)
    await client.quiet(0.2)
    blocks = seen_at("processed", ticks)
    for name, (program, _, keep) in FILTER_CASES.items():
        want = [(b.slot, a.pubkey) for b in blocks for a in b.writes if a.owner == program and keep(a.data)]
        got = [(r["context"]["slot"], r["value"]["pubkey"]) for r in client.of(subs[name])]
        assert got == want, name
        assert want or name == "none", name


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ([{"dataSize": 1}] * 5, "Too many filters provided; max 4"),
        (
            [{"memcmp": {"offset": 0, "bytes": "0OIl"}}],
            "Invalid param: Base58DecodeError(InvalidCharacter { character: '0', index: 0 })",
        ),
        ([{"memcmp": {"offset": 0, "bytes": "A" * 176}}], "Invalid param: DataTooLarge"),
        ([{"memcmp": {"offset": 0, "bytes": "a!", "encoding": "base64"}}],
         "Invalid param: Base64DecodeError(InvalidByte(1, 33))"),
        ([{"dataSizes": 1}],
         "Invalid params: unknown variant `dataSizes`, expected one of "
         "`dataSize`, `memcmp`, `tokenAccountState`."),
    ],
)  # fmt: skip
async def test_program_bad_filters(helius, session, filters, message) -> None:
    """Too many filters, undecodable or oversized memcmp bytes and unknown filter types are -32602."""
    client = await connect(session, await helius())
    reply = await client.request("programSubscribe", [TOKEN_PROGRAM, {"filters": filters}])
    assert reply["error"] == {"code": -32602, "message": message}


# -- encodings ------------------------------------------------------------------------------------


async def test_account_encodings(helius, session) -> None:
    """base58/binary refuse data over 128 bytes with Agave's error string; base64 and jsonParsed (with
    its base64 fallback for programs without a parser) render the bytes; dataSlice changes nothing."""
    ticks = ticks_until(lambda b: any(a.pubkey == POOLS["A"] for a in b.writes))
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    encodings: list[tuple[str, dict[str, Any]]] = [
        ("base58", {}),
        ("binary", {}),
        ("base64", {}),
        ("jsonParsed", {}),
        ("base58", {"dataSlice": {"offset": 8, "length": 16}}),
    ]
    subs = [
        await client.subscribe(
            "accountSubscribe", [POOLS["A"], {"commitment": "processed", "encoding": e, **x}]
        )
        for e, x in encodings
    ]
    default = await client.subscribe("accountSubscribe", [POOLS["A"], {"commitment": "processed"}])
    emulator.burst(ticks)
    await client.pump(lambda: all(client.of(s) for s in [*subs, default]))
    pool = next(a for b in seen_at("processed", ticks) for a in b.writes if a.pubkey == POOLS["A"])
    data = [client.of(s)[0]["value"]["data"] for s in subs]
    too_large = "error: data too large for bs58 encoding"
    assert data[0] == [too_large, "base58"]
    assert data[1] == too_large  # "binary": the deprecated bare-string form
    assert data[2] == data[3] == [base64.b64encode(pool.data).decode(), "base64"]
    assert data[4] == [too_large, "base58"]  # dataSlice is accepted, but Agave's pubsub ignores it
    assert client.of(default)[0]["value"]["data"] == too_large  # Agave's default encoding is binary
    assert client.of(subs[2])[0]["value"]["space"] == 200


async def test_token_accounts_json_parsed(helius, session) -> None:
    """jsonParsed token accounts are spl-token objects whose amounts match the raw layout."""
    target = TOKEN_ACCOUNTS[("GEM", "B")]
    ticks = ticks_until(lambda b: any(a.pubkey == target for a in b.writes))
    emulator = await helius(slot_interval=60, max_slots=ticks)
    client = await connect(session, emulator)
    config = {"commitment": "processed", "encoding": "jsonParsed"}
    sub = await client.subscribe("accountSubscribe", [target, config])
    emulator.burst(ticks)
    await client.pump(lambda: bool(client.of(sub)))
    raw = next(a for b in seen_at("processed", ticks) for a in b.writes if a.pubkey == target).data
    amount = int.from_bytes(raw[64:72], "little")
    data = client.of(sub)[0]["value"]["data"]
    assert data["program"] == "spl-token" and data["space"] == 165
    assert data["parsed"]["type"] == "account"
    info = data["parsed"]["info"]
    assert (info["mint"], info["owner"], info["state"]) == (MINTS["GEM"].address, WALLETS["B"], "initialized")
    assert info["tokenAmount"]["amount"] == str(amount) and info["tokenAmount"]["decimals"] == 9
    assert info["tokenAmount"]["uiAmount"] == amount / 10**9
    whole, _, frac = info["tokenAmount"]["uiAmountString"].partition(".")
    assert int(whole) * 10**9 + int(frac.ljust(9, "0") or 0) == amount


# -- commitment -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("f", "c"), [(F, C), (3, 3), (0, 0)])
async def test_commitment_levels_lag_by_confirm_and_finality(helius, session, f, c) -> None:
    """processed logs arrive in their slot, confirmed ones confirm_lag slots later, finalized ones once the
    root reaches them; each level sees the same transactions in ledger order; no commitment = finalized."""
    ticks = 10
    emulator = await helius(slot_interval=60, max_slots=ticks, finality_lag=f, confirm_lag=c)
    client = await connect(session, emulator)
    slots = await client.subscribe("slotSubscribe")
    levels = {
        level: await client.subscribe("logsSubscribe", ["all", {"commitment": level}]) for level in
        ("processed", "confirmed", "finalized")
    }  # fmt: skip
    default = await client.subscribe("logsSubscribe", ["all"])
    emulator.burst(ticks)
    await client.pump(lambda: emulator.slots_produced == ticks)
    await client.quiet(0.1)
    lag = {"processed": 0, "confirmed": c, "finalized": f}
    current = None
    for note in client.notes:
        result = note["params"]["result"]
        if note["params"]["subscription"] == slots:
            current = result["slot"]
            continue
        level = next((k for k, v in levels.items() if v == note["params"]["subscription"]), "finalized")
        assert result["context"]["slot"] == current - lag[level], (level, result["context"])
    for level, sub in levels.items():
        want = [t.signature for b in seen_at(level, ticks, f=f, c=c) for t in b.txs if not t.is_vote]
        assert [r["value"]["signature"] for r in client.of(sub)] == want, level
    assert client.of(default) == client.of(levels["finalized"])


async def test_skipped_slots_make_parent_jump(helius, session) -> None:
    """With skip_every, some slots never come: the next slot's parent is slot - 2, roots skip them too."""
    emulator = await helius(skip_every=3)
    client = await connect(session, emulator)
    slots = await client.subscribe("slotSubscribe")
    roots = await client.subscribe("rootSubscribe")
    await client.pump(lambda: len(client.of(slots)) >= 6)
    infos = client.of(slots)
    assert any(i["parent"] == i["slot"] - 2 for i in infos)
    assert all(i["parent"] in (i["slot"] - 1, i["slot"] - 2) for i in infos)
    assert all((r - emulator.chain.first_slot) % 3 != 2 for r in client.of(roots))
    assert emulator.slots_skipped >= 2


# -- forks ----------------------------------------------------------------------------------------

FORK = 3  # fork_every of the fork tests: with no skipped slots, slots first_slot + 2, + 5, + 8... fork


class Canonical(Chain):
    """The ledger the cluster keeps under fork_every=n: its forked slots are plain skipped slots."""

    def __init__(self, n: int, seed: int = 1) -> None:
        super().__init__(seed)
        self.n = n

    def exists(self, slot: int) -> bool:
        return super().exists(slot) and (slot - self.first_slot) % self.n != self.n - 1


def fork_timeline(steps: int, n: int = FORK) -> tuple[list[Block], list[Block]]:
    """Canonical blocks (the F pre-produced ones first) and abandoned ones over `steps` slots: a fork
    block is its slot executed, without forks, on the canonical state and parent before it."""
    chain, blocks, forks = Canonical(n), [], []
    while len(blocks) < F:
        if (block := chain.advance()) is not None:
            blocks.append(block)
    for _ in range(steps):
        if not chain.exists(chain.next_slot):
            plain = Chain(chain.seed)
            plain.accounts, plain.last_block_slot = dict(chain.accounts), chain.last_block_slot
            plain.next_slot = chain.next_slot
            forks.append(plain.advance())
        if (block := chain.advance()) is not None:
            blocks.append(block)
    return blocks, forks


async def fork_run(
    helius: Any, session: aiohttp.ClientSession, steps: int
) -> tuple[HeliusEmulator, Client, dict[str, Any]]:
    """An emulator with fork_every=FORK, watched at every level for `steps` slots; returns the emulator,
    the client, and the subscription ids with the fork slot and landing slot the signatures watch."""
    emulator = await helius(fork_every=FORK, slot_interval=60)
    fork_slot = next(s for s in itertools.count(emulator.chain.next_slot) if emulator.chain.forked(s))
    landing_slot, landing = emulator.upcoming_signature(1)
    client = await connect(session, emulator)
    subs: dict[str, Any] = {"fork_slot": fork_slot, "landing_slot": landing_slot}
    subs["slots"] = await client.subscribe("slotSubscribe")
    subs["roots"] = await client.subscribe("rootSubscribe")
    for level in ("processed", "confirmed", "finalized"):
        config = {"commitment": level, "encoding": "base64"}
        subs[f"program_{level}"] = await client.subscribe("programSubscribe", [SYSTEM_PROGRAM, config])
        subs[f"account_{level}"] = await client.subscribe("accountSubscribe", [NODES["A"], config])
        subs[f"logs_{level}"] = await client.subscribe(
            "logsSubscribe", ["allWithVotes", {"commitment": level}]
        )
    forked_sig = next(p.signature for p in emulator.transactions_at(fork_slot) if not p.fails)
    received = {"commitment": "finalized", "enableReceivedNotification": True}
    subs["sig_fork_processed"] = await client.subscribe(
        "signatureSubscribe", [forked_sig, {"commitment": "processed"}]
    )
    subs["sig_fork_finalized"] = await client.subscribe("signatureSubscribe", [forked_sig, received])
    subs["sig_landing"] = await client.subscribe("signatureSubscribe", [landing, received])
    emulator.burst(steps)
    await client.pump(lambda: emulator.slots_produced + len(emulator.forked_slots) == steps)
    await client.quiet(0.1)
    return emulator, client, subs


async def test_forked_slots_are_processed_then_abandoned(helius, session) -> None:
    """A fork slot gets its slot notification and everything at processed, then nothing: no confirmed,
    finalized or root notification; the next block's parent skips it and its writes never become state."""
    steps = 12
    emulator, client, subs = await fork_run(helius, session, steps)
    blocks, forks = fork_timeline(steps)
    produced = len(blocks) - F
    first = emulator.chain.first_slot
    assert (
        emulator.forked_slots
        == [b.slot for b in forks]
        == [s for s in range(blocks[F - 1].slot + 1, forks[-1].slot + 1) if (s - first) % FORK == FORK - 1]
    )
    assert forks[0].slot == blocks[F - 1].slot + 1  # the first tick is a fork, before any root
    assert (emulator.slots_produced, emulator.slots_skipped, len(forks)) == (produced, 0, steps - produced)
    processed = sorted(blocks[F:] + forks, key=lambda b: b.slot)
    confirmed, finalized = blocks[F - C : F - C + produced], blocks[:produced]
    fork_slots = {b.slot for b in forks}
    want_slots, root = [], first - 1
    for block in processed:
        if block.slot not in fork_slots:
            root = blocks[blocks.index(block) - F].slot
        want_slots.append({"slot": block.slot, "parent": block.parent, "root": root})
    assert client.of(subs["slots"]) == want_slots
    for info in want_slots:  # a fork hangs off the last canonical block; the next block skips the fork
        assert info["parent"] == info["slot"] - (2 if info["slot"] - 1 in fork_slots else 1)
    assert client.of(subs["roots"]) == [b.slot for b in finalized]
    for level, seen in (("processed", processed), ("confirmed", confirmed), ("finalized", finalized)):
        want_program = [
            {"context": {"slot": b.slot}, "value": {"pubkey": a.pubkey, "account": ui_base64(a)}}
            for b in seen
            for a in b.writes
            if a.owner == SYSTEM_PROGRAM
        ]
        assert client.of(subs[f"program_{level}"]) == want_program, level
        want_account = [
            {"context": {"slot": b.slot}, "value": ui_base64(a)}
            for b in seen
            for a in b.writes
            if a.pubkey == NODES["A"]
        ]
        assert client.of(subs[f"account_{level}"]) == want_account, level
        want_logs = [t.signature for b in seen for t in b.txs]
        assert [r["value"]["signature"] for r in client.of(subs[f"logs_{level}"])] == want_logs, level
        contexts = {
            r["context"]["slot"]
            for key in ("program", "account", "logs")
            for r in client.of(subs[f"{key}_{level}"])
        }
        assert (contexts & fork_slots == fork_slots) if level == "processed" else not contexts & fork_slots
    # The fork's vote fee never lands: the next block charges node A from the same balance again.
    for fork in forks:
        after = next(b for b in blocks if b.slot > fork.slot)
        lamports = [a.lamports for b in (fork, after) for a in b.writes if a.pubkey == NODES["A"]]
        assert lamports[0] == lamports[1]
    # Canonical state = the ledger with the forked slots skipped, not what a fork-free ledger has.
    reference, fork_free = Canonical(FORK), Chain(1)
    while reference.next_slot <= blocks[-1].slot:
        reference.advance()
        fork_free.advance()
    assert emulator.chain.accounts == reference.accounts != fork_free.accounts
    # A fork's transaction is seen at processed (and received) but never lands.
    fork_slot = subs["fork_slot"]
    assert client.of(subs["sig_fork_processed"]) == [{"context": {"slot": fork_slot}, "value": {"err": None}}]
    assert client.of(subs["sig_fork_finalized"]) == [
        {"context": {"slot": fork_slot}, "value": "receivedSignature"}
    ]
    landing_slot = subs["landing_slot"]
    assert client.of(subs["sig_landing"]) == [
        {"context": {"slot": landing_slot}, "value": "receivedSignature"},
        {"context": {"slot": landing_slot}, "value": {"err": None}},
    ]
    assert (emulator.processed_slot, emulator.confirmed_slot, emulator.root_slot) == (
        processed[-1].slot,
        blocks[-1 - C].slot,
        finalized[-1].slot,
    )


async def test_upcoming_signature_never_in_a_forked_slot(helius) -> None:
    """upcoming_signature steps over fork slots; pre-production leaves forks out of the lagging blocks."""
    emulator = await helius(fork_every=FORK)
    chain = emulator.chain
    blocks, _ = fork_timeline(0)
    assert (emulator.processed_slot, emulator.confirmed_slot) == (blocks[-1].slot, blocks[-1 - C].slot)
    assert emulator.root_slot == chain.first_slot - 1 and not emulator.forked_slots
    picked = [
        emulator.upcoming_signature(ahead, fails=fails) for ahead in range(1, 20) for fails in (False, True)
    ]
    assert any(chain.forked(chain.next_slot + ahead - 1) for ahead in range(1, 20))
    assert not any(chain.forked(slot) for slot, _ in picked)
    assert all(sig in {p.signature for p in emulator.transactions_at(slot)} for slot, sig in picked)


@pytest.mark.parametrize(("fork_every", "skip_every"), [(3, 3), (2, 3), (4, 2)])
def test_fork_rule_counts_existing_slots_only(fork_every, skip_every) -> None:
    """Every fork_every-th existing slot forks, so never a skipped one; 1 and < 0 are refused."""
    chain = Chain(1, skip_every=skip_every, fork_every=fork_every)
    existing = [s for s in range(chain.first_slot, chain.first_slot + 60) if chain.exists(s)]
    assert [s for s in range(chain.first_slot, chain.first_slot + 60) if chain.forked(s)] == existing[
        fork_every - 1 :: fork_every
    ]
    assert not Chain(1).forked(chain.first_slot + 2) and not Chain(1, fork_every=0).forked(
        chain.first_slot + 5
    )
    for bad in (1, -2):
        with pytest.raises(ValueError, match="fork_every must be 0"):
            HeliusEmulator(fork_every=bad)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "code", "message"),
    [
        ("blockSubscribe", ["all"], -32601, "Method not found"),
        ("voteSubscribe", None, -32601, "Method not found"),
        ("slotsUpdatesSubscribe", None, -32601, "Method not found"),
        ("ping", None, -32601, "Method not found"),
        ("accountSubscribe", ["0OIl"], -32602, "Invalid Request: Invalid pubkey provided"),
        ("accountSubscribe", [WALLETS["A"][:-2]], -32602, "Invalid Request: Invalid pubkey provided"),
        ("accountSubscribe", [5], -32602, "Invalid params: invalid type: integer `5`, expected a string."),
        ("accountSubscribe", None, -32602, "`params` should have at least 1 argument(s)"),
        ("accountSubscribe", {"pubkey": WALLETS["A"]}, -32602, "`params` should be an array"),
        ("accountSubscribe", [WALLETS["A"], {"encoding": "hex"}], -32602,
         "Invalid params: unknown variant `hex`, expected one of " + ENCODINGS),
        ("accountSubscribe", [WALLETS["A"], {"commitment": "max"}], -32602,
         "Invalid params: unknown variant `max`, expected one of `processed`, `confirmed`, `finalized`."),
        ("signatureSubscribe", [WALLETS["A"]], -32602, "Invalid Request: Invalid signature provided"),
        ("logsSubscribe", ["everything"], -32602,
         "Invalid params: unknown variant `everything`, expected one of `all`, `allWithVotes`, `mentions`."),
        ("slotSubscribe", [1], -32602, (NO_PARAMS, "Array([Number(1)])")),
        ("getVersion", {"a": None}, -32602, (NO_PARAMS, 'Map({"a": Null})')),
        ("logsSubscribe", ["all", {}, 3], -32602,
         ("Invalid parameters: Expected from 1 to 2 parameters.", "Got: 3")),
        ("rootUnsubscribe", ["1"], -32602, 'Invalid params: invalid type: string "1", expected u64.'),
        ("rootUnsubscribe", [], -32602, "Invalid params: invalid length 0, expected a tuple of size 1."),
        ("rootUnsubscribe", None, -32602, "Invalid params: invalid type: null, expected a tuple of size 1."),
    ],
)  # fmt: skip
async def test_request_errors(helius, session, method, params, code, message) -> None:
    """Unknown and Helius-disabled methods are -32601; bad params are -32602 with Agave's wording."""
    client = await connect(session, await helius())
    reply = await client.request(method, params)
    error = {"code": code, "message": message}
    if isinstance(message, tuple):  # jsonrpc-core adds `data` to some of its own refusals
        error = {"code": code, "message": message[0], "data": message[1]}
    assert reply == {"jsonrpc": "2.0", "error": error, "id": reply["id"]}


@pytest.mark.parametrize(
    ("frame", "code", "message", "request_id"),
    [
        ("{not json", -32700, "Parse error", None),
        ('{"foo": 1}', -32600, "Invalid request", None),
        ("42", -32600, "Invalid request", None),
        ('{"jsonrpc": "1.0", "id": 3, "method": "slotSubscribe"}', -32600, "Invalid request", 3),
        ('{"jsonrpc": "2.0", "id": 1.5, "method": "slotSubscribe"}', -32600, "Invalid request", None),
        ('{"jsonrpc": "2.0", "id": "a", "method": 7}', -32600, "Invalid request", "a"),
        ("[]", -32600, "Invalid request", None),
    ],
)
async def test_framing_errors(helius, session, frame, code, message, request_id) -> None:
    """Invalid JSON is -32700 and JSON that is not a request is -32600, with id null when unknowable."""
    client = await connect(session, await helius())
    await client.send(frame)
    await client.pump(lambda: bool(client.orphans or client.replies))
    reply = (client.orphans or list(client.replies.values()))[0]
    assert reply == {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


async def test_batches_and_id_less_requests(helius, session) -> None:
    """A batch gets one array of replies in order; a request without id runs nothing and gets no reply."""
    emulator = await helius()
    client = await connect(session, emulator)
    await client.send({"jsonrpc": "2.0", "method": "slotSubscribe"})
    await client.send([
        {"jsonrpc": "2.0", "id": "x", "method": "slotSubscribe"},
        {"jsonrpc": "2.0", "id": 9, "method": "nope"},
        {"jsonrpc": "2.0", "method": "rootSubscribe"},
    ])  # fmt: skip
    await client.pump(lambda: bool(client.batches))
    (batch,) = client.batches
    assert [r["id"] for r in batch] == ["x", 9]
    assert isinstance(batch[0]["result"], int) and batch[1]["error"]["code"] == -32601
    assert emulator.subscriptions_total == 1 and not client.replies


async def test_get_version_and_free_running_clock(helius, session) -> None:
    """getVersion answers like a pubsub node; start_on_subscribe=False runs slots with nobody connected."""
    emulator = await helius(start_on_subscribe=False)
    async with asyncio.timeout(2):
        await emulator.wait_slots(3)
    client = await connect(session, emulator)
    version = (await client.request("getVersion"))["result"]
    assert set(version) == {"feature-set", "solana-core"}
    assert emulator.processed_slot == ledger(F + emulator.slots_produced)[-1].slot


async def test_subscription_limit_is_internal_error(helius, session) -> None:
    """Past max_subscriptions the node refuses with -32603 and Agave's message."""
    client = await connect(session, await helius(max_subscriptions=2))
    await client.subscribe("slotSubscribe")
    await client.subscribe("rootSubscribe")
    reply = await client.request("slotSubscribe")
    message = "Internal Error: Subscription refused. Node subscription limit reached"
    assert reply["error"] == {"code": -32603, "message": message}


# -- determinism and counters ---------------------------------------------------------------------


async def _run(
    helius: Any, session: aiohttp.ClientSession, seed: int, ticks: int = 8, **options: Any
) -> tuple[Any, Client]:
    emulator = await helius(seed=seed, slot_interval=60, max_slots=ticks, record_log=True, **options)
    client = await connect(session, emulator)
    for method, params in [
        ("slotSubscribe", None),
        ("rootSubscribe", None),
        ("logsSubscribe", ["allWithVotes", {"commitment": "confirmed"}]),
        ("programSubscribe", [TOKEN_PROGRAM, {"encoding": "jsonParsed"}]),
        ("accountSubscribe", [WALLETS["C"], {"commitment": "processed", "encoding": "base58"}]),
        ("transactionSubscribe", [{"vote": True}, {"commitment": "confirmed", "encoding": "base58", **V0}]),
    ]:
        await client.subscribe(method, params)
    emulator.burst(ticks)
    await client.pump(lambda: emulator.slots_produced == ticks)
    await client.pump(lambda: len(client.notes) == sum(emulator.sent.values()))
    return emulator, client


async def test_same_seed_same_frames_other_seed_other_data(helius, session) -> None:
    """Two emulators with one seed send byte-identical notifications; another seed changes them."""
    _, one = await _run(helius, session, seed=7)
    _, two = await _run(helius, session, seed=7)
    _, other = await _run(helius, session, seed=8)
    assert one.raw_notes == two.raw_notes and len(one.raw_notes) > 20
    assert one.raw_notes != other.raw_notes
    _, explicit = await _run(helius, session, seed=7, fork_every=0)
    assert explicit.raw_notes == one.raw_notes  # fork_every=0 is the default, frame for frame


async def test_counters_equal_what_the_client_received(helius, session) -> None:
    """sent counts notifications per method as handed to the socket; sent_log matches frame by frame."""
    emulator, client = await _run(helius, session, seed=3)
    await client.quiet(0.1)
    assert emulator.sent == Counter(n["method"] for n in client.notes)
    assert emulator.sent_log == [
        (n["method"], n["params"]["subscription"], _slot_of(n), n["params"]["result"]) for n in client.notes
    ]
    assert emulator.subscriptions_total == 6 and emulator.connections_total == 1
    assert emulator.sent["transactionNotification"] == emulator.sent["logsNotification"] > 0
    assert not emulator.dropped


def _slot_of(note: dict[str, Any]) -> int:
    result = note["params"]["result"]
    if isinstance(result, int):
        return result
    return result["slot"] if "slot" in result else result["context"]["slot"]


# -- keepalive and faults -------------------------------------------------------------------------


async def test_idle_close_unless_the_client_talks(helius, session) -> None:
    """Notifications alone do not keep a socket alive past idle_timeout; client pings do."""
    emulator = await helius(idle_timeout=0.3)
    quiet, chatty = await connect(session, emulator), await connect(session, emulator)
    await quiet.subscribe("slotSubscribe")
    await chatty.subscribe("slotSubscribe")
    started = time.monotonic()
    async with asyncio.timeout(3):
        while (msg := await quiet.ws.receive()).type is WSMsgType.TEXT:
            await chatty.ws.ping()
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)
    assert time.monotonic() - started > 0.25  # not before idle_timeout; after it, within the 3 s above
    pinged = emulator.pings_received
    for _ in range(8):
        await chatty.ws.ping()
        await asyncio.sleep(0.1)
    assert not chatty.ws.closed and len(emulator.connections) == 1
    assert emulator.pings_received == pinged + 8  # counted, for tests of clients that must ping


async def test_go_silent_loses_frames_then_resumes(helius, session) -> None:
    """go_silent: nothing for the window, then notifications resume; what was lost is counted as dropped,
    not as sent."""
    emulator = await helius()
    client = await connect(session, emulator)
    sub = await client.subscribe("slotSubscribe")
    await client.pump(lambda: len(client.of(sub)) >= 3)
    emulator.go_silent(0.4)
    silenced = time.monotonic()
    arrivals = []
    async with asyncio.timeout(3):
        while not arrivals or arrivals[-1] < 0.45:
            msg = await client.ws.receive()
            arrivals.append(time.monotonic() - silenced)
            client.take(msg.data)
    assert not [t for t in arrivals if 0.05 < t < 0.35]
    slots = [r["slot"] for r in client.of(sub)]
    assert max(b - a for a, b in itertools.pairwise(slots)) > 5
    assert emulator.dropped["slotNotification"] >= 5
    assert emulator.sent["slotNotification"] <= len(slots) + 2


async def test_drop_connections_then_resubscribe_with_new_ids(helius, session) -> None:
    """drop_connections cuts TCP (1006, no close frame); a new socket subscribes again and gets new ids."""
    emulator = await helius()
    client = await connect(session, emulator)
    old = await client.subscribe("slotSubscribe")
    await client.pump(lambda: bool(client.of(old)))
    await emulator.drop_connections()
    async with asyncio.timeout(2):
        while (msg := await client.ws.receive()).type is WSMsgType.TEXT:
            pass
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR) and client.ws.close_code == 1006
    again = await connect(session, emulator)
    new = await again.subscribe("slotSubscribe")
    await again.pump(lambda: bool(again.of(new)))
    assert new != old and emulator.connections_total == 2


async def test_close_connections_and_burst(helius, session) -> None:
    """burst(n) produces n slots at once; close_connections(code) reaches the client as that code."""
    emulator = await helius(slot_interval=60)
    client = await connect(session, emulator)
    sub = await client.subscribe("slotSubscribe")
    emulator.burst(25)
    await client.pump(lambda: len(client.of(sub)) == 25, timeout=3)
    await emulator.close_connections(1011, "internal")
    async with asyncio.timeout(2):
        while (msg := await client.ws.receive()).type is WSMsgType.TEXT:
            pass
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1011, "internal")


# -- third-party fidelity -------------------------------------------------------------------------


async def test_solders_parses_every_frame_kind(helius, session) -> None:
    """solders' own PubSub parser accepts every response and notification kind and reads the same values.

    Not covered because solders 0.29 rejects them although Agave sends them: the "receivedSignature" value,
    a failed transaction's error inside signatureNotification, and base58's too-large error string.
    """
    pytest.importorskip("solders", reason="solders is a test-only dependency")
    from solders.pubkey import Pubkey
    from solders.rpc import responses as r

    targets = [WALLETS["A"], COUNTERS["A"], POOLS["A"], TOKEN_ACCOUNTS[("USDC", "C")]]
    ticks = max(ticks_until(lambda b, t=t: any(a.pubkey == t for a in b.writes)) for t in targets)
    emulator = await helius(slot_interval=60)
    slot_n, sig = emulator.upcoming_signature(1)
    ticks = max(ticks, slot_n - ledger(F)[-1].slot)
    client = await connect(session, emulator)
    pr = {"commitment": "processed"}
    account_of: dict[int, str] = {}
    for method, params in [
        ("slotSubscribe", None),
        ("rootSubscribe", None),
        ("accountSubscribe", [WALLETS["A"], {**pr, "encoding": "base64"}]),
        ("accountSubscribe", [COUNTERS["A"], {**pr, "encoding": "base58"}]),
        ("accountSubscribe", [COUNTERS["A"], pr]),  # binary: the legacy bare string
        ("accountSubscribe", [POOLS["A"], {**pr, "encoding": "base64+zstd"}]),
        ("accountSubscribe", [TOKEN_ACCOUNTS[("USDC", "C")], {**pr, "encoding": "jsonParsed"}]),
        ("programSubscribe", [TOKEN_PROGRAM, {**pr, "encoding": "jsonParsed"}]),
        ("programSubscribe", [COUNTER_PROGRAM, {**pr, "encoding": "base64"}]),
        ("logsSubscribe", ["allWithVotes", pr]),
        ("signatureSubscribe", [sig, pr]),
    ]:
        sub = await client.subscribe(method, params)
        if method == "accountSubscribe":
            account_of[sub] = params[0]
    emulator.burst(ticks)
    await client.pump(lambda: emulator.slots_produced == ticks)
    await client.quiet(0.1)
    await client.request("slotUnsubscribe", [0])
    await client.request("slotUnsubscribe", [0])
    await client.request("blockSubscribe", ["all"])
    states = {(b.slot, a.pubkey): a for b in seen_at("processed", ticks) for a in b.writes}
    kinds: Counter[str] = Counter()
    for raw in client.raw_replies + client.raw_notes:
        (msg,) = r.parse_websocket_message(raw)
        frame = json.loads(raw)
        kinds[type(msg).__name__] += 1
        if isinstance(msg, r.SubscriptionResult | r.UnsubscribeResult):
            assert (msg.id, msg.result) == (frame["id"], frame["result"])
            continue
        if isinstance(msg, r.SubscriptionError):
            assert (msg.id, msg.error.message) == (frame["id"], frame["error"]["message"])
            continue
        result = frame["params"]["result"]
        assert msg.subscription == frame["params"]["subscription"]
        if isinstance(msg, r.SlotNotification):
            assert (msg.result.slot, msg.result.parent, msg.result.root) == tuple(result.values())
            continue
        if isinstance(msg, r.RootNotification):
            assert msg.result == result
            continue
        slot, value = result["context"]["slot"], msg.result.value
        assert msg.result.context.slot == slot
        if isinstance(msg, r.LogsNotification):
            assert (str(value.signature), value.logs) == (
                result["value"]["signature"],
                result["value"]["logs"],
            )
            assert (value.err is None) == (result["value"]["err"] is None)
            if value.err is not None:
                assert (value.err.index, value.err.err.code) == (0, 1)
            continue
        if isinstance(msg, r.SignatureNotification):
            assert value.err is None and slot == slot_n
            continue
        pubkey = result["value"].get("pubkey") or account_of[frame["params"]["subscription"]]
        state = states[(slot, pubkey)]
        if "pubkey" in result["value"]:
            assert value.pubkey == Pubkey.from_string(pubkey)
            value = value.account
        owner = Pubkey.from_string(state.owner)
        assert (value.lamports, value.owner, value.executable, value.rent_epoch) == (
            state.lamports,
            owner,
            False,
            U64_MAX,
        )
        if isinstance(msg, r.AccountNotificationJsonParsed | r.ProgramNotificationJsonParsed):
            parsed = result["value"].get("account", result["value"])["data"]["parsed"]
            assert (value.data.program, value.data.space) == ("spl-token", len(state.data))
            assert value.data.parsed == parsed
        else:
            assert bytes(value.data) == state.data
    assert set(kinds) == {
        "SubscriptionResult", "UnsubscribeResult", "SubscriptionError", "SlotNotification",
        "RootNotification", "AccountNotification", "AccountNotificationJsonParsed", "ProgramNotification",
        "ProgramNotificationJsonParsed", "LogsNotification", "SignatureNotification",
    }  # fmt: skip
    assert kinds["AccountNotification"] >= 4


async def test_solders_parses_fork_frames(helius, session) -> None:
    """Every notification of a run with forks parses with solders, the forked slots' ones included
    ("receivedSignature" values left out: solders 0.29 rejects them although Agave sends them)."""
    pytest.importorskip("solders", reason="solders is a test-only dependency")
    from solders.rpc import responses as r

    emulator, client, _ = await fork_run(helius, session, 12)
    forked, kinds = set(emulator.forked_slots), Counter[str]()
    for raw in client.raw_notes:
        frame = json.loads(raw)
        result = frame["params"]["result"]
        if isinstance(result, dict) and result.get("value") == "receivedSignature":
            continue
        (msg,) = r.parse_websocket_message(raw)
        assert msg.subscription == frame["params"]["subscription"]
        if isinstance(msg, r.SlotNotification):
            slot = msg.result.slot
            assert (slot, msg.result.parent, msg.result.root) == tuple(result.values())
        elif isinstance(msg, r.RootNotification):
            slot = msg.result
            assert slot not in forked
        else:
            slot = msg.result.context.slot
            assert slot == result["context"]["slot"]
        kinds[type(msg).__name__ + (" fork" if slot in forked else "")] += 1
    assert {k for k in kinds if k.endswith(" fork")} == {
        "SlotNotification fork", "AccountNotification fork", "ProgramNotification fork",
        "LogsNotification fork", "SignatureNotification fork",
    }  # fmt: skip
    assert kinds["RootNotification"] > 0 and kinds["SignatureNotification"] == 1  # the landing one


async def test_solana_py_client_subscribes_receives_and_unsubscribes(helius) -> None:
    """The `solana` package's SolanaWsClient talks to the emulator: typed confirmations, typed notifications
    routed to its handles, confirmed unsubscribes, and the signature handle dropped after its answer."""
    pytest.importorskip("solana.rpc.websocket_api", reason="solana-py is a test-only dependency")
    from solana.rpc.commitment import Processed
    from solana.rpc.websocket_api import SolanaWsClient
    from solders.pubkey import Pubkey
    from solders.rpc import responses as r
    from solders.rpc.config import RpcTransactionLogsFilterMentions
    from solders.signature import Signature

    emulator = await helius()
    async with SolanaWsClient(f"{emulator.url}?api-key={KEY}", request_timeout=5) as client:
        slot_sub = await client.slot_subscribe()
        account_sub = await client.account_subscribe(
            pubkey=Pubkey.from_string(WALLETS["A"]), commitment=Processed, encoding="base64"
        )
        logs_sub = await client.logs_subscribe(
            filter_=RpcTransactionLogsFilterMentions(Pubkey.from_string(TOKEN_PROGRAM)), commitment=Processed
        )
        slot_n, sig = emulator.upcoming_signature(3)
        sig_sub = await client.signature_subscribe(signature=Signature.from_string(sig), commitment=Processed)
        handles = {
            r.SlotNotification: slot_sub, r.AccountNotification: account_sub,
            r.LogsNotification: logs_sub, r.SignatureNotification: sig_sub,
        }  # fmt: skip
        seen: dict[type, Any] = {}
        async with asyncio.timeout(10):
            while len(seen) < len(handles):
                note = await client.recv()
                assert note.subscription == handles[type(note)].subscription_id
                seen.setdefault(type(note), note)
        assert seen[r.SignatureNotification].result.context.slot == slot_n
        assert seen[r.AccountNotification].result.value.owner == Pubkey.from_string(SYSTEM_PROGRAM)
        assert TOKEN_PROGRAM in seen[r.LogsNotification].result.value.logs[0]
        for handle in (slot_sub, account_sub, logs_sub):
            await client.unsubscribe(handle)
        with pytest.raises(ValueError, match="no longer active"):
            await client.unsubscribe(sig_sub)  # the client, like the node, dropped it after the answer
    assert not any(c.subscriptions for c in emulator.connections)
    assert emulator.subscriptions_total == 4
