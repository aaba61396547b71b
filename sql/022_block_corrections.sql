-- Per provider, chain and height a block correction was sent for: when a block of another hash
-- than the one `block_hashes` holds now was last sent as a correction (`replaced_at`, null if
-- none was), and when the canonical block was first sent as a correction after that
-- (`corrected_at`: a block row flagged `is_reorg` carrying the canonical hash; a correction
-- re-sent after a reconnect moves nothing; the first one at all if none came after
-- `replaced_at`, and null if the canonical block never was one). Rows without a block hash
-- (BlockDB's) cannot be matched to a branch, and a reorg that removes one sends nothing for it
-- (PROTOCOLS.md 2.10), so the canonical views place such a row by its receive time: it is of a
-- replaced branch if received before `corrected_at`, unless it is a correction itself (BlockDB
-- re-sends a reorged height's rows flagged `is_reorg`, and keeps no order between datasets: they
-- may come just ahead of their block's correction); a correction is, if received at or before
-- `replaced_at` or, once the height has moved more than once, more than a second before
-- `corrected_at` (it was sent for a branch replaced since: a height reorged twice, or back; the
-- second allows for datasets out of step, which cannot be told from a branch that lasted less).
CREATE OR REPLACE VIEW block_corrections AS
WITH flagged AS (
    SELECT b.provider, b.chain, b.number, b.received_at, b.hash = h.hash AS canonical,
           max(b.received_at) FILTER (WHERE b.hash <> h.hash)
               OVER (PARTITION BY b.provider, b.chain, b.number) AS replaced_at
    FROM blocks_history b
    JOIN block_hashes h ON h.provider = b.provider AND h.chain = b.chain AND h.number = b.number
    WHERE b.is_reorg AND b.hash IS NOT NULL
)
SELECT provider, chain, number,
       coalesce(min(received_at) FILTER (WHERE canonical AND (replaced_at IS NULL OR received_at > replaced_at)),
                min(received_at) FILTER (WHERE canonical)) AS corrected_at,
       max(replaced_at) AS replaced_at
FROM flagged
GROUP BY provider, chain, number;
