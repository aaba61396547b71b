-- Every transfer version from every provider, in one shape. `amount` is decimal-adjusted and
-- exact (text); `amount_raw` is in token units where the provider gives them (BlockDB).
-- `pending`: from a mempool stream (Bitquery `mempool: true`), not in a block yet.
-- `event_key` is what makes two rows the same event: BlockDB's natural key (a correction
-- supersedes the record at the same key, PROTOCOLS.md 2.10) with the token id, since an ERC-1155
-- batch sends one row per id from one log, and the derived identity otherwise.
-- Every part of a natural key is coalesced: concat_ws skips NULLs, which would make an internal
-- transfer (no log index, trace '0') and a log (index 0, no trace) of one transaction one event.
CREATE OR REPLACE VIEW transfers_history AS
SELECT
    evm_chain(chain_id)                 AS chain,
    block_number,
    CAST(NULL AS VARCHAR)               AS block_hash,
    CAST(NULL AS VARCHAR)               AS tx_hash,
    log_index                           AS "index",
    coalesce(hex_0x(token_address), 'native') AS token,
    hex_0x(from_address)                AS from_address,
    hex_0x(to_address)                  AS to_address,
    -- An NFT's raw amount is already a count (no decimals): BlockDB leaves amount_adj null there.
    coalesce(amount_adj, CASE WHEN token_id IS NOT NULL THEN amount_raw END) AS amount,
    amount_raw,
    _provider                           AS provider,
    _tracing_id                         AS tracing_id,
    _is_reorg                           AS is_reorg,
    _received_at                        AS received_at,
    false                               AS pending,
    concat_ws('|', chain_id, block_number, tx_index, coalesce(CAST(log_index AS VARCHAR), ''),
              coalesce(trace_address, ''), coalesce(token_id, '')) AS event_key
FROM blockdb_transfers
UNION ALL
-- A mempool row's block header may be empty: no hash, rather than the hash ''.
SELECT network, block_number, nullif(lower(block_hash), ''), lower(transaction_hash), coalesce(log_index, call_index),
       CASE WHEN transfer_currency_native THEN 'native' ELSE lower(transfer_currency_smart_contract) END,
       lower(transfer_sender), lower(transfer_receiver), transfer_amount, NULL,
       _provider, _tracing_id, _is_reorg, _received_at, coalesce(mempool, false), _dedup_key
FROM bitquery_evm_transfers
UNION ALL
-- Tron addresses are base58: case matters, so they are kept as sent.
SELECT 'tron', block_number, nullif(block_hash, ''), transaction_hash, NULL, transfer_currency_smart_contract,
       transfer_sender, transfer_receiver, transfer_amount, NULL,
       _provider, _tracing_id, _is_reorg, _received_at, coalesce(mempool, false), _dedup_key
FROM bitquery_tron_transfers;
