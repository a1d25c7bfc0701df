-- RFM features per customer from the classified lines (macro in rfm_lines.sql).
-- Parameters: $as_of (DATE), $cancellation_prefix (VARCHAR).
-- Rules (documented in docs/configuration.md, "Data rules"):
--   * lines without a customer id cannot be attributed and are left out;
--   * lines dated on or after the as-of date are left out;
--   * a cancellation/return lowers monetary value (net spend) but is not a purchase, so it neither
--     counts as a purchase (frequency: distinct invoices, days or lines, rules.purchase) nor moves
--     the last purchase date (recency);
--   * monetary value is net spend, floored at 0 (returns of purchases made before the data starts),
--     summed as DECIMAL (exact to 1e-6), so it does not depend on the order of the lines or on how
--     DuckDB splits the sum over threads;
--   * a customer with no purchase before the as-of date (only cancellations) is left out.
SELECT
    customer_id,
    date_diff('day', CAST(max("timestamp") FILTER (WHERE NOT is_cancellation) AS DATE), CAST($as_of AS DATE))
        AS recency_days,
    count(DISTINCT purchase) FILTER (WHERE NOT is_cancellation) AS frequency,
    CAST(greatest(sum(CAST(amount AS DECIMAL(38, 6))), 0) AS DOUBLE) AS monetary
FROM classified_lines($as_of, $cancellation_prefix)
WHERE customer_id IS NOT NULL AND NOT after_as_of
GROUP BY customer_id
HAVING count(*) FILTER (WHERE NOT is_cancellation) > 0
ORDER BY customer_id
