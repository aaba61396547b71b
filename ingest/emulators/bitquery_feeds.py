"""The Bitquery emulator's chains, advanced in lockstep, and the encoding of one block into data messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ingest.emulators.bitquery_chains import SolanaFeed, TronFeed
from ingest.emulators.bitquery_exec import run_cube
from ingest.emulators.bitquery_query import Plan
from ingest.emulators.bitquery_synth import BlockRows, EvmFeed
from ingest.emulators.synth import FIRST_BLOCK

__all__ = ["Chains", "Message", "messages"]

Produced = dict[tuple[str, str], list[BlockRows]]


class Message(NamedTuple):
    """One data/next payload: its encoded `{"data": ...}`, rows per response path, and the rows if kept."""

    payload: bytes
    counts: tuple[tuple[str, int], ...]
    rows: list[tuple[str, dict[str, Any]]] | None


class Chains:
    """Every chain the emulator runs. eth runs from the start (it must match the BlockDB emulator's
    chain block for block); another chain starts when an operation first needs it, at the height eth
    has reached, so one tick adds one block everywhere."""

    def __init__(self, seed: int, *, txs_per_block: int, reorg_every: int) -> None:
        self.seed, self.txs_per_block, self.reorg_every = seed, txs_per_block, reorg_every
        self.ticks = 0
        self.evm: dict[str, EvmFeed] = {"eth": self._evm("eth")}
        self.tron: TronFeed | None = None
        self.solana: SolanaFeed | None = None

    def _evm(self, network: str) -> EvmFeed:
        return EvmFeed(
            self.seed,
            network,
            txs_per_block=self.txs_per_block,
            reorg_every=self.reorg_every,
            first_block=FIRST_BLOCK + self.ticks,
        )

    def ensure(self, plan: Plan) -> None:
        """Start the chain `plan` reads from, if it is not running yet."""
        if plan.root == "EVM" and plan.network not in self.evm:
            self.evm[plan.network] = self._evm(plan.network)
        elif plan.root == "Tron" and self.tron is None:
            self.tron = TronFeed(self.seed, txs_per_block=self.txs_per_block, first_index=self.ticks)
        elif plan.root == "Solana" and self.solana is None:
            self.solana = SolanaFeed(self.seed, txs_per_block=self.txs_per_block, first_index=self.ticks)

    def step(self) -> Produced:
        """Advance every running chain by one block; the blocks to push, by (root, network)."""
        self.ticks += 1
        produced: Produced = {("EVM", network): feed.step() for network, feed in self.evm.items()}
        if self.tron is not None:
            produced[("Tron", "tron")] = self.tron.step()
        if self.solana is not None:
            produced[("Solana", "solana")] = self.solana.step()
        return produced

    def blocks_for(self, plan: Plan, produced: Produced) -> list[BlockRows]:
        """What this tick pushes to `plan`: its chain's new blocks, or the pending set for mempool."""
        # Replaced blocks only become branches after the fact here, so branches_updates stays empty.
        if plan.trigger == "branches_updates":
            return []
        if plan.mempool:
            feed = self.evm.get(plan.network) if plan.root == "EVM" else self.tron
            pending = feed.pending() if feed is not None else None
            return [pending] if pending is not None else []
        return produced.get((plan.root, plan.network), [])


def messages(plan: Plan, block: BlockRows, encode: Callable[[Any], bytes], keep_rows: bool) -> list[Message]:
    """A block's data messages for `plan`: every cube's rows, at most `batch` (800) per cube each.

    No message when no cube has a row (Bitquery pushes only non-empty results); a cube with nothing
    left for a later message is left out of it, so every cube key is optional (PROTOCOLS.md 1.7).
    """
    chunked = []
    for cube_plan in plan.cubes:
        rows = block.cubes.get(cube_plan.cube.field) or []
        out = run_cube(cube_plan, rows) if rows else []
        size = cube_plan.batch
        chunked.append((cube_plan, [out[i : i + size] for i in range(0, len(out), size)]))
    result = []
    for j in range(max((len(chunks) for _, chunks in chunked), default=0)):
        parts = [(cp, chunks[j]) for cp, chunks in chunked if j < len(chunks)]
        payload = encode({"data": {plan.root_key: {cp.key: rows for cp, rows in parts}}})
        counts = tuple((cp.path, len(rows)) for cp, rows in parts)
        kept = [(cp.path, row) for cp, rows in parts for row in rows] if keep_rows else None
        result.append(Message(payload, counts, kept))
    return result
