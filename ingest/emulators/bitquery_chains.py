"""Deterministic Tron and Solana chains for the Bitquery emulator: base58 addresses, slots, signatures."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from ingest.emulators.bitquery_synth import BlockRows, amount_text, usd_text
from ingest.emulators.synth import FIRST_BLOCK, block_time_ms, iso_ms

__all__ = ["SolanaFeed", "TronFeed", "b58", "b58check"]

Row = dict[str, Any]
_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# Both chains start at the wall-clock instant of the EVM chain's first block.
T0_MS = block_time_ms(FIRST_BLOCK)
TRON_FIRST, TRON_BLOCK_MS = 70_000_000, 3_000
SOL_FIRST_SLOT, SOL_FIRST_HEIGHT, SOL_SLOT_MS = 300_000_000, 278_000_000, 400
WALLETS = 48


def b58(data: bytes) -> str:
    """Bitcoin-alphabet base58, leading zero bytes as '1' (Solana keys and signatures)."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _ALPHABET[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def b58check(payload: bytes) -> str:
    """base58 with a 4-byte double-SHA-256 checksum (Tron addresses: 0x41 + 20 bytes -> T...)."""
    check = hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    return b58(payload + check)


def _sha(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_sha(*parts), "big"))


def _iso(ms: int) -> str:
    return iso_ms(ms)[:19] + "Z"


class _Feed:
    """A chain whose every block is a pure function of (seed, index), so the mempool can look ahead."""

    def __init__(self, seed: int, *, txs_per_block: int, first_index: int = 0) -> None:
        self.seed, self.txs_per_block = seed, txs_per_block
        self.index = first_index - 1  # index of the last produced block
        self.blocks_produced = 0

    def _count(self, rng: random.Random) -> int:
        t = self.txs_per_block
        return rng.randint(t - t // 4, t + t // 4)

    def step(self) -> list[BlockRows]:
        self.index += 1
        self.blocks_produced += 1
        return [self._build(self.index, pending=False)]

    def pending(self) -> BlockRows | None:
        return self._build(self.index + 1, pending=True)

    def _build(self, index: int, *, pending: bool) -> BlockRows:
        raise NotImplementedError


class TronFeed(_Feed):
    """Tron: 3 s blocks from height 70,000,000; TRX and TRC-20 transfers between base58 T-addresses."""

    def __init__(self, seed: int, *, txs_per_block: int, first_index: int = 0) -> None:
        super().__init__(seed, txs_per_block=txs_per_block, first_index=first_index)
        self.wallets = tuple(b58check(b"\x41" + _sha("tron-wallet", seed, k)[:20]) for k in range(WALLETS))
        self.currencies = (
            self._currency("", "TRX", "Tron", 6, native=True),
            self._currency("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", "USDT", "Tether USD", 6),
            self._currency("TEkxiTehnzSmSe2XqrBj4w32RUN966rdz8", "USDC", "USD Coin", 6),
        )
        self.usd = {"TRX": 0.25, "USDT": 1, "USDC": 1}

    @staticmethod
    def _currency(contract: str, symbol: str, name: str, decimals: int, *, native: bool = False) -> Row:
        return {"SmartContract": contract, "Symbol": symbol, "Name": name, "Decimals": decimals,
                "Fungible": True, "Native": native}  # fmt: skip

    def block_hash(self, number: int) -> str:
        # A Tron block id starts with its height as 8 bytes, then 24 bytes of hash (no 0x).
        return f"{number:016x}" + _sha("tron-block", self.seed, number).hex()[:48]

    def _build(self, index: int, *, pending: bool) -> BlockRows:
        number = TRON_FIRST + index
        time = _iso(T0_MS + index * TRON_BLOCK_MS - (TRON_BLOCK_MS // 2 if pending else 0))
        rng = _rng("tron", self.seed, number)
        count = self._count(rng)
        block = {"Number": str(number), "Hash": "" if pending else self.block_hash(number),
                 "ParentHash": "" if pending else self.block_hash(number - 1), "Time": time,
                 "Date": time[:10], "TxCount": 0 if pending else count}  # fmt: skip
        transfers = []
        for i in range(count):
            currency = self.currencies[rng.choices((0, 1, 2), (40, 45, 15))[0]]
            sender, receiver = rng.sample(self.wallets, 2)
            amount = amount_text(rng.randrange(10**5, 10**12), currency["Decimals"])
            ok = rng.random() > 0.03
            tx = {"Hash": _sha("tron-tx", self.seed, number, i).hex(), "Index": i, "Time": time,
                  "Fee": amount_text(rng.choice((0, 345_000, 13_844_850)), 6), "FeePayer": sender,
                  "Result": {"Success": ok, "Status": "SUCCESS" if ok else "REVERT"}}  # fmt: skip
            transfer = {"Amount": amount, "AmountInUSD": usd_text(amount, self.usd[currency["Symbol"]]),
                        "Sender": sender, "Receiver": receiver, "Id": "0", "Success": ok,
                        "Currency": currency}  # fmt: skip
            transfers.append({"Block": block, "Transaction": tx, "Transfer": transfer})
        return BlockRows(number, {"Blocks": [] if pending else [{"Block": block}], "Transfers": transfers})


class SolanaFeed(_Feed):
    """Solana: 400 ms slots from 300,000,000 with about one slot in ten skipped; SOL and SPL transfers."""

    def __init__(self, seed: int, *, txs_per_block: int, first_index: int = 0) -> None:
        super().__init__(seed, txs_per_block=txs_per_block, first_index=first_index)
        self.wallets = tuple(b58(_sha("sol-wallet", seed, k)) for k in range(WALLETS))
        self.currencies = (
            ("11111111111111111111111111111111", "SOL", "Solana", 9, True, 150.0),
            ("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v", "USDC", "USD Coin", 6, False, 1.0),
            ("Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB", "USDT", "USDT", 6, False, 1.0),
        )

    def slot(self, index: int) -> int:
        """Slot of the `index`-th produced block: skipped slots are a pure function of the seed."""
        # Skips are decided per block of 16 indexes so a slot is computable without replaying history.
        group, offset = divmod(index, 16)
        skips = _rng("sol-skips", self.seed, group).sample(range(16), 2)
        return SOL_FIRST_SLOT + group * 18 + offset + sum(1 for s in skips if s <= offset)

    def block_hash(self, index: int) -> str:
        return b58(_sha("sol-block", self.seed, index))

    def _account(self, owner: str, mint: str, native: bool) -> Row:
        # SPL balances live in token accounts owned by the wallet; native SOL moves wallet to wallet.
        return {"Address": owner if native else b58(_sha("ata", owner, mint)), "Owner": owner}

    def _build(self, index: int, *, pending: bool) -> BlockRows:
        slot = self.slot(index)
        time = _iso(T0_MS + (slot - SOL_FIRST_SLOT) * SOL_SLOT_MS)
        rng = _rng("sol", self.seed, slot)
        count = self._count(rng)
        block = {"Slot": str(slot), "Height": str(SOL_FIRST_HEIGHT + index),
                 "ParentSlot": str(self.slot(index - 1)), "Time": time, "Date": time[:10],
                 "Hash": self.block_hash(index), "ParentHash": self.block_hash(index - 1),
                 "TxCount": count, "RewardsCount": 1}  # fmt: skip
        transfers = []
        for i in range(count):
            mint, symbol, name, decimals, native, usd = self.currencies[
                rng.choices((0, 1, 2), (50, 35, 15))[0]
            ]
            signer, receiver = rng.sample(self.wallets, 2)
            amount = amount_text(rng.randrange(10**4, 10**12), decimals)
            ok = rng.random() > 0.05
            tx = {"Signature": b58(_sha("sig", self.seed, slot, i) + _sha("sig2", self.seed, slot, i)),
                  "Signer": signer, "Index": i, "Fee": "0.000005", "FeeInUSD": usd_text("0.000005", 150.0),
                  "FeePayer": signer,
                  "Result": {"Success": ok,
                             "ErrorMessage": "" if ok else "custom program error: 0x1"}}  # fmt: skip
            currency = {"MintAddress": mint, "Symbol": symbol, "Name": name, "Decimals": decimals,
                        "Fungible": True, "Native": native}  # fmt: skip
            transfer = {"Amount": amount, "AmountInUSD": usd_text(amount, usd),
                        "Sender": self._account(signer, mint, native),
                        "Receiver": self._account(receiver, mint, native), "Currency": currency}  # fmt: skip
            transfers.append({"Block": block, "Transaction": tx, "Transfer": transfer})
        return BlockRows(slot, {"Blocks": [{"Block": block}], "Transfers": transfers})
