"""BlockDB protocol on plain frames: no socket, no event loop."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from ingest.errors import ConfigError
from ingest.events import FatalError, Notice, Rejected, Rows, SubscriptionAcked, SubscriptionFailed
from ingest.protocols import base
from ingest.protocols.blockdb import BlockDBProtocol
from tests.conftest import frame


def make(*subs: dict) -> BlockDBProtocol:
    specs = [BlockDBProtocol.parse_subscription(s, f"subs[{i}]") for i, s in enumerate(subs)]
    return BlockDBProtocol("blockdb", specs)


def test_connect_sends_every_subscription_with_params():
    """connect() queues one subscribe per (chain_id, dataset_id), params always present."""
    p = make(
        {"chain_id": 1, "dataset_id": "0101"},
        {"chain_id": 8453, "dataset_id": "0304", "params": {"token_addresses": ["ab"]}},
    )
    p.connect()
    sent = [json.loads(f) for f in p.data_to_send()]
    assert sent == [
        {"action": "subscribe", "chain_id": 1, "dataset_id": "0101", "params": {}},
        {
            "action": "subscribe",
            "chain_id": 8453,
            "dataset_id": "0304",
            "params": {"token_addresses": ["ab"]},
        },
    ]
    assert p.data_to_send() == []


def test_resubscribes_everything_after_reconnect():
    """BlockDB keeps no state across connections, so a reconnect sends every subscribe again."""
    p = make({"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0102"})
    p.connect()
    first = p.data_to_send()
    p.receive(frame("blockdb", "ack_subscribe"), 1)
    p.connection_lost()
    p.connect()
    assert p.data_to_send() == first


def test_update_becomes_rows_with_raw_record_and_context():
    """An update is one record of the dataset its id maps to, kept as the exact payload bytes."""
    p = make({"name": "eth_blocks", "chain_id": 1, "dataset_id": "0101"})
    raw = frame("blockdb", "update_0101")
    (event,) = p.receive(raw, 123)
    assert isinstance(event, Rows)
    assert event.dataset == "blockdb_blocks"
    assert event.subscription == "eth_blocks"
    assert event.received_at == 123
    assert event.context == {"chain_id": 1, "dataset_id": "0101"}
    assert event.is_reorg is False
    assert json.loads(event.records[0]) == json.loads(raw)["data"]


def test_reorg_flag_of_the_envelope_is_carried():
    p = make({"chain_id": 1, "dataset_id": "0304"})
    (event,) = p.receive(frame("blockdb", "update_0304_reorg"), 1)
    assert isinstance(event, Rows) and event.is_reorg is True and event.dataset == "blockdb_transfers"


def test_unknown_dataset_id_goes_to_the_generic_table():
    p = make({"chain_id": 1, "dataset_id": "0404"})
    (event,) = p.receive(b'{"chain_id":1,"dataset_id":"0404","is_reorg":false,"data":{"open":"1.5"}}', 1)
    assert isinstance(event, Rows) and event.dataset == "blockdb_generic"


def test_success_ack_marks_the_subscription_active():
    p = make({"name": "eth_blocks", "chain_id": 1, "dataset_id": "0101"})
    p.connect()
    assert p.receive(frame("blockdb", "ack_subscribe"), 1) == [SubscriptionAcked("eth_blocks")]


def test_a_hostile_error_code_is_a_refusal_and_the_rest_of_the_read_stands():
    """An error code that is no string (a list) was looked up in a set and raised: the driver then
    read the whole batch again, after its first pass had changed the state, and reported a genuine
    refusal of the same read under the pair instead of its subscription."""
    p = make(
        {"name": "blocks", "chain_id": 1, "dataset_id": "0101"},
        {"name": "txs", "chain_id": 1, "dataset_id": "0102"},
    )
    p.connect()
    p.data_to_send()
    refused = {"action": "subscribe", "status": "error", "chain_id": 1, "dataset_id": "0102"}
    frames = [
        json.dumps({**refused, "error": {"code": "FORBIDDEN", "message": "plan lacks it"}}).encode(),
        json.dumps({**refused, "dataset_id": "0101", "error": {"code": ["UNAUTHORIZED"]}}).encode(),
    ]
    events = p.receive_many(frames, 1, range(1, 3))
    assert [(type(e).__name__, e.subscription) for e in events] == [
        ("SubscriptionFailed", "txs"),
        ("SubscriptionFailed", "blocks"),  # a refusal like any other, not a bad key
    ]


def test_a_protocol_error_on_one_frame_quarantines_that_frame_only():
    from ingest.protocols.base import Batch, read_decoded

    p = make({"name": "blocks", "chain_id": 1, "dataset_id": "0101"})

    def read(raw: bytes, value: object, received_at: int, position: int, batch: Batch) -> None:
        if raw == b"2":
            raise KeyError("a bug")
        batch.events.append(
            Rows("blockdb", "blockdb_blocks", "blocks", [raw], received_at, position=position)
        )

    events = read_decoded(p, lambda raw: raw, read, [b"1", b"2", b"3"], 7, range(10, 13))
    assert [(type(e).__name__, e.position) for e in events] == [("Rows", 10), ("Rejected", 11), ("Rows", 12)]
    assert events[1].raw == b"2" and "protocol error: KeyError" in events[1].reason


def test_non_retryable_error_drops_only_that_subscription():
    """A refused subscription is reported with the hint and not asked again; the others stay."""
    p = make({"chain_id": 1, "dataset_id": "0101"}, {"name": "logs", "chain_id": 1, "dataset_id": "0103"})
    p.connect()
    p.data_to_send()
    (event,) = p.receive(frame("blockdb", "ack_error"), 1)
    assert isinstance(event, SubscriptionFailed)
    assert event.subscription == "logs" and not event.retryable
    assert "BAD_REQUEST" in event.message and "topic_zeros" in event.message
    assert p.active == 1
    p.connection_lost()
    p.connect()
    assert [json.loads(f)["dataset_id"] for f in p.data_to_send()] == ["0101"]


def test_retryable_error_is_asked_again_on_keepalive():
    p = make({"chain_id": 1, "dataset_id": "0101"})
    p.connect()
    p.data_to_send()
    err = {
        "action": "subscribe",
        "chain_id": 1,
        "dataset_id": "0101",
        "status": "error",
        "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryable": True},
    }
    (event,) = p.receive(json.dumps(err), 1)
    assert isinstance(event, SubscriptionFailed) and event.retryable
    p.keepalive()
    assert [json.loads(f)["action"] for f in p.data_to_send()] == ["subscribe"]


@pytest.mark.parametrize("where", ["error", "details"])
def test_a_retryable_error_with_retry_after_is_not_asked_again_sooner(where):
    """RATE_LIMIT_EXCEEDED says how long to stay away (`retry_after_seconds`, doc 2.4): keep-alives
    before then do not ask again; the first one after it and its jitter (up to a fifth) does."""
    p = make({"chain_id": 1, "dataset_id": "0101"})
    p.connect()
    p.data_to_send()
    error = {"code": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryable": True}
    if where == "error":
        error["retry_after_seconds"] = 30
    else:
        error["details"] = {"retry_after_seconds": 30}
    err = {"action": "subscribe", "chain_id": 1, "dataset_id": "0101", "status": "error", "error": error}
    now = time.time_ns()
    (event,) = p.receive(json.dumps(err), now)
    assert event.retryable and "30 s" in event.message
    p.keepalive()
    assert p.data_to_send() == []  # 30 s have not passed
    assert p.next_due() >= now + 30 * 10**9
    (event,) = p.receive(json.dumps(err), now - 37 * 10**9)  # the same refusal, received 37 s ago
    p.keepalive()
    assert [json.loads(f)["action"] for f in p.data_to_send()] == ["subscribe"]


@pytest.mark.parametrize("value", [1e300, 10**400])  # the second: an integer past a double's range
def test_a_retry_after_beyond_ten_minutes_is_ten_minutes(value):
    p = make({"chain_id": 1, "dataset_id": "0101"})
    p.connect()
    p.data_to_send()
    error = {"code": "RATE_LIMIT_EXCEEDED", "message": "m", "retryable": True, "retry_after_seconds": value}
    err = {"action": "subscribe", "chain_id": 1, "dataset_id": "0101", "status": "error", "error": error}
    now = time.time_ns()
    (event,) = p.receive(json.dumps(err), now - 599 * 10**9)
    assert "600 s" in event.message
    p.keepalive()
    assert p.data_to_send() == []
    p.receive(json.dumps(err), now - 721 * 10**9)  # 600 s and up to a fifth of jitter ago
    p.keepalive()
    assert len(p.data_to_send()) == 1


def test_a_retry_after_holds_across_a_reconnect():
    """A reconnect within a refusal's retry_after_seconds does not ask for that subscription again
    (the server would only refuse it again); the first keep-alive after the wait does."""
    p = make({"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0304"})
    p.connect()
    p.data_to_send()
    error = {"code": "RATE_LIMIT_EXCEEDED", "message": "m", "retryable": True, "retry_after_seconds": 30}
    err = {"action": "subscribe", "chain_id": 1, "dataset_id": "0304", "status": "error", "error": error}
    now = time.time_ns()
    p.receive(json.dumps(err), now)
    p.connection_lost()
    p.connect()
    assert [json.loads(f)["dataset_id"] for f in p.data_to_send()] == ["0101"]
    p.keepalive()
    assert p.data_to_send() == []
    p.connection_lost()
    p.receive(json.dumps(err), now - 37 * 10**9)  # as if that refusal came 37 s (30 + jitter) ago
    p.connect()
    assert [json.loads(f)["dataset_id"] for f in p.data_to_send()] == ["0101", "0304"]


def test_no_retry_is_sent_after_the_goodbye():
    p = make({"chain_id": 1, "dataset_id": "0101"})
    p.connect()
    p.data_to_send()
    error = {"code": "RATE_LIMIT_EXCEEDED", "message": "m", "retryable": True}
    err = {"action": "subscribe", "chain_id": 1, "dataset_id": "0101", "status": "error", "error": error}
    p.receive(json.dumps(err), time.time_ns())
    p.close()
    p.data_to_send()
    p.keepalive()
    assert p.data_to_send() == []


@pytest.mark.parametrize("value", [None, 0, -5, "10", True])
def test_a_retry_after_that_is_no_positive_number_is_the_backoff(value):
    p = make({"chain_id": 1, "dataset_id": "0101"})
    p.connect()
    p.data_to_send()
    error = {
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "slow down",
        "retryable": True,
        "retry_after_seconds": value,
    }
    err = {"action": "subscribe", "chain_id": 1, "dataset_id": "0101", "status": "error", "error": error}
    now = time.time_ns()
    (event,) = p.receive(json.dumps(err), now)
    assert "server asks" not in event.message
    p.keepalive()
    assert p.data_to_send() == []  # the first backoff step: 1 s +/- 20 %
    assert now + 0.8e9 <= p.next_due() <= now + 1.2e9


def test_forbidden_ack_fails_only_that_subscription_with_the_required_plan():
    """FORBIDDEN in an ack is "your plan lacks this dataset" (doc 2.4): that subscription fails with
    the plan it needs and is not asked again; the socket and the other subscriptions go on."""
    p = make(
        {"name": "blocks", "chain_id": 1, "dataset_id": "0101"},
        {"name": "ohlc", "chain_id": 1, "dataset_id": "0404"},
    )
    p.connect()
    p.data_to_send()
    err = {
        "action": "subscribe",
        "chain_id": 1,
        "dataset_id": "0404",
        "status": "error",
        "error": {
            "code": "FORBIDDEN",
            "message": "Your plan does not include this dataset.",
            "severity": "error",
            "retryable": False,
            "details": {"required_plan": "pro"},
        },
    }
    (event,) = p.receive(json.dumps(err), 1)
    assert isinstance(event, SubscriptionFailed)
    assert event.subscription == "ohlc" and not event.retryable
    assert "FORBIDDEN" in event.message and "required plan: pro" in event.message
    assert p.active == 1
    assert p.receive(frame("blockdb", "ack_subscribe"), 2) == [SubscriptionAcked("blocks")]
    (rows,) = p.receive(frame("blockdb", "update_0101"), 3)
    assert isinstance(rows, Rows) and rows.subscription == "blocks"
    p.keepalive()
    assert p.data_to_send() == []
    p.connection_lost()
    p.connect()
    assert [json.loads(f)["dataset_id"] for f in p.data_to_send()] == ["0101"]


def test_ping_interval_default_keeps_a_quiet_stream_and_catches_a_dead_one():
    """The server's ping period is undocumented (doc 2.5): the client pings, and a ping plus its pong
    wait (aiohttp waits half the interval) fit inside the idle timeout, with room for one more."""
    ping, idle = BlockDBProtocol.default_ping_interval, BlockDBProtocol.default_idle_timeout
    assert ping > 0
    assert ping * 1.5 < idle  # a dead link is closed by the missing pong before the idle timeout
    assert ping * 2 <= idle  # a healthy quiet link answers at least twice per idle timeout


def test_auth_error_is_fatal():
    p = make({"chain_id": 1, "dataset_id": "0101"})
    err = {
        "action": "subscribe",
        "chain_id": 1,
        "dataset_id": "0101",
        "status": "error",
        "error": {"code": "UNAUTHORIZED", "message": "bad key", "retryable": False},
    }
    (event,) = p.receive(json.dumps(err), 1)
    assert event == FatalError("1:0101: UNAUTHORIZED: bad key", auth=True)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "unreadable frame"),
        (b"\xff\xfe{}", "unreadable frame"),
        (b'{"hello": "world"}', "unknown message"),
        (b'{"chain_id": "one", "dataset_id": "0101", "data": {}}', "unreadable frame"),
        (b"[1, 2, 3]", "unreadable frame"),
        (b'{"chain_id": 1, "dataset_id": "0101", "is_reorg": false}', "unknown message"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason_never_raised(raw, reason):
    """Anything the server sends becomes an event; unreadable frames keep their exact bytes."""
    p = make({"chain_id": 1, "dataset_id": "0101"})
    (event,) = p.receive(raw, 9)
    assert isinstance(event, Rejected)
    assert event.raw == raw and event.reason.startswith(reason) and event.provider == "blockdb"


def test_close_unsubscribes_and_waits_for_every_ack():
    """A clean goodbye: one unsubscribe per pair; closed only when each one is acknowledged."""
    p = make({"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0304"})
    p.connect()
    p.data_to_send()
    p.close()
    sent = [json.loads(f) for f in p.data_to_send()]
    assert sent == [
        {"action": "unsubscribe", "chain_id": 1, "dataset_id": "0101"},
        {"action": "unsubscribe", "chain_id": 1, "dataset_id": "0304"},
    ]
    assert not p.closed
    p.receive(b'{"action":"unsubscribe","chain_id":1,"dataset_id":"0101","status":"success"}', 1)
    assert not p.closed
    p.receive(b'{"action":"unsubscribe","chain_id":1,"dataset_id":"0304","status":"success"}', 1)
    assert p.closed


@pytest.mark.parametrize(
    ("sub", "key"),
    [
        ({"chain_id": "1", "dataset_id": "0101"}, "x.chain_id"),
        ({"chain_id": 1, "dataset_id": 101}, "x.dataset_id"),
        ({"chain_id": 1, "dataset_id": "01011"}, "x.dataset_id"),
        ({"chain_id": 1, "dataset_id": "0101", "params": []}, "x.params"),
        ({"chain_id": 1, "dataset_id": "0101", "topic": "x"}, "x.topic"),
    ],
)
def test_bad_subscription_config_names_the_key(sub, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        BlockDBProtocol.parse_subscription(sub, "x")


def _refusal(dataset_id: str | None, **error: object) -> str:
    msg: dict = {"action": "subscribe", "chain_id": 1, "dataset_id": dataset_id, "status": "error"}
    if dataset_id is None:
        del msg["chain_id"], msg["dataset_id"]
    return json.dumps({**msg, "error": {"message": "m", **error}})


def _subscribed(p: BlockDBProtocol) -> list[str]:
    return [json.loads(f)["dataset_id"] for f in p.data_to_send() if '"subscribe"' in f]


def test_a_retryable_refusal_without_retry_after_backs_off_per_pair_and_starts_over_once_acked(monkeypatch):
    """Doc 2.4: retryable -> exponential backoff with jitter (1 s, 2 s, 4 s ... up to 30 s,
    +/-20 %), counted per pair and started over once the pair is subscribed; a keep-alive before the
    wait asks nothing, the first one after it asks again."""
    clock = [time.time_ns()]
    monkeypatch.setattr(base, "time", SimpleNamespace(time_ns=lambda: clock[0]))
    p = make({"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0102"})
    p.connect()
    p.data_to_send()

    def refuse(dataset_id: str) -> tuple[float, float]:
        """Refused now: the wait it gets, in s; a keep-alive just before it asks nothing, one at it does."""
        now = clock[0]
        (event,) = p.receive(_refusal(dataset_id, code="INTERNAL_SERVER_ERROR", retryable=True), now)
        assert event.retryable and event.subscription == f"1:{dataset_id}"
        wait = (p.next_due() - now) / 1e9
        clock[0] = p.next_due() - 1
        p.keepalive()
        assert _subscribed(p) == []  # not before its wait
        clock[0] += 1
        p.keepalive()
        assert _subscribed(p) == [dataset_id]
        return wait

    ratios = []
    for step in (1, 2, 4, 8, 16, 30, 30):
        wait = refuse("0101")
        assert 0.8 * step <= wait <= 1.2 * step
        ratios.append(wait / step)
    assert len(set(ratios)) > 1  # jittered: pairs refused together must not return together
    assert 0.8 <= refuse("0102") <= 1.2  # a count of its own
    assert p.receive(b'{"action":"subscribe","chain_id":1,"dataset_id":"0101","status":"success"}', 1)
    assert 0.8 <= refuse("0101") <= 1.2  # acknowledged in between: it starts over
    p.receive(_refusal("0101", code="INTERNAL_SERVER_ERROR", retryable=True), clock[0])
    p.close()
    assert p.next_due() is None  # nothing is asked again after the goodbye


@pytest.mark.parametrize(
    ("code", "flag", "retryable"),
    [
        ("INTERNAL_SERVER_ERROR", None, True),  # absent: by its code
        ("RATE_LIMIT_EXCEEDED", None, True),
        ("SERVICE_UNAVAILABLE", "no", True),  # no bool: as if absent
        (503, None, True),
        ("429", None, True),
        ("BAD_REQUEST", "true", False),
        ("NOT_FOUND", 1, False),
        ("FORBIDDEN", None, False),
        (None, None, False),
        ("INTERNAL_SERVER_ERROR", False, False),  # a real bool is the server's word
        ("BAD_REQUEST", True, True),
    ],
)
def test_retryable_is_a_real_bool_or_else_follows_the_code(code, flag, retryable):
    p = make({"chain_id": 1, "dataset_id": "0101"}, {"chain_id": 1, "dataset_id": "0102"})
    p.connect()
    p.data_to_send()
    error: dict = {"code": code}
    if flag is not None:
        error["retryable"] = flag
    (event,) = p.receive(_refusal("0101", **error), time.time_ns() - 2 * 10**9)
    assert isinstance(event, SubscriptionFailed) and event.retryable is retryable
    assert p.active == (2 if retryable else 1)
    p.connection_lost()
    p.connect()  # its 1 s backoff has passed: asked again with the others, or never again
    assert _subscribed(p) == (["0101", "0102"] if retryable else ["0102"])


def test_a_retryable_error_naming_no_pair_retries_every_unanswered_subscribe(monkeypatch):
    """The error cannot be told apart: each subscribe still unanswered is refused alike and asked
    again after its backoff; one already acknowledged is left alone."""
    p = make(
        {"name": "blocks", "chain_id": 1, "dataset_id": "0101"},
        {"name": "txs", "chain_id": 1, "dataset_id": "0102"},
        {"name": "logs", "chain_id": 1, "dataset_id": "0103"},
    )
    p.connect()
    p.data_to_send()
    p.receive(b'{"action":"subscribe","chain_id":1,"dataset_id":"0101","status":"success"}', 1)
    now = time.time_ns()
    events = p.receive(_refusal(None, code="RATE_LIMIT_EXCEEDED", retry_after_seconds=2), now)
    assert [(type(e).__name__, e.subscription, e.retryable) for e in events] == [
        ("SubscriptionFailed", "txs", True),
        ("SubscriptionFailed", "logs", True),
    ]
    assert p.active == 3
    assert now + 2e9 <= p.next_due() <= now + 2.4e9  # the server's 2 s, and up to a fifth more
    p.keepalive()
    assert _subscribed(p) == []
    monkeypatch.setattr(base, "time", SimpleNamespace(time_ns=lambda: now + int(2.4e9)))
    p.keepalive()
    assert _subscribed(p) == ["0102", "0103"]
    # Answered by now: an error naming no pair concerns none of them.
    for ds in ("0102", "0103"):
        p.receive(
            b'{"action":"subscribe","chain_id":1,"dataset_id":"%s","status":"success"}' % ds.encode(), 1
        )
    (event,) = p.receive(_refusal(None, code="RATE_LIMIT_EXCEEDED"), now)
    assert isinstance(event, Notice) and "RATE_LIMIT_EXCEEDED" in event.message


def test_a_permanent_error_naming_no_pair_gives_up_only_a_subscribe_it_can_only_be_about():
    """With one subscribe unanswered the error is that one's; with several, none is given up on a
    guess: each is asked again, and one the server grants meanwhile is neither asked twice on
    the socket nor forgotten (its rows labelled, its unsubscribe sent at the goodbye)."""
    p = make({"name": "blocks", "chain_id": 1, "dataset_id": "0101"})
    p.connect()
    p.data_to_send()
    (event,) = p.receive(_refusal(None, code="BAD_REQUEST", retryable=False), 1)
    assert (event.subscription, event.retryable, p.active) == ("blocks", False, 0)

    p = make(
        {"name": "blocks", "chain_id": 1, "dataset_id": "0101"},
        {"name": "txs", "chain_id": 1, "dataset_id": "0102"},
    )
    p.connect()
    p.data_to_send()
    long_ago = time.time_ns() - 60 * 10**9  # every backoff over by now
    events = p.receive(_refusal(None, code="BAD_REQUEST", retryable=False), long_ago)
    assert [(e.subscription, e.retryable) for e in events] == [("blocks", True), ("txs", True)]
    assert p.active == 2
    # The server's answer to the other subscribe: granted after all.
    (acked,) = p.receive(b'{"action":"subscribe","chain_id":1,"dataset_id":"0102","status":"success"}', 2)
    assert acked == SubscriptionAcked("txs")
    p.keepalive()
    assert _subscribed(p) == ["0101"]  # only the refused one is asked again
    p.close()
    assert '"0102"' in "".join(p.data_to_send())  # unsubscribed at the goodbye
