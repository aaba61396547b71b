-- Canonical transfers: each event once (its newest version), none from a replaced branch (a
-- row whose block hash is no longer the height's canonical hash is left out, and so is a row
-- without a hash received before its height's block was corrected, or a correction without one
-- received at or before its height last moved to another branch or more than a second ahead
-- of its branch's block correction: `block_corrections`), none still
-- pending (a mempool stream's: it may never be mined, and once mined it is another row). Counts
-- and sums over this view are right; transfers_history keeps everything. On equal receive times (one
-- socket read) a correction flagged as a reorg is the newer version.
CREATE OR REPLACE VIEW transfers AS
SELECT t.* EXCLUDE (event_key)
FROM transfers_history t
LEFT JOIN block_hashes h ON h.provider = t.provider AND h.chain = t.chain AND h.number = t.block_number
LEFT JOIN block_corrections c ON c.provider = t.provider AND c.chain = t.chain AND c.number = t.block_number
WHERE NOT t.pending AND (t.block_hash IS NULL OR h.hash IS NULL OR t.block_hash = h.hash)
  AND (t.block_hash IS NOT NULL OR c.number IS NULL OR CASE WHEN t.is_reorg
       THEN c.replaced_at IS NULL OR (t.received_at > c.replaced_at
            AND (c.corrected_at IS NULL OR t.received_at >= c.corrected_at - INTERVAL 1 SECOND))
       ELSE c.corrected_at IS NULL OR t.received_at >= c.corrected_at END)
QUALIFY row_number() OVER (PARTITION BY t.provider, t.event_key ORDER BY t.received_at DESC, t.is_reorg DESC) = 1;
