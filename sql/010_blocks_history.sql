-- Every block version from every provider, in one shape: the audit trail behind `blocks`.
-- Hashes are 0x-prefixed lower-case hex everywhere (BlockDB sends them bare: hex_0x, in
-- 005_hex.sql, adds the 0x unless present). Solana slots fit where they can: a slot is a height
-- without a hash.
CREATE OR REPLACE VIEW blocks_history AS
SELECT
    evm_chain(chain_id)                 AS chain,
    block_number                        AS number,
    hex_0x(block_hash)                  AS hash,
    hex_0x(parent_block_hash)           AS parent_hash,
    timestamp_utc                       AS time,
    CAST(NULL AS BIGINT)                AS tx_count,
    _provider                           AS provider,
    _tracing_id                         AS tracing_id,
    _is_reorg                           AS is_reorg,
    _received_at                        AS received_at
FROM blockdb_blocks
UNION ALL
SELECT network, block_number, lower(block_hash), lower(block_parent_hash), block_time, block_tx_count,
       _provider, _tracing_id, _is_reorg, _received_at
FROM bitquery_evm_blocks
UNION ALL
SELECT 'solana', slot, NULL, NULL, NULL, NULL, _provider, _tracing_id, false, _received_at
FROM solana_slots;
