"""Deterministic synthetic EVM chains: blocks, transactions, logs, transfers, swaps, OHLC bars and reorgs."""

from __future__ import annotations

import bisect
import hashlib
import random
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NamedTuple

import msgspec

__all__ = [
    "BLOCK_TIME_MS",
    "FIRST_BLOCK",
    "GENESIS_MS",
    "POOLS",
    "REORG_DEPTHS",
    "TOKENS",
    "Chain",
    "Emission",
    "Pool",
    "Token",
    "TransferType",
    "block_hash",
    "block_time_ms",
    "decimal_str",
    "iso_ms",
    "tracing_id",
]

FIRST_BLOCK = 21_000_000
BLOCK_TIME_MS = 12_000
# Chosen so FIRST_BLOCK is stamped 2025-11-11T18:42:15.123Z, the time in BlockDB's own example.
GENESIS_MS = 1_762_886_535_123 - FIRST_BLOCK * BLOCK_TIME_MS
# BlockDB quotes < 150 ms from P2P sighting to delivery; _created_at is block time plus this.
PROCESSING_MS = 150
REORG_DEPTHS = (1, 2, 3)
OHLC_BUCKET_SECONDS = 60
WALLETS = 64
CACHED_BLOCKS = 16


class TransferType(IntEnum):
    """BlockDB's transfer_type enum (docs: api-reference/enumerations/transfer-type)."""

    NATIVE_TX = 0
    NATIVE_INTERNAL = 1
    ERC20 = 2
    ERC721 = 3
    ERC1155 = 4


class Token(NamedTuple):
    """An ERC-20 token; decimals None means BlockDB does not know them (amount_adj is null)."""

    address: str
    symbol: str
    decimals: int | None


class Pool(NamedTuple):
    """A swap pool; price18 is token1 per 1 token0, decimals-adjusted, 18-decimal fixed point."""

    uid: str
    exchange_id: int
    type_id: int
    token0: Token
    token1: Token
    price18: int


class Emission(NamedTuple):
    """One update the emulator sends: dataset id, the `data` record, and the envelope's is_reorg."""

    dataset_id: str
    record: dict[str, Any]
    is_reorg: bool


def _sha(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_sha(*parts), "big"))


def _addr(*parts: object) -> str:
    return _sha("addr", *parts)[:20].hex()


TOKENS: dict[str, Token] = {
    "WETH": Token("c02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", "WETH", 18),
    "USDC": Token("a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "USDC", 6),
    "USDT": Token("dac17f958d2ee523a2206206994597c13d831ec7", "USDT", 6),
    "WBTC": Token("2260fac5e5542a773aa44fbcfedf7c193bc2c599", "WBTC", 8),
    "DAI": Token("6b175474e89094c44da98b954eedeac495271d0f", "DAI", 18),
}
# pool_uid: pool address right-padded with zeros to 32 bytes, as in BlockDB's 0302 example.
POOLS: tuple[Pool, ...] = tuple(
    Pool(_addr("pool", i) + "0" * 24, 1, 201 if i % 2 else 101, TOKENS[a], TOKENS[b], p * 10**18)
    for i, (a, b, p) in enumerate(
        [("WETH", "USDC", 3000), ("WETH", "USDT", 3000), ("WBTC", "WETH", 30), ("DAI", "USDC", 1)]
    )
)
_TRANSFER = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
_APPROVAL = "8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
_TRANSFER_SINGLE = "c3d58168c5ae7397731d063d5bbf3d657854427343f4c083240f7aacaa2d0f62"
_SWAP = "d78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822"
_KINDS = ("native", "erc20", "swap", "internal", "erc721", "erc1155", "create", "failed")
_KIND_WEIGHTS = (20, 28, 20, 10, 7, 5, 5, 5)
# Lineage columns each dataset documents besides _tracing_id and _is_reorg (PROTOCOLS.md 2.8).
_TIMESTAMPED = frozenset({"0101", "0103", "0302", "0304", "0404"})
_WITH_PARENTS = frozenset({"0302", "0304", "0404"})


def block_hash(seed: int, chain_id: int, number: int, branch: int) -> str:
    """Hash of block `number` on `branch`: 64 hex chars, no 0x, as BlockDB encodes hashes."""
    return _sha("block", seed, chain_id, number, branch).hex()


def block_time_ms(number: int) -> int:
    """Block timestamp in epoch milliseconds: a fixed genesis plus 12 s per block."""
    return GENESIS_MS + number * BLOCK_TIME_MS


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and Z, e.g. 2025-11-11T18:42:15.123Z."""
    whole = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{ms % 1000:03d}Z"


def decimal_str(raw: int, decimals: int, places: int | None = None) -> str:
    """Exact decimal text of raw / 10**decimals; `places` fixes the scale (e.g. 18 for NUMERIC(78,18))."""
    whole, frac = divmod(raw, 10**decimals)
    digits = f"{frac:0{decimals}d}" if decimals else ""
    digits = (digits.rstrip("0") or "0") if places is None else (digits + "0" * places)[:places]
    return f"{whole}.{digits}"


def tracing_id(dataset_id: str, chain_id: int, salt: str, content: dict[str, Any]) -> str:
    """Dataset id + 60 hex of a hash of the record content, so a replaced record gets a new id."""
    body = msgspec.json.encode([chain_id, dataset_id, salt, content], order="sorted")
    return dataset_id + hashlib.sha256(body).hexdigest()[:60]


def _topic(address: str) -> str:
    return "0" * 24 + address


def _word(value: int) -> str:
    return f"{value:064x}"


def _big_amount(rng: random.Random) -> int:
    # 24+ digits, and one in five above 2**128, so any float or int64 on the client side shows.
    return rng.randrange(2**128, 2**256) if rng.random() < 0.2 else rng.randrange(10**23, 10**30)


class _Row(NamedTuple):
    dataset_id: str
    base: dict[str, Any]
    tid: str
    parents: list[str] | None


class _Swap(NamedTuple):
    key: tuple[str, str, str]  # (pool_uid, token_in, token_out)
    pool: Pool
    price18: int
    amount_in: int
    amount_out: int
    tid: str


class _Block(NamedTuple):
    rows: list[_Row]
    swaps: list[_Swap]


class _Builder:
    """Builds one block's records: the `shape` rng fixes counts and kinds per height, the `vals` rng
    fills in values per branch, so a reorg replaces every natural key one for one with new content."""

    def __init__(self, chain: Chain, number: int, branch: int) -> None:
        self.chain, self.n, self.branch = chain, number, branch
        self.hash = chain.block_hash(number, branch)
        self.time = iso_ms(block_time_ms(number))
        self.shape = _rng("shape", chain.seed, chain.chain_id, number)
        self.vals = _rng("vals", chain.seed, chain.chain_id, number, branch)
        self.rows: list[_Row] = []
        self.swaps: list[_Swap] = []
        self.log_index = 0  # block-wide, as in Ethereum receipts

    def add(self, dataset_id: str, base: dict[str, Any], parents: list[str] | None = None) -> str:
        tid = tracing_id(dataset_id, self.chain.chain_id, self.hash, base)
        self.rows.append(_Row(dataset_id, base, tid, parents))
        return tid

    def hex(self, nbytes: int) -> str:
        return self.vals.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()

    def wallet(self) -> str:
        return self.chain.wallets[self.vals.randrange(WALLETS)]

    def build(self) -> _Block:
        c, v = self.chain, self.vals
        self.add(
            "0101",
            {
                "block_number": self.n,
                "block_hash": self.hash,
                "parent_block_hash": c.block_hash(self.n - 1, c.branch_of(self.n - 1)),
                "miner": c.miners[v.randrange(len(c.miners))],
                "timestamp_utc": self.time,
                "receipt_root": self.hex(32),
                "gas_limit": 36_000_000,
                "extra_data": f"synth/{c.chain_id}/{self.branch}".encode().hex(),
                "size": v.randrange(20_000, 200_000),
            },
        )
        t = c.txs_per_block
        for i in range(self.shape.randint(t - t // 4, t + t // 4)):
            self.tx(i, self.shape.choices(_KINDS, _KIND_WEIGHTS)[0])
        return _Block(self.rows, self.swaps)

    def tx(self, i: int, kind: str) -> None:
        c, v, sender = self.chain, self.vals, self.wallet()
        n_internal = self.shape.randint(1, 2) if kind == "internal" else 0
        internal = [v.randrange(10**23, 10**25) for _ in range(n_internal)]
        token = c.tokens[v.randrange(len(c.tokens))]
        value = v.randrange(10**23, 10**26) if kind == "native" else sum(internal)
        to = {"native": self.wallet(), "erc20": token.address, "create": None}.get(kind, c.router)
        gas = v.randrange(21_000, 400_000)
        tx = self.add(
            "0102",
            {
                "tx_hash": self.hex(32),
                "block_number": self.n,
                "block_time": self.time,
                "tx_index": i,
                "from_address": sender,
                "to_address": to,
                "created_contract_address": self.hex(20) if kind == "create" else None,
                "gas_used": str(gas),
                "effective_gas_price_wei": str(v.randrange(10**9, 80 * 10**9)),
                "status_success": kind != "failed",
                "root": None,
                "tx_type": 2 if v.random() < 0.8 else 0,
                "trace_failed": kind == "failed",
                "value_wei": str(value),
                "input": "" if kind == "native" else self.hex(4 + 64),
                "nonce": v.randrange(5_000),
                "gas_limit": str(gas + v.randrange(50_000)),
                "block_hash": self.hash,
            },
        )
        if kind == "native":
            self.transfer(i, TransferType.NATIVE_TX, sender, to or "", value, [tx])
        elif kind == "internal":
            for trace, amount in zip(("0", "0.1"), internal, strict=False):
                receiver = self.wallet()
                self.transfer(i, TransferType.NATIVE_INTERNAL, c.router, receiver, amount, [tx], trace=trace)
        elif kind == "erc20":
            self.erc20(i, token, sender, self.wallet(), _big_amount(v), tx)
            if self.shape.random() < 0.3:
                topics = [_topic(sender), _topic(c.router)]
                self.log(i, token.address, _APPROVAL, topics, _word(_big_amount(v)))
        elif kind == "swap":
            self.swap(i, sender, tx)
        elif kind in ("erc721", "erc1155"):
            self.nft(i, kind, sender, tx)
        elif kind == "create":
            self.log(i, c.router, None, [], self.hex(32))  # anonymous event: topic_zero is null

    def log(self, i: int, contract: str, topic0: str | None, topics: list[str], data: str) -> tuple[int, str]:
        li, self.log_index = self.log_index, self.log_index + 1
        return li, self.add(
            "0103",
            {
                "contract_address": contract,
                "topic_zero": topic0,
                "data_topics": topics,
                "data": data,
                "block_number": self.n,
                "block_time": self.time,
                "tx_index": i,
                "log_index": li,
            },
        )

    def transfer(
        self,
        i: int,
        kind: TransferType,
        sender: str,
        receiver: str,
        amount: int,
        parents: list[str],
        *,
        token: Token | None = None,
        li: int | None = None,
        trace: str | None = None,
        token_id: int | None = None,
    ) -> None:
        decimals = 18 if token is None else token.decimals
        nft = kind in (TransferType.ERC721, TransferType.ERC1155)
        self.add(
            "0304",
            {
                "block_number": self.n,
                "block_time": self.time,
                "tx_index": i,
                "log_index": li,
                "trace_address": trace,
                "from_address": sender,
                "to_address": receiver,
                "token_address": None if token is None else token.address,
                "amount_raw": str(amount),
                "amount_adj": None if decimals is None or nft else decimal_str(amount, decimals),
                "token_id": None if token_id is None else str(token_id),
                "transfer_type": int(kind),
            },
            parents,
        )

    def erc20(self, i: int, token: Token, sender: str, receiver: str, amount: int, tx: str) -> None:
        li, log = self.log(i, token.address, _TRANSFER, [_topic(sender), _topic(receiver)], _word(amount))
        self.transfer(i, TransferType.ERC20, sender, receiver, amount, [tx, log], token=token, li=li)

    def nft(self, i: int, kind: str, sender: str, tx: str) -> None:
        v, receiver = self.vals, self.wallet()
        if kind == "erc721":  # ERC-721 Transfer: the token id is the third indexed topic, no data
            token, ttype, token_id, amount = self.chain.nft721, TransferType.ERC721, v.getrandbits(256), 1
            topics = [_topic(sender), _topic(receiver), _word(token_id)]
            li, log = self.log(i, token.address, _TRANSFER, topics, "")
        else:  # ERC-1155 TransferSingle(operator, from, to; id, value)
            token, ttype, token_id = self.chain.nft1155, TransferType.ERC1155, v.randrange(100)
            amount = v.randint(1, 999)
            topics = [_topic(sender), _topic(sender), _topic(receiver)]
            li, log = self.log(i, token.address, _TRANSFER_SINGLE, topics, _word(token_id) + _word(amount))
        self.transfer(i, ttype, sender, receiver, amount, [tx, log], token=token, li=li, token_id=token_id)

    def swap(self, i: int, trader: str, tx: str) -> None:
        pool = POOLS[self.shape.randrange(len(POOLS))]
        zero_for_one = self.shape.random() < 0.5
        t_in, t_out = (pool.token0, pool.token1) if zero_for_one else (pool.token1, pool.token0)
        d_in, d_out = t_in.decimals or 0, t_out.decimals or 0
        price = pool.price18 * (10_000 + self.vals.randrange(-50, 51)) // 10_000
        price = price if zero_for_one else 10**36 // price
        amount_in = self.vals.randrange(10 ** max(d_in - 2, 0), 10 ** (d_in + 3))
        amount_out = max(1, amount_in * price * 10**d_out // (10**18 * 10**d_in))
        exec18 = amount_out * 10**d_in * 10**18 // (amount_in * 10**d_out)
        address = pool.uid[:40]
        self.erc20(i, t_in, trader, address, amount_in, tx)
        self.erc20(i, t_out, address, trader, amount_out, tx)
        amounts = (amount_in, 0, 0, amount_out) if zero_for_one else (0, amount_in, amount_out, 0)
        topics = [_topic(self.chain.router), _topic(trader)]
        li, log = self.log(i, address, _SWAP, topics, "".join(_word(x) for x in amounts))
        tid = self.add(
            "0302",
            {
                "pool_uid": pool.uid,
                "exchange_id": pool.exchange_id,
                "type_id": pool.type_id,
                "block_number": self.n,
                "block_time": self.time,
                "tx_index": i,
                "log_index": li,
                "token_in": t_in.address,
                "token_out": t_out.address,
                "amount_in": str(amount_in),
                "amount_out": str(amount_out),
                "exec_price": decimal_str(exec18, 18, 18),
            },
            [tx, log],
        )
        key = (pool.uid, t_in.address, t_out.address)
        self.swaps.append(_Swap(key, pool, exec18, amount_in, amount_out, tid))


class Chain:
    """One chain's deterministic history; `advance()` returns the next step's emissions in send order.

    Reorgs: when `reorg_every` > 0, every `reorg_every` blocks the next step first replaces the last
    depth blocks (depth cycling through REORG_DEPTHS) with a new branch, re-emitting every record of
    those heights with is_reorg true, then produces the next block on that branch. The first replaced
    block's parent is the unchanged ancestor.
    """

    def __init__(
        self,
        seed: int,
        chain_id: int,
        *,
        txs_per_block: int = 8,
        reorg_every: int = 0,
        first_block: int = FIRST_BLOCK,
    ) -> None:
        self.seed, self.chain_id = seed, chain_id
        self.txs_per_block, self.reorg_every, self.first_block = txs_per_block, reorg_every, first_block
        self.head = first_block - 1
        self.blocks_produced = 0
        self.reorgs: list[tuple[int, int, int]] = []  # (chain_id, first_height, depth)
        self.wallets = tuple(_addr("wallet", seed, chain_id, k) for k in range(WALLETS))
        self.miners = tuple(_addr("miner", seed, chain_id, k) for k in range(4))
        self.router = _addr("router", seed, chain_id)
        self.tokens = tuple(
            Token(_addr("token", seed, chain_id, k), f"TK{k}", d)
            for k, d in enumerate((18, 18, 6, 8, 18, None))
        )
        self.nft721 = Token(_addr("erc721", seed, chain_id), "NFT721", None)
        self.nft1155 = Token(_addr("erc1155", seed, chain_id), "NFT1155", None)
        # Branch of every height as runs: heights >= starts[i] belong to branches[i] until the next run.
        self._starts, self._branches = [0], [0]
        self._cache: dict[tuple[int, int], _Block] = {}

    def block_hash(self, number: int, branch: int) -> str:
        """Hash of `number` on `branch` for this chain."""
        return block_hash(self.seed, self.chain_id, number, branch)

    def branch_of(self, number: int) -> int:
        """The branch `number` is currently canonical on (0 until a reorg replaces it)."""
        return self._branches[bisect.bisect_right(self._starts, number) - 1]

    def canonical_hash(self, number: int) -> str:
        """Hash of the currently canonical block at `number`."""
        return self.block_hash(number, self.branch_of(number))

    def advance(self) -> list[Emission]:
        """Produce the next block (after any scheduled reorg) and return its emissions."""
        # Records of one step are processed together, shortly after the new block's timestamp.
        processed = iso_ms(block_time_ms(self.head + 1) + PROCESSING_MS)
        out: list[Emission] = []
        if self.reorg_every and self.blocks_produced and self.blocks_produced % self.reorg_every == 0:
            depth = min(REORG_DEPTHS[len(self.reorgs) % len(REORG_DEPTHS)], self.blocks_produced)
            first = self.head - depth + 1
            cut = bisect.bisect_left(self._starts, first)
            del self._starts[cut:], self._branches[cut:]
            self._starts.append(first)
            self._branches.append(len(self.reorgs) + 1)
            self.reorgs.append((self.chain_id, first, depth))
            for number in range(first, self.head + 1):
                out += self._emit(number, True, processed)
        self.head += 1
        self.blocks_produced += 1
        out += self._emit(self.head, False, processed)
        return out

    def _block(self, number: int) -> _Block:
        key = (number, self.branch_of(number))
        block = self._cache.get(key)
        if block is None:
            block = self._cache[key] = _Builder(self, *key).build()
            if len(self._cache) > 2 * CACHED_BLOCKS:
                for old in [k for k in self._cache if k[0] < number - CACHED_BLOCKS]:
                    del self._cache[old]
        return block

    def _emit(self, number: int, is_reorg: bool, processed: str) -> list[Emission]:
        block = self._block(number)
        out = []
        for row in block.rows + self._bars(number, block):
            record = dict(row.base)
            record["_tracing_id"] = row.tid
            if row.dataset_id in _WITH_PARENTS:
                record["_parent_tracing_ids"] = row.parents or []
            record["_is_reorg"] = is_reorg
            if row.dataset_id in _TIMESTAMPED:
                record["_created_at"] = record["_updated_at"] = processed
            out.append(Emission(row.dataset_id, record, is_reorg))
        return out

    def _bars(self, number: int, block: _Block) -> list[_Row]:
        """0404 bars for each (pool, direction) traded in `number`, over its 1-minute bucket so far."""
        if not block.swaps:
            return []
        width = OHLC_BUCKET_SECONDS * 1000
        start = block_time_ms(number) - block_time_ms(number) % width
        first = max(self.first_block, -(-(start - GENESIS_MS) // BLOCK_TIME_MS))
        swaps = [s for m in range(first, number + 1) for s in self._block(m).swaps]
        salt = self.canonical_hash(number)
        rows = []
        for key in dict.fromkeys(s.key for s in block.swaps):
            group = [s for s in swaps if s.key == key]
            pool = group[0].pool
            d_in, d_out = (
                (pool.token0, pool.token1) if key[1] == pool.token0.address else (pool.token1, pool.token0)
            )
            prices = [s.price18 for s in group]
            vin, vout = sum(s.amount_in for s in group), sum(s.amount_out for s in group)
            base = {
                "pool_uid": pool.uid,
                "exchange_id": pool.exchange_id,
                "type_id": pool.type_id,
                "bucket_start": iso_ms(start),
                "bucket_end": iso_ms(start + width),
                "bucket_seconds": OHLC_BUCKET_SECONDS,
                "token_in": key[1],
                "token_out": key[2],
                "open": decimal_str(prices[0], 18, 18),
                "high": decimal_str(max(prices), 18, 18),
                "low": decimal_str(min(prices), 18, 18),
                "close": decimal_str(prices[-1], 18, 18),
                "volume_in_raw": str(vin),
                "volume_in": decimal_str(vin, d_in.decimals or 0, 18),
                "volume_out_raw": str(vout),
                "volume_out": decimal_str(vout, d_out.decimals or 0, 18),
                "trades_count": len(group),
            }
            tid = tracing_id("0404", self.chain_id, salt, base)
            rows.append(_Row("0404", base, tid, [s.tid for s in group]))
        return rows
