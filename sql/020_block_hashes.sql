-- The canonical hash of each height, per provider and chain, from all of its streams. A hash
-- counts from when it was announced: first seen in any stream, or last sent as a correction
-- (`is_reorg`). So a reorg replaces a height's hash, and a reorg back replaces it again, but a
-- late row of the old branch (a resend after a reconnect, a lagging stream) changes nothing.
-- The block above has the last word: the parent its announced block names is the height's hash,
-- so a side-branch block (Bitquery's default `trigger_on: all` pushes those too) does not replace
-- the block the chain was built on (one height deep: see README, "Reorgs everywhere").
-- Rows still carrying a replaced hash are the old branch; pending rows carry no block's word.
-- On equal times (one socket read) a correction is the newer, then the order is by hash, so the
-- answer never depends on the order rows were stored in.
CREATE OR REPLACE VIEW block_hashes AS
WITH versions AS (
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
), announced AS (
    SELECT provider, chain, number, hash, announced_at, corrected
    FROM versions
    QUALIFY row_number() OVER (PARTITION BY provider, chain, number ORDER BY announced_at DESC, corrected DESC, hash) = 1
), named AS (
    -- The parent each height's announced block names, as the word on the height below. A
    -- correction below (BlockDB's is_reorg) announced after that block still wins.
    SELECT a.provider, a.chain, a.number - 1 AS number, any_value(b.parent_hash) AS hash,
           max(a.announced_at) AS announced_at
    FROM announced a
    JOIN blocks_history b ON b.provider = a.provider AND b.chain = a.chain AND b.number = a.number AND b.hash = a.hash
    WHERE b.parent_hash IS NOT NULL
    GROUP BY ALL
)
SELECT a.provider, a.chain, a.number,
       CASE WHEN n.hash IS NOT NULL AND NOT (a.corrected AND a.announced_at > n.announced_at) THEN n.hash ELSE a.hash END AS hash
FROM announced a
LEFT JOIN named n ON n.provider = a.provider AND n.chain = a.chain AND n.number = a.number;
