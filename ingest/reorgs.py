"""Reorgs and block-number gaps, detected from the block streams themselves, a flush at a time.

A provider may or may not flag reorgs (BlockDB does, Bitquery does not), so the chain itself is
the evidence: a height seen again with another hash, or a block whose parent hash is not the hash
stored for the height below, means the older branch was replaced. Consecutive replaced heights
are one reorg, closed by the next block that is new. A jump in block numbers within a stream is
a gap. Canonical views then keep, per height, the newest hash (see sql/).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingest.chains import evm_chain
from ingest.events import Gap

__all__ = ["BLOCK_STREAMS", "ReorgTracker"]

# dataset -> (chain column, number column, hash column, parent hash column)
BLOCK_STREAMS: dict[str, tuple[str, str, str, str]] = {
    "blockdb_blocks": ("chain_id", "block_number", "block_hash", "parent_block_hash"),
    "bitquery_evm_blocks": ("network", "block_number", "block_hash", "block_parent_hash"),
}
_REMEMBER = 512  # heights kept per chain: deeper than any reorg a provider reports


@dataclass(slots=True)
class _Open:
    first: int
    old: list[str]
    new: list[str]
    detected_at: int
    position: int
    how: str


@dataclass(slots=True)
class _Chain:
    hashes: OrderedDict[int, str] = field(default_factory=OrderedDict)
    head: int | None = None
    head_at: int = 0
    open: _Open | None = None


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
            positions.to_pylist(),
            strict=True,
        )
        for provider, chain, number, block_hash, parent, subscription, received_at, position in rows:
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
            )

    def close(self) -> None:
        """Emit reorgs still open (at shutdown: no newer block will come to close them)."""
        for (provider, chain), state in self._chains.items():
            self._emit(provider, chain, state)

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
    ) -> None:
        state = self._chains.setdefault((provider, chain), _Chain())
        old = state.hashes.get(number)
        if old is not None and old != block_hash:
            current = state.open
            if current is not None and number == current.first + len(current.old):
                current.old.append(old)
                current.new.append(block_hash)
            else:
                self._emit(provider, chain, state)
                state.open = _Open(number, [old], [block_hash], received_at, position, "rehash")
        elif old is None:
            below = state.hashes.get(number - 1)
            if parent and below is not None and below != parent and state.open is None:
                # The parent changed but its replacement has not been seen (no ordering guarantee).
                self._on_reorg(
                    self._row(
                        provider, chain, _Open(number - 1, [below], [parent], received_at, position, "parent")
                    )
                )
            self._emit(provider, chain, state)  # a new block closes a reorg in progress
            if state.head is not None and number > state.head + 1:
                gap = Gap(
                    provider,
                    subscription,
                    "block",
                    state.head_at,
                    received_at,
                    chain,
                    state.head + 1,
                    number,
                    position,
                )
                self._on_gap(gap, received_at)
        state.hashes[number] = block_hash
        state.hashes.move_to_end(number)
        while len(state.hashes) > _REMEMBER:
            state.hashes.popitem(last=False)
        if state.head is None or number > state.head:
            state.head, state.head_at = number, received_at

    def _emit(self, provider: str, chain: str, state: _Chain) -> None:
        if state.open is not None:
            self._on_reorg(self._row(provider, chain, state.open))
            state.open = None

    @staticmethod
    def _row(provider: str, chain: str, r: _Open) -> dict[str, Any]:
        last = r.first + len(r.old) - 1
        return {
            "provider": provider,
            "chain": chain,
            "first_height": r.first,
            "last_height": last,
            "depth": len(r.old),
            "old_hashes": r.old,
            "new_hashes": r.new,
            "detected_at": r.detected_at,
            "how": r.how,
            "id": f"{provider}|{chain}|{r.first}|{r.new[0]}",
            "position": r.position,
        }
