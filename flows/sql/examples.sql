-- Example queries for analysts (docs/results-database.md shows these; tests run every one against a real run).
-- Open the file read-only so the nightly run can still write:  segment sql (or duckdb.connect(path, read_only=True))

-- 1. The current segments: how many customers each and their share of all customers (what the
--    console and the report show), the model's mixture weight, and how sure the assignments are.
SELECT segment_id, customer_count, round(100 * customer_count / sum(customer_count) OVER (), 1) AS share_pct,
       round(weight, 3) AS model_weight, round(mean_probability, 3) AS mean_probability
FROM current_segments
ORDER BY segment_id;

-- 2. What a typical customer of each segment looks like, in original units (the report's
--    profiles: typical = the segment's centre, the bar; low/high = one standard deviation either
--    side, kept inside the values the feature takes; mean = membership-weighted mean, the diamond).
SELECT segment_id, feature, unit, round(centre, 1) AS typical, round(spread_low, 1) AS low,
       round(spread_high, 1) AS high, round(mean, 1) AS mean
FROM segment_profiles
ORDER BY segment_id, feature_index;

-- 3. The same as one row per segment.
PIVOT (SELECT segment_id, customer_count, feature, round(centre, 1) AS centre FROM segment_profiles)
ON feature USING first(centre)
ORDER BY segment_id;

-- 4. One customer's segment, how sure the model is, and the probability of every segment.
SELECT customer_id, segment_id, round(probability, 3) AS probability, probabilities
FROM current_assignments
WHERE customer_id = '12347';

-- 5. Customers between segments (the model is less than 60% sure).
SELECT customer_id, segment_id, round(probability, 2) AS probability
FROM current_assignments
WHERE probability < 0.6
ORDER BY probability
LIMIT 20;

-- 6. Unusual customers: the lowest log-density under the model (outliers).
SELECT customer_id, segment_id, round(log_density, 2) AS log_density
FROM current_assignments
ORDER BY log_density
LIMIT 10;

-- 7. Run history.
SELECT run_id, trigger, status, failed_stage, as_of, started_at, finished_at, rows_loaded, rows_rejected,
       customers, n_components, covariance_type, criterion, round(bic, 1) AS bic, seed, code_version
FROM runs
ORDER BY run_id DESC;

-- 8. The model-selection grid of the latest successful run, best first.
SELECT n_components, covariance_type, round(bic, 1) AS bic, round(aic, 1) AS aic, round(icl, 1) AS icl,
       status, reason, selected
FROM model_candidates
WHERE run_id = (SELECT run_id FROM latest_run)
ORDER BY status <> 'ok', bic NULLS LAST
LIMIT 8;

-- 9. Why rows were rejected in the latest run, by column and rule, with an example row.
SELECT column_name, rule, count(*) AS failures, min(row_number) AS first_row, any_value(value) AS example_value
FROM rejected_rows
WHERE run_id = (SELECT max(run_id) FROM runs)
GROUP BY ALL
ORDER BY failures DESC;

-- 10. The stored transform of each feature (model value = (transform(x) - scaler_mean) / scaler_scale).
SELECT feature, unit, transform, scaler_mean, scaler_scale
FROM feature_scalers
WHERE run_id = (SELECT run_id FROM latest_run)
ORDER BY feature_index;

-- 11. What changed since the previous run: the summary and the drift flags.
SELECT run_id, previous_run_id, n_components, covariance_type, new_segments, retired_segments,
       round(moved_share, 3) AS moved_share, drift_flags, what_changed
FROM latest_run;

-- 12. Customers moving between segments since the previous run (stayers on the diagonal).
PIVOT (SELECT from_segment, to_segment, customers FROM current_migration)
ON to_segment USING coalesce(CAST(sum(customers) AS INTEGER), 0)
ORDER BY from_segment;

-- 13. One segment's size and centre over time (segment ids are stable from run to run).
SELECT run_id, as_of, segment_id, name, customer_count, round(weight, 3) AS weight, feature, round(centre, 1) AS centre
FROM segment_history
WHERE segment_id = 1
ORDER BY run_id, feature_index;

-- 14. How each run chose its model: kept the previous structure, switched, or chose afresh, with
--     both criterion values (lower is better) and what happened at the edge of the grid.
SELECT run_id, as_of, n_components, covariance_type, decision, round(previous_value, 1) AS previous_value,
       round(fresh_value, 1) AS fresh_value, k_max_tried, grid_note, round(moved_share, 3) AS moved_share
FROM runs
WHERE status = 'success'
ORDER BY run_id;

-- 15. Features recorded on a grid: the spike (e.g. one-time buyers) and the spacing of the values
--     there, which no segment is narrower than (model units: standard deviations of the feature).
SELECT feature, unit, spike_value, round(spike_share, 3) AS spike_share, round(resolution, 3) AS resolution
FROM feature_scalers
WHERE run_id = (SELECT run_id FROM latest_run)
ORDER BY feature_index;
