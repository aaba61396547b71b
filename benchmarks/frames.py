"""Deterministic pools of pre-encoded WebSocket frames, rendered a pool at a time, never per frame.

Each pool is built once from the project's own emulator data generators (the CoinAPI market,
the BlockDB chain, the Bitquery EVM feed), framed (header + JSON) and concatenated. A pool is
sent in cycles; so that no two frames sent in one run are the same record, every frame has a few
fixed-width digit *slots* (the tail of a trade uuid, a tracing id or a transaction hash, and the
CoinAPI sequence number) that each cycle rewrites. Rendering a cycle is one vectorised pyarrow
join over the whole pool (a few ms for 65k frames) done in a worker thread one cycle ahead, so
the sender's cost per frame is a slice of a buffer. Slot widths never change, so frame lengths,
headers and offsets are fixed once.
"""

from __future__ import annotations

import concurrent.futures
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.wire import frame_header

__all__ = [
    "BITQUERY_TRANSFERS_QUERY",
    "MIXES",
    "Cursor",
    "FramePool",
    "PoolBuilder",
    "SendLog",
    "bitquery_pool",
    "blockdb_pool",
    "coinapi_pool",
]

# The Transfers subscription of the built-in demo config: what a user of Bitquery streams.
BITQUERY_TRANSFERS_QUERY = """
subscription {
  EVM(network: eth) {
    Transfers {
      Block { Number Hash Time }
      Transaction { Hash From To Index }
      Log { Index }
      Call { Index }
      Transfer { Amount Sender Receiver Type Currency { Symbol Name SmartContract Decimals Native } }
    }
  }
}"""

MIXES = ("coinapi", "blockdb", "bitquery")
_CYCLE_WIDTH = 7  # digits of the cycle number written into hex ids (decimal digits are hex digits)
_CYCLE_BASE = 10 ** (_CYCLE_WIDTH - 1)  # so the number always has exactly _CYCLE_WIDTH digits
_SEQ_WIDTH = 10
_SEQ_BASE = 10 ** (_SEQ_WIDTH - 1)  # CoinAPI sequences: fixed width, so frames keep their length


@dataclass(slots=True)
class PoolBuilder:
    """Collects framed payloads and the absolute offsets of their slots."""

    buf: bytearray = field(default_factory=bytearray)
    slots: list[tuple[int, int, int, int]] = field(default_factory=list)  # offset, width, base, step
    frame_offsets: list[int] = field(default_factory=lambda: [0])
    rows: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def add(
        self, payload: bytes, slots: list[tuple[int, int, int, int]], rows: int, frame_id: str | None = None
    ) -> None:
        """One frame; `slots` are (offset in payload, width, base, step): value = base + cycle * step.

        `frame_id`: for a one-row frame, the stored id of its row without its last _CYCLE_WIDTH
        characters (the cycle slot), so a stored row tells which frame of the run it was.
        """
        if frame_id is not None:
            self.ids.append(frame_id)
        header = frame_header(len(payload))
        start = len(self.buf) + len(header)
        self.buf += header
        self.buf += payload
        for offset, width, base, step in slots:
            assert base >= 10 ** (width - 1), "a slot value must fill its width"
            self.slots.append((start + offset, width, base, step))
        self.frame_offsets.append(len(self.buf))
        self.rows.append(rows)

    def build(self, name: str) -> FramePool:
        ids = self.ids if len(self.ids) == len(self.rows) else None
        return FramePool(name, bytes(self.buf), sorted(self.slots), self.frame_offsets, self.rows, ids)


class FramePool:
    """Frames, their rows, and how to render cycle N of them (each cycle with its own slot values)."""

    def __init__(
        self,
        name: str,
        data: bytes,
        slots: list[tuple[int, int, int, int]],
        frame_offsets: list[int],
        rows: list[int],
        ids: list[str] | None = None,
    ) -> None:
        self.name = name
        self.frames = len(rows)
        # One-row frames only: each frame's row id minus its cycle digits (see `ordinals`).
        self.ids = pa.array(ids, pa.string()) if ids is not None else None
        if ids is not None and len(set(ids)) != len(ids):
            raise ValueError(f"{name}: frame ids must be distinct to tell frames apart")
        self.frame_offsets = frame_offsets
        self.row_prefix = [0]
        for n in rows:
            self.row_prefix.append(self.row_prefix[-1] + n)
        self.rows = self.row_prefix[-1]
        self.nbytes = len(data)
        self.max_width = max((w for _, w, _, _ in slots), default=0)
        chunks, pos = [], 0
        for offset, width, _, _ in slots:
            chunks.append(data[pos:offset])
            pos = offset + width
        chunks.append(data[pos:])
        self._chunks = pa.array(chunks, pa.binary())
        self._base = pa.array([b for _, _, b, _ in slots] + [None], pa.int64())
        self._step = pa.array([s for _, _, _, s in slots] + [None], pa.int64())
        self._limit = min((10**w - b) // max(s, 1) for _, w, b, s in slots) if slots else 1 << 62

    def render(self, cycle: int) -> memoryview:
        """Every frame of cycle `cycle`, concatenated; lengths and offsets equal every cycle's."""
        if cycle >= self._limit:
            raise OverflowError(f"{self.name}: more than {self._limit} cycles would widen a slot")
        values = pc.cast(pc.add(self._base, pc.multiply(self._step, cycle)), pa.string()).cast(pa.binary())
        joined = pc.binary_join_element_wise(
            self._chunks, values, b"", null_handling="replace", null_replacement=b""
        )
        assert joined.offset == 0
        return memoryview(joined.buffers()[2])[: self.nbytes]  # type: ignore[index]

    def ordinals(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
        """Which frame of the run each stored row came from (cycle * frames + index in the pool),
        from its id (`frame_id` + the cycle digits); None if the pool has no ids or an id is not
        one of its frames'."""
        if self.ids is None:
            return None
        ids = pc.cast(ids, pa.string())
        index = pc.index_in(pc.utf8_slice_codeunits(ids, 0, -_CYCLE_WIDTH), value_set=self.ids)
        digits = pc.utf8_slice_codeunits(ids, -_CYCLE_WIDTH, 2**31 - 1)
        if index.null_count or not pc.all(pc.utf8_is_digit(digits)).as_py():
            return None
        cycle = pc.subtract(pc.cast(digits, pa.int64()), _CYCLE_BASE)
        return np.asarray(pc.add(pc.multiply(cycle, self.frames), pc.cast(index, pa.int64())))


@dataclass(slots=True)
class SendLog:
    """When frames were handed to the socket: before write i (wall clock, the clock of the
    daemon's `_received_at`) `ns[i]`, after it `upto[i]` frames taken from the cursor in all."""

    pool: FramePool
    ns: array[int] = field(default_factory=lambda: array("q"))  # compact: a soak makes ~10^6 writes
    upto: array[int] = field(default_factory=lambda: array("q"))

    def note(self, ns: int, upto: int) -> None:
        self.ns.append(ns)
        self.upto.append(upto)

    def send_ns(self, ordinals: np.ndarray) -> np.ndarray | None:
        """The write time of each frame ordinal; None if one was never written."""
        upto = np.frombuffer(self.upto, dtype=np.int64)
        if not len(upto) or (len(ordinals) and (ordinals.min() < 0 or ordinals.max() >= upto[-1])):
            return None
        return np.frombuffer(self.ns, dtype=np.int64)[np.searchsorted(upto, ordinals, side="right")]


class Cursor:
    """Successive frames of a pool, cycle after cycle; every sender of one mix shares one cursor."""

    def __init__(self, pool: FramePool) -> None:
        self.pool = pool
        self.cycle = 0
        self.pos = 0
        self.log = SendLog(pool)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"render-{pool.name}")
        self._view = pool.render(0)
        self._next = self._executor.submit(pool.render, 1)

    def take(self, n: int) -> tuple[list[memoryview], int, int]:
        """Up to `n` frames as buffer views (two when the cycle wraps), and how many frames and rows."""
        pool, pieces, frames, rows = self.pool, [], 0, 0
        offsets, prefix = pool.frame_offsets, pool.row_prefix
        while n > 0:
            j = self.pos
            k = min(n, pool.frames - j)
            pieces.append(self._view[offsets[j] : offsets[j + k]])
            rows += prefix[j + k] - prefix[j]
            frames += k
            n -= k
            self.pos += k
            if self.pos == pool.frames:
                self.cycle += 1
                self.pos = 0
                self._view = self._next.result()  # rendered in the background meanwhile
                self._next = self._executor.submit(pool.render, self.cycle + 1)
        return pieces, frames, rows

    @property
    def taken(self) -> int:
        """Frames taken so far: the ordinal of the next frame."""
        return self.cycle * self.pool.frames + self.pos

    def frames_for(self, nbytes: int) -> int:
        """About how many frames make `nbytes`."""
        return max(1, nbytes * self.pool.frames // max(self.pool.nbytes, 1))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# -- the three mixes ---------------------------------------------------------------------------


def _tail_slot(payload: bytes, marker: bytes, length: int, start: int = 0) -> int:
    """Offset of the last _CYCLE_WIDTH characters of the `length`-char value after `marker`."""
    at = payload.index(marker, start) + len(marker)
    return at + length - _CYCLE_WIDTH


@cache
def coinapi_pool(frames: int = 65536, seed: int = 1) -> FramePool:
    """CoinAPI `trade` messages, one per frame (~265 B), from the emulator's market (flood trades)."""
    from ingest.emulators.coinapi_market import Market

    market = Market(seed)
    symbols = list(market.symbols)
    wanted = {("trade", s) for s in symbols}
    events = market.flood(symbols, -(-frames // len(symbols)), wanted)[:frames]
    per_symbol: dict[str, int] = {}
    index = []
    for event in events:
        per_symbol[event.route] = per_symbol.get(event.route, 0) + 1
        index.append(per_symbol[event.route])
    builder = PoolBuilder()
    for event, k in zip(events, index, strict=True):
        assert event.tail is not None
        placeholder = b"%d" % (_SEQ_BASE + k)
        payload = event.head + placeholder + event.tail
        seq = (len(event.head), _SEQ_WIDTH, _SEQ_BASE + k, per_symbol[event.route])
        at = _tail_slot(payload, b'"uuid":"', 36)
        uuid = (at, _CYCLE_WIDTH, _CYCLE_BASE, 1)
        builder.add(payload, [seq, uuid], 1, payload[at - 36 + _CYCLE_WIDTH : at].decode())
    return builder.build("coinapi")


@cache
def blockdb_pool(frames: int = 32768, seed: int = 1) -> FramePool:
    """BlockDB 0304 token-transfer update envelopes, one per frame (~560 B), from synth.Chain."""
    from ingest.emulators.synth import Chain

    chain = Chain(seed, 1, txs_per_block=200)
    encode = msgspec.json.Encoder().encode
    builder = PoolBuilder()
    while len(builder.rows) < frames:
        for dataset_id, record, is_reorg in chain.advance():
            if dataset_id != "0304" or len(builder.rows) >= frames:
                continue
            envelope = {"chain_id": 1, "dataset_id": "0304", "is_reorg": is_reorg, "data": record}
            payload = encode(envelope)
            slot = (_tail_slot(payload, b'"_tracing_id":"', 64), _CYCLE_WIDTH, _CYCLE_BASE, 1)
            builder.add(payload, [slot], 1)
    return builder.build("blockdb")


@cache
def bitquery_payloads(frames: int = 128, txs_per_block: int = 100, seed: int = 1) -> tuple[bytes, ...]:
    """`{"data":{"EVM":{"Transfers":[...]}}}` results, one block (~117 rows, ~80 kB) per payload."""
    from ingest.emulators.bitquery_feeds import Chains, messages
    from ingest.emulators.bitquery_query import compile_request

    plan = compile_request(BITQUERY_TRANSFERS_QUERY, None, None)
    chains = Chains(seed, txs_per_block=txs_per_block, reorg_every=0)
    chains.ensure(plan)
    encode = msgspec.json.Encoder().encode
    out: list[bytes] = []
    while len(out) < frames:
        produced = chains.step()
        for block in chains.blocks_for(plan, produced):
            out += [m.payload for m in messages(plan, block, encode, False)]
    return tuple(out[:frames])


@cache
def bitquery_pool(op_id: str = "1", frames: int = 128) -> FramePool:
    """graphql-transport-ws `next` frames for operation `op_id`, many Transfers rows each."""
    builder = PoolBuilder()
    prefix = b'{"type":"next","id":%s,"payload":' % msgspec.json.encode(op_id)
    marker = b'"Transaction":{"Hash":"'
    for result in bitquery_payloads(frames):
        payload = prefix + result + b"}"
        slots, at = [], 0
        while (found := payload.find(marker, at)) >= 0:
            slots.append((_tail_slot(payload, marker, 66, found), _CYCLE_WIDTH, _CYCLE_BASE, 1))
            at = found + len(marker)
        builder.add(payload, slots, len(slots))  # one Transaction.Hash per Transfers row
    return builder.build(f"bitquery-{op_id}")


POOLS: dict[str, Callable[[], FramePool]] = {
    "coinapi": coinapi_pool,
    "blockdb": blockdb_pool,
    "bitquery": bitquery_pool,
}
