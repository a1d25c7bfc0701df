-- Row counts behind the RFM rules, from the classified lines (macro in rfm_lines.sql); parameters as
-- in rfm.sql.
WITH lines AS (
    SELECT * FROM classified_lines($as_of, $cancellation_prefix)
),
customers AS (
    SELECT customer_id, bool_and(is_cancellation) AS only_cancellations
    FROM lines
    WHERE customer_id IS NOT NULL AND NOT after_as_of
    GROUP BY customer_id
)
SELECT
    count(*) FILTER (WHERE customer_id IS NULL) AS lines_without_customer,
    count(*) FILTER (WHERE customer_id IS NOT NULL AND after_as_of) AS lines_after_as_of,
    count(*) FILTER (WHERE customer_id IS NOT NULL AND NOT after_as_of AND is_cancellation) AS cancellation_lines,
    (SELECT count(*) FROM customers WHERE only_cancellations) AS customers_without_purchase
FROM lines
