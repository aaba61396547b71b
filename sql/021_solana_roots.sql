-- Solana finality: a slot is final once a root at or above it has been seen (PROTOCOLS.md 4.9),
-- unless it is one of the slots the roots passed over.
CREATE OR REPLACE VIEW solana_final_root AS
SELECT max(root) AS root FROM solana_roots;

-- Slots known never to be rooted: a node notifies every slot it roots, in order (Agave's
-- notify_roots), so the slots between two roots one subscription received one after the other
-- were not rooted: a fork the cluster abandoned, or a skipped slot. Only where nothing was missed
-- in between: no disconnect or downtime of that subscription overlaps the two receipts.
CREATE OR REPLACE VIEW solana_unrooted AS
WITH r AS (
    SELECT _provider AS provider, _subscription AS subscription, root, min(_received_at) AS received_at
    FROM solana_roots
    GROUP BY ALL
), pairs AS (
    SELECT *, lag(root) OVER w AS prev_root, lag(received_at) OVER w AS prev_received_at
    FROM r
    WINDOW w AS (PARTITION BY provider, subscription ORDER BY root)
)
SELECT p.provider, p.subscription, p.prev_root + 1 AS first_slot, p.root - 1 AS last_slot
FROM pairs p
WHERE p.root > p.prev_root + 1
  AND NOT EXISTS (
      SELECT 1 FROM gaps g
      WHERE g.provider = p.provider AND g.subscription = p.subscription
        AND g.kind IN ('disconnected', 'down')
        AND g.started_at < p.received_at AND g.ended_at > p.prev_received_at
  );
