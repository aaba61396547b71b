-- Canonical EVM blocks, one row per (chain, height): the newest version received wins, because
-- BlockDB re-sends a replaced block with _is_reorg = true (PROTOCOLS.md 2.10). Every version
-- stays in blockdb_blocks for audit.
CREATE OR REPLACE VIEW blocks AS
SELECT
    chain_id          AS chain,
    block_number      AS number,
    block_hash        AS hash,
    parent_block_hash AS parent_hash,
    timestamp_utc     AS time,
    _provider         AS provider,
    _tracing_id       AS tracing_id,
    _is_reorg         AS is_reorg,
    _received_at      AS received_at
FROM blockdb_blocks
QUALIFY row_number() OVER (
    PARTITION BY chain_id, block_number ORDER BY _received_at DESC, _is_reorg DESC
) = 1;
