"""transactionNotification values for the Helius emulator: filter matching, wire bytes, status meta.

What is simplified against Helius' Enhanced WebSockets (PROTOCOLS.md 4.8) and Agave's encoders:

* Every synthetic transaction is a legacy one (`"version": "legacy"`): one signature (the fee payer's),
  no address lookup tables, one instruction that calls the last account key with every other key as its
  accounts. The signature is the ledger's, not a real ed25519 signature of the message.
* No inner instructions, token balances or per-transaction rewards (`rewards` is `[]` with
  `showRewards`); jsonParsed renders the one instruction partially decoded (programId, accounts, data),
  as Agave does for programs it has no parser for, even the system and token programs it does parse.
* `transactionDetails` "signatures" gives `{"signatures": [sig]}` as the transaction, without meta, and
  "none" gives no `transaction` member at all; "accounts" gives Agave's account list
  (`{signatures, accountKeys: [{pubkey, writable, signer, source}]}`) with its reduced meta.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from ingest.emulators.helius_encode import b58decode, b58encode

if TYPE_CHECKING:
    from ingest.emulators.helius_chain import Tx
    from ingest.emulators.helius_rpc import TxSpec

__all__ = ["allows", "transaction_value", "wire_transaction"]

# Message header of every synthetic transaction: one signer, no read-only signer, the program read-only.
_HEADER = bytes([1, 0, 1])


def allows(spec: TxSpec, tx: Tx) -> bool:
    """Whether `tx` passes a transactionSubscribe filter; account lists match the message's keys."""
    if (tx.is_vote and not spec.vote) or (tx.err is not None and not spec.failed):
        return False
    if spec.signature is not None and tx.signature != spec.signature:
        return False
    if spec.include and spec.include.isdisjoint(tx.keys):
        return False
    return spec.exclude.isdisjoint(tx.keys) and spec.required <= tx.keys


def _compact_u16(n: int) -> bytes:
    """Solana's short_vec length: 7 bits per byte, low bits first, high bit = more bytes follow."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def wire_transaction(tx: Tx) -> bytes:
    """`tx` in the legacy wire layout: signatures, header, keys, recent blockhash, instructions."""
    keys = tx.account_keys
    program = len(keys) - 1  # its index; the instruction's accounts are the keys before it
    accounts, data = _compact_u16(program) + bytes(range(program)), _compact_u16(len(tx.data)) + tx.data
    return b"".join(
        [
            _compact_u16(1),
            b58decode(tx.signature),
            _HEADER,
            _compact_u16(len(keys)),
            *(b58decode(k) for k in keys),
            b58decode(tx.recent_blockhash),
            _compact_u16(1),
            bytes([program]) + accounts + data,
        ]
    )


def _account_list(tx: Tx) -> list[dict[str, Any]]:
    """Agave's ParsedAccount entries, in message order."""
    last = len(tx.account_keys) - 1
    return [
        {"pubkey": key, "writable": i != last, "signer": i == 0, "source": "transaction"}
        for i, key in enumerate(tx.account_keys)
    ]


def _encoded(tx: Tx, encoding: str) -> Any:
    if encoding == "base64":
        return [base64.b64encode(wire_transaction(tx)).decode(), "base64"]
    if encoding == "base58":
        return [b58encode(wire_transaction(tx)), "base58"]
    instruction = {
        "programId": tx.account_keys[-1],
        "accounts": list(tx.account_keys[:-1]),
        "data": b58encode(tx.data),
        "stackHeight": None,
    }
    message = {
        "accountKeys": _account_list(tx),
        "recentBlockhash": tx.recent_blockhash,
        "instructions": [instruction],
    }
    return {"signatures": [tx.signature], "message": message}


def _meta(tx: Tx, spec: TxSpec, parsed: bool) -> dict[str, Any]:
    """UiTransactionStatusMeta in Agave's field order; which members appear follows its encoders."""
    status = {"Ok": None} if tx.err is None else {"Err": tx.err}
    meta: dict[str, Any] = {
        "err": tx.err,
        "status": status,
        "fee": tx.fee,
        "preBalances": list(tx.pre_balances),
        "postBalances": list(tx.post_balances),
    }
    if spec.details == "accounts":  # build_simple_ui_transaction_status_meta: no logs, no units
        meta.update(preTokenBalances=[], postTokenBalances=[])
        if spec.show_rewards:
            meta["rewards"] = []
        return meta
    meta.update(innerInstructions=[], logMessages=list(tx.logs), preTokenBalances=[], postTokenBalances=[])
    # Binary encodings null the rewards unless asked for; jsonParsed leaves them (and loadedAddresses,
    # which its accountKeys' `source` replaces) out.
    if spec.show_rewards or not parsed:
        meta["rewards"] = [] if spec.show_rewards else None
    if not parsed:
        meta["loadedAddresses"] = {"writable": [], "readonly": []}
    meta["computeUnitsConsumed"] = tx.compute_units
    return meta


def transaction_value(tx: Tx, slot: int, encoding: str, spec: TxSpec) -> dict[str, Any]:
    """The `params.result` of a transactionNotification for `tx` of block `slot`."""
    value: dict[str, Any] = {}
    if spec.details != "none":
        if spec.details == "full":
            inner = _encoded(tx, encoding)
        elif spec.details == "accounts":
            inner = {"signatures": [tx.signature], "accountKeys": _account_list(tx)}
        else:
            inner = {"signatures": [tx.signature]}
        transaction: dict[str, Any] = {"transaction": inner}
        if spec.details != "signatures":
            transaction["meta"] = _meta(tx, spec, encoding == "jsonParsed")
        if spec.max_version is not None:  # Agave reports the version only to clients that set a maximum
            transaction["version"] = "legacy"
        value["transaction"] = transaction
    value.update(signature=tx.signature, slot=slot, transactionIndex=tx.index)
    return value
