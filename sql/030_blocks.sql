-- Canonical blocks: per provider, chain and height, the newest version of the height's canonical
-- hash (`block_hashes`: announced last, so a late resend of a replaced block does not bring it
-- back). A height whose canonical hash was seen only in another stream so far (a transfer of the
-- new branch before its block) shows once its block arrives. Superseded versions (a reorg's older
-- branch, a block received twice) stay in blocks_history for audit. Solana slots carry no hash.
CREATE OR REPLACE VIEW blocks AS
SELECT b.*
FROM blocks_history b
LEFT JOIN block_hashes h ON h.provider = b.provider AND h.chain = b.chain AND h.number = b.number
WHERE h.hash IS NULL OR b.hash = h.hash
QUALIFY row_number() OVER (PARTITION BY b.provider, b.chain, b.number ORDER BY b.received_at DESC, b.is_reorg DESC) = 1;
