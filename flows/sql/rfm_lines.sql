-- Transaction lines classified for the RFM rules: table macro `classified_lines(as_of,
-- cancellation_prefix)` over relation `transactions`, used by rfm.sql and rfm_exclusions.sql.
--   * a line dated on or after the as-of date is `after_as_of` (the as-of date is exclusive);
--   * a cancellation/return is a line whose invoice id starts with the cancellation prefix (an empty
--     prefix matches nothing; a log without invoice ids has '' here), or whose amount is negative;
--   * `purchase` is what frequency counts distinct values of (rules.purchase: the invoice id, the
--     day, or the line itself).
CREATE OR REPLACE TEMP MACRO classified_lines(as_of, cancellation_prefix) AS TABLE
SELECT
    customer_id,
    invoice_id,
    purchase,
    "timestamp",
    amount,
    "timestamp" >= CAST(as_of AS TIMESTAMP) AS after_as_of,
    (starts_with(invoice_id, cancellation_prefix) AND cancellation_prefix <> '') OR amount < 0
        AS is_cancellation
FROM transactions
