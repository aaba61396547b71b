-- Canonical blocks: per provider, chain and height, the newest version of the height's canonical
-- hash (as `block_hashes` decides it, from the block streams alone: a late resend of a replaced
-- block does not bring it back, nor does a side-branch block replace the block the chain was
-- built on). Superseded versions (a reorg's older branch, a block received twice) stay in
-- blocks_history for audit. Solana slots carry no hash.
CREATE OR REPLACE VIEW blocks AS
SELECT b.*
FROM blocks_history b
LEFT JOIN canonical_block_hashes(false) h ON h.provider = b.provider AND h.chain = b.chain AND h.number = b.number
WHERE h.hash IS NULL OR b.hash = h.hash
QUALIFY row_number() OVER (PARTITION BY b.provider, b.chain, b.number ORDER BY b.received_at DESC, b.is_reorg DESC) = 1;
