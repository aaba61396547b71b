"""EVM chain ids and the network names Bitquery uses for them: one name per chain in every view."""

from __future__ import annotations

__all__ = ["EVM_CHAINS", "chain_macro_sql", "evm_chain"]

EVM_CHAINS: dict[int, str] = {
    1: "eth",
    10: "optimism",
    56: "bsc",
    137: "matic",
    204: "opbnb",
    8453: "base",
    42161: "arbitrum",
}


def evm_chain(chain_id: int | str) -> str:
    """The network name of a chain id (BlockDB), or the id as text for a chain without one."""
    try:
        return EVM_CHAINS.get(int(chain_id), str(chain_id))
    except ValueError:
        return str(chain_id)


def chain_macro_sql() -> str:
    """`evm_chain(id)` in DuckDB, from the same table, for the views in sql/."""
    cases = " ".join(f"WHEN {k} THEN '{v}'" for k, v in sorted(EVM_CHAINS.items()))
    return f"CREATE OR REPLACE MACRO evm_chain(id) AS CASE id {cases} ELSE CAST(id AS VARCHAR) END"
