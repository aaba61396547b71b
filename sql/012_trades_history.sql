-- Every trade version from every provider, in one shape: exchange prints (CoinAPI), swap prints
-- (BlockDB 0302) and DEX trades (Bitquery). `price` and `amount` are exact text, with doubles
-- beside them for arithmetic. `pending`: from a mempool stream, not in a block yet.
CREATE OR REPLACE VIEW trades_history AS
SELECT
    exchange_id                         AS venue,
    symbol_id                           AS instrument,
    asset_id_base                       AS base,
    asset_id_quote                      AS quote,
    price,
    price_f64,
    size                                AS amount,
    size_f64                            AS amount_f64,
    taker_side                          AS side,
    time_exchange                       AS trade_time,
    CAST(NULL AS VARCHAR)               AS chain,
    CAST(NULL AS BIGINT)                AS block_number,
    CAST(NULL AS VARCHAR)               AS block_hash,
    CAST(NULL AS VARCHAR)               AS tx_hash,
    _provider                           AS provider,
    _tracing_id                         AS tracing_id,
    _is_reorg                           AS is_reorg,
    _received_at                        AS received_at,
    false                               AS pending,
    nullif(_dedup_key, '')              AS event_key  -- no uuid: no identity, never merged
FROM coinapi_trades
UNION ALL
SELECT '0x' || substr(hex_bare(pool_uid), 1, 40), hex_0x(token_in) || '/' || hex_0x(token_out),
       hex_0x(token_in), hex_0x(token_out), exec_price, exec_price_f64, amount_in, amount_in_f64,
       NULL, block_time, evm_chain(chain_id), block_number, NULL, NULL,
       _provider, _tracing_id, _is_reorg, _received_at, false,
       concat_ws('|', chain_id, coalesce(hex_bare(pool_uid), ''), coalesce(hex_bare(token_in), ''),
                 coalesce(hex_bare(token_out), ''), block_number, coalesce(CAST(tx_index AS VARCHAR), ''),
                 coalesce(CAST(log_index AS VARCHAR), ''))
FROM blockdb_swaps
UNION ALL
-- Bitquery reads a trade from the pool's side: Buy is what the pool received (PROTOCOLS.md 1.8).
SELECT coalesce(lower(trade_dex_pair_smart_contract), lower(trade_dex_smart_contract)),
       trade_buy_currency_symbol || '/' || trade_sell_currency_symbol,
       lower(trade_buy_currency_smart_contract), lower(trade_sell_currency_smart_contract),
       CAST(trade_buy_price AS VARCHAR), trade_buy_price, trade_buy_amount, trade_buy_amount_f64,
       NULL, block_time, network, block_number, nullif(lower(block_hash), ''), lower(transaction_hash),
       _provider, _tracing_id, _is_reorg, _received_at, coalesce(mempool, false), _dedup_key
FROM bitquery_evm_dex_trades;
