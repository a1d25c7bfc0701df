-- Analysts' views, created after the tables (schema.sql) and the bulk views over the runs' files.

CREATE OR REPLACE VIEW latest_run AS
    SELECT * FROM runs
    WHERE run_id = (SELECT max(run_id) FROM runs WHERE status = 'success');

CREATE OR REPLACE VIEW current_segments AS
    SELECT s.run_id, s.segment_id, s.weight, s.customer_count, s.mean_probability,
           r.n_components, r.covariance_type, r.as_of, n.name
    FROM segments s JOIN latest_run r USING (run_id)
    LEFT JOIN segment_names n USING (segment_id);

CREATE OR REPLACE VIEW segment_profiles AS
    SELECT f.run_id, f.segment_id, s.weight, s.customer_count, f.feature_index, f.feature, f.unit,
           f.mean, f.std, f.centre, f.spread_low, f.spread_high
    FROM segment_features f
    JOIN segments s USING (run_id, segment_id)
    JOIN latest_run r USING (run_id);

CREATE OR REPLACE VIEW current_assignments AS
    SELECT a.run_id, a.customer_id, a.segment_id, a.probability, a.probabilities, a.log_density, a.held,
           a.missing_features
    FROM assignments a JOIN latest_run r USING (run_id);

-- Every successful run's segments over time: size and centre of each stable segment id.
CREATE OR REPLACE VIEW segment_history AS
    SELECT r.run_id, r.as_of, r.finished_at, s.segment_id, n.name, s.weight, s.customer_count,
           f.feature_index, f.feature, f.unit, f.centre, f.mean
    FROM segments s
    JOIN runs r ON r.run_id = s.run_id AND r.status = 'success'
    JOIN segment_features f ON f.run_id = s.run_id AND f.segment_id = s.segment_id
    LEFT JOIN segment_names n ON n.segment_id = s.segment_id;

-- Customers moving between segments since the previous run, for the latest successful run.
CREATE OR REPLACE VIEW current_migration AS
    SELECT m.run_id, m.previous_run_id, m.from_segment, pn.name AS from_name, m.to_segment,
           cn.name AS to_name, m.customers
    FROM segment_migrations m JOIN latest_run r USING (run_id)
    LEFT JOIN segment_names pn ON pn.segment_id = m.from_segment
    LEFT JOIN segment_names cn ON cn.segment_id = m.to_segment;
