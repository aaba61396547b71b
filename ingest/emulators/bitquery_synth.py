"""Bitquery-shaped EVM rows (Blocks, Transactions, Transfers, DEXTrades, BalanceUpdates) from synth.Chain."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any, NamedTuple

from ingest.emulators.bitquery_schema import NETWORKS
from ingest.emulators.synth import FIRST_BLOCK, TOKENS, Chain, Emission, Token, block_time_ms, iso_ms

__all__ = ["BlockRows", "EvmFeed", "amount_text", "usd_text"]

Row = dict[str, Any]
EMPTY_UNCLE_HASH = "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347"
# USD prices for AmountInUSD/PriceInUSD; tokens without a price report "0", as Bitquery does.
USD = {"ETH": 3000, "WETH": 3000, "USDC": 1, "USDT": 1, "WBTC": 90000, "DAI": 1, "BNB": 600, "POL": 0.5}
_NAMES = {"WETH": "Wrapped Ether", "USDC": "USD Coin", "USDT": "Tether USD", "WBTC": "Wrapped BTC",
          "DAI": "Dai Stablecoin"}  # fmt: skip
_NATIVE = {"bsc": ("BNB", "BNB"), "opbnb": ("BNB", "BNB"), "matic": ("POL", "Polygon Ecosystem Token")}
_SIG_NONE = {"Name": "", "Signature": "", "SignatureHash": ""}
_SIG_TRANSFER = {
    "Name": "Transfer",
    "Signature": "Transfer(address,address,uint256)",
    "SignatureHash": "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
}
_SIG_SWAP = {
    "Name": "Swap",
    "Signature": "Swap(address,address,int256,int256,uint160,uint128,int24)",
    "SignatureHash": "c42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67",
}
_TRANSFER_KIND = {0: "transaction", 1: "call"}  # everything else is a token transfer
MEMPOOL_LEAD_MS = 6_000  # pending transactions are seen half a block before their block


class BlockRows(NamedTuple):
    """One pushed block (or pending set): its height and the full rows of each cube, by cube field."""

    number: int
    cubes: dict[str, list[Row]]


def amount_text(raw: int, decimals: int) -> str:
    """raw / 10**decimals as exact decimal text without trailing zeros ("1.5", "42")."""
    whole, frac = divmod(abs(raw), 10**decimals)
    digits = f"{frac:0{decimals}d}".rstrip("0") if decimals else ""
    return ("-" if raw < 0 else "") + (f"{whole}.{digits}" if digits else str(whole))


def usd_text(amount: str, price: float | None) -> str:
    """USD value of a decimal amount, to 6 places and trailing zeros dropped; "0" when unpriced."""
    if not price:
        return "0"
    value = (Decimal(amount) * Decimal(str(price))).quantize(Decimal("0.000001"))
    return format(value.normalize(), "f") if value else "0"


def _hex(*parts: object) -> str:
    return "0x" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _x(address: str | None) -> str:
    # Bitquery writes an absent address (native currency, contract creation) as "0x".
    return "0x" + (address or "")


def _negate(amount: str) -> str:
    return amount if amount == "0" else "-" + amount


class EvmFeed:
    """One EVM network: advances its synth.Chain and turns each step's records into Bitquery rows.

    The chain is `synth.Chain(seed, chain_id)`, the same one the BlockDB emulator serves, so block
    numbers and hashes match across providers (Bitquery adds the 0x prefix). A reorg step yields the
    replacement blocks first, then the new head, each as its own block: Bitquery sends no reorg flag.
    """

    def __init__(
        self, seed: int, network: str, *, txs_per_block: int, reorg_every: int, first_block: int = FIRST_BLOCK
    ) -> None:
        self.network = network
        self.chain_id = NETWORKS[network]
        self._args = (seed, self.chain_id)
        self._kwargs: dict[str, Any] = {
            "txs_per_block": txs_per_block,
            "reorg_every": reorg_every,
            "first_block": first_block,
        }
        self.chain = Chain(seed, self.chain_id, **self._kwargs)
        symbol, name = _NATIVE.get(network, ("ETH", "Ethereum"))
        self.native = self._currency(symbol, name, "0x", 18, "native", fungible=True, native=True)
        c = self.chain
        tokens: list[tuple[Token, str]] = [(t, "erc20") for t in (*TOKENS.values(), *c.tokens)]
        tokens += [(c.nft721, "erc721"), (c.nft1155, "erc1155")]
        self.currencies: dict[str, Row] = {
            t.address: self._currency(
                t.symbol, _NAMES.get(t.symbol, t.symbol), _x(t.address), t.decimals or 0, kind,
                fungible=kind == "erc20", native=False,
            )
            for t, kind in tokens
        }  # fmt: skip
        self._shadow: Chain | None = None
        self._pending: list[Emission] = []

    @staticmethod
    def _currency(
        symbol: str, name: str, contract: str, decimals: int, kind: str, *, fungible: bool, native: bool
    ) -> Row:
        nft = kind in ("erc721", "erc1155")  # NFTs carry token URIs
        return {
            "Symbol": symbol, "Name": name, "SmartContract": contract, "Decimals": decimals,
            "Native": native, "Fungible": fungible, "ProtocolName": kind, "HasURI": nft,
            "Delegated": False, "DelegatedTo": "0x",
        }  # fmt: skip

    @property
    def blocks_produced(self) -> int:
        return self.chain.blocks_produced

    def step(self) -> list[BlockRows]:
        """Advance one step; the blocks to push, replacements (if a reorg happened) before the head."""
        groups: dict[int, list[Emission]] = {}
        for emission in self.chain.advance():
            number = emission.record.get("block_number")
            if number is not None:
                groups.setdefault(number, []).append(emission)
        if self._shadow is not None:
            self._advance_shadow()
        return [self._rows(n, group) for n, group in groups.items()]

    def pending(self) -> BlockRows | None:
        """Mempool rows: the transactions of the next block, seen before it is mined (no block hash)."""
        if self._shadow is None:
            # A second chain one step ahead; its next block is what this chain mines next, unless a
            # reorg lands first (then the pending transactions are replaced, as in a real mempool).
            self._shadow = Chain(*self._args, **self._kwargs)
            for _ in range(self.chain.blocks_produced):
                self._shadow.advance()
            self._advance_shadow()
        if not self._pending:
            return None
        return self._rows(self._shadow.head, self._pending, pending=True)

    def _advance_shadow(self) -> None:
        assert self._shadow is not None
        emissions = self._shadow.advance()
        head = self._shadow.head
        self._pending = [e for e in emissions if e.record.get("block_number") == head]

    def _block(self, record: Row, txs: list[Row], pending: bool) -> Row:
        time = record["timestamp_utc"][:19] + "Z"
        block_hash = "0x" + record["block_hash"]
        prices = [int(t["effective_gas_price_wei"]) for t in txs]
        block = {
            "Number": str(record["block_number"]), "Hash": block_hash,
            "ParentHash": "0x" + record["parent_block_hash"], "Time": time, "Date": time[:10],
            "TxCount": len(txs), "UnclesCount": 0, "GasUsed": str(sum(int(t["gas_used"]) for t in txs)),
            "GasLimit": str(record["gas_limit"]), "BaseFee": str(min(prices, default=10**9)),
            "Coinbase": _x(record["miner"]), "Difficulty": "0", "Nonce": "0",
            "Extra": "0x" + record["extra_data"], "ReceiptHash": "0x" + record["receipt_root"],
            "TxHash": _hex("txroot", block_hash), "Root": _hex("stateroot", block_hash),
            "UncleHash": EMPTY_UNCLE_HASH, "MixDigest": _hex("mix", block_hash),
        }  # fmt: skip
        if pending:
            # Not mined yet: the height it is expected in and when it was seen, nothing else known.
            blank = {k: ("" if isinstance(v, str) else 0) for k, v in block.items()}
            seen = iso_ms(block_time_ms(record["block_number"]) - MEMPOOL_LEAD_MS)[:19] + "Z"
            block = {**blank, "Number": block["Number"], "Time": seen, "Date": seen[:10]}
        return block

    def _rows(self, number: int, emissions: list[Emission], pending: bool = False) -> BlockRows:
        by_kind: dict[str, list[Row]] = {}
        for dataset_id, record, _ in emissions:
            by_kind.setdefault(dataset_id, []).append(record)
        txs = by_kind.get("0102", [])
        block = self._block(by_kind["0101"][0], txs, pending)
        base = {"ChainId": str(self.chain_id), "Block": block}
        tx_rows: dict[int, Row] = {}
        status: dict[int, Row] = {}
        receipts: dict[int, Row] = {}
        cubes: dict[str, list[Row]] = {"Blocks": [], "Transactions": [], "Transfers": [], "DEXTrades": []}
        updates: list[Row] = []
        cumulative = 0
        for t in txs:
            i, gas_used, price = t["tx_index"], int(t["gas_used"]), int(t["effective_gas_price_wei"])
            cumulative += gas_used
            value, cost = amount_text(int(t["value_wei"]), 18), amount_text(gas_used * price, 18)
            native_usd = USD.get(self.native["Symbol"])
            tx_rows[i] = {
                "Hash": "0x" + t["tx_hash"], "From": _x(t["from_address"]), "To": _x(t["to_address"]),
                "Index": str(i), "Nonce": t["nonce"], "Gas": t["gas_limit"], "GasPrice": str(price),
                "GasFeeCap": str(price + 10**9), "GasTipCap": str(price - int(block["BaseFee"] or 0)),
                "Value": value, "ValueInUSD": usd_text(value, native_usd), "Cost": cost,
                "CostInUSD": usd_text(cost, native_usd), "Type": t["tx_type"], "Time": block["Time"],
            }  # fmt: skip
            ok = t["status_success"]
            status[i] = {"Success": ok, "FaultError": "" if ok else "execution reverted", "EndError": ""}
            receipts[i] = {
                "GasUsed": str(gas_used), "CumulativeGasUsed": str(cumulative), "Status": int(ok),
                "ContractAddress": _x(t["created_contract_address"]), "Type": t["tx_type"],
            }  # fmt: skip
            common = {**base, "Transaction": tx_rows[i]}
            cubes["Transactions"].append({**common, "TransactionStatus": status[i], "Receipt": receipts[i]})
            fee_usd = _negate(usd_text(cost, native_usd))
            fee = {"Address": tx_rows[i]["From"], "Amount": _negate(cost), "AmountInUSD": fee_usd,
                   "Id": "0", "URI": "", "Type": "fee"}  # fmt: skip
            call = self._call(0, tx_rows[i], ok)
            fee_row = {"BalanceUpdate": fee, "Currency": self.native, "Log": self._log(None, None, None)}
            updates.append({**common, **fee_row, "Call": call})
        if not pending:
            cubes["Blocks"].append(base)
        for r in by_kind.get("0304", []):
            i = r["tx_index"]
            currency = self.native if r["token_address"] is None else self.currencies[r["token_address"]]
            kind = _TRANSFER_KIND.get(r["transfer_type"], "token")
            raw = int(r["amount_raw"])
            amount = amount_text(raw, 18 if currency["Native"] else currency["Decimals"])
            usd = usd_text(amount, USD.get(currency["Symbol"]) if currency["Fungible"] else None)
            transfer = {
                "Amount": amount, "AmountInUSD": usd, "Sender": _x(r["from_address"]),
                "Receiver": _x(r["to_address"]), "Success": status[i]["Success"], "Type": kind,
                "Id": r["token_id"] or "0", "URI": "", "Data": "", "Currency": currency,
            }  # fmt: skip
            log = self._log(
                r["log_index"], r["token_address"], _SIG_TRANSFER if r["log_index"] is not None else None
            )
            # Internal transfers are calls 1 and 2 under the transaction's call 0 (trace 0 / 0.1).
            call_index = {"0": 1, "0.1": 2}.get(r["trace_address"] or "", 0)
            call = self._call(
                call_index, tx_rows[i], status[i]["Success"], transfer if kind != "token" else None
            )
            common = {**base, "Transaction": tx_rows[i], "Log": log, "Call": call}
            cubes["Transfers"].append({**common, "Transfer": transfer, "TransactionStatus": status[i]})
            for address, signed in ((transfer["Sender"], _negate(amount)), (transfer["Receiver"], amount)):
                update = {"Address": address, "Amount": signed,
                          "AmountInUSD": usd if signed == amount else _negate(usd),
                          "Id": transfer["Id"], "URI": "", "Type": "transfer"}  # fmt: skip
                updates.append({**common, "BalanceUpdate": update, "Currency": currency})
        cubes["DEXTrades"] = [
            self._trade(base, r, tx_rows, status, receipts) for r in by_kind.get("0302", [])
        ]
        cubes["BalanceUpdates"] = updates
        return BlockRows(number, cubes)

    @staticmethod
    def _log(index: int | None, contract: str | None, signature: Row | None) -> Row:
        # Native transfers have no log: Bitquery's OLAP columns then read 0 / "0x" / "".
        return {"Index": index or 0, "LogAfterCallIndex": 0, "SmartContract": _x(contract),
                "Signature": signature or _SIG_NONE}  # fmt: skip

    @staticmethod
    def _call(index: int, tx: Row, ok: bool, transfer: Row | None = None) -> Row:
        return {
            "Index": index,
            "From": transfer["Sender"] if transfer else tx["From"],
            "To": transfer["Receiver"] if transfer else tx["To"],
            "Value": transfer["Amount"] if transfer else tx["Value"],
            "Create": tx["To"] == "0x", "Success": ok, "Signature": _SIG_NONE,
        }  # fmt: skip

    def _trade(
        self, base: Row, r: Row, txs: dict[int, Row], status: dict[int, Row], receipts: dict[int, Row]
    ) -> Row:
        i = r["tx_index"]
        tx = txs[i]
        pool = _x(r["pool_uid"][:40])
        got, gave = self.currencies[r["token_in"]], self.currencies[r["token_out"]]
        amount_in = amount_text(int(r["amount_in"]), got["Decimals"])
        amount_out = amount_text(int(r["amount_out"]), gave["Decimals"])
        price = float(Decimal(amount_out) / Decimal(amount_in))  # Sell currency per 1 Buy currency
        usd_in, usd_out = USD.get(got["Symbol"]), USD.get(gave["Symbol"])
        usd_in = usd_in or (price * usd_out if usd_out else None)
        usd_out = usd_out or (usd_in / price if usd_in else None)
        version = "3" if r["type_id"] == 201 else "2"
        factory = _hex("factory", self.chain_id, version)[:42]
        # Bitquery reads a trade from the pool's side: Buy is what the pool bought (PROTOCOLS.md 1.8).
        buy = {"Amount": amount_in, "AmountInUSD": usd_text(amount_in, usd_in), "Buyer": pool,
               "Seller": tx["From"], "Price": price, "PriceInUSD": float(usd_in or 0),
               "Currency": got}  # fmt: skip
        sell = {"Amount": amount_out, "AmountInUSD": usd_text(amount_out, usd_out), "Buyer": tx["From"],
                "Seller": pool, "Price": 1 / price, "PriceInUSD": float(usd_out or 0),
                "Currency": gave}  # fmt: skip
        dex = {
            "ProtocolName": f"uniswap_v{version}", "ProtocolFamily": "Uniswap", "ProtocolVersion": version,
            "SmartContract": factory, "OwnerAddress": factory,
            "Pair": {"Name": f"Uniswap V{version}", "SmartContract": pool, "Symbol": f"UNI-V{version}",
                     "Decimals": 18},
        }  # fmt: skip
        trade = {"Buy": buy, "Sell": sell, "Dex": dex, "Sender": _x(self.chain.router), "Success": True}
        log = self._log(r["log_index"], r["pool_uid"][:40], _SIG_SWAP)
        call = self._call(0, tx, status[i]["Success"])
        return {
            **base, "Transaction": tx, "Trade": trade, "Log": log, "Call": call,
            "TransactionStatus": status[i], "Receipt": receipts[i],
        }  # fmt: skip
