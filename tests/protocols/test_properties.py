"""Property tests: any frame into any provider's parser is read or rejected with a reason, never raised.

And whatever rows a parser accepts, the batch builder turns into table rows or quarantined records:
rows + rejected = records, for any content.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.arrow_batch import build_table
from ingest.events import Rejected, Rows
from ingest.protocols.base import read_frames
from ingest.protocols.bitquery import BitqueryProtocol
from ingest.protocols.blockdb import BlockDBProtocol
from ingest.protocols.coinapi import CoinAPIProtocol
from ingest.protocols.helius import HeliusProtocol
from ingest.schema import load_registry

REGISTRY = load_registry()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=15,
)


def shaped(keys: dict) -> st.SearchStrategy[bytes]:
    """JSON objects with a provider's keys, each present or not, holding plausible or hostile values."""
    fields = {k: st.one_of(v, json_values) for k, v in keys.items()}
    return st.fixed_dictionaries({}, optional=fields).map(lambda d: json.dumps(d).encode())


def frames(keys: dict) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()), shaped(keys))


def check(protocol, frame: bytes) -> None:
    events = protocol.receive(frame, 1_763_000_000_000_000_000)
    assert isinstance(events, list)
    for event in events:
        if isinstance(event, Rejected):
            assert event.reason and isinstance(event.raw, bytes)
        if isinstance(event, Rows):
            result = build_table(REGISTRY[event.dataset], [event])
            assert result.table.num_rows + len(result.rejected) == len(event.records)
    protocol.data_to_send()


def blockdb() -> BlockDBProtocol:
    p = BlockDBProtocol(
        "blockdb",
        [BlockDBProtocol.parse_subscription({"chain_id": 1, "dataset_id": d}, "s") for d in ("0101", "0304")],
    )
    p.connect()
    return p


BLOCKDB_FRAMES = frames(
    {
        "action": st.sampled_from(["subscribe", "unsubscribe", "x"]),
        "status": st.sampled_from(["success", "error"]),
        "chain_id": st.integers(0, 3),
        "dataset_id": st.sampled_from(["0101", "0102", "0304", "0404", "../x", ""]),
        "is_reorg": st.booleans(),
        "error": json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "block_number": json_values,
                "amount_raw": json_values,
                "block_time": st.one_of(st.text(), json_values),
                "_tracing_id": json_values,
                "_is_reorg": json_values,
            },
        ),
    }
)


@SETTINGS
@given(BLOCKDB_FRAMES)
def test_blockdb_parser_never_raises(frame):
    check(blockdb(), frame)


def bitquery(subprotocol: str) -> BitqueryProtocol:
    q = "subscription { EVM(network: eth) { Transfers { Block { Number } Transfer { Amount } } } }"
    p = BitqueryProtocol(
        "bitquery",
        [BitqueryProtocol.parse_subscription({"name": "t", "query": q}, "s")],
        {"subprotocol": subprotocol},
    )
    p.connect()
    p.receive(b'{"type":"connection_ack"}', 1)
    return p


BITQUERY_KEYS = {
    "type": st.sampled_from(
        ["data", "next", "error", "complete", "ka", "ping", "pong", "connection_error", "?"]
    ),
    "id": st.sampled_from(["1", "2", 1]),
    "payload": st.one_of(
        json_values,
        st.fixed_dictionaries(
            {
                "data": st.fixed_dictionaries(
                    {
                        "EVM": st.fixed_dictionaries(
                            {
                                "Transfers": st.lists(
                                    st.fixed_dictionaries(
                                        {}, optional={"Block": json_values, "Transfer": json_values}
                                    ),
                                    max_size=3,
                                )
                            }
                        )
                    }
                )
            }
        ),
    ),
}


@SETTINGS
@given(frames(BITQUERY_KEYS), st.sampled_from(["graphql-ws", "graphql-transport-ws"]))
def test_bitquery_parser_never_raises(frame, subprotocol):
    check(bitquery(subprotocol), frame)


COINAPI_FRAMES = frames(
    {
        "type": st.sampled_from(
            ["trade", "quote", "book5", "ohlcv", "exrate", "hearbeat", "error", "reconnect", "?"]
        ),
        "symbol_id": st.sampled_from(["BITSTAMP_SPOT_BTC_USD", "X", "", "../../x"]),
        "sequence": json_values,
        "time_exchange": st.sampled_from(["2017-03-18T22:42:21.3763342Z", "soon"]),
        "price": json_values,
        "uuid": json_values,
        "message": json_values,
        "within_seconds": json_values,
    }
)


def coinapi() -> CoinAPIProtocol:
    p = CoinAPIProtocol(
        "coinapi", [CoinAPIProtocol.parse_subscription({"name": "t", "data_types": ["trade"]}, "s")]
    )
    p.connect()
    return p


@SETTINGS
@given(COINAPI_FRAMES)
def test_coinapi_parser_never_raises(frame):
    check(coinapi(), frame)


@SETTINGS
@given(
    frames(
        {
            "jsonrpc": st.just("2.0"),
            "id": st.sampled_from([1, 2, "1", None]),
            "method": st.sampled_from(
                [
                    "slotNotification",
                    "accountNotification",
                    "signatureNotification",
                    "rootNotification",
                    "logsNotification",
                    "fooNotification",
                    "x",
                ]
            ),
            "params": st.fixed_dictionaries(
                {}, optional={"subscription": st.sampled_from([7, 8, -1]), "result": json_values}
            ),
            "result": json_values,
            "error": json_values,
        }
    )
)
def test_helius_parser_never_raises(frame):
    p = HeliusProtocol(
        "helius",
        [
            HeliusProtocol.parse_subscription(s, "s")
            for s in (
                {"name": "slots", "method": "slotSubscribe"},
                {
                    "name": "acct",
                    "method": "accountSubscribe",
                    "params": ["EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"],
                },
                {"name": "sig", "method": "signatureSubscribe", "params": ["5h6x"]},
            )
        ],
    )
    p.connect()
    for request, sub_id in ((1, 7), (2, 8), (3, 9)):
        p.receive(json.dumps({"jsonrpc": "2.0", "result": sub_id, "id": request}).encode(), 1)
    check(p, frame)


# -- reading a socket read's frames at once is reading them one by one --------------------------

T = 1_763_000_000_000_000_000


def per_record(events: list) -> tuple[list, dict[str, list]]:
    """The events but Rows in order, and per dataset each record with all it carries: what the
    buffer and the build see, however the records are grouped into Rows."""
    others = [e for e in events if not isinstance(e, Rows)]
    records: dict[str, list] = {}
    for e in events:
        if isinstance(e, Rows):
            positions = e.positions or [e.position] * len(e.records)
            assert len(positions) == len(e.records)
            for i, (record, position) in enumerate(zip(e.records, positions, strict=True)):
                raw = e.raw[i] if e.raw else None
                fields = (e.provider, e.subscription, record, e.received_at, e.context, e.is_reorg, raw)
                records.setdefault(e.dataset, []).append((*fields, position))
    return others, records


def same_events(make, batch: list[bytes]) -> None:
    """receive_many gives what receive() frame by frame gives, positions included; only the
    grouping of records into Rows may differ (a run of frames of one read shares one Rows)."""
    one, many = make(), make()
    positions = range(100, 100 + len(batch))
    expected = read_frames(one, batch, T, positions)
    got = many.receive_many(batch, T, positions)
    assert per_record(got) == per_record(expected)
    assert many.state() == one.state() and many.data_to_send() == one.data_to_send()
    rows = [e for e in got if isinstance(e, Rows)]
    data = [e for e in expected if isinstance(e, Rows)]
    assert len(rows) <= len(data)
    streams = {(r.dataset, r.subscription, r.is_reorg, id(r.context)) for r in data}
    if len(batch) == len(data) > 1 and len(streams) == 1:
        assert len(rows) == 1  # every frame a record of one stream: one Rows for the read


def coinapi_trade(symbol: str, seq: int) -> bytes:
    return json.dumps(
        {"type": "trade", "symbol_id": symbol, "sequence": seq, "uuid": f"u{seq}", "price": 1.5}
    ).encode()


def blockdb_update(dataset_id: str, n: int, reorg: bool) -> bytes:
    return json.dumps(
        {"chain_id": 1, "dataset_id": dataset_id, "is_reorg": reorg, "data": {"block_number": n}}
    ).encode()


@SETTINGS
@given(
    st.lists(
        st.one_of(
            COINAPI_FRAMES,
            st.builds(coinapi_trade, st.sampled_from(["BITSTAMP_SPOT_BTC_USD", "X"]), st.integers(1, 6)),
        ),
        max_size=12,
    )
)
def test_coinapi_reads_a_batch_as_it_reads_each_frame(batch):
    same_events(coinapi, batch)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            BLOCKDB_FRAMES,
            st.builds(blockdb_update, st.sampled_from(["0101", "0304", "9"]), st.integers(), st.booleans()),
        ),
        max_size=12,
    )
)
def test_blockdb_reads_a_batch_as_it_reads_each_frame(batch):
    same_events(blockdb, batch)
