-- RFM features per customer from a validated transaction log (relation `transactions`).
-- Parameters: $as_of (DATE), $cancellation_prefix (VARCHAR).
-- Rules (documented in the README):
--   * lines without a customer id cannot be attributed and are left out;
--   * lines dated on or after the as-of date are left out (the as-of date is exclusive);
--   * a cancellation/return is a line whose invoice id starts with the cancellation prefix, or whose
--     amount is negative: it lowers monetary value (net spend) but is not a purchase, so it neither
--     counts as an invoice (frequency) nor moves the last purchase date (recency);
--   * monetary value is net spend, floored at 0 (returns of purchases made before the data starts);
--   * a customer with no purchase before the as-of date (only cancellations) is left out.
WITH lines AS (
    SELECT
        customer_id,
        invoice_id,
        "timestamp",
        amount,
        (starts_with(invoice_id, $cancellation_prefix) AND $cancellation_prefix <> '') OR amount < 0
            AS is_cancellation
    FROM transactions
    WHERE customer_id IS NOT NULL
      AND "timestamp" < CAST($as_of AS TIMESTAMP)
)
SELECT
    customer_id,
    date_diff('day', CAST(max("timestamp") FILTER (WHERE NOT is_cancellation) AS DATE), CAST($as_of AS DATE))
        AS recency_days,
    count(DISTINCT invoice_id) FILTER (WHERE NOT is_cancellation) AS frequency,
    greatest(sum(amount), 0.0) AS monetary
FROM lines
GROUP BY customer_id
HAVING count(*) FILTER (WHERE NOT is_cancellation) > 0
ORDER BY customer_id
