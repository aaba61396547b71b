"""Deterministic synthetic Solana ledger for the Helius emulator: slots, accounts, transactions and logs."""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from ingest.emulators.helius_encode import TOKEN_PROGRAM, b58encode, vanity
from ingest.emulators.helius_layouts import (
    SWAP_EVENT,
    counter_data,
    instruction_data,
    mint_data,
    pool_data,
    token_account_data,
    u64,
    u64_at,
)

__all__ = [
    "COUNTERS",
    "COUNTER_PROGRAM",
    "FEE_LAMPORTS",
    "FIRST_SLOT",
    "FIXED_LAMPORTS",
    "MINTS",
    "MINT_DECIMALS",
    "NODES",
    "POOLS",
    "PROGRAMS",
    "SYSTEM_PROGRAM",
    "TOKEN_ACCOUNTS",
    "TOKEN_PROGRAM",
    "U64_MAX",
    "VOTE_ACCOUNTS",
    "VOTE_PROGRAM",
    "WALLETS",
    "Account",
    "Block",
    "Chain",
    "Mint",
    "Tx",
    "TxPlan",
]

FIRST_SLOT = 320_000_000
U64_MAX = 2**64 - 1  # rentEpoch of rent-exempt accounts, as mainnet reports it
FEE_LAMPORTS = 5_000  # one signature at the base fee
RENT_EXEMPT_MIN = 890_880  # a 0-byte account's rent-exempt minimum: transfers never dip below it
CU_LIMIT = 200_000  # default compute budget of a one-instruction transaction
# Builtins log no "consumed" line; meta still reports their fixed cost (Agave's DEFAULT_COMPUTE_UNITS).
BUILTIN_UNITS = {"vote": 2_100, "transfer": 150}

SYSTEM_PROGRAM = "11111111111111111111111111111111"
VOTE_PROGRAM = "Vote111111111111111111111111111111111111111"
COUNTER_PROGRAM = vanity("EmuCounterProgram")  # made up: Anchor-style counters and pools
PROGRAMS = {
    "system": SYSTEM_PROGRAM,
    "token": TOKEN_PROGRAM,
    "vote": VOTE_PROGRAM,
    "counter": COUNTER_PROGRAM,
}


class Mint(NamedTuple):
    """An SPL mint: its address, symbol and decimals (jsonParsed token amounts need them)."""

    address: str
    symbol: str
    decimals: int


WALLETS = {x: vanity(f"EmuWa11et{x}") for x in "ABCDEF"}  # system-owned, pay fees and sign
NODES = {x: vanity(f"EmuNode{x}") for x in "AB"}  # validator identities: pay for their votes
VOTE_ACCOUNTS = {x: vanity(f"EmuVote{x}") for x in "AB"}
MINTS = {m.symbol: m for m in (Mint(vanity("EmuMintUSDC"), "USDC", 6), Mint(vanity("EmuMintGEM"), "GEM", 9))}
MINT_DECIMALS = {m.address: m.decimals for m in MINTS.values()}
# Token accounts: (mint symbol, wallet letter) -> address; wallets A-D each hold both mints.
TOKEN_ACCOUNTS = {(s, x): vanity(f"EmuTok{s}{x}") for s in MINTS for x in "ABCD"}
COUNTERS = {x: vanity(f"EmuCounter{x}") for x in "AB"}
POOLS = {x: vanity(f"EmuPoo1{x}") for x in "A"}
_POOL_MINTS = (MINTS["USDC"].address, MINTS["GEM"].address)  # what a pool's data names
# Accounts the ledger never changes, so they are kept out of `Chain.accounts` (and out of every account
# or program notification); only transaction balances show them. Native programs hold 1 lamport; the
# others hold the rent-exempt minimum of their size: token program 134,080 bytes, an upgradeable
# program's 36-byte account, a 3,762-byte vote account.
FIXED_LAMPORTS = {
    SYSTEM_PROGRAM: 1,
    VOTE_PROGRAM: 1,
    TOKEN_PROGRAM: 934_087_680,
    COUNTER_PROGRAM: 1_141_440,
    **{pubkey: 27_074_400 for pubkey in VOTE_ACCOUNTS.values()},
}

_CUSTOM_1 = {"InstructionError": [0, {"Custom": 1}]}


@dataclass(frozen=True, slots=True)
class Account:
    """An account's state after a slot: what account/program notifications render."""

    pubkey: str
    owner: str
    lamports: int
    data: bytes = b""
    executable: bool = False
    rent_epoch: int = U64_MAX


@dataclass(frozen=True, slots=True)
class TxPlan:
    """What a transaction will do, fixed by (seed, slot, index) alone, so signatures are known early."""

    signature: str
    kind: str  # vote | transfer | token_transfer | mint_to | increment | swap
    keys: tuple[str, ...]  # message account keys, fee payer first, program last
    amount: int
    fails: bool


@dataclass(frozen=True, slots=True)
class Tx:
    """An executed transaction: the logsNotification value, what mentions and signature matching need, and
    the message and status meta a transactionNotification renders."""

    signature: str
    index: int
    is_vote: bool
    err: dict[str, Any] | None
    logs: tuple[str, ...]
    keys: frozenset[str]
    account_keys: tuple[str, ...]  # message order: fee payer (the one signer) first, program last
    fee: int
    pre_balances: tuple[int, ...]  # lamports of account_keys before the fee, then after execution
    post_balances: tuple[int, ...]
    compute_units: int
    recent_blockhash: str
    data: bytes  # the one instruction's data; its accounts are every key but the program


@dataclass(frozen=True, slots=True)
class Block:
    """One produced slot: parent (skipped and forked slots make it < slot - 1), transactions, final account
    writes; `fork` marks a block on a minority fork the cluster abandons (its writes never become state)."""

    slot: int
    parent: int
    txs: tuple[Tx, ...]
    writes: tuple[Account, ...]
    fork: bool = False


class Chain:
    """A stateful ledger advanced one slot at a time; the same seed, skip_every and fork_every give the
    same slots.

    Transaction plans (signature, kind, keys, success) are a pure function of (seed, slot); balances
    carry over from slot to slot, so account states and some log lines depend on history.
    """

    def __init__(
        self, seed: int = 1, *, skip_every: int = 0, fork_every: int = 0, first_slot: int = FIRST_SLOT
    ) -> None:
        if skip_every == 1 or skip_every < 0:
            raise ValueError("skip_every must be 0 (no skipped slots) or >= 2")
        if fork_every == 1 or fork_every < 0:
            raise ValueError("fork_every must be 0 (no forked slots) or >= 2")
        self.seed = seed
        self.skip_every = skip_every
        self.fork_every = fork_every
        self.first_slot = first_slot
        self.next_slot = first_slot
        self.last_block_slot = first_slot - 1  # parent of the first slot
        self.accounts: dict[str, Account] = {}
        self._genesis()

    # -- pure functions of (seed, slot) ---------------------------------------------------------

    def exists(self, slot: int) -> bool:
        """False for a skipped slot (no block; the next block's parent points past it)."""
        k = self.skip_every
        return slot >= self.first_slot and not (k and (slot - self.first_slot) % k == k - 1)

    def forked(self, slot: int) -> bool:
        """True for a slot whose block lands on a minority fork: every `fork_every`-th existing slot
        (skipped slots not counted, so never a skipped one); for the canonical chain it is skipped."""
        n, k, position = self.fork_every, self.skip_every, slot - self.first_slot + 1
        existing = position - (position // k if k else 0)  # existing slots from first_slot to `slot`
        return bool(n) and self.exists(slot) and existing % n == 0

    def blockhash(self, slot: int) -> str:
        """The (synthetic) hash of block `slot`: what transactions of its children name as recent."""
        return b58encode(hashlib.sha256(f"helius:{self.seed}:{slot}:blockhash".encode()).digest())

    def signature_at(self, slot: int, index: int) -> str:
        digest = hashlib.sha512(f"helius:{self.seed}:{slot}:{index}".encode()).digest()
        return b58encode(digest)

    def plan(self, slot: int) -> tuple[TxPlan, ...]:
        """The transactions slot `slot` will hold, in block order (empty for a skipped slot)."""
        if not self.exists(slot):
            return ()
        rng = random.Random(f"helius:{self.seed}:{slot}:plan")
        kinds = rng.choices(
            ("transfer", "token_transfer", "mint_to", "increment", "swap"),
            (3, 3, 1, 2, 1),
            k=rng.randint(1, 4),
        )
        order: list[tuple[str, str]] = [("vote", x) for x in NODES] + [(k, "") for k in kinds]
        rng.shuffle(order)
        wallets = list(WALLETS.values())
        plans = []
        for index, (kind, node) in enumerate(order):
            fails = kind not in ("vote", "mint_to") and rng.random() < 0.15
            amount = 0
            if kind == "vote":
                keys: tuple[str, ...] = (NODES[node], VOTE_ACCOUNTS[node], VOTE_PROGRAM)
            elif kind == "transfer":
                src, dst = rng.sample(wallets, 2)
                keys, amount = (src, dst, SYSTEM_PROGRAM), rng.randint(1_000, 50_000_000)
            elif kind == "token_transfer":
                symbol = rng.choice(list(MINTS))
                a, b = rng.sample("ABCD", 2)
                src, dst = TOKEN_ACCOUNTS[(symbol, a)], TOKEN_ACCOUNTS[(symbol, b)]
                keys, amount = (WALLETS[a], src, dst, TOKEN_PROGRAM), rng.randint(1, 5_000) * 10**4
            elif kind == "mint_to":
                symbol = rng.choice(list(MINTS))
                dst = TOKEN_ACCOUNTS[(symbol, rng.choice("ABCD"))]
                keys, amount = (
                    (WALLETS["A"], MINTS[symbol].address, dst, TOKEN_PROGRAM),
                    rng.randint(1, 100) * 10**6,
                )
            elif kind == "increment":
                keys = (rng.choice(wallets), rng.choice(list(COUNTERS.values())), COUNTER_PROGRAM)
            else:
                keys, amount = (
                    (rng.choice(wallets), POOLS["A"], COUNTER_PROGRAM),
                    rng.randint(1, 1_000) * 10**6,
                )
            plans.append(TxPlan(self.signature_at(slot, index), kind, keys, amount, fails))
        return tuple(plans)

    # -- stateful production --------------------------------------------------------------------

    def advance(self) -> Block | None:
        """Produce `next_slot`: a Block, or None when that slot is skipped. A forked slot's block runs on
        the current state like any other, then that state is put back: its writes never land."""
        slot = self.next_slot
        self.next_slot += 1
        if not self.exists(slot):
            return None
        fork, canonical = self.forked(slot), self.accounts
        if fork:
            self.accounts = dict(canonical)  # Accounts are frozen: a shallow copy isolates the fork
        rng = random.Random(f"helius:{self.seed}:{slot}:exec")
        writes: dict[str, Account] = {}
        recent = self.blockhash(self.last_block_slot)
        txs = tuple(self._execute(slot, i, p, rng, writes, recent) for i, p in enumerate(self.plan(slot)))
        block = Block(slot, self.last_block_slot, txs, tuple(writes.values()), fork)
        if fork:
            self.accounts = canonical
        else:
            self.last_block_slot = slot
        return block

    def _genesis(self) -> None:
        rng = random.Random(f"helius:{self.seed}:genesis")
        for pubkey in (*WALLETS.values(), *NODES.values()):
            self._put(Account(pubkey, SYSTEM_PROGRAM, rng.randint(5, 500) * 10**9))
        supply = {s: 0 for s in MINTS}
        for (symbol, x), pubkey in TOKEN_ACCOUNTS.items():
            amount = rng.randint(100, 10_000) * 10 ** MINTS[symbol].decimals
            supply[symbol] += amount
            self._token(pubkey, MINTS[symbol].address, WALLETS[x], amount)
        for symbol, mint in MINTS.items():
            data = mint_data(WALLETS["A"], supply[symbol], mint.decimals)
            self._put(Account(mint.address, TOKEN_PROGRAM, 1_461_600, data))
        for pubkey in COUNTERS.values():
            data = counter_data(rng.randint(0, 1_000), self.first_slot - 1, WALLETS["A"])
            self._put(Account(pubkey, COUNTER_PROGRAM, 1_280_160, data))
        for pubkey in POOLS.values():
            data = pool_data(
                rng.randint(10**6, 10**7) * 10**6, rng.randint(10**6, 10**7) * 10**9, 0, _POOL_MINTS
            )
            self._put(Account(pubkey, COUNTER_PROGRAM, 2_282_880, data))

    def _put(self, account: Account, writes: dict[str, Account] | None = None) -> None:
        self.accounts[account.pubkey] = account
        if writes is not None:
            writes[account.pubkey] = account  # dict order: first modification in the slot

    def _token(
        self, pubkey: str, mint: str, owner: str, amount: int, writes: dict[str, Account] | None = None
    ) -> None:
        self._put(Account(pubkey, TOKEN_PROGRAM, 2_039_280, token_account_data(mint, owner, amount)), writes)

    def _lamports(self, pubkey: str) -> int:
        account = self.accounts.get(pubkey)
        return account.lamports if account is not None else FIXED_LAMPORTS[pubkey]

    def _execute(
        self,
        slot: int,
        index: int,
        plan: TxPlan,
        rng: random.Random,
        writes: dict[str, Account],
        recent_blockhash: str,
    ) -> Tx:
        pre = tuple(self._lamports(k) for k in plan.keys)
        units = BUILTIN_UNITS.get(plan.kind, 0)
        payer = self.accounts[plan.keys[0]]
        self._put(replace(payer, lamports=payer.lamports - FEE_LAMPORTS), writes)  # charged even on failure
        program = plan.keys[-1]
        invoke, used = (
            f"Program {program} invoke [1]",
            f"Program {program} consumed {{}} of {CU_LIMIT} compute units",
        )
        ok, failed = f"Program {program} success", f"Program {program} failed: custom program error: 0x1"
        if plan.kind == "vote":
            logs = [invoke, ok]
        elif plan.kind == "transfer":
            logs = self._transfer(plan, writes, invoke, ok, failed)
        elif plan.kind in ("token_transfer", "mint_to"):
            name = "Transfer" if plan.kind == "token_transfer" else "MintTo"
            units = rng.randint(2_900, 4_800)
            cu = used.format(units)
            if plan.fails:
                logs = [
                    invoke,
                    f"Program log: Instruction: {name}",
                    "Program log: Error: insufficient funds",
                    cu,
                    failed,
                ]
            else:
                self._token_op(plan, writes)
                logs = [invoke, f"Program log: Instruction: {name}", cu, ok]
        else:
            name = "Increment" if plan.kind == "increment" else "Swap"
            units = rng.randint(2_000, 30_000)
            cu = used.format(units)
            if plan.fails:
                why = "counter is frozen" if name == "Increment" else "slippage tolerance exceeded"
                logs = [invoke, f"Program log: Instruction: {name}", f"Program log: Error: {why}", cu, failed]
            else:
                event = self._program_op(slot, plan, writes)
                logs = [invoke, f"Program log: Instruction: {name}", *event, cu, ok]
        err = _CUSTOM_1 if plan.fails else None
        return Tx(
            plan.signature,
            index,
            plan.kind == "vote",
            err,
            tuple(logs),
            frozenset(plan.keys),
            plan.keys,
            FEE_LAMPORTS,
            pre,
            tuple(self._lamports(k) for k in plan.keys),
            units,
            recent_blockhash,
            instruction_data(plan.kind, plan.amount, slot),
        )

    def _transfer(
        self, plan: TxPlan, writes: dict[str, Account], invoke: str, ok: str, failed: str
    ) -> list[str]:
        src, dst = (self.accounts[k] for k in plan.keys[:2])
        if plan.fails:
            # The system program's own message; asking for more than the balance is what makes it fail.
            need = src.lamports + plan.amount
            return [invoke, f"Transfer: insufficient lamports {src.lamports}, need {need}", failed]
        amount = max(0, min(plan.amount, src.lamports - RENT_EXEMPT_MIN))
        self._put(replace(src, lamports=src.lamports - amount), writes)
        self._put(replace(dst, lamports=self.accounts[dst.pubkey].lamports + amount), writes)
        return [invoke, ok]

    def _token_op(self, plan: TxPlan, writes: dict[str, Account]) -> None:
        if plan.kind == "token_transfer":
            src, dst = (self.accounts[k] for k in plan.keys[1:3])
            amount = min(plan.amount, u64_at(src.data, 64))
            for acct, delta in ((src, -amount), (dst, amount)):
                owner = b58encode(acct.data[32:64])
                self._token(
                    acct.pubkey, b58encode(acct.data[:32]), owner, u64_at(acct.data, 64) + delta, writes
                )
            return
        mint, dst = (self.accounts[k] for k in plan.keys[1:3])
        decimals = mint.data[44]
        self._put(
            replace(mint, data=mint_data(WALLETS["A"], u64_at(mint.data, 36) + plan.amount, decimals)),
            writes,
        )
        owner = b58encode(dst.data[32:64])
        self._token(dst.pubkey, mint.pubkey, owner, u64_at(dst.data, 64) + plan.amount, writes)

    def _program_op(self, slot: int, plan: TxPlan, writes: dict[str, Account]) -> list[str]:
        acct = self.accounts[plan.keys[1]]
        if plan.kind == "increment":
            data = counter_data(u64_at(acct.data, 8) + 1, slot, b58encode(acct.data[24:56]))
            self._put(replace(acct, data=data), writes)
            return []
        reserve_a, reserve_b = u64_at(acct.data, 8), u64_at(acct.data, 16)
        out = reserve_b * plan.amount // (reserve_a + plan.amount)  # constant product, no fee
        self._put(
            replace(acct, data=pool_data(reserve_a + plan.amount, reserve_b - out, slot, _POOL_MINTS)), writes
        )
        event = SWAP_EVENT + u64(plan.amount) + u64(out)
        return [f"Program data: {base64.b64encode(event).decode()}"]
