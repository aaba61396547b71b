-- The canonical hash of each height, per provider and chain: the newest one seen in any of its
-- streams. A reorg replaces a height's hash; rows still carrying the old one are the old branch.
CREATE OR REPLACE VIEW block_hashes AS
SELECT provider, chain, number, hash
FROM (
    SELECT provider, chain, number, hash, received_at, is_reorg FROM blocks_history WHERE hash IS NOT NULL
    UNION ALL
    SELECT provider, chain, block_number, block_hash, received_at, is_reorg
    FROM transfers_history WHERE block_hash IS NOT NULL
    UNION ALL
    SELECT provider, chain, block_number, block_hash, received_at, is_reorg
    FROM trades_history WHERE block_hash IS NOT NULL
)
-- On equal receive times (one socket read) a version flagged as a reorg is the newer.
QUALIFY row_number() OVER (PARTITION BY provider, chain, number ORDER BY received_at DESC, is_reorg DESC) = 1;
