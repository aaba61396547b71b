"""Two providers' view of one chain, compared: heights one lacks, hashes and amounts that differ.

Both sides are read through the canonical views (after reorgs and duplicates), over the heights
both cover unless a range is given, so a difference is a disagreement, not a reorg in progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext

import duckdb

__all__ = ["Reconciliation", "reconcile"]

_DIGITS = 200  # exact for any sum of uint256 amounts with 18 decimals (78 + 18 digits, and more)


def _number(amount: str | None) -> Decimal:
    """An amount's exact value; what is not a number (or missing) counts as 0, as in SQL's sum."""
    try:
        value = Decimal(amount) if amount is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)
    return value if value.is_finite() else Decimal(0)


@dataclass(slots=True)
class Reconciliation:
    chain: str
    a: str
    b: str
    first: int | None
    last: int | None
    only_a: list[int] = field(default_factory=list)  # heights a has and b lacks
    only_b: list[int] = field(default_factory=list)
    hash_mismatch: list[tuple[int, str, str]] = field(default_factory=list)  # (height, hash a, hash b)
    # (height, transfers a, transfers b, amount a, amount b) where counts or sums differ
    transfer_mismatch: list[tuple[int, int, int, str, str]] = field(default_factory=list)
    compared: int = 0

    @property
    def agree(self) -> bool:
        return not (self.only_a or self.only_b or self.hash_mismatch or self.transfer_mismatch)


def _range(con: duckdb.DuckDBPyConnection, chain: str, a: str, b: str) -> tuple[int | None, int | None]:
    """The heights both providers cover."""
    row = con.execute(
        """SELECT max(lo), min(hi) FROM (
               SELECT provider, min(number) AS lo, max(number) AS hi FROM blocks
               WHERE chain = ? AND provider IN (?, ?) GROUP BY provider HAVING count(*) > 0)
           HAVING count(*) = 2""",
        [chain, a, b],
    ).fetchall()  # whole: DuckDB refuses new work on a connection with a half-read result
    return (row[0][0], row[0][1]) if row else (None, None)


def reconcile(
    con: duckdb.DuckDBPyConnection,
    chain: str,
    a: str,
    b: str,
    first: int | None = None,
    last: int | None = None,
) -> Reconciliation:
    """Compare providers a and b on `chain` between heights first and last (default: the overlap)."""
    if first is None or last is None:
        lo, hi = _range(con, chain, a, b)
        first = lo if first is None else first
        last = hi if last is None else last
    result = Reconciliation(chain, a, b, first, last)
    if first is None or last is None or first > last:
        return result
    side = "SELECT number, hash FROM blocks WHERE provider = ? AND chain = ? AND number BETWEEN ? AND ?"
    blocks = con.execute(
        f"""SELECT coalesce(x.number, y.number) AS number, x.hash, y.hash
            FROM ({side}) x FULL OUTER JOIN ({side}) y USING (number)
            ORDER BY number""",
        [a, chain, first, last, b, chain, first, last],
    ).fetchall()
    result.compared = len(blocks)
    for number, hash_a, hash_b in blocks:
        if hash_b is None and hash_a is not None:
            result.only_a.append(number)
        elif hash_a is None and hash_b is not None:
            result.only_b.append(number)
        elif hash_a != hash_b:
            result.hash_mismatch.append((number, hash_a, hash_b))
    mismatched = {n for n, *_ in result.hash_mismatch}
    # Summed here, exactly: token amounts overflow any SQL decimal (DECIMAL(38, 18) stops below
    # 10^20, and a raw uint256 has 78 digits), and a sum that drops what it cannot hold agrees
    # with anything.
    amounts = con.execute(
        """SELECT block_number, provider, amount
           FROM transfers WHERE chain = ? AND provider IN (?, ?) AND block_number BETWEEN ? AND ?""",
        [chain, a, b, first, last],
    ).fetchall()
    per_block: dict[int, dict[str, tuple[int, Decimal]]] = {}
    with localcontext(prec=_DIGITS):
        for number, provider, amount in amounts:
            count, total = per_block.setdefault(number, {}).get(provider, (0, Decimal(0)))
            per_block[number][provider] = (count + 1, total + _number(amount))
    for number in sorted(per_block):
        sides = per_block[number]
        if number in mismatched or a not in sides or b not in sides:
            continue  # other blocks, or a side without transfers here: nothing to compare like for like
        (count_a, sum_a), (count_b, sum_b) = sides[a], sides[b]
        if count_a != count_b or sum_a != sum_b:
            result.transfer_mismatch.append((number, count_a, count_b, str(sum_a), str(sum_b)))
    return result
