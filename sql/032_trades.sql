-- Canonical trades: each trade once (CoinAPI by its uuid), none from a replaced branch (as in
-- `transfers`), none still pending (a mempool stream's). A trade
-- without an identity (a CoinAPI print without a uuid) is never merged with another. On equal
-- receive times (one socket read) a correction flagged as a reorg is the newer version.
CREATE OR REPLACE VIEW trades AS
SELECT t.* EXCLUDE (event_key)
FROM trades_history t
LEFT JOIN block_hashes h ON h.provider = t.provider AND h.chain = t.chain AND h.number = t.block_number
LEFT JOIN block_corrections c ON c.provider = t.provider AND c.chain = t.chain AND c.number = t.block_number
WHERE NOT t.pending AND (t.block_hash IS NULL OR h.hash IS NULL OR t.block_hash = h.hash)
  AND (t.block_hash IS NOT NULL OR c.number IS NULL OR CASE WHEN t.is_reorg
       THEN c.replaced_at IS NULL OR (t.received_at > c.replaced_at
            AND (c.corrected_at IS NULL OR t.received_at >= c.corrected_at - INTERVAL 1 SECOND))
       ELSE c.corrected_at IS NULL OR t.received_at >= c.corrected_at END)
QUALIFY t.event_key IS NULL
     OR row_number() OVER (PARTITION BY t.provider, t.event_key ORDER BY t.received_at DESC, t.is_reorg DESC) = 1;
