-- When each height's canonical block was first sent as a correction (a block row flagged
-- `is_reorg` carrying the hash `block_hashes` holds now; a correction re-sent after a reconnect
-- moves nothing), per provider and chain. Rows without a block hash (BlockDB's) cannot be matched
-- to a branch, and a reorg that removes one sends nothing for it (PROTOCOLS.md 2.10): the
-- canonical views leave out such a row received before its height's correction, unless it is a
-- correction itself (BlockDB re-sends a replaced height's rows flagged `is_reorg`).
CREATE OR REPLACE VIEW block_corrections AS
SELECT b.provider, b.chain, b.number, min(b.received_at) AS corrected_at
FROM blocks_history b
JOIN block_hashes h ON h.provider = b.provider AND h.chain = b.chain AND h.number = b.number AND h.hash = b.hash
WHERE b.is_reorg
GROUP BY ALL;
