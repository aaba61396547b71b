"""Reorgs and block-number gaps, detected from the block streams themselves, a flush at a time.

A provider may or may not flag reorgs (BlockDB does, Bitquery does not), so the chain itself is
the evidence: a height seen again with another hash, or a block whose parent hash is not the hash
stored for the height below, means the older branch was replaced. Every height replaced until the
next new block that brings no such evidence is one reorg, one row, whichever evidence came first
(blocks may arrive out of order: a child before its parent). A height never received is a gap,
once the stream is `_LATE` heights past it. A hash seen at a height before counts again only
if a row flags it as a correction (`_is_reorg`): otherwise it is a late resend of a replaced
branch (after a reconnect, or from a lagging stream), not a reorg back. Canonical views decide
each height's hash by the same rule (sql/020_block_hashes.sql).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingest.chains import evm_chain
from ingest.events import Gap
from ingest.schema import quote_ident

__all__ = ["BLOCK_STREAMS", "ReorgTracker", "recent_blocks_sql"]

# dataset -> (chain column, number column, hash column, parent hash column)
BLOCK_STREAMS: dict[str, tuple[str, str, str, str]] = {
    "blockdb_blocks": ("chain_id", "block_number", "block_hash", "parent_block_hash"),
    "bitquery_evm_blocks": ("network", "block_number", "block_hash", "block_parent_hash"),
}
_REMEMBER = 512  # heights kept per chain: deeper than any reorg a provider reports
# How far below the highest height seen a missing height may still arrive before it is a gap.
# Streams reorder by a block or two (a reconnect's resend, two subscriptions on one chain); 32
# heights is a minute even on a 2 s chain. A gap is reported that many heights late (or at close),
# at most 32 heights per chain wait to be settled, and 32 is well inside _REMEMBER.
_LATE = 32


@dataclass(slots=True)
class _Open:
    heights: dict[int, tuple[str, str]]  # height -> (old hash, new hash)
    detected_at: int  # of the first evidence, as are `position` and `how`
    position: int
    how: str


@dataclass(slots=True)
class _Chain:
    hashes: OrderedDict[int, str] = field(default_factory=OrderedDict)
    head: int | None = None  # highest height seen
    last_at: int = 0  # when the latest block was received
    settled: int | None = None  # heights up to here are decided: received, or reported as a gap
    settled_at: int = 0  # when the block at `settled` was received
    # heap of (height, received_at, position, subscription): heights received above `settled`
    pending: list[tuple[int, int, int, str]] = field(default_factory=list)
    open: _Open | None = None
    # height -> every hash whose block was observed there, with the parent that block named
    seen: OrderedDict[int, dict[str, str | None]] = field(default_factory=OrderedDict)

    def parent_of(self, height: int) -> str | None:
        """The parent named by the block of the hash held at `height`; None if that block was not
        seen (its hash came from a child's word) or named none."""
        held = self.hashes.get(height)
        return None if held is None else self.seen.get(height, {}).get(held)

    def forget_old(self) -> None:
        while len(self.hashes) > _REMEMBER:
            self.hashes.popitem(last=False)
        while len(self.seen) > _REMEMBER:
            self.seen.popitem(last=False)


def _norm(value: Any) -> str:
    return str(value).lower().removeprefix("0x")


class ReorgTracker:
    """Feeds on block tables in arrival order; emits reorg rows and block gaps through callbacks."""

    def __init__(
        self, on_reorg: Callable[[dict[str, Any]], None], on_gap: Callable[[Gap, int], None]
    ) -> None:
        self._on_reorg = on_reorg
        self._on_gap = on_gap
        self._chains: dict[tuple[str, str], _Chain] = {}

    def seed(self, blocks: pa.Table, *, settled: bool = True) -> None:
        """Start from the store's last heights (rows of `recent_blocks_sql`), before any block is
        observed: a reorg of a height stored before a restart, and the heights missed while the
        daemon was down, are then seen as if it had never stopped.

        `settled`: the stored heights count as decided (the store is as far as any sink);
        otherwise only their hashes are taken, and the first block observed starts the gap count.
        A journal replay after a crash may observe stored blocks again: it ends where the store
        is (a stored old branch replayed is a late resend; one not stored, replayed before its
        newer hash, cancels out in `_replace`). What is not
        recovered: a reorg still open at the crash (its old hashes are not stored; it may end up
        as two rows) and a gap still pending then.
        """
        rows = zip(
            blocks["provider"].to_pylist(),
            blocks["chain"].to_pylist(),
            blocks["number"].to_pylist(),
            blocks["hash"].to_pylist(),
            blocks["parent_hash"].to_pylist(),
            blocks["announced_at"].to_pylist(),
            blocks["corrected"].to_pylist(),
            blocks["first_received_at"].to_pylist(),
            blocks["received_at"].to_pylist(),
            strict=True,
        )
        # Each stored version goes through the live rules once, in the order it was announced, so
        # the state is what it was (the hash each height holds, the side branches seen, the parents
        # named); reorgs and gaps found on the way were recorded when they happened.
        on_reorg, on_gap = self._on_reorg, self._on_gap
        self._on_reorg, self._on_gap = (lambda _row: None), (lambda _gap, _at: None)
        heads: dict[tuple[str, str], tuple[int, int, int]] = {}  # chain -> (head, first at, last at)
        try:
            for provider, chain, number, block_hash, parent, announced, corrected, first_at, last_at in rows:
                key = (provider, evm_chain(chain))
                self._block(
                    *key,
                    number,
                    _norm(block_hash),
                    parent and _norm(parent),
                    "",
                    announced,
                    0,
                    flagged=bool(corrected),
                )
                if key not in heads or number >= heads[key][0]:
                    heads[key] = (number, first_at, last_at)
        finally:
            self._on_reorg, self._on_gap = on_reorg, on_gap
        for key, (head, first_at, last_at) in heads.items():
            state = self._chains[key]
            state.open, state.pending = None, []
            if settled:
                state.head = state.settled = head
                # As when it was live: a height is settled as of its first receipt (the id of a gap
                # derived again by a replay depends on it), and the stream was last heard then.
                state.settled_at, state.last_at = first_at, last_at
            else:
                state.head = state.settled = None
                state.settled_at = state.last_at = 0

    def observe(self, dataset: str, table: pa.Table, positions: pa.Array) -> None:
        columns = BLOCK_STREAMS.get(dataset)
        if columns is None or not table.num_rows:
            return
        chain_col, number_col, hash_col, parent_col = columns
        rows = zip(
            table["_provider"].to_pylist(),
            table[chain_col].to_pylist(),
            table[number_col].to_pylist(),
            table[hash_col].to_pylist(),
            table[parent_col].to_pylist(),
            table["_subscription"].to_pylist(),
            pc.cast(table["_received_at"], pa.int64()).to_pylist(),
            table["_is_reorg"].to_pylist(),
            positions.to_pylist(),
            strict=True,
        )
        for provider, chain, number, block_hash, parent, subscription, received_at, flagged, position in rows:
            if number is None or block_hash is None:
                continue
            self._block(
                provider,
                evm_chain(chain),
                number,
                _norm(block_hash),
                parent and _norm(parent),
                subscription,
                received_at,
                position,
                flagged=bool(flagged),
            )

    def close(self) -> None:
        """Emit reorgs still open and settle every gap (at shutdown: no newer block will come)."""
        for (provider, chain), state in self._chains.items():
            self._emit(provider, chain, state)
            if state.head is not None:
                self._settle(provider, chain, state, state.head)

    def _block(
        self,
        provider: str,
        chain: str,
        number: int,
        block_hash: str,
        parent: str | None,
        subscription: str,
        received_at: int,
        position: int,
        *,
        flagged: bool = False,
    ) -> None:
        state = self._chains.setdefault((provider, chain), _Chain())
        state.last_at = received_at
        old = state.hashes.get(number)
        seen = state.seen.setdefault(number, {})
        if old is not None and old != block_hash and not flagged:
            if block_hash in seen:
                return  # a late resend of a branch already replaced here: it changes nothing
            if state.parent_of(number + 1) == old:
                # The block above names the hash held here: this one is a side branch (Bitquery's
                # default `trigger_on: all` pushes branch blocks too), not a reorg, unless blocks
                # built on it follow, whose parent hashes then replace the heights below them.
                seen[block_hash] = parent
                return
        seen[block_hash] = parent
        if old is None:
            if state.settled is None:
                state.settled, state.settled_at = number, received_at
            elif number > state.settled:
                heapq.heappush(state.pending, (number, received_at, position, subscription))
        elif old != block_hash:
            self._replace(state, number, old, block_hash, received_at, position, "rehash")
        below = state.hashes.get(number - 1)
        if parent and below is not None and below != parent:
            self._follow_parents(state, number - 1, parent, received_at, position)
        elif old is None:
            self._emit(provider, chain, state)  # a new block that replaces nothing closes a reorg
        state.hashes[number] = block_hash
        state.hashes.move_to_end(number)
        state.forget_old()
        if state.head is None or number > state.head:
            state.head = number
        self._settle(provider, chain, state, state.head - _LATE)

    def _follow_parents(self, state: _Chain, height: int, named: str, at: int, position: int) -> None:
        """A block names a parent other than the hash held below it: that height was replaced, its
        own block maybe not seen yet (no ordering guarantee), so its hash is taken now and the
        block, when it comes, is already known. A parent block seen before (a side branch then)
        names its own parent in turn, down to where the branches meet."""
        while (below := state.hashes.get(height)) is not None and below != named:
            self._replace(state, height, below, named, at, position, "parent")
            state.hashes[height] = named
            grand = state.parent_of(height)
            if grand is None:
                return
            height, named = height - 1, grand

    @staticmethod
    def _replace(
        state: _Chain, height: int, old: str, new: str, detected_at: int, position: int, how: str
    ) -> None:
        """Add a replaced height to the open reorg (opened by the first evidence)."""
        if state.open is None:
            state.open = _Open({}, detected_at, position, how)
        heights = state.open.heights
        original = heights.get(height, (old, new))[0]  # a block's own hash overrides its child's word
        if new == original:  # back to the hash it had: that height was not replaced after all
            heights.pop(height, None)
        else:
            heights[height] = (original, new)
        if not heights:
            state.open = None

    def _settle(self, provider: str, chain: str, state: _Chain, upto: int) -> None:
        """Decide heights up to `upto`: each run of heights not received is one gap."""
        pending = state.pending
        while pending and pending[0][0] <= upto:
            number, received_at, position, subscription = heapq.heappop(pending)
            assert state.settled is not None  # set by the first block, before anything is pending
            if number > state.settled + 1:
                gap = Gap(
                    provider,
                    subscription,
                    "block",
                    state.settled_at,
                    received_at,
                    chain,
                    state.settled + 1,
                    number,
                    position,
                )
                self._on_gap(gap, state.last_at)
            if number > state.settled:
                state.settled, state.settled_at = number, received_at

    def _emit(self, provider: str, chain: str, state: _Chain) -> None:
        if state.open is not None:
            self._on_reorg(self._row(provider, chain, state.open))
            state.open = None

    @staticmethod
    def _row(provider: str, chain: str, r: _Open) -> dict[str, Any]:
        heights = sorted(r.heights)
        old, new = zip(*(r.heights[h] for h in heights), strict=True)
        return {
            "provider": provider,
            "chain": chain,
            "first_height": heights[0],
            "last_height": heights[-1],
            "depth": len(heights),
            # 0x-prefixed as in every view; the id keeps the bare hash it always had (its dedup key)
            "old_hashes": ["0x" + h for h in old],
            "new_hashes": ["0x" + h for h in new],
            "detected_at": r.detected_at,
            "how": r.how,
            "id": f"{provider}|{chain}|{heights[0]}|{new[0]}",
            "position": r.position,
        }


def recent_blocks_sql(dataset: str) -> str:
    """DuckDB SQL for every version of the last `_REMEMBER` heights of each chain of a block
    dataset, in the order `ReorgTracker.seed` takes them: each hash with the parent its block
    names, when it was announced (first received, or last received as a correction) and whether
    it was a correction, and when its height was first and last received."""
    chain, number, block_hash, parent = (quote_ident(c) for c in BLOCK_STREAMS[dataset])
    table = quote_ident(dataset)
    return f"""
        WITH heads AS (
            SELECT _provider, {chain} AS chain, max({number}) AS head FROM {table} GROUP BY ALL
        ), versions AS (
            SELECT b._provider AS provider, CAST(b.{chain} AS VARCHAR) AS chain, b.{number} AS number,
                   b.{block_hash} AS hash, any_value(b.{parent}) AS parent_hash,
                   min(b._received_at) AS first_at, max(b._received_at) AS last_at,
                   coalesce(max(b._received_at) FILTER (WHERE b._is_reorg), first_at) AS announced_at,
                   bool_or(b._is_reorg) AS corrected
            FROM {table} b JOIN heads h ON b._provider = h._provider AND b.{chain} = h.chain
            WHERE b.{number} > h.head - {_REMEMBER} AND b.{block_hash} IS NOT NULL
            GROUP BY ALL
        )
        SELECT provider, chain, number, hash, parent_hash, epoch_ns(announced_at) AS announced_at, corrected,
               epoch_ns(min(first_at) OVER heights) AS first_received_at,
               epoch_ns(max(last_at) OVER heights) AS received_at
        FROM versions
        WINDOW heights AS (PARTITION BY provider, chain, number)
        -- On equal times the views take a correction, then the lower hash: taken last here.
        ORDER BY announced_at, corrected, lower(hash) DESC
    """
