-- When each height was last corrected (a block row flagged `is_reorg`), per provider and chain.
-- Rows without a block hash (BlockDB's) cannot be matched to a branch: a reorg that removes one
-- of them sends nothing for it (PROTOCOLS.md 2.10), so the canonical views leave out such a row
-- received before its height's last correction, unless it is a correction itself.
CREATE OR REPLACE VIEW block_corrections AS
SELECT provider, chain, number, max(received_at) AS corrected_at
FROM blocks_history
WHERE is_reorg
GROUP BY ALL;
