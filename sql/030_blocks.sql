-- Canonical blocks: per provider, chain and height, the newest version received. Superseded
-- versions (a reorg's older branch, a block received twice, a Solana slot the roots passed over:
-- an abandoned fork) stay in blocks_history for audit.
CREATE OR REPLACE VIEW blocks AS
SELECT *
FROM blocks_history b
WHERE b.chain <> 'solana'
   OR NOT EXISTS (SELECT 1 FROM solana_unrooted x WHERE b.number BETWEEN x.first_slot AND x.last_slot)
QUALIFY row_number() OVER (PARTITION BY provider, chain, number ORDER BY received_at DESC, is_reorg DESC) = 1;
