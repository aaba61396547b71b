"""Bitquery protocol on plain frames, over both subprotocols: no socket, no event loop."""

from __future__ import annotations

import json
import time

import pytest

from ingest.arrow_batch import build_table
from ingest.errors import ConfigError
from ingest.events import FatalError, Notice, Reconnect, Rejected, Rows, SubscriptionAcked, SubscriptionFailed
from ingest.protocols.bitquery import LEGACY, TRANSPORT, BitqueryProtocol
from tests.conftest import frame

TRANSFERS = """subscription { EVM(network: eth) { Transfers {
  Block { Number Hash Time } Transaction { Hash From Index } Log { Index }
  Transfer { Amount Sender Receiver Type
    Currency { Symbol Name SmartContract Decimals Native Fungible } } } } }"""
BLOCKS = (
    "subscription { EVM(network: eth) { Blocks { Block { Number Hash ParentHash Time TxCount GasUsed } } } }"
)
BALANCES = """subscription RealTimeLP($lps: [String!]) {
  EVM(network: eth) {
    BalanceUpdates(where: {BalanceUpdate: {Address: {in: $lps}},
                           Currency: {SmartContract: {is: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"}}}) {
      balance: sum(of: BalanceUpdate_Amount)
      Address: BalanceUpdate { Address }
    }
  }
}"""


def rows_of(table) -> list[dict]:
    """Table rows as dicts, without the nanosecond receive time (datetime cannot hold it)."""
    return table.drop_columns(["_received_at"]).to_pylist()


def proto(*subs: dict, subprotocol: str = TRANSPORT) -> BitqueryProtocol:
    specs = [BitqueryProtocol.parse_subscription(s, f"s[{i}]") for i, s in enumerate(subs)]
    return BitqueryProtocol(
        "bitquery", specs, BitqueryProtocol.parse_options({"subprotocol": subprotocol}, "p")
    )


def handshake(p: BitqueryProtocol) -> list[dict]:
    p.connect()
    assert [json.loads(f) for f in p.data_to_send()] == [{"type": "connection_init"}]
    assert p.receive(b'{"type":"connection_ack"}', 1) == []
    return [json.loads(f) for f in p.data_to_send()]


@pytest.mark.parametrize(("subprotocol", "start"), [(LEGACY, "start"), (TRANSPORT, "subscribe")])
def test_operations_start_only_after_the_ack_each_with_its_own_id(subprotocol, start):
    p = proto(
        {"name": "blocks", "query": BLOCKS},
        {"name": "lp", "query": BALANCES, "variables": {"lps": ["0xc7"]}},
        subprotocol=subprotocol,
    )
    assert p.subprotocols == (subprotocol,)
    sent = handshake(p)
    assert [m["type"] for m in sent] == [start, start]
    assert [m["id"] for m in sent] == ["1", "2"]
    assert sent[0]["payload"] == {"query": BLOCKS}
    assert sent[1]["payload"]["variables"] == {"lps": ["0xc7"]}


def test_resubscribes_with_fresh_ids_after_a_reconnect():
    p = proto({"name": "blocks", "query": BLOCKS})
    handshake(p)
    p.connection_lost()
    p.connect()
    p.data_to_send()
    assert p.data_to_send() == []  # nothing before the new ack
    p.receive(b'{"type":"connection_ack"}', 1)
    assert [json.loads(f)["id"] for f in p.data_to_send()] == ["2"]


def test_a_second_ack_on_one_connection_is_quarantined_and_starts_nothing_again():
    p = proto({"name": "blocks", "query": BLOCKS})
    handshake(p)
    events = p.receive(b'{"type":"connection_ack"}', 2)
    assert [type(e).__name__ for e in events] == ["Rejected"]
    assert "acknowledged connection" in events[0].reason and events[0].raw == b'{"type":"connection_ack"}'
    assert p.data_to_send() == []  # the operation runs once, under its one id
    assert p.state()["ops"] == {"1": "blocks"}


@pytest.mark.parametrize(("subprotocol", "name"), [(LEGACY, "data_transfers"), (TRANSPORT, "data_transfers")])
def test_a_data_frame_becomes_one_rows_event_for_its_cube(subprotocol, name, registry):
    p = proto({"name": "eth_transfers", "query": TRANSFERS}, subprotocol=subprotocol)
    handshake(p)
    raw = frame("bitquery", name)
    if subprotocol == TRANSPORT:
        raw = raw.replace(b'"type":"data"', b'"type":"next"')
    acked, rows = p.receive(raw, 42)
    assert acked == SubscriptionAcked("eth_transfers")
    assert isinstance(rows, Rows) and rows.dataset == "bitquery_evm_transfers" and len(rows.records) == 2
    assert rows.context == {"network": "eth", "mempool": False}
    table = build_table(registry[rows.dataset], [rows]).table
    row = rows_of(table)[0]
    assert (row["network"], row["block_number"], row["transaction_index"], row["log_index"]) == (
        "eth",
        21000000,
        23,
        7,
    )
    assert row["transfer_currency_symbol"] == "USDT" and row["transfer_currency_decimals"] == 6
    assert row["transfer_amount"] == "340282366920938463463374607431.768211457"  # exact
    assert row["_event_time"].isoformat() == "2025-11-11T18:42:15+00:00"
    assert p.receive(raw, 43)[0].dataset == "bitquery_evm_transfers"  # acked once only


def test_the_same_event_twice_gets_the_same_derived_tracing_id(registry):
    p = proto({"name": "t", "query": TRANSFERS}, subprotocol=LEGACY)
    handshake(p)
    (_, first), (second,) = (
        p.receive(frame("bitquery", "data_transfers"), 1),
        p.receive(frame("bitquery", "data_transfers"), 2),
    )
    table = build_table(registry["bitquery_evm_transfers"], [first, second]).table
    ids = table["_tracing_id"].to_pylist()
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]
    assert table["_dedup_key"].to_pylist() == ids


def test_next_frames_of_blocks(registry):
    p = proto({"name": "blocks", "query": BLOCKS})
    handshake(p)
    _, rows = p.receive(frame("bitquery", "next_blocks"), 1)
    row = rows_of(build_table(registry["bitquery_evm_blocks"], [rows]).table)[0]
    assert (row["block_number"], row["block_tx_count"], row["block_gas_used"]) == (21000001, 151, "14984339")
    assert row["block_parent_hash"].startswith("0x7b5c")


def test_aliases_map_back_to_fields_and_aggregates_keep_their_names(registry):
    """The seed's BalanceUpdates query: `Address: BalanceUpdate {...}` and `balance: sum(...)`."""
    p = proto({"name": "lp", "query": BALANCES, "variables": {"lps": ["0xc74b"]}}, subprotocol=LEGACY)
    handshake(p)
    raw = frame("bitquery", "data_balance_updates")
    _, rows = p.receive(raw, 1)
    assert rows.dataset == "bitquery_evm_balance_updates"
    row = rows_of(build_table(registry[rows.dataset], [rows]).table)[0]
    assert row["balance_update_address"] == "0xc74b026fab49d2380ffc6f53908c2ae6d14aa3b6"
    assert json.loads(row["metrics"]) == {"balance": "123.45"}
    assert (
        json.loads(row["_raw"]) == json.loads(raw)["payload"]["data"]["EVM"]["BalanceUpdates"][0]
    )  # as received


def test_aliased_cubes_and_fields_land_in_the_right_columns(registry):
    query = """subscription { chain: EVM(network: bsc) { big: Transfers { Block { n: Number }
      Transfer { amt: Amount Currency { sym: Symbol } } } } }"""
    p = proto({"name": "t", "query": query})
    handshake(p)
    msg = {
        "type": "next",
        "id": "1",
        "payload": {
            "data": {
                "chain": {
                    "big": [{"Block": {"n": "5"}, "Transfer": {"amt": "10", "Currency": {"sym": "BUSD"}}}]
                }
            }
        },
    }
    _, rows = p.receive(json.dumps(msg), 1)
    row = rows_of(build_table(registry[rows.dataset], [rows]).table)[0]
    assert (row["network"], row["block_number"], row["transfer_amount"], row["transfer_currency_symbol"]) == (
        "bsc",
        5,
        "10",
        "BUSD",
    )


def test_network_can_come_from_a_variable():
    p = proto(
        {
            "name": "b",
            "query": "subscription ($n: evm_network) { EVM(network: $n) { Blocks { Block { Number } } } }",
            "variables": {"n": "base"},
        }
    )
    handshake(p)
    _, rows = p.receive(
        b'{"type":"next","id":"1","payload":{"data":{"EVM":{"Blocks":[{"Block":{"Number":"1"}}]}}}}', 1
    )
    assert rows.context["network"] == "base"


def test_variables_default_to_their_values_in_the_document():
    query = (
        "subscription ($net: evm_network = bsc, $mp: Boolean = true)"
        " { EVM(network: $net, mempool: $mp) { Transfers { Block { Number } } } }"
    )
    (cube,) = BitqueryProtocol.parse_subscription({"name": "t", "query": query}, "s").cubes.values()
    assert cube.context == {"network": "bsc", "mempool": True}  # what Bitquery streams
    given = {"name": "t", "query": query, "variables": {"net": "eth", "mp": False}}
    (cube,) = BitqueryProtocol.parse_subscription(given, "s").cubes.values()
    assert cube.context == {"network": "eth", "mempool": False}
    unbound = "subscription ($n: evm_network) { EVM(network: $n) { Blocks { Block { Number } } } }"
    with pytest.raises(ConfigError, match=r"s\.query: EVM\(network: \.\.\.\) has no value"):
        BitqueryProtocol.parse_subscription({"name": "b", "query": unbound}, "s")


def test_tron_mempool_transfers_and_unknown_shapes(registry):
    tron = (
        "subscription { Tron(mempool: true) { Transfers {"
        " Transfer { Sender Receiver Amount Currency { Symbol } } } } }"
    )
    sol = "subscription { Solana { Instructions { Instruction { Index } } } }"
    p = proto({"name": "tron", "query": tron}, {"name": "sol", "query": sol})
    handshake(p)
    _, rows = p.receive(
        json.dumps(
            {
                "type": "next",
                "id": "1",
                "payload": {
                    "data": {
                        "Tron": {
                            "Transfers": [
                                {
                                    "Transfer": {
                                        "Sender": "TXyz",
                                        "Receiver": "TAbc",
                                        "Amount": "12.5",
                                        "Currency": {"Symbol": "USDT"},
                                    }
                                }
                            ]
                        }
                    }
                },
            }
        ),
        1,
    )
    assert rows.dataset == "bitquery_tron_transfers" and rows.context == {"network": "tron", "mempool": True}
    _, generic = p.receive(
        json.dumps(
            {
                "type": "next",
                "id": "2",
                "payload": {
                    "data": {
                        "Solana": {
                            "Instructions": [{"Instruction": {"Index": 0}}, {"Instruction": {"Index": 1}}]
                        }
                    }
                },
            }
        ),
        1,
    )
    assert generic.dataset == "bitquery_generic" and len(generic.records) == 2
    row = rows_of(build_table(registry["bitquery_generic"], [generic]).table)[0]
    assert (row["root"], row["cube"], json.loads(row["_raw"])) == (
        "Solana",
        "Instructions",
        {"Instruction": {"Index": 0}},
    )


@pytest.mark.parametrize(("subprotocol", "name"), [(LEGACY, "error_legacy"), (TRANSPORT, "error_transport")])
def test_a_graphql_error_stops_that_subscription_only(subprotocol, name):
    p = proto({"name": "bad", "query": BLOCKS}, {"name": "good", "query": TRANSFERS}, subprotocol=subprotocol)
    handshake(p)
    (event,) = p.receive(frame("bitquery", name), 1)
    assert isinstance(event, SubscriptionFailed) and event.subscription == "bad" and not event.retryable
    assert "Foo" in event.message or "$lps" in event.message
    assert p.active == 1
    p.connection_lost()
    p.connect()
    p.data_to_send()
    p.receive(b'{"type":"connection_ack"}', 1)
    assert [json.loads(f)["payload"]["query"] for f in p.data_to_send()] == [TRANSFERS]  # not asked again


@pytest.mark.parametrize(
    "message",
    [
        "points limit exceeded: usage quota reached",
        "Too Many Sessions: 429",
        "too many concurrent subscriptions",
        "exceeded the maximum number of subscriptions per user id",
        "No active billing period",
    ],
)
@pytest.mark.parametrize("subprotocol", [LEGACY, TRANSPORT])
def test_a_plan_limit_error_starts_that_subscription_again_later(subprotocol, message):
    """A plan's limit (PROTOCOLS.md 1.6) clears with time: the subscription is started again once
    `plan_limit_retry` has passed, at a keep-alive or at the next connection's ack, not before."""

    def refused(seconds_ago: float) -> BitqueryProtocol:
        p = proto(
            {"name": "blocks", "query": BLOCKS},
            {"name": "transfers", "query": TRANSFERS},
            subprotocol=subprotocol,
        )
        handshake(p)
        error = {"type": "error", "id": "1", "payload": [{"message": message}]}
        (event,) = p.receive(json.dumps(error), time.time_ns() - int(seconds_ago * 1e9))
        assert isinstance(event, SubscriptionFailed) and event.retryable and event.subscription == "blocks"
        assert "started again in 300 s" in event.message and p.active == 2
        return p

    def started(p: BitqueryProtocol) -> list[str]:
        return [json.loads(f)["payload"]["query"] for f in p.data_to_send() if '"payload"' in f]

    p = refused(0)
    p.keepalive()
    assert started(p) == []  # not yet
    p.connection_lost()
    p.connect()
    p.receive(b'{"type":"connection_ack"}', 1)
    assert started(p) == [TRANSFERS]  # the refused one still waits
    p = refused(301)
    p.keepalive()
    assert started(p) == [BLOCKS]
    p = refused(301)
    p.connection_lost()
    p.connect()
    p.receive(b'{"type":"connection_ack"}', 1)
    assert started(p) == [BLOCKS, TRANSFERS]


def test_keepalives_and_pings():
    legacy = proto({"name": "b", "query": BLOCKS}, subprotocol=LEGACY)
    handshake(legacy)
    assert legacy.receive(b'{"type":"ka"}', 1) == []
    legacy.keepalive()
    assert legacy.data_to_send() == []  # graphql-ws has no client ping
    new = proto({"name": "b", "query": BLOCKS})
    handshake(new)
    assert new.receive(b'{"type":"ping"}', 1) == [] and new.data_to_send() == ['{"type":"pong"}']
    assert new.receive(b'{"type":"pong"}', 1) == []
    new.keepalive()
    assert new.data_to_send() == ['{"type":"ping"}']


def test_close_sends_complete_for_every_operation():
    p = proto({"name": "a", "query": BLOCKS}, {"name": "b", "query": TRANSFERS}, subprotocol=LEGACY)
    handshake(p)
    p.close()
    assert [json.loads(f) for f in p.data_to_send()] == [
        {"type": "complete", "id": "1"},
        {"type": "complete", "id": "2"},
    ]
    assert p.closed


def test_connection_error_before_the_ack_is_a_refusal_of_the_token():
    p = proto({"name": "a", "query": BLOCKS}, subprotocol=LEGACY)
    p.connect()
    (event,) = p.receive(b'{"type":"connection_error","payload":{"message":"Unauthorized"}}', 1)
    assert event == FatalError("connection refused: Unauthorized", auth=True)


def test_connection_error_before_the_ack_over_a_plan_limit_is_no_refusal_of_the_token():
    """Too Many Sessions (PROTOCOLS.md 1.6) is the plan's, not the token's: no new token, and not
    fatal either: a lost connection that waits out plan_limit_retry before the next connect."""
    p = proto({"name": "a", "query": BLOCKS}, subprotocol=LEGACY)
    p.connect()
    (event,) = p.receive(b'{"type":"connection_error","payload":{"message":"Too Many Sessions: 429"}}', 1)
    assert event == Reconnect(
        "connection refused: Too Many Sessions: 429 (a plan limit: connecting again in 300 s)",
        retry_after=300.0,
    )
    assert p.active == 1


@pytest.mark.parametrize("subprotocol", [LEGACY, TRANSPORT])
def test_the_handshake_is_awaited_from_each_connect_until_its_ack(subprotocol):
    """What the driver's handshake_timeout watches (PROTOCOLS.md 1.11 step 2): keep-alives are no ack."""
    p = proto({"name": "a", "query": BLOCKS}, subprotocol=subprotocol)
    p.connect()
    assert p.awaiting_handshake
    assert p.receive(b'{"type":"ka"}', 1) == [] and p.receive(b'{"type":"pong"}', 1) == []
    assert p.awaiting_handshake
    p.receive(b'{"type":"connection_ack"}', 2)
    assert not p.awaiting_handshake
    p.connection_lost()
    p.connect()
    assert p.awaiting_handshake


def _started(p: BitqueryProtocol) -> list[str]:
    return [json.loads(f)["payload"]["query"] for f in p.data_to_send() if '"payload"' in f]


@pytest.mark.parametrize("subprotocol", [LEGACY, TRANSPORT])
def test_a_result_with_errors_and_no_data_ends_the_operation_as_an_error_does(subprotocol):
    """The Apollo reference answers a bad document with data{errors} and then complete: the
    subscription fails (not a Notice, then started again every keep-alive, forever)."""
    data = "data" if subprotocol == LEGACY else "next"
    p = proto({"name": "bad", "query": BLOCKS}, {"name": "good", "query": TRANSFERS}, subprotocol=subprotocol)
    handshake(p)
    invalid = {"message": 'Cannot query field "Foo" on type "EVM".', "locations": [{"line": 1, "column": 9}]}
    (event,) = p.receive(
        json.dumps({"type": data, "id": "1", "payload": {"data": None, "errors": [invalid]}}), 1
    )
    assert event == SubscriptionFailed("bad", invalid["message"], retryable=False)
    assert p.active == 1 and p.state()["ops"] == {"2": "good"}
    # Stopped on the server too: an execution error need not end an operation there. With
    # `complete` on both subprotocols: Bitquery ignores graphql-ws's `stop` (PROTOCOLS.md 1.6).
    assert [json.loads(f) for f in p.data_to_send()] == [{"type": "complete", "id": "1"}]
    assert p.receive(b'{"type":"complete","id":"1"}', 2) == []  # ended already: nothing to restart
    p.keepalive()
    assert _started(p) == []
    # Over a plan's limit, or a passing failure: asked again later, as after an `error` frame.
    op = "2"
    for message, wait in (("points limit exceeded: usage quota reached", 300), ("Internal server error", 5)):
        failing = {"message": message, "path": ["EVM"], "locations": [{"line": 1, "column": 16}]}
        frame_ = {"type": data, "id": op, "payload": {"errors": [failing]}}
        (event,) = p.receive(json.dumps(frame_), time.time_ns() - int(wait * 1e9) - 1)
        assert isinstance(event, SubscriptionFailed) and event.retryable and event.subscription == "good"
        assert f"started again in {wait} s" in event.message and p.active == 1
        p.keepalive()
        (start,) = [json.loads(f) for f in p.data_to_send() if '"payload"' in f]
        assert start["payload"]["query"] == TRANSFERS  # its wait is over (the frame came that long ago)
        op = start["id"]


@pytest.mark.parametrize("subprotocol", [LEGACY, TRANSPORT])
def test_rows_in_flight_after_a_result_of_errors_only_still_reach_their_table(subprotocol):
    """Stopping the operation takes a round trip: what the server sent meanwhile is its data
    (PROTOCOLS.md 1.5: results may follow an execution error), not the generic table's."""
    data = "data" if subprotocol == LEGACY else "next"
    p = proto({"name": "blocks", "query": BLOCKS}, subprotocol=subprotocol)
    handshake(p)

    def block(number: int) -> str:
        fields = {"Number": number, "Hash": f"0x{number:x}", "ParentHash": "0x0", "TxCount": 1, "GasUsed": 9}
        row = {"Block": {**fields, "Time": "2024-01-01T00:00:00Z"}}
        return json.dumps({"type": data, "id": "1", "payload": {"data": {"EVM": {"Blocks": [row]}}}})

    acked, first = p.receive(block(1), 1)
    assert acked == SubscriptionAcked("blocks") and first.dataset == "bitquery_evm_blocks"
    failing = {"type": data, "id": "1", "payload": {"errors": [{"message": "Internal server error"}]}}
    (failed,) = p.receive(json.dumps(failing), time.time_ns())
    assert isinstance(failed, SubscriptionFailed) and failed.retryable
    assert p.state()["stopped"] == {"1": "blocks"}
    (late,) = p.receive(block(2), 3)  # no second ack: the operation is stopped
    assert (late.dataset, late.subscription, late.context) == ("bitquery_evm_blocks", "blocks", first.context)
    # A replay after a crash routes it alike (the state is journaled before the stop goes out).
    again = proto({"name": "blocks", "query": BLOCKS}, subprotocol=subprotocol)
    again.load_state(p.state())
    (replayed,) = again.receive(block(2), 3)
    assert (replayed.dataset, replayed.subscription) == ("bitquery_evm_blocks", "blocks")
    p.connection_lost()  # ids are per socket
    assert p.state()["stopped"] == {}
    (other,) = [e for e in p.receive(block(3), 4) if isinstance(e, Rows)]
    assert (other.dataset, other.subscription) == ("bitquery_generic", "operation 1")


@pytest.mark.parametrize("message", ["connection failed", "Internal server error"])
@pytest.mark.parametrize("subprotocol", [LEGACY, TRANSPORT])
def test_a_passing_error_starts_the_subscription_again_backing_off(subprotocol, message):
    """Only a parse or validation error is the query's fault; "connection failed" (PROTOCOLS.md
    1.6) or a server's internal error is asked again, each failure in a row waiting twice as long,
    and the only subscription failing so does not stop the collector (active stays 1)."""
    p = proto({"name": "blocks", "query": BLOCKS}, subprotocol=subprotocol)
    handshake(p)
    waits = []
    for op in map(str, range(1, 9)):
        error = {"type": "error", "id": op, "payload": [{"message": message}]}
        now = time.time_ns()
        (event,) = p.receive(json.dumps(error), now)
        assert isinstance(event, SubscriptionFailed) and event.retryable and p.active == 1
        waits.append(event.message)
        p.keepalive()
        assert _started(p) == []  # not before its wait
        p._again.later("blocks", now)  # its wait is over
        p.keepalive()
        assert _started(p) == [BLOCKS]
    # Doubling up to the README's 5 minutes, and no further.
    assert waits == [f"{message} (started again in {s} s)" for s in (5, 10, 20, 40, 80, 160, 300, 300)]
    # Data again: the next failure waits the first wait again.
    p.receive(b'{"type":"%s","id":"9","payload":{"data":{"EVM":{"Blocks":[{}]}}}}' % p._data.encode(), 1)
    (event,) = p.receive(json.dumps({"type": "error", "id": "9", "payload": [{"message": message}]}), 2)
    assert event.message.endswith("(started again in 5 s)")


def test_server_complete_restarts_the_subscription_after_a_second_backing_off():
    """Nothing of it arrives until it is started again: the driver is told to, a second later
    (not at the next 20 s keep-alive); a server that keeps ending it gets 2, 4, ... s."""
    p = proto({"name": "a", "query": BLOCKS})
    handshake(p)
    now = time.time_ns()
    (event,) = p.receive(b'{"type":"complete","id":"1"}', now)
    assert isinstance(event, Notice) and event.message.endswith("starting it again in 1 s")
    assert p.next_due() == now + 10**9
    p.keepalive()
    assert [json.loads(f)["type"] for f in p.data_to_send()] == ["ping"]  # not due yet
    earlier = now - 5 * 10**9  # as if received 5 s ago: due by now
    p.receive(b'{"type":"complete","id":"1"}', earlier)  # already ended: nothing to restart
    p._again.later("a", earlier)
    p.keepalive()
    (start,) = [json.loads(f) for f in p.data_to_send() if json.loads(f)["type"] == "subscribe"]
    (event,) = p.receive(json.dumps({"type": "complete", "id": start["id"]}), now)
    assert event.message.endswith("starting it again in 2 s")  # ended again without data


@pytest.mark.parametrize(
    "raw",
    [b"nope", b'{"id":"1"}', b'{"type":"data","id":"1","payload":{"data":{"EVM":[1]}}}', b'{"type":"weird"}'],
)
def test_bad_frames_are_rejected_never_raised(raw):
    p = proto({"name": "a", "query": BLOCKS}, subprotocol=LEGACY)
    handshake(p)
    (event,) = p.receive(raw, 1)
    assert isinstance(event, Rejected) and event.raw == raw


@pytest.mark.parametrize(
    ("sub", "message"),
    [
        ({"name": "x", "query": "subscription { EVM(network: eth) { Blocks { "}, "s.query: Syntax Error"),
        ({"name": "x", "query": "query { EVM { Blocks { Block { Number } } } }"}, "not a subscription"),
        (
            {"name": "x", "query": "subscription { EVM { Blocks { x } } Tron { Transfers { x } } }"},
            "exactly one root",
        ),
        ({"name": "x"}, "either query or query_file"),
        ({"query": BLOCKS}, "s.name"),
        ({"name": "x", "query_file": "missing.graphql"}, "s.query_file: cannot read"),
        ({"name": "x", "query": BLOCKS, "vars": {}}, "s.vars: unknown key"),
    ],
)
def test_bad_subscriptions_fail_at_config_time(sub, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        BitqueryProtocol.parse_subscription(sub, "s", tmp_path)


def test_query_file_next_to_the_config(tmp_path):
    (tmp_path / "blocks.graphql").write_text(BLOCKS)
    sub = BitqueryProtocol.parse_subscription({"name": "b", "query_file": "blocks.graphql"}, "s", tmp_path)
    assert sub.query == BLOCKS and ("EVM", "Blocks") in sub.cubes


def test_subprotocol_option_is_validated():
    with pytest.raises(ConfigError, match=r"p\.subprotocol"):
        BitqueryProtocol.parse_options({"subprotocol": "graphql"}, "p")


ALIASED = """subscription { EVM(network: eth) { Transfers { Block { n: Number }
  Transfer { a: Amount Amount b: Amount(in: USD) Currency { sym: Symbol } }
  Args: Arguments { name: Name } total: sum(of: Transfer_Amount) } } }"""


def test_aliases_map_back_exactly_and_raw_keeps_the_rows_as_received():
    p = proto({"name": "t", "query": ALIASED})
    handshake(p)
    rows = [
        rb'{"Block":{"n":"5"},"Transfer":{"a":"1","Amount":"2","b":"3","Currency":{"sym":"caf\u00e9 \"x\""}},'
        rb'"Args":[{"name":"p"},{"name":"q"}],"total":"9","extra":null}',
        b'{"Transfer":{"a":"1","b":"3"}}',  # without the field itself, the first alias takes its name
        b'{"Transfer":{"b":"3","a":"1"}}',
        b'{ "Block" : { "n" : 6 } }',
        b'{"Block":null,"Args":[],"Transfer":{"Currency":[{"sym":"A"},{"sym":"B"}]}}',
    ]
    frame = b'{"type":"next","id":"1","payload":{"data":{"EVM":{"Transfers":[%s]}}}}' % b",\n ".join(rows)
    _, event = p.receive(frame, 1)
    assert event.raw == rows
    assert event.records == [
        b'{"Block":{"Number":"5"},"Transfer":{"a":"1","Amount":"2","b":"3",'
        b'"Currency":{"Symbol":"caf\xc3\xa9 \\"x\\""}},'
        b'"Arguments":[{"Name":"p"},{"Name":"q"}],"extra":null,"metrics":{"total":"9"}}',
        b'{"Transfer":{"Amount":"1","b":"3"}}',
        b'{"Transfer":{"Amount":"3","a":"1"}}',
        b'{"Block":{"Number":6}}',
        b'{"Block":null,"Arguments":[],"Transfer":{"Currency":[{"Symbol":"A"},{"Symbol":"B"}]}}',
    ]


def test_rows_without_aliases_are_the_bytes_received():
    p = proto({"name": "b", "query": BLOCKS})
    handshake(p)
    rows = [b'{"Block": {"Number":"1"}}', b'{"Block":{"Hash":"\\u0041\\"","L":[1, [2]]}}']
    raw = b'{"type":"next","id":"1","payload":{"data":{"EVM":{"Blocks":[ %s ,\n\t%s]}}}}' % tuple(rows)
    _, event = p.receive(raw, 1)
    assert event.records == rows
    assert event.raw is None


@pytest.mark.parametrize(
    "data",
    [b"null", b"{}", b'{"EVM":null}', b'{"EVM":{}}', b'{"EVM":{"Blocks":null}}', b'{"EVM":{"Blocks":[]}}'],
)
def test_empty_results_are_no_events_and_no_ack(data):
    p = proto({"name": "b", "query": BLOCKS})
    handshake(p)
    assert p.receive(b'{"type":"next","id":"1","payload":{"data":%s}}' % data, 1) == []
    _, rows = p.receive(b'{"type":"next","id":"1","payload":{"data":{"EVM":{"Blocks":[{}]}}}}', 2)
    assert p.receive(b'{"type":"next","id":"1","payload":{"data":{"EVM":{"Blocks":[{}]}}}}', 2) == [rows]


def test_a_rejected_frame_does_not_count_as_the_first_data():
    p = proto({"name": "b", "query": BLOCKS})
    handshake(p)
    half_bad = b'{"type":"next","id":"1","payload":{"data":{"EVM":{"Blocks":[{}]},"Tron":[1]}}}'
    assert [type(e) for e in p.receive(half_bad, 1)] == [Rejected]
    good = b'{"type":"next","id":"1","payload":{"data":{"EVM":{"Blocks":[{}]}}}}'
    assert [type(e) for e in p.receive(good, 2)] == [SubscriptionAcked, Rows]


# Data frames are read in one typed pass; any frame that pass cannot take goes to the general reader.
# Both must give the same events: these frames, of every shape, are read by both and compared.
SHAPES = [
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[{"Block":{"n":"1"}}]}}}}',
    b'{"type":"data","id":1,"payload":{"data":{"EVM":{"Transfers":[{"Block":{"n":"1"}}]}}}}',
    b'{"type":"data","id":"7","payload":{"data":{"EVM":{"Transfers":[{"a":1}]}}}}',  # unknown operation
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":{"Block":{"n":"1"}}}}}}',  # one row
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":"x"}}}}',
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[1,"a",null,[{"n":2}]]}}}}',
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[{"a":1}],"Blocks":[{"b":2}]},"X":null}}}',
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[{"a":1}]}},"errors":[{"message":"m"}]}}',
    b'{"type":"data","id":"1","payload":{"errors":[{"message":"only errors"}]}}',
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[{"a":"\\ud83d\\ude00\\u00e9"}]}}}}',
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[{"a":1}]}}},"extra":[{"x":1}]}',
    b' {"payload" : {"data":{"EVM" : {"Transfers" : [ {"a" : 1} ]}}}, "id":"1", "type":"data"} ',
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[{"a":1}]}}}',  # truncated
    b'{"type":"data","id":"1","payload":{"data":{"EVM":{"Transfers":[{"a":1},]}}}}',
    b'{"type":"data","id":"1","payload":{"data":{"EVM":[1]}}}',
    b'{"type":"data","id":"1","payload":{"data":[]}}',
    b'{"type":"data","id":"1","payload":null}',
    b'{"type":"data","id":"1"}',
    b'{"type":"data","payload":{"data":{"EVM":{"Transfers":[{"a":1}]}}}}',
    b'{"type":"error","id":"1","payload":{"errors":[{"message":"bad"}]}}',
    b'{"type":"ka","payload":{"data":{"EVM":{"Transfers":[{"a":1}]}}}}',
]


@pytest.mark.parametrize("subprotocol", [LEGACY, TRANSPORT])
@pytest.mark.parametrize("raw", SHAPES)
def test_the_typed_and_the_general_reader_agree(raw, subprotocol):
    if subprotocol == TRANSPORT:
        raw = raw.replace(b'"type":"data"', b'"type":"next"')
    query = ALIASED.replace("Transfers {", "Transfers { Block { n: Number } } Blocks {", 1)
    both = [proto({"name": "t", "query": query}, subprotocol=subprotocol) for _ in range(2)]
    for p in both:
        handshake(p)
    fast, general = both
    for text in (raw, raw.decode("utf-8")):
        assert fast.receive(text, 1) == general._receive_any(text, 1)
        assert fast.state() == general.state() and fast.active == general.active


def test_the_silence_hint_names_the_cubes_bitquery_never_pushes_or_sunset():
    """What the driver's silent-subscription warning says (PROTOCOLS.md 1.6), aliases seen through."""
    p = BitqueryProtocol(
        "bitquery",
        [
            BitqueryProtocol.parse_subscription({"name": n, "query": q}, f"s[{i}]")
            for i, (n, q) in enumerate(
                [
                    ("uncles", "subscription { EVM(network: eth) { u: Uncles { Block { Number } } } }"),
                    (
                        "balances",
                        "subscription { EVM(network: eth) { BalanceUpdates { Block { Number } } } }",
                    ),
                    ("blocks", BLOCKS),
                ]
            )
        ],
    )
    assert (
        p.silence_hint("uncles")
        == "EVM.Uncles: Bitquery accepts a subscription and never pushes (query it instead)"
    )
    assert p.silence_hint("balances").startswith("EVM.BalanceUpdates: sunset by Bitquery on 10 August 2026")
    assert "concurrent-subscription cap" in p.silence_hint("blocks")


def test_aliased_rows_keep_json_numbers_exactly(registry):
    """Renaming an aliased row decodes and encodes it again: numbers go through as decimals, not
    doubles, so an amount keeps every digit and one beyond a double's range fails nothing."""
    query = (
        "subscription { EVM(network: eth) { Transfers { Block { n: Number } Transfer { amt: Amount } } } }"
    )
    p = proto({"name": "t", "query": query})
    handshake(p)
    amounts = ["123456789.123456789123456789", "1E400", "340282366920938463463374607431768211457"]
    rows_json = ",".join(f'{{"Block":{{"n":{i}}},"Transfer":{{"amt":{a}}}}}' for i, a in enumerate(amounts))
    msg = '{"type":"next","id":"1","payload":{"data":{"EVM":{"Transfers":[' + rows_json + "]}}}}"
    _, rows = p.receive(msg, 1)
    result = build_table(registry[rows.dataset], [rows])
    assert result.rejected == []
    assert result.table["transfer_amount"].to_pylist() == [
        "123456789.123456789123456789",
        "1E+400",
        amounts[2],
    ]


@pytest.mark.parametrize("subprotocol", [LEGACY, TRANSPORT])
def test_a_start_waiting_out_its_backoff_tells_the_driver_when_it_is_due(subprotocol):
    """next_due(): the driver calls keepalive() when a refused start's wait is over (5 s after a
    passing error), not at its next 20 s tick; nothing is due before the ack or after the goodbye
    (neither starts anything)."""
    p = proto(
        {"name": "blocks", "query": BLOCKS},
        {"name": "transfers", "query": TRANSFERS},
        subprotocol=subprotocol,
    )
    handshake(p)
    assert p.next_due() is None
    now = time.time_ns()
    p.receive(json.dumps({"type": "error", "id": "1", "payload": [{"message": "connection failed"}]}), now)
    assert p.next_due() == now + 5 * 10**9
    p.connection_lost()
    p.connect()
    assert p.next_due() is None  # the ack starts what is due
    p.receive(b'{"type":"connection_ack"}', 1)
    assert p.next_due() == now + 5 * 10**9
    p.close()
    assert p.next_due() is None
