"""Byte layouts of the Helius emulator's accounts and instructions: SPL Token accounts and mints,
the made-up Anchor-style counters and pools, and the instruction data of each transaction kind."""

from __future__ import annotations

import hashlib

from ingest.emulators.helius_encode import b58decode

__all__ = [
    "COUNTER_DISCRIMINATOR",
    "COUNTER_SIZE",
    "INCREMENT_IX",
    "MINT_SIZE",
    "POOL_DISCRIMINATOR",
    "POOL_SIZE",
    "SWAP_EVENT",
    "SWAP_IX",
    "TOKEN_ACCOUNT_SIZE",
    "counter_data",
    "instruction_data",
    "mint_data",
    "pool_data",
    "token_account_data",
    "u64",
    "u64_at",
]

TOKEN_ACCOUNT_SIZE = 165
MINT_SIZE = 82
COUNTER_SIZE = 56
POOL_SIZE = 200  # above the 128-byte base58 limit on purpose
COUNTER_DISCRIMINATOR = hashlib.sha256(b"account:Counter").digest()[:8]  # Anchor's account tag
POOL_DISCRIMINATOR = hashlib.sha256(b"account:Pool").digest()[:8]
SWAP_EVENT = hashlib.sha256(b"event:Swapped").digest()[:8]
INCREMENT_IX = hashlib.sha256(b"global:increment").digest()[:8]  # Anchor's instruction tags
SWAP_IX = hashlib.sha256(b"global:swap").digest()[:8]


def u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def token_account_data(mint: str, owner: str, amount: int) -> bytes:
    """SPL Token account layout (165 bytes): mint, owner, amount, no delegate, initialized, not native."""
    none_key = b"\0" * 36  # COption<Pubkey>::None: 4-byte tag + 32 zero bytes
    return (
        b58decode(mint) + b58decode(owner) + u64(amount) + none_key + b"\x01" + b"\0" * 12 + u64(0) + none_key
    )


def mint_data(authority: str, supply: int, decimals: int) -> bytes:
    """SPL Mint layout (82 bytes): mint authority, supply, decimals, initialized, no freeze authority."""
    return b"\x01\0\0\0" + b58decode(authority) + u64(supply) + bytes([decimals, 1]) + b"\0" * 36


def counter_data(count: int, last_slot: int, authority: str) -> bytes:
    return COUNTER_DISCRIMINATOR + u64(count) + u64(last_slot) + b58decode(authority)


def pool_data(reserve_a: int, reserve_b: int, last_slot: int, mints: tuple[str, str]) -> bytes:
    body = u64(reserve_a) + u64(reserve_b) + u64(last_slot)
    body += b58decode(mints[0]) + b58decode(mints[1])
    return (POOL_DISCRIMINATOR + body).ljust(POOL_SIZE, b"\0")


def u64_at(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def instruction_data(kind: str, amount: int, slot: int) -> bytes:
    """The instruction as its program would decode it: system and SPL Token layouts, Anchor tags."""
    if kind == "transfer":
        return (2).to_bytes(4, "little") + u64(amount)  # SystemInstruction::Transfer
    if kind in ("token_transfer", "mint_to"):
        return bytes([3 if kind == "token_transfer" else 7]) + u64(amount)  # Transfer, MintTo
    if kind == "increment":
        return INCREMENT_IX
    if kind == "swap":
        return SWAP_IX + u64(amount)
    return (12).to_bytes(4, "little") + u64(slot - 1)  # made up: a vote naming the slot before
