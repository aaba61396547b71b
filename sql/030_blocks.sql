-- Canonical blocks: per provider, chain and height, the newest version received. Superseded
-- versions (a reorg's older branch, a block received twice) stay in blocks_history for audit.
CREATE OR REPLACE VIEW blocks AS
SELECT *
FROM blocks_history
QUALIFY row_number() OVER (PARTITION BY provider, chain, number ORDER BY received_at DESC, is_reorg DESC) = 1;
