"""Helius / Solana PubSub protocol on plain frames: ids, routing, remapping, single-shot signatures."""

from __future__ import annotations

import json

import pytest

from ingest.arrow_batch import build_table
from ingest.errors import ConfigError
from ingest.events import Rejected, Rows, SubscriptionAcked, SubscriptionFailed
from ingest.protocols.helius import HeliusProtocol

T0 = 1_763_000_000_000_000_000
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
TOKEN = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
SIG = "5h6xBEauJ3PK6SWCZ1PGjBvj8vDdWG3KpwATGy1ARAXFSDwt8GFXM7W5Ncn16wmqokgpiKRLuS83KUxyZyv2sUYv"
TX_OPTIONS = {"commitment": "confirmed", "maxSupportedTransactionVersion": 0}


def proto(*subs: dict) -> HeliusProtocol:
    return HeliusProtocol(
        "helius", [HeliusProtocol.parse_subscription(s, f"s[{i}]") for i, s in enumerate(subs)]
    )


def notify(method: str, sub: int, result) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "method": method, "params": {"result": result, "subscription": sub}}
    ).encode()


def ack(request: int, sub) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "result": sub, "id": request}).encode()


ACCOUNT = {
    "context": {"slot": 5199307},
    "value": {
        "data": [
            "11116bv5nS2h3y12kD1yUKeMZvGcKLSjQgX6BeV7u1FrjeJcKfsHPXHRDEHrBesJhZyqnnq9qJeUuF7WHxiuLuL5twc38w2TXNLxnDbjmuR",
            "base58",
        ],
        "executable": False,
        "lamports": 33594,
        "owner": "11111111111111111111111111111111",
        "rentEpoch": 18446744073709551615,
        "space": 80,
    },
}


def test_each_subscription_is_a_json_rpc_request_with_its_own_id():
    p = proto(
        {
            "name": "usdc",
            "method": "accountSubscribe",
            "params": [USDC, {"commitment": "confirmed", "encoding": "base58"}],
        },
        {"name": "slots", "method": "slotSubscribe"},
    )
    p.connect()
    assert [json.loads(f) for f in p.data_to_send()] == [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "accountSubscribe",
            "params": [USDC, {"commitment": "confirmed", "encoding": "base58"}],
        },
        {"jsonrpc": "2.0", "id": 2, "method": "slotSubscribe", "params": []},
    ]


def test_notifications_are_routed_by_subscription_id_and_become_rows(registry):
    p = proto(
        {"name": "usdc", "method": "accountSubscribe", "params": [USDC, {"commitment": "confirmed"}]},
        {"name": "slots", "method": "slotSubscribe"},
    )
    p.connect()
    assert p.receive(ack(1, 23784), 0) == [SubscriptionAcked("usdc")]
    assert p.receive(ack(2, 23785), 0) == [SubscriptionAcked("slots")]
    (rows,) = p.receive(notify("accountNotification", 23784, ACCOUNT), T0)
    assert isinstance(rows, Rows) and rows.dataset == "solana_account_updates" and rows.subscription == "usdc"
    row = build_table(registry[rows.dataset], [rows]).table.drop_columns(["_received_at"]).to_pylist()[0]
    assert (row["pubkey"], row["slot"], row["lamports"], row["commitment"]) == (
        USDC,
        5199307,
        33594,
        "confirmed",
    )
    assert row["rent_epoch"] == "18446744073709551615"  # u64, beyond BIGINT: exact as text
    assert json.loads(row["data"])[1] == "base58"
    (slot,) = p.receive(notify("slotNotification", 23785, {"parent": 75, "root": 44, "slot": 76}), T0)
    srow = build_table(registry["solana_slots"], [slot]).table.drop_columns(["_received_at"]).to_pylist()[0]
    assert (srow["slot"], srow["parent"], srow["root"], srow["commitment"]) == (76, 75, 44, None)


def test_the_same_update_at_two_commitment_levels_is_one_event(registry):
    p = proto(
        {"name": "fast", "method": "accountSubscribe", "params": [USDC, {"commitment": "processed"}]},
        {"name": "final", "method": "accountSubscribe", "params": [USDC, {"commitment": "finalized"}]},
    )
    p.connect()
    p.receive(ack(1, 1), 0)
    p.receive(ack(2, 2), 0)
    a, b = (
        p.receive(notify("accountNotification", 1, ACCOUNT), T0)[0],
        p.receive(notify("accountNotification", 2, ACCOUNT), T0)[0],
    )
    table = build_table(registry["solana_account_updates"], [a, b]).table
    assert table["commitment"].to_pylist() == ["processed", "finalized"]
    assert len(set(table["_dedup_key"].to_pylist())) == 1


def test_after_a_reconnect_new_ids_are_mapped_and_old_ones_forgotten():
    p = proto({"name": "slots", "method": "slotSubscribe"})
    p.connect()
    p.data_to_send()
    p.receive(ack(1, 100), 0)
    p.connection_lost()
    p.connect()
    (req,) = [json.loads(f) for f in p.data_to_send()]
    assert req["id"] == 2 and req["method"] == "slotSubscribe"
    p.receive(ack(2, 555), 0)
    (rows,) = p.receive(notify("slotNotification", 555, {"parent": 1, "root": 0, "slot": 2}), 1)
    assert rows.subscription == "slots"
    (stale,) = p.receive(notify("slotNotification", 100, {"parent": 1, "root": 0, "slot": 2}), 1)
    assert stale.subscription == "subscription 100"  # kept, but not mistaken for the live one


def test_signature_subscriptions_end_by_themselves(registry):
    p = proto(
        {
            "name": "tx",
            "method": "signatureSubscribe",
            "params": [SIG, {"commitment": "finalized", "enableReceivedNotification": True}],
        }
    )
    p.connect()
    p.data_to_send()
    p.receive(ack(1, 7), 0)
    (received,) = p.receive(
        notify("signatureNotification", 7, {"context": {"slot": 5}, "value": "receivedSignature"}), T0
    )
    (final,) = p.receive(
        notify("signatureNotification", 7, {"context": {"slot": 9}, "value": {"err": None}}), T0
    )
    table = build_table(registry["solana_signatures"], [received, final]).table
    assert table["received"].to_pylist() == [True, False] and table["slot"].to_pylist() == [5, 9]
    assert table["signature"].to_pylist() == [SIG, SIG]
    assert json.loads(table["_raw"][1].as_py()) == {"context": {"slot": 9}, "value": {"err": None}}
    assert p.active == 0
    p.close()
    assert p.data_to_send() == [] and p.closed  # nothing to unsubscribe: the node cancelled it
    p.connection_lost()
    p.connect()
    assert p.data_to_send() == []  # and it is not asked again


def test_a_notification_read_with_its_subscribe_response_but_ahead_of_it_is_routed(registry):
    """A node may send a subscription's first notification before the response that names its id
    (solana-labs/solana#11806): one read carries both, and the row keeps its key (the pubkey or
    signature comes only from the subscription), not a blank one two accounts would share."""
    other = "So11111111111111111111111111111111111111112"
    p = proto(
        {"name": "usdc", "method": "accountSubscribe", "params": [USDC, {"commitment": "confirmed"}]},
        {"name": "sol", "method": "accountSubscribe", "params": [other, {"commitment": "confirmed"}]},
        {"name": "tx", "method": "signatureSubscribe", "params": [SIG, {"commitment": "finalized"}]},
    )
    p.connect()
    p.data_to_send()
    final = {"context": {"slot": 9}, "value": {"err": None}}
    frames = [
        notify("accountNotification", 10, ACCOUNT),
        notify("accountNotification", 11, ACCOUNT),
        notify("signatureNotification", 12, final),
        ack(1, 10),
        ack(2, 11),
        ack(3, 12),
    ]
    events = p.receive_many(frames, T0, range(1, 7))
    rows = [e for e in events if isinstance(e, Rows)]
    assert [e.position for e in rows] == [1, 2, 3]  # each row keeps its own frame
    assert [e.subscription for e in rows] == ["usdc", "sol", "tx"]
    accounts = build_table(registry["solana_account_updates"], rows[:2]).table
    assert accounts["pubkey"].to_pylist() == [USDC, other]
    assert len(set(accounts["_dedup_key"].to_pylist())) == 2
    assert build_table(registry["solana_signatures"], rows[2:]).table["signature"].to_pylist() == [SIG]
    assert [e for e in events if isinstance(e, SubscriptionAcked)] == [
        SubscriptionAcked("usdc"),
        SubscriptionAcked("sol"),
        SubscriptionAcked("tx"),
    ]
    assert p.active == 2  # the signature's final result ended its subscription: not asked again
    p.connection_lost()
    p.connect()
    assert [json.loads(f)["method"] for f in p.data_to_send()] == ["accountSubscribe", "accountSubscribe"]


@pytest.mark.parametrize("value", [None, {"slot": 9}, "processed"])
def test_a_signature_notification_without_a_result_is_quarantined_and_ends_nothing(value):
    p = proto({"name": "tx", "method": "signatureSubscribe", "params": [SIG, {"commitment": "finalized"}]})
    p.connect()
    p.data_to_send()
    p.receive(ack(1, 7), 0)
    (event,) = p.receive(notify("signatureNotification", 7, {"context": {"slot": 9}, "value": value}), T0)
    assert isinstance(event, Rejected) and "signature notification without a result" in event.reason
    assert event.subscription == "tx" and p.active == 1  # still waiting for its real result


def test_logs_roots_and_program_accounts(registry):
    p = proto(
        {
            "name": "logs",
            "method": "logsSubscribe",
            "params": [{"mentions": [TOKEN]}, {"commitment": "confirmed"}],
        },
        {"name": "roots", "method": "rootSubscribe"},
        {"name": "tokens", "method": "programSubscribe", "params": [TOKEN, {"encoding": "jsonParsed"}]},
    )
    p.connect()
    for i in (1, 2, 3):
        p.receive(ack(i, 10 + i), 0)
    (logs,) = p.receive(
        notify(
            "logsNotification",
            11,
            {
                "context": {"slot": 5208469},
                "value": {
                    "signature": SIG,
                    "err": {"InstructionError": [0, {"Custom": 1}]},
                    "logs": ["Program 1 invoke [1]", "Program 1 failed"],
                },
            },
        ),
        T0,
    )
    (root,) = p.receive(notify("rootNotification", 12, 42), T0)
    (prog,) = p.receive(
        notify(
            "programNotification",
            13,
            {
                "context": {"slot": 5},
                "value": {
                    "pubkey": USDC,
                    "account": {
                        "data": {
                            "program": "spl-token",
                            "parsed": {"type": "mint", "info": {"decimals": 6}},
                            "space": 82,
                        },
                        "executable": False,
                        "lamports": 1,
                        "owner": TOKEN,
                        "rentEpoch": 0,
                        "space": 82,
                    },
                },
            },
        ),
        T0,
    )
    lrow = build_table(registry["solana_logs"], [logs]).table.drop_columns(["_received_at"]).to_pylist()[0]
    assert (
        lrow["logs"] == ["Program 1 invoke [1]", "Program 1 failed"]
        and json.loads(lrow["err"])["InstructionError"][0] == 0
    )
    assert build_table(registry["solana_roots"], [root]).table["root"].to_pylist() == [42]
    prow = (
        build_table(registry["solana_program_accounts"], [prog])
        .table.drop_columns(["_received_at"])
        .to_pylist()[0]
    )
    assert (prow["pubkey"], prow["program_id"], json.loads(prow["data"])["parsed"]["type"]) == (
        USDC,
        TOKEN,
        "mint",
    )


def test_errors_are_reported_per_subscription():
    p = proto(
        {"name": "bad", "method": "accountSubscribe", "params": ["not-base58!"]},
        {"name": "busy", "method": "slotSubscribe"},
    )
    p.connect()
    (failed,) = p.receive(
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid param: WrongSize"},"id":1}', 0
    )
    assert isinstance(failed, SubscriptionFailed) and failed.subscription == "bad" and not failed.retryable
    assert "-32602" in failed.message
    (limit,) = p.receive(
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal Error: Subscription refused. '
        b'Node subscription limit reached"},"id":2}',
        0,
    )
    assert limit.retryable and p.active == 1
    p.keepalive()
    assert [json.loads(f)["method"] for f in p.data_to_send()] == [
        "accountSubscribe",
        "slotSubscribe",
        "slotSubscribe",
    ]


def test_a_refused_subscription_is_not_asked_again_after_the_goodbye():
    p = proto({"name": "busy", "method": "slotSubscribe"})
    p.connect()
    p.data_to_send()
    (limit,) = p.receive(
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal Error: Subscription refused. '
        b'Node subscription limit reached"},"id":1}',
        0,
    )
    assert limit.retryable
    p.close()
    p.keepalive()  # the driver's keep-alive tick while the goodbye is read
    assert p.data_to_send() == [] and p.closed


def test_close_unsubscribes_and_waits_for_the_answers():
    p = proto({"name": "slots", "method": "slotSubscribe"}, {"name": "roots", "method": "rootSubscribe"})
    p.connect()
    p.data_to_send()
    p.receive(ack(1, 31), 0)
    p.receive(ack(2, 32), 0)
    p.close()
    assert [json.loads(f) for f in p.data_to_send()] == [
        {"jsonrpc": "2.0", "id": 3, "method": "slotUnsubscribe", "params": [31]},
        {"jsonrpc": "2.0", "id": 4, "method": "rootUnsubscribe", "params": [32]},
    ]
    assert not p.closed
    p.receive(ack(3, True), 0)
    p.receive(ack(4, True), 0)
    assert p.closed


@pytest.mark.parametrize(
    "raw",
    [
        b"nope",
        b'{"jsonrpc":"2.0","result":5,"id":99}',
        b'{"jsonrpc":"2.0","method":"fooNotification","params":{"result":1,"subscription":1}}',
    ],
)
def test_bad_frames_are_rejected(raw):
    p = proto({"name": "slots", "method": "slotSubscribe"})
    (event,) = p.receive(raw, 0)
    assert isinstance(event, Rejected)


@pytest.mark.parametrize(
    ("sub", "key"),
    [
        ({"name": "x", "method": "blockSubscribe"}, "s.method"),
        ({"name": "x", "method": "accountSubscribe"}, "s.params"),
        ({"name": "x", "method": "accountSubscribe", "params": [1]}, r"s.params\[0\]"),
        ({"name": "x", "method": "logsSubscribe", "params": [{"mentions": ["a", "b"]}]}, r"s.params\[0\]"),
        ({"name": "x", "method": "slotSubscribe", "params": ["x"]}, "s.params"),
        ({"name": "x", "method": "accountSubscribe", "params": [USDC, {"commitment": "soon"}]}, "commitment"),
        (
            {"name": "x", "method": "transactionSubscribe", "params": ["all", TX_OPTIONS]},
            r"s.params\[0\]: expected a filter",
        ),
        (
            {"name": "x", "method": "transactionSubscribe", "params": [{"votes": False}, TX_OPTIONS]},
            r"params\[0\].votes",
        ),
        (
            {"name": "x", "method": "transactionSubscribe", "params": [{"failed": "no"}, TX_OPTIONS]},
            r"params\[0\].failed",
        ),
        (
            {"name": "x", "method": "transactionSubscribe", "params": [{"accountInclude": USDC}, TX_OPTIONS]},
            r"params\[0\].accountInclude: expected a list",
        ),
        (
            {
                "name": "x",
                "method": "transactionSubscribe",
                "params": [{"accountRequired": [USDC] * 50_001}, TX_OPTIONS],
            },
            r"accountRequired: at most 50,000 addresses, got 50,001",
        ),
        (
            {"name": "x", "method": "transactionSubscribe", "params": [{}, {"commitment": "confirmed"}]},
            r"params\[1\].maxSupportedTransactionVersion: needed with transactionDetails = \"full\"",
        ),
        (
            {
                "name": "x",
                "method": "transactionSubscribe",
                "params": [{}, {**TX_OPTIONS, "transactionDetails": "all"}],
            },
            r"params\[1\].transactionDetails",
        ),
        *[
            (
                {"name": "x", "method": "transactionSubscribe", "params": [{}, {**TX_OPTIONS, key: value}]},
                message,
            )
            for key, value, message in [
                ("encoding", "binary", r"params\[1\].encoding: expected one of base58, base64, jsonParsed"),
                (
                    "maxSupportedTransactionVersion",
                    "0",
                    r"maxSupportedTransactionVersion: expected an integer",
                ),
                (
                    "maxSupportedTransactionVersion",
                    256,
                    r"maxSupportedTransactionVersion: expected an integer",
                ),
                ("showRewards", "yes", r"params\[1\].showRewards: expected true or false"),
            ]
        ],
    ],
)
def test_bad_subscriptions_name_the_key(sub, key):
    with pytest.raises(ConfigError, match=key):
        HeliusProtocol.parse_subscription(sub, "s")


def test_a_transaction_notification_is_one_row_with_its_meta(registry):
    """Helius's transactionNotification (PROTOCOLS.md 4.8): no context wrapper, a large subscription id."""
    flt = {"vote": False, "failed": False, "accountInclude": [USDC, TOKEN]}
    p = proto({"name": "txs", "method": "transactionSubscribe", "params": [flt, TX_OPTIONS]})
    p.connect()
    assert [json.loads(f)["params"] for f in p.data_to_send()] == [[flt, TX_OPTIONS]]
    assert p.receive(ack(1, 4743323479349712), 0) == [SubscriptionAcked("txs")]
    meta = {
        "err": None,
        "status": {"Ok": None},
        "fee": 5000,
        "preBalances": [28279852264, 158680],
        "postBalances": [28279747264, 158680],
        "innerInstructions": [],
        "logMessages": ["Program 11111111111111111111111111111111 invoke [1]", "Program 111 success"],
        "preTokenBalances": [],
        "postTokenBalances": [],
        "rewards": None,
        "loadedAddresses": {"writable": [], "readonly": []},
        "computeUnitsConsumed": 150,
    }
    result = {
        "transaction": {"transaction": ["AQID", "base64"], "meta": meta, "version": 0},
        "signature": SIG,
        "slot": 224341380,
        "transactionIndex": 7,
    }
    (rows,) = p.receive(notify("transactionNotification", 4743323479349712, result), T0)
    assert isinstance(rows, Rows) and rows.dataset == "solana_transactions" and rows.subscription == "txs"
    row = build_table(registry["solana_transactions"], [rows]).table.to_pylist()[0]
    assert {k: row[k] for k in ("commitment", "slot", "signature", "transaction_index", "err", "fee")} == {
        "commitment": "confirmed",
        "slot": 224341380,
        "signature": SIG,
        "transaction_index": 7,
        "err": None,
        "fee": 5000,
    }
    assert row["compute_units_consumed"] == 150 and json.loads(row["pre_balances"]) == meta["preBalances"]
    assert row["log_messages"] == meta["logMessages"] and row["_dedup_key"] == row["_tracing_id"] != ""


def test_pings_go_out_on_schedule_at_least_every_minute():
    """Helius's 10-minute inactivity timer counts client frames; it advises a ping every minute
    (PROTOCOLS.md 4.7), so the driver pings whatever arrives, not only after silence."""
    assert HeliusProtocol.steady_pings is True
    assert 0 < HeliusProtocol.default_ping_interval <= 60


def test_roots_carry_the_id_of_the_connection_that_received_them(registry):
    """Roots one connection received in a row prove what lies between them (sql/021_solana_roots.sql):
    each connection draws a new id, which a journal replay restores from the protocol's state."""
    p = proto({"name": "roots", "method": "rootSubscribe"})

    def root_on_new_connection(n: int) -> int:
        p.connection_lost()
        p.connect()
        p.receive(ack(p._next_request - 1, 40 + n), T0)
        (row,) = p.receive(notify("rootNotification", 40 + n, n), T0)
        table = build_table(registry["solana_roots"], [row]).table
        assert table["root"].to_pylist() == [n]
        (connection,) = table["connection"].to_pylist()
        return connection

    first, second = root_on_new_connection(1), root_on_new_connection(2)
    assert first != second and first and second
    replayed = proto({"name": "roots", "method": "rootSubscribe"})
    replayed.load_state(p.state())  # what the journal holds after a connect
    (row,) = replayed.receive(notify("rootNotification", 42, 3), T0)
    assert row.context["connection"] == second


def test_roots_of_an_unknown_connection_carry_no_id(registry):
    """A journal written before the id was kept, or a capture (no state at all): no id, so the
    roots prove nothing about the slots between them; never one id shared by unrelated roots."""
    for state in ({"next_request": 2, "pending": [], "ids": [[40, "roots"]]}, None):
        p = proto({"name": "roots", "method": "rootSubscribe"})
        if state is not None:
            p.load_state(state)
        (row,) = p.receive(notify("rootNotification", 40, 7), T0)
        assert row.context["connection"] is None
        assert build_table(registry["solana_roots"], [row]).table["connection"].to_pylist() == [None]
