-- Transaction lines classified once for the RFM rules (relation `transactions` -> temp table `lines`).
-- Parameters: $as_of (DATE), $cancellation_prefix (VARCHAR).
--   * a line dated on or after the as-of date is `after_as_of` (the as-of date is exclusive);
--   * a cancellation/return is a line whose invoice id starts with the cancellation prefix (an empty
--     prefix matches nothing), or whose amount is negative.
CREATE TEMP TABLE lines AS
SELECT
    customer_id,
    invoice_id,
    "timestamp",
    amount,
    "timestamp" >= CAST($as_of AS TIMESTAMP) AS after_as_of,
    (starts_with(invoice_id, $cancellation_prefix) AND $cancellation_prefix <> '') OR amount < 0
        AS is_cancellation
FROM transactions
