-- Solana finality: a slot is final once a root at or above it has been seen (PROTOCOLS.md 4.9),
-- unless it is one of the slots the roots passed over.
CREATE OR REPLACE VIEW solana_final_root AS
SELECT max(root) AS root FROM solana_roots;

-- Slots known never to be rooted (an abandoned fork, or a skipped slot), as disjoint ranges. A
-- node notifies every slot it roots, in order (Agave's notify_roots), so two roots one connection
-- received one after the other prove the slots between them were not rooted. Roots of different
-- connections prove nothing (the ones between were missed), nor do rows stored without a
-- connection id. A range is the slots between two roots seen (by any connection) that one
-- connection's consecutive roots span: a slot with a root seen is never in one.
CREATE OR REPLACE VIEW solana_unrooted AS
WITH roots AS (
    SELECT DISTINCT root FROM solana_roots
), between_roots AS (
    SELECT root + 1 AS first_slot, next_root - 1 AS last_slot
    FROM (SELECT root, lead(root) OVER (ORDER BY root) AS next_root FROM roots)
    WHERE next_root > root + 1
), spans AS (
    -- per connection, consecutive roots with slots between them
    SELECT prev_root, max(root) AS root
    FROM (
        SELECT root, lag(root) OVER (PARTITION BY _provider, _subscription, connection ORDER BY root) AS prev_root
        FROM (SELECT DISTINCT _provider, _subscription, connection, root FROM solana_roots WHERE connection IS NOT NULL)
    )
    WHERE root > prev_root + 1
    GROUP BY prev_root
), reach AS (
    -- how far the spans starting at or below prev_root reach
    SELECT prev_root, max(root) OVER (ORDER BY prev_root ROWS UNBOUNDED PRECEDING) AS reach
    FROM spans
)
SELECT b.first_slot, b.last_slot
FROM between_roots b
ASOF JOIN reach r ON b.first_slot > r.prev_root
WHERE r.reach > b.last_slot;

-- Whether a row of `slot` is final, by the rule above: received at finalized, or at or below the
-- root seen and not in the unrooted range an ASOF join on solana_unrooted found for it (its
-- last_slot; NULL when none starts at or below the slot).
CREATE OR REPLACE MACRO solana_final(commitment, slot, root, unrooted_last) AS
    commitment = 'finalized'
    OR (coalesce(slot <= root, false) AND NOT coalesce(slot <= unrooted_last, false));

-- Commitment levels in order, to keep the highest one seen of an event.
CREATE OR REPLACE MACRO commitment_rank(commitment) AS
    CASE commitment WHEN 'finalized' THEN 3 WHEN 'confirmed' THEN 2 WHEN 'processed' THEN 1 ELSE 0 END;
