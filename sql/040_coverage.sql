-- How complete each hour is, per provider and subscription: seconds not received (disconnects
-- until the resubscribe, the daemon's own downtime until it subscribed again), and the sequence
-- and block-number jumps seen. Gap rows derived twice (a journal replay) share an id and count once.
-- Seconds are split between the hours a gap spans; a jump counts once, in the hour it started, so
-- summing hours never counts it twice.
CREATE OR REPLACE VIEW coverage AS
WITH g AS (
    SELECT * FROM gaps QUALIFY row_number() OVER (PARTITION BY id ORDER BY detected_at) = 1
), spans AS (
    -- A block gap settled by a late block may end before it started (blocks out of order).
    SELECT provider, subscription, kind,
           CAST(least(started_at, ended_at) AS TIMESTAMPTZ) AS s, CAST(greatest(started_at, ended_at) AS TIMESTAMPTZ) AS e
    FROM g
), hours AS (
    SELECT *, unnest(generate_series(date_trunc('hour', s), date_trunc('hour', e), INTERVAL 1 HOUR)) AS hour
    FROM spans
)
SELECT
    provider,
    subscription,
    hour,
    sum(CASE WHEN kind IN ('disconnected', 'down')
             THEN epoch(least(e, hour + INTERVAL 1 HOUR)) - epoch(greatest(s, hour)) ELSE 0 END) AS seconds_missing,
    count(*) FILTER (WHERE kind = 'sequence' AND hour = date_trunc('hour', s)) AS sequence_gaps,
    count(*) FILTER (WHERE kind = 'block'    AND hour = date_trunc('hour', s)) AS block_gaps
FROM hours
GROUP BY ALL;
