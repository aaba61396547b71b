-- The canonical hash of each height, per provider and chain, from all of its streams. A hash
-- counts from when it was announced: first seen in any stream, or last sent as a correction
-- (`is_reorg`). So a reorg replaces a height's hash, and a reorg back replaces it again, but a
-- late row of the old branch (a resend after a reconnect, a lagging stream) changes nothing.
-- Rows still carrying a replaced hash are the old branch; pending rows carry no block's word.
-- On equal times (one socket read) a correction is the newer, then the order is by hash, so the
-- answer never depends on the order rows were stored in.
CREATE OR REPLACE VIEW block_hashes AS
SELECT provider, chain, number, hash
FROM (
    SELECT provider, chain, number, hash,
           coalesce(max(received_at) FILTER (WHERE is_reorg), min(received_at)) AS announced_at,
           bool_or(is_reorg) AS corrected
    FROM (
        SELECT provider, chain, number, hash, received_at, is_reorg FROM blocks_history WHERE hash IS NOT NULL
        UNION ALL
        SELECT provider, chain, block_number, block_hash, received_at, is_reorg
        FROM transfers_history WHERE block_hash IS NOT NULL AND NOT pending
        UNION ALL
        SELECT provider, chain, block_number, block_hash, received_at, is_reorg
        FROM trades_history WHERE block_hash IS NOT NULL AND NOT pending
    )
    GROUP BY provider, chain, number, hash
)
QUALIFY row_number() OVER (PARTITION BY provider, chain, number ORDER BY announced_at DESC, corrected DESC, hash) = 1;
