"""Solana wire encodings for the Helius emulator: base58, UiAccount data, jsonParsed tokens, filters."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.emulators.helius_chain import Account

__all__ = [
    "ENCODINGS",
    "MAX_BASE58_BYTES",
    "TOKEN_PROGRAM",
    "Base58Error",
    "DataSize",
    "Filter",
    "Memcmp",
    "TokenAccountState",
    "b58decode",
    "b58encode",
    "filters_allow",
    "ui_account",
    "ui_amount_string",
    "vanity",
    "zstd_frame",
]

TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
# UiAccountEncoding in declaration order: serde lists them in this order in "unknown variant" errors.
ENCODINGS = ("binary", "base58", "base64", "jsonParsed", "base64+zstd")
MAX_BASE58_BYTES = 128  # Agave renders larger data as an error string instead of encoding it
_BS58_TOO_LARGE = "error: data too large for bs58 encoding"

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


class Base58Error(ValueError):
    """A character outside the base58 alphabet, reported like the bs58 crate (character, index)."""

    def __init__(self, character: str, index: int) -> None:
        super().__init__(f"InvalidCharacter {{ character: {character!r}, index: {index} }}")
        self.character = character
        self.index = index


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58, leading zero bytes as '1' (Solana's pubkey/signature text form)."""
    n = int.from_bytes(data, "big")
    digits: list[str] = []
    while n:
        n, r = divmod(n, 58)
        digits.append(_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`; raises Base58Error on the first character outside the alphabet."""
    n = 0
    for i, c in enumerate(text):
        digit = _INDEX.get(c)
        if digit is None:
            raise Base58Error(c, i)
        n = n * 58 + digit
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def vanity(prefix: str) -> str:
    """A valid 32-byte pubkey spelled `prefix` + '1'*k, the way `Vote111...111` is; readable in logs."""
    value = int.from_bytes(b58decode(prefix), "big")
    k = 0
    while value < 1 << 248:  # fewer than 32 significant bytes: append another base58 zero digit
        value *= 58
        k += 1
    if value >= 1 << 256:
        raise ValueError(f"no 32-byte pubkey starts with {prefix!r}")
    return prefix + "1" * k


def zstd_frame(data: bytes) -> bytes:
    """A valid Zstandard frame holding `data` in raw (stored) blocks.

    The stdlib has no zstd, and any conforming decoder reads stored blocks, so clients decode this
    exactly as they decode Agave's compressed frames; only the compression ratio differs.
    """
    n = len(data)
    if n < 256:  # single-segment frame: the content size doubles as the window size
        header = bytes([0x20, n])
    elif n < 65_536 + 256:
        header = bytes([0x60]) + (n - 256).to_bytes(2, "little")
    else:
        header = bytes([0xA0]) + n.to_bytes(4, "little")
    out = bytearray(b"\x28\xb5\x2f\xfd" + header)
    chunks = [data[i : i + 131_072] for i in range(0, n, 131_072)] or [b""]
    for i, chunk in enumerate(chunks):
        last = 1 if i == len(chunks) - 1 else 0
        out += (last | len(chunk) << 3).to_bytes(3, "little") + chunk  # block type 0 = raw
    return bytes(out)


def _slice(data: bytes, data_slice: tuple[int, int] | None) -> bytes:
    if data_slice is None:
        return data
    offset, length = data_slice
    return data[offset : offset + length]


def _bs58(data: bytes) -> str:
    return b58encode(data) if len(data) <= MAX_BASE58_BYTES else _BS58_TOO_LARGE


def ui_amount_string(amount: int, decimals: int) -> str:
    """Agave's real_number_string_trimmed: fixed point, trailing zeros and dot removed."""
    if not decimals:
        return str(amount)
    text = str(amount).rjust(decimals + 1, "0")
    return f"{text[:-decimals]}.{text[-decimals:]}".rstrip("0").rstrip(".")


def _token_amount(amount: int, decimals: int) -> dict[str, Any]:
    ui = float(amount) / float(10**decimals)  # two f64 steps, as Rust computes it
    text = ui_amount_string(amount, decimals)
    return {"amount": str(amount), "decimals": decimals, "uiAmount": ui, "uiAmountString": text}


def _u64_at(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def parse_token(data: bytes, mint_decimals: Mapping[str, int]) -> dict[str, Any] | None:
    """spl-token jsonParsed data for an account or mint, or None when Agave's parser would fail.

    Keys are sorted because Agave builds `parsed` as a serde_json::Value, whose maps are BTreeMaps.
    """
    if len(data) == 165 and data[108] in (1, 2):
        mint = b58encode(data[:32])
        decimals = mint_decimals.get(mint)
        if decimals is None:
            return None  # the parser needs the mint's decimals; unknown mint -> base64 fallback
        info = {
            "isNative": False,
            "mint": mint,
            "owner": b58encode(data[32:64]),
            "state": "initialized" if data[108] == 1 else "frozen",
            "tokenAmount": _token_amount(_u64_at(data, 64), decimals),
        }
        kind = "account"
    elif len(data) == 82 and data[45] == 1:
        info = {
            "decimals": data[44],
            "freezeAuthority": b58encode(data[50:82]) if data[46] else None,
            "isInitialized": True,
            "mintAuthority": b58encode(data[4:36]) if data[0] else None,
            "supply": str(_u64_at(data, 36)),
        }
        kind = "mint"
    else:
        return None
    return {"program": "spl-token", "parsed": {"info": info, "type": kind}, "space": len(data)}


def ui_account(
    account: Account, encoding: str, data_slice: tuple[int, int] | None, mint_decimals: Mapping[str, int]
) -> dict[str, Any]:
    """The UiAccount object of account/program notifications, fields in Agave's serialization order."""
    data = account.data
    rendered: Any
    if encoding == "jsonParsed":
        parsed = parse_token(data, mint_decimals) if account.owner == TOKEN_PROGRAM else None
        # No parser for the owner (or it fails): Agave falls back to base64.
        rendered = parsed or [base64.b64encode(_slice(data, data_slice)).decode(), "base64"]
    elif encoding == "binary":
        rendered = _bs58(_slice(data, data_slice))  # deprecated legacy form: a bare string
    elif encoding == "base58":
        rendered = [_bs58(_slice(data, data_slice)), "base58"]
    elif encoding == "base64":
        rendered = [base64.b64encode(_slice(data, data_slice)).decode(), "base64"]
    else:
        rendered = [base64.b64encode(zstd_frame(_slice(data, data_slice))).decode(), "base64+zstd"]
    return {
        "lamports": account.lamports,
        "data": rendered,
        "owner": account.owner,
        "executable": account.executable,
        "rentEpoch": account.rent_epoch,
        "space": len(data),
    }


@dataclass(frozen=True, slots=True)
class DataSize:
    """programSubscribe `{"dataSize": N}`: the account data is exactly N bytes."""

    size: int


@dataclass(frozen=True, slots=True)
class Memcmp:
    """programSubscribe `{"memcmp": {offset, bytes}}`, bytes already decoded."""

    offset: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class TokenAccountState:
    """programSubscribe `"tokenAccountState"`: an initialized SPL token account."""


Filter = DataSize | Memcmp | TokenAccountState


def filters_allow(filters: tuple[Filter, ...], data: bytes) -> bool:
    """All filters must match (Agave's filter_allows for each)."""
    for f in filters:
        if isinstance(f, DataSize):
            if len(data) != f.size:
                return False
        elif isinstance(f, Memcmp):
            end = f.offset + len(f.raw)
            if end > len(data) or data[f.offset : end] != f.raw:
                return False
        elif not (len(data) == 165 and data[108] != 0):
            return False
    return True
