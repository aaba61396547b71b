-- Account updates, one row per account and slot: the highest commitment level seen for it
-- (the same update at processed and at finalized is one event), and whether the slot is final:
-- received at finalized, or at or below a root seen and not a slot the roots passed over (an
-- update received at processed in a slot a fork abandoned is never final). The unrooted ranges
-- are disjoint, so the one that may hold a slot is the last starting at or below it (ASOF): a
-- range join would compare every slot with every range.
CREATE OR REPLACE VIEW solana_accounts AS
WITH updates AS (
    SELECT pubkey, slot, lamports, owner, executable, rent_epoch, space, data, commitment, _received_at
    FROM solana_account_updates
    UNION ALL
    SELECT pubkey, slot, lamports, owner, executable, rent_epoch, space, data, commitment, _received_at
    FROM solana_program_accounts
)
SELECT u.*, solana_final(u.commitment, u.slot, f.root, x.last_slot) AS final
FROM updates u
CROSS JOIN solana_final_root f
ASOF LEFT JOIN solana_unrooted x ON u.slot >= x.first_slot
QUALIFY row_number() OVER (
    PARTITION BY pubkey, slot
    ORDER BY commitment_rank(commitment) DESC, _received_at DESC
) = 1;

-- Transactions (Helius transactionSubscribe), one row per signature: the highest commitment level
-- seen for it, and whether it is final, by the rule of solana_accounts (PROTOCOLS.md 4.9).
CREATE OR REPLACE VIEW solana_transactions_by_signature AS
SELECT t.signature, t.slot, t.transaction_index, t.err, t.fee, t.compute_units_consumed, t.commitment,
       t._received_at, solana_final(t.commitment, t.slot, f.root, x.last_slot) AS final
FROM solana_transactions t
CROSS JOIN solana_final_root f
ASOF LEFT JOIN solana_unrooted x ON t.slot >= x.first_slot
QUALIFY row_number() OVER (
    PARTITION BY t.signature
    ORDER BY commitment_rank(t.commitment) DESC, t._received_at DESC
) = 1;
