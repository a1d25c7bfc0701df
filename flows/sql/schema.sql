-- Results database: one row per run in `runs`, everything else keyed by run_id.
-- Idempotent: run at every write so an empty file becomes a results database.
CREATE TABLE IF NOT EXISTS runs (
    run_id              BIGINT PRIMARY KEY,   -- 1, 2, 3 ... in start order
    trigger             VARCHAR NOT NULL,     -- schedule | manual | cli | test
    status              VARCHAR NOT NULL,     -- success | failed | killed (recorded by the next run)
    failed_stage        VARCHAR,              -- stage that raised, when status = 'failed'
    error               VARCHAR,              -- one-line error message, when status = 'failed'
    started_at          TIMESTAMP NOT NULL,   -- UTC
    finished_at         TIMESTAMP,            -- UTC
    as_of               DATE,                 -- recency reference date (transaction logs)
    input               VARCHAR NOT NULL,     -- what was read
    input_kind          VARCHAR NOT NULL,     -- transactions | customers
    rows_loaded         BIGINT,
    rows_rejected       BIGINT,               -- distinct rows with at least one rejected_rows record
    rows_excluded       JSON,                 -- rows/customers left out by documented data rules, by rule
    customers           BIGINT,               -- customers segmented
    features            VARCHAR[],
    parameters          JSON NOT NULL,        -- the full effective configuration
    n_components        INTEGER,              -- chosen number of segments
    covariance_type     VARCHAR,              -- chosen covariance type
    criterion           VARCHAR,              -- bic | aic | icl (lower is better)
    bic                 DOUBLE,
    aic                 DOUBLE,
    icl                 DOUBLE,
    log_likelihood      DOUBLE,               -- total log-likelihood of the chosen model on all customers
    seed                BIGINT,
    code_version        VARCHAR,
    report_path         VARCHAR,              -- index.html of the run's report
    flow_run_id         VARCHAR               -- Prefect flow run id
);

CREATE TABLE IF NOT EXISTS model_candidates (
    run_id              BIGINT NOT NULL,
    n_components        INTEGER NOT NULL,
    covariance_type     VARCHAR NOT NULL,
    n_parameters        INTEGER,
    log_likelihood      DOUBLE,
    mean_log_likelihood DOUBLE,
    bic                 DOUBLE,
    aic                 DOUBLE,
    icl                 DOUBLE,
    converged           BOOLEAN,
    n_iter              INTEGER,
    seconds             DOUBLE,
    status              VARCHAR,              -- ok | degenerate | failed
    reason              VARCHAR,
    selected            BOOLEAN NOT NULL
);

CREATE TABLE IF NOT EXISTS segments (
    run_id              BIGINT NOT NULL,
    segment_id          INTEGER NOT NULL,     -- 1..k
    weight              DOUBLE NOT NULL,      -- mixture weight (expected share of customers)
    customer_count      BIGINT NOT NULL,      -- customers given this segment (assignments.segment_id)
    mean_probability    DOUBLE,               -- their average membership probability
    model_mean          DOUBLE[],             -- component mean in model space (standardised features)
    model_covariance    DOUBLE[]              -- full d x d covariance in model space, row-major
);

CREATE TABLE IF NOT EXISTS segment_features (
    run_id              BIGINT NOT NULL,
    segment_id          INTEGER NOT NULL,
    feature_index       INTEGER NOT NULL,     -- 1..d, order of runs.features
    feature             VARCHAR NOT NULL,
    unit                VARCHAR,
    mean                DOUBLE,               -- membership-weighted mean, original units
    std                 DOUBLE,               -- membership-weighted standard deviation, original units
    centre              DOUBLE,               -- component mean mapped back to original units
    spread_low          DOUBLE,               -- centre - 1 sd in model space, mapped back, clipped to the observed range
    spread_high         DOUBLE                -- centre + 1 sd in model space, mapped back
);

CREATE TABLE IF NOT EXISTS feature_scalers (
    run_id              BIGINT NOT NULL,
    feature_index       INTEGER NOT NULL,
    feature             VARCHAR NOT NULL,
    unit                VARCHAR,
    transform           VARCHAR NOT NULL,     -- none | log1p, applied before standardisation
    scaler_mean         DOUBLE NOT NULL,      -- model value = (transform(x) - scaler_mean) / scaler_scale
    scaler_scale        DOUBLE NOT NULL
);

-- assignments and rejected_rows: views over each run's Parquet files (flows/run_files.py).

-- Continuity between runs (the tracking package). Columns added to runs by later versions:
ALTER TABLE runs ADD COLUMN IF NOT EXISTS previous_run_id BIGINT;     -- run this one was compared with
ALTER TABLE runs ADD COLUMN IF NOT EXISTS match_method VARCHAR;       -- first_run | bhattacharyya | customer_overlap | none
ALTER TABLE runs ADD COLUMN IF NOT EXISTS new_segments INTEGER[];     -- ids given for the first time
ALTER TABLE runs ADD COLUMN IF NOT EXISTS retired_segments INTEGER[]; -- previous ids no longer used
ALTER TABLE runs ADD COLUMN IF NOT EXISTS moved_share DOUBLE;         -- share of customers in both runs who changed segment
ALTER TABLE runs ADD COLUMN IF NOT EXISTS drift_flags VARCHAR[];      -- e.g. 'k changed 4 -> 5'
ALTER TABLE runs ADD COLUMN IF NOT EXISTS what_changed VARCHAR;       -- short plain-text summary
ALTER TABLE runs ADD COLUMN IF NOT EXISTS warm_start JSON;            -- what a warm start did (runs before model.switch_margin; now NULL)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pruned_at TIMESTAMP;        -- UTC; older than the runs output.keep_runs keeps: no assignments or rejected rows
-- How the model structure was chosen (flows/choice.py):
ALTER TABLE runs ADD COLUMN IF NOT EXISTS decision VARCHAR;           -- first_run | fresh | features_changed | previous_unusable | kept | switched
ALTER TABLE runs ADD COLUMN IF NOT EXISTS decision_note VARCHAR;      -- the decision in a sentence
ALTER TABLE runs ADD COLUMN IF NOT EXISTS fresh_value DOUBLE;         -- criterion of the best fresh candidate
ALTER TABLE runs ADD COLUMN IF NOT EXISTS previous_value DOUBLE;      -- criterion of the previous run's model refitted (NULL: not refitted)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS k_max_tried INTEGER;        -- largest number of segments tried (> model.k_max when the grid was extended)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS grid_note VARCHAR;          -- what happened at the edge of the grid (NULL: the choice lay inside it)
ALTER TABLE model_candidates ADD COLUMN IF NOT EXISTS origin VARCHAR; -- grid | extension (tried past model.k_max) | previous (the previous run's model refitted)
ALTER TABLE feature_scalers ADD COLUMN IF NOT EXISTS resolution DOUBLE;  -- spacing of the values at the feature's spike, model units (0: continuous)
ALTER TABLE feature_scalers ADD COLUMN IF NOT EXISTS spike_value DOUBLE; -- the feature's most common value, original units (NULL: no spike)
ALTER TABLE feature_scalers ADD COLUMN IF NOT EXISTS spike_share DOUBLE; -- share of customers on it
-- Customers kept in last run's segment (tracking.hold_odds):
ALTER TABLE runs ADD COLUMN IF NOT EXISTS held_customers INTEGER;     -- how many (NULL: first run, or hold_odds = 1)
-- Customers segmented with blank features (customer tables, features.missing = 'model'):
ALTER TABLE runs ADD COLUMN IF NOT EXISTS customers_with_gaps INTEGER;     -- customers segmented with at least one blank feature

CREATE TABLE IF NOT EXISTS segment_migrations (
    run_id              BIGINT NOT NULL,
    previous_run_id     BIGINT NOT NULL,
    from_segment        INTEGER NOT NULL,     -- segment id in the previous run
    to_segment          INTEGER NOT NULL,     -- segment id in this run
    customers           BIGINT NOT NULL       -- customers present in both runs who made this move
);

CREATE TABLE IF NOT EXISTS segment_transitions (
    run_id              BIGINT NOT NULL,
    previous_run_id     BIGINT NOT NULL,
    kind                VARCHAR NOT NULL,     -- survived | split | merged | emerged | disappeared (MONIC)
    from_segments       INTEGER[],
    to_segments         INTEGER[],
    share               DOUBLE                -- share of the customers concerned that made the transition
);

CREATE TABLE IF NOT EXISTS segment_shifts (
    run_id              BIGINT NOT NULL,
    previous_run_id     BIGINT NOT NULL,
    segment_id          INTEGER NOT NULL,
    feature_index       INTEGER NOT NULL,
    feature             VARCHAR NOT NULL,
    transform           VARCHAR,
    unit                VARCHAR,
    previous_mean       DOUBLE,               -- segment mean, transformed units (e.g. log(1 + GBP))
    current_mean        DOUBLE,
    shift               DOUBLE,
    shift_sd            DOUBLE,               -- shift in the previous segment's standard deviations
    previous_centre     DOUBLE,               -- segment centre, original units
    current_centre      DOUBLE,
    distance_sd         DOUBLE,               -- Mahalanobis distance the segment moved (whole segment)
    bhattacharyya       DOUBLE                -- distance between the two Gaussians (whole segment)
);

CREATE TABLE IF NOT EXISTS segment_names (
    segment_id          INTEGER PRIMARY KEY,  -- stable across runs
    name                VARCHAR NOT NULL,
    named_at            TIMESTAMP NOT NULL    -- UTC
);

