-- The canonical hash of each height, per provider and chain. A hash counts from when it was
-- announced: first seen, or last sent as a correction (`is_reorg`). So a reorg replaces a
-- height's hash, and a reorg back replaces it again, but a late row of the old branch (a resend
-- after a reconnect, a lagging stream) changes nothing. The block above has the last word: the
-- parent its announced block names is the height's hash, so a side-branch block (Bitquery's
-- default `trigger_on: all` pushes those too) does not replace the block the chain was built on
-- (one height deep: see README, "Reorgs everywhere"), unless a correction of the height came
-- after that block. On equal times a correction is the newer, then the order is by hash, so the
-- answer never depends on the order rows were stored in.
-- `every_stream`: the hashes transfers and trades carry count too (pending rows carry no block's
-- word); without, only the block streams' (the cheaper `blocks` view).
CREATE OR REPLACE MACRO canonical_block_hashes(every_stream) AS TABLE
WITH versions AS (
    SELECT provider, chain, number, hash, any_value(parent_hash) AS parent_hash,
           coalesce(max(received_at) FILTER (WHERE is_reorg), min(received_at)) AS announced_at,
           bool_or(is_reorg) AS corrected
    FROM (
        SELECT provider, chain, number, hash, parent_hash, received_at, is_reorg
        FROM blocks_history WHERE hash IS NOT NULL
        UNION ALL
        SELECT provider, chain, block_number, block_hash, NULL, received_at, is_reorg
        FROM transfers_history WHERE every_stream AND block_hash IS NOT NULL AND NOT pending
        UNION ALL
        SELECT provider, chain, block_number, block_hash, NULL, received_at, is_reorg
        FROM trades_history WHERE every_stream AND block_hash IS NOT NULL AND NOT pending
    )
    GROUP BY provider, chain, number, hash
), announced AS (
    SELECT * FROM versions
    QUALIFY row_number() OVER (PARTITION BY provider, chain, number ORDER BY announced_at DESC, corrected DESC, hash) = 1
)
SELECT a.provider, a.chain, a.number,
       CASE WHEN up.parent_hash IS NOT NULL AND NOT (a.corrected AND a.announced_at > up.announced_at)
            THEN up.parent_hash ELSE a.hash END AS hash
FROM announced a
LEFT JOIN announced up ON up.provider = a.provider AND up.chain = a.chain AND up.number = a.number + 1;

CREATE OR REPLACE VIEW block_hashes AS SELECT * FROM canonical_block_hashes(true);
