"""Configuration, loading through DuckDB, RFM features in SQL and stored transforms (no Prefect)."""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.config import ConfigError, load_settings
from flows.features import (
    FeatureError,
    apply_transforms,
    build_feature_matrix,
    default_as_of,
    feature_matrix,
    fit_scaler,
    rfm_table,
)
from flows.lines import TransactionLines
from flows.load import InputError, load_input
from flows.stages import TooManyRejectsError, compute_features, validate_input

LOG = pd.DataFrame(
    {
        "Cust No": ["17850.0", "17850.0", "17850.0", "", "42", "42", "77", "99"],
        "Inv": ["A1", "A1", "A2", "A3", "A4", "C5", "C6", "A7"],
        "At": [
            "2011-01-01 09:00:00",
            "2011-01-01 09:00:00",
            "2011-01-05 12:00:00",
            "2011-01-06 10:00:00",
            "2011-01-02 08:00:00",
            "2011-01-04 08:00:00",
            "2011-01-03 08:00:00",
            "2011-02-01 08:00:00",
        ],
        "Qty": [2, 1, 4, 10, 3, -3, -1, 1],
        "Price": [1.5, 3.0, 2.5, 1.0, 10.0, 10.0, 5.0, 1.0],
    }
)
COLUMNS = {
    "customer_id": "Cust No",
    "invoice_id": "Inv",
    "timestamp": "At",
    "quantity": "Qty",
    "unit_price": "Price",
}


def settings_for(path, **input_extra):
    return load_settings(overrides={"input": {"path": str(path), "columns": COLUMNS, **input_extra}})


@pytest.fixture()
def log_files(tmp_path):
    csv = tmp_path / "log.csv"
    LOG.to_csv(csv, index=False)
    con = duckdb.connect(str(tmp_path / "shop.duckdb"))
    con.register("log_df", LOG)
    con.execute('CREATE SCHEMA sales; CREATE TABLE sales."invoice lines" AS SELECT * FROM log_df')
    con.execute("COPY (SELECT * FROM log_df) TO ? (FORMAT parquet)", [str(tmp_path / "log.parquet")])
    con.close()
    return tmp_path


def test_defaults_segment_the_embedded_sample_and_overrides_win(tmp_path):
    s = load_settings()
    assert (
        s.input.path.endswith("data/online_retail.csv.gz") and s.input.columns["customer_id"] == "CustomerID"
    )
    assert (s.model.k_min, s.model.k_max, s.model.criterion, s.model.n_init, s.model.seed) == (
        1,
        8,
        "bic",
        3,
        0,
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text('[input]\npath = "mine.csv"\n[model]\nk_max = 5\ncriterion = "aic"\n')
    s = load_settings(cfg, {"model": {"criterion": "icl"}})
    assert s.input.path == str(tmp_path / "mine.csv")  # relative to the config file
    assert s.input.columns["customer_id"] == "customer_id"  # own file: canonical names by default
    assert (s.model.k_max, s.model.criterion) == (5, "icl")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model]\nk_min = 4\nk_max = 2\n", "k_max"),
        ("[model]\ncriterion = 'bic2'\n", "model.criterion"),
        ("[modle]\nk_max = 2\n", "modle"),
        ("[output]\nkeep_runs = true\n", "output.keep_runs"),  # deletes data: no loose coercion
        ("[input]\nkind = 'customers'\n", "features.columns"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_configuration_fails_with_one_line_naming_the_key(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(cfg)
    assert str(cfg) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, extra",
    [
        ("log.csv", {}),
        ("log.parquet", {}),
        ("shop.duckdb", {"table": "sales.invoice lines"}),
        ("shop.duckdb", {"query": 'SELECT * FROM sales."invoice lines" WHERE "Inv" <> \'A7\''}),
        ("log.csv", {"query": "SELECT * FROM input WHERE \"Inv\" <> 'A7'"}),
    ],
)
def test_every_input_format_loads_with_mapped_columns(log_files, name, extra):
    loaded = load_input(settings_for(log_files / name, **extra).input, [])
    frame = loaded.to_frame()
    expected_rows = 7 if "query" in extra else 8
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == expected_rows and frame.index[0] == 1
    # Spreadsheet-style float ids become text ids; empty ids become missing.
    assert frame["customer_id"].iloc[0] == "17850"
    assert pd.isna(frame["customer_id"].iloc[3])
    assert loaded.source_columns["customer_id"] == "Cust No"


def test_missing_file_and_column_give_clear_errors(log_files):
    with pytest.raises(InputError, match="input file not found"):
        load_input(settings_for(log_files / "nope.csv").input, [])
    bad = dict(COLUMNS, quantity="Quantity")
    s = load_settings(overrides={"input": {"path": str(log_files / "log.csv"), "columns": bad}})
    with pytest.raises(InputError, match=r"column 'Quantity' \(for quantity\) not found"):
        load_input(s.input, [])
    with pytest.raises(InputError, match=r"needs input\.table or input\.query"):
        load_input(settings_for(log_files / "shop.duckdb").input, [])


def test_rfm_rules_on_a_hand_checked_log(log_files):
    s = settings_for(
        log_files / "log.csv",
    )
    loaded = load_input(s.input, [])
    outcome = validate_input(loaded, s)
    as_of = date(2011, 1, 10)
    table, counts = rfm_table(outcome.valid, as_of, "C")
    rows = table.set_index("customer_id").to_dict("index")
    # 17850: invoices A1 (6.0) and A2 (10.0); last purchase 2011-01-05.
    assert rows["17850"] == {"recency_days": 5.0, "frequency": 2.0, "monetary": 16.0}
    # 42: one purchase of 30.0 returned in full by C5; the return is not a purchase.
    assert rows["42"] == {"recency_days": 8.0, "frequency": 1.0, "monetary": 0.0}
    # 77 only cancelled; 99 bought after the as-of date; the line without customer is left out.
    assert set(rows) == {"17850", "42"}
    assert counts == {
        "lines_without_customer": 1,
        "lines_after_as_of": 1,
        "cancellation_lines": 2,
        "customers_without_purchase": 1,
    }
    assert default_as_of(outcome.valid) == date(2011, 2, 2)


def test_a_log_without_invoice_ids_counts_purchase_days_or_lines(tmp_path):
    """rules.purchase: one purchase per (customer, day) by default, or per line; cancellations come
    from negative amounts."""
    log = pd.DataFrame(
        {
            "customer": ["A", "A", "A", "B", "B", "C"],
            "date": [
                "2024-01-02 09:00",
                "2024-01-02 17:30",
                "2024-01-05 10:00",
                "2024-01-03 10:00",
                "2024-01-04 10:00",
                "2024-01-06 10:00",
            ],
            "value": [10.0, 5.0, 7.5, 20.0, -20.0, 30.0],
        }
    )
    csv = tmp_path / "purchases.csv"
    log.to_csv(csv, index=False)
    columns = {"customer_id": "customer", "timestamp": "date", "amount": "value"}
    table = {}
    for purchase in (None, "line"):
        rules = {"as_of": date(2024, 1, 10)} | ({"purchase": purchase} if purchase else {})
        s = load_settings(overrides={"input": {"path": str(csv), "columns": columns}, "rules": rules})
        assert s.rules.purchase == (purchase or "day")  # recorded in runs.parameters as used
        assert s.unit_of("frequency") == {"day": "purchase days", "line": "purchases"}[s.rules.purchase]
        features = compute_features(validate_input(load_input(s.input, s.features.columns), s).valid, s)
        table[s.rules.purchase] = pd.DataFrame(
            features.X_original, index=features.customer_ids, columns=features.names
        ).to_dict("index")
    # A bought twice on 2 January and once on 5 January; B's only purchase was returned in full.
    assert table["day"]["A"] == {"recency_days": 5.0, "frequency": 2.0, "monetary": 22.5}
    assert table["line"]["A"] == {"recency_days": 5.0, "frequency": 3.0, "monetary": 22.5}
    assert table["day"]["B"] == table["line"]["B"] == {"recency_days": 7.0, "frequency": 1.0, "monetary": 0.0}
    with pytest.raises(
        ConfigError,
        match=r"rules.purchase = 'invoice' needs input.columns to map 'invoice_id' "
        r"\(--column invoice_id=YOUR_COLUMN\)",
    ):
        load_settings(
            overrides={"input": {"path": str(csv), "columns": columns}, "rules": {"purchase": "invoice"}}
        )


def test_an_invoice_log_can_count_days_instead(log_files):
    s = load_settings(
        overrides={
            "input": {"path": str(log_files / "log.csv"), "columns": COLUMNS},
            "rules": {"purchase": "day"},
        }
    )
    valid = validate_input(load_input(s.input, []), s).valid
    table, counts = rfm_table(valid, date(2011, 1, 10), "C", purchase="day")
    rows = table.set_index("customer_id").to_dict("index")
    # 17850's invoices A1 and A2 fall on two days; C5 is still a cancellation by its prefix.
    assert rows["17850"]["frequency"] == 2.0 and rows["42"] == {
        "recency_days": 8.0,
        "frequency": 1.0,
        "monetary": 0.0,
    }
    assert counts["cancellation_lines"] == 2
    with pytest.raises(ValueError, match="purchase must be"):
        rfm_table(valid, date(2011, 1, 10), "C", purchase="week")


def test_amount_column_instead_of_quantity_times_price(tmp_path):
    frame = LOG.assign(Total=LOG["Qty"] * LOG["Price"])
    path = tmp_path / "amounts.csv"
    frame.to_csv(path, index=False)
    cols = {"customer_id": "Cust No", "invoice_id": "Inv", "timestamp": "At", "amount": "Total"}
    s = load_settings(
        overrides={"input": {"path": str(path), "columns": cols}, "rules": {"as_of": "2011-01-10"}}
    )
    features = compute_features(validate_input(load_input(s.input, []), s).valid, s)
    by_id = dict(zip(features.customer_ids, features.X_original[:, 2], strict=True))
    assert by_id == {"17850": 16.0, "42": 0.0}


def test_scaler_parameters_reproduce_the_model_matrix():
    rng = np.random.default_rng(0)
    X = np.column_stack(
        [rng.integers(1, 300, 500), rng.integers(1, 20, 500), rng.lognormal(6, 1, 500)]
    ).astype(float)
    scaler = fit_scaler(X, ["none", "log1p", "log1p"])
    Z = scaler.transform(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-12)
    np.testing.assert_allclose(Z, (apply_transforms(X, scaler.transforms) - scaler.mean) / scaler.scale)
    np.testing.assert_allclose(scaler.inverse_transform(Z), X, rtol=1e-10)
    constant = fit_scaler(np.ones((4, 1)), ["none"])
    assert constant.scale[0] == 1.0
    with pytest.raises(ValueError, match="unknown transform"):
        apply_transforms(X, ["none", "sqrt", "none"])


def test_customer_table_features_and_reject_budget(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "spend": [10, 20, -1, 40], "visits": [1, 2, 3, 4]})
    path = tmp_path / "customers.csv"
    frame.to_csv(path, index=False)
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {
            "columns": ["spend", "visits"],
            "transforms": {"spend": "log1p"},
            "units": {"spend": "EUR"},
        },
    }
    s = load_settings(overrides=dict(over, rules={"max_reject_share": 0.5}))
    outcome = validate_input(load_input(s.input, s.features.columns), s)
    assert outcome.rejects[["row_number", "column_name"]].values.tolist() == [[3, "spend"]]
    features = compute_features(outcome.valid, s)
    assert features.customer_ids.tolist() == ["a", "b", "d"]
    assert features.units == ["EUR", ""] and features.transforms == ["log1p", "none"]
    matrix = build_feature_matrix(
        outcome.valid.to_frame().reset_index(drop=True), ["spend"], ["EUR"], ["log1p"]
    )
    np.testing.assert_allclose(matrix.X_model[:, 0], features.X_model[:, 0])
    strict = load_settings(overrides=dict(over, rules={"max_reject_share": 0.2}))
    with pytest.raises(TooManyRejectsError, match=r"1 of 4 rows \(25.0%\).*row 3, column 'spend'"):
        validate_input(load_input(strict.input, strict.features.columns), strict)


def test_a_customer_table_read_in_blocks_gives_the_same_rows_rejects_and_features(tmp_path, monkeypatch):
    """Blocks of 2,048 rows (three here) against one block: the same valid customers, the same
    reject records (a repeated id across blocks, bad numbers) and the same feature matrix."""
    rng = np.random.default_rng(3)
    n = 5000
    ids = [f"c{i:05d}" for i in rng.permutation(n)]
    ids[4500] = ids[10]  # a repeat in another block
    spend = [f"{v:.2f}" for v in rng.gamma(2.0, 50.0, n)]
    spend[100], spend[3000] = "abc", "-4"
    visits = [str(v) for v in rng.integers(1, 9, n)]
    visits[2100] = ""
    path = tmp_path / "customers.csv"
    pd.DataFrame({"id": ids, "spend": spend, "visits": visits}).to_csv(path, index=False)
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {"columns": ["spend", "visits"], "transforms": {"spend": "log1p"}},
    }
    s = load_settings(overrides=over)

    def run():
        loaded = load_input(s.input, s.features.columns)
        blocks = sum(1 for _ in loaded.chunks())
        assert loaded.n_blocks == blocks and loaded.spilled is not None  # a file's rows are on disk
        folder = loaded.spilled.folder
        outcome = validate_input(loaded, s)
        assert loaded.n_blocks == 0 and loaded.n_read == n  # released as validated; still counted
        assert not folder.exists()
        return blocks, outcome, compute_features(outcome.valid, s)

    one_block, whole, whole_features = run()
    monkeypatch.setattr("flows.load.FETCH_ROWS", 2048)
    blocks, chunked, chunked_features = run()
    assert (one_block, blocks) == (1, 3)
    pd.testing.assert_frame_equal(chunked.rejects, whole.rejects)
    assert set(whole.rejects["row_number"]) == {11, 101, 3001, 4501}  # a blank visit is modelled
    pd.testing.assert_frame_equal(chunked.valid.to_frame(), whole.valid.to_frame())
    assert chunked_features.customer_ids.tolist() == sorted(whole_features.customer_ids.tolist())
    np.testing.assert_array_equal(chunked_features.X_model, whole_features.X_model)


def test_a_block_of_rows_without_ids_keeps_them_missing(tmp_path, monkeypatch):
    """A block in which every id is blank comes from DuckDB as an untyped column of None: the ids
    stay missing (rejected as such), never the text 'None'."""
    monkeypatch.setattr("flows.load.FETCH_ROWS", 2048)
    rows = [("", i) for i in range(2048)] + [(f"k{i}", i) for i in range(60)]
    path = tmp_path / "customers.csv"
    path.write_text("id,x\n" + "".join(f"{c},{x}\n" for c, x in rows))
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {"columns": ["x"]},
        "rules": {"max_reject_share": 1.0},
    }
    s = load_settings(overrides=over)
    loaded = load_input(s.input, s.features.columns)
    assert loaded.n_blocks == 2 and np.isnan(loaded.text_column("customer_id")[:2048]).all()
    outcome = validate_input(loaded, s)
    assert set(outcome.rejects["rule"]) == {"not_nullable"} and len(outcome.rejects) == 2048
    assert outcome.valid.to_frame()["customer_id"].tolist() == sorted(f"k{i}" for i in range(60))


def test_a_run_releases_the_input_rows_but_keeps_their_counts(tmp_path):
    """After validation the input frame is emptied, after the features the valid rows: the
    counts, rejects and column names a run reports stay as they were."""
    path = tmp_path / "customers.csv"
    # Row 2 has a field too many (a reader reject), row 3 a spend log1p cannot take (a schema reject).
    path.write_text("id,spend,visits\na,10,1\nb,20,2,9\nc,-1,3\nd,40,4\ne,50,5\n")
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {"columns": ["spend", "visits"], "transforms": {"spend": "log1p"}},
        "rules": {"max_reject_share": 0.5},
    }
    s = load_settings(overrides=over)
    loaded = load_input(s.input, s.features.columns)
    outcome = validate_input(loaded, s)
    released = loaded.without_rows()
    assert len(released.to_frame()) == 0 and list(released.to_frame().columns) == list(
        loaded.to_frame().columns
    )
    assert (loaded.n_rows, released.n_rows) == (5, 5)
    assert released.rejects.equals(loaded.rejects) and released.source == loaded.source
    assert released.without_rows().n_rows == 5  # releasing twice changes nothing

    assert len(outcome.valid.to_frame()) == 3
    kept = outcome.without_rows()
    # The valid rows' database is gone; how many there were is still known.
    assert len(kept.valid) == 3 and not kept.valid.path.parent.exists()
    with pytest.raises(ValueError, match="closed"):
        kept.valid.to_frame()
    assert (kept.n_rows, kept.n_rejected_rows, kept.reject_reasons) == (5, 2, outcome.reject_reasons)


@pytest.mark.parametrize("fmt", ["duckdb", "csv"])
def test_an_input_query_can_read_its_input_and_nothing_else(tmp_path, fmt):
    from flows.config import InputSettings
    from flows.load import InputError, load_input

    csv = tmp_path / "c.csv"
    pd.DataFrame({"customer_id": ["a", "b"], "x": [1.0, 2.0]}).to_csv(csv, index=False)
    path = csv
    if fmt == "duckdb":
        path = tmp_path / "src.duckdb"
        with duckdb.connect(str(path)) as con:
            con.execute("CREATE TABLE c AS SELECT * FROM read_csv(?)", [str(csv)])
    source = "c" if fmt == "duckdb" else "input"
    ok = InputSettings(
        path=str(path),
        kind="customers",
        query=f"SELECT * FROM {source} WHERE customer_id = 'b'",
        columns={"customer_id": "customer_id"},
    )
    assert load_input(ok, ["x"]).n_read == 1
    evil = tmp_path / "evil.csv"
    bad = InputSettings(
        path=str(path),
        kind="customers",
        columns={"customer_id": "customer_id"},
        query=f"SELECT * FROM read_csv('{csv}') UNION ALL SELECT * FROM {source}",
    )
    with pytest.raises(InputError, match="file system operations are disabled"):
        load_input(bad, ["x"])
    assert not evil.exists()


def test_rfm_features_of_the_embedded_sample_are_bit_for_bit_reproducible():
    # 541,909 lines: enough for DuckDB to sum in parallel, whose partial sums of floating-point
    # amounts would combine in a varying order and change net spend in its last bits.
    s = load_settings()
    valid = validate_input(load_input(s.input, s.features.columns), s).valid
    first, counts = rfm_table(valid, date(2011, 12, 10))
    assert len(first) > 4000 and counts["lines_without_customer"] > 100_000  # the whole file was read
    for _ in range(3):
        again, _ = rfm_table(valid, date(2011, 12, 10))
        pd.testing.assert_frame_equal(first, again, check_exact=True)


def test_blank_features_are_kept_as_missing_up_to_the_cap(tmp_path):
    """features.missing = "model": a blank value is NaN in the features (left out of the scaler and
    of the spike), a customer with more than max_missing_share blank is rejected; "reject" per
    feature rejects that feature's blanks as before."""
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e", "f"],
            "spend": [10.0, None, 30.0, None, 50.0, 60.0],
            "visits": [1.0, 2.0, None, None, 5.0, 5.0],
            "tenure": [3.0, 4.0, 5.0, 6.0, None, 8.0],
        }
    )
    path = tmp_path / "customers.csv"
    frame.to_csv(path, index=False)
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {"columns": ["spend", "visits", "tenure"]},
        "rules": {"max_reject_share": 0.5},
    }
    s = load_settings(overrides=over)
    assert s.features.missing == "model" and s.features.max_missing_share == 0.5
    outcome = validate_input(load_input(s.input, s.features.columns), s)
    # d: 2 of 3 blank (more than half) is rejected as a whole row; one blank is kept.
    assert outcome.rejects[["row_number", "column_name", "rule", "value"]].values.tolist() == [
        [4, "(row)", "too_many_missing", "2 of 3 blank: spend, visits"]
    ]
    features = compute_features(outcome.valid, s)
    assert features.customer_ids.tolist() == ["a", "b", "c", "e", "f"]
    assert features.missing_counts.tolist() == [0, 1, 1, 1, 0]
    assert np.array_equal(np.isnan(features.X_model), np.isnan(features.X_original))
    np.testing.assert_allclose(
        features.scaler.mean, [np.mean([10, 30, 50, 60]), np.mean([1, 2, 5, 5]), np.mean([3, 4, 5, 8])]
    )
    np.testing.assert_allclose(np.nanmean(features.X_model, axis=0), 0.0, atol=1e-12)

    rejecting = load_settings(
        overrides=dict(over, features=dict(over["features"], missing={"spend": "reject"}))
    )
    assert (
        rejecting.features.missing_rule("spend") == "reject"
        and rejecting.features.missing_rule("visits") == "model"
    )
    outcome = validate_input(load_input(rejecting.input, rejecting.features.columns), rejecting)
    got = sorted(map(tuple, outcome.rejects[["row_number", "column_name", "rule"]].values.tolist()))
    assert got == [(2, "spend", "not_nullable"), (4, "spend", "not_nullable")]  # d fails on spend first
    assert compute_features(outcome.valid, rejecting).customer_ids.tolist() == ["a", "c", "e", "f"]

    with pytest.raises(ConfigError, match="max_missing_share"):
        load_settings(overrides=dict(over, features=dict(over["features"], max_missing_share=1.0)))
    with pytest.raises(ConfigError, match="missing"):
        load_settings(overrides=dict(over, features=dict(over["features"], missing="impute")))


def test_a_cell_of_spaces_is_blank_not_a_bad_number(tmp_path):
    """A padded blank field ("b,  ,3") counts as blank, as an empty one does: modelled, or rejected
    by the nullable rule, never "not a number"; a real non-number is still rejected as one."""
    path = tmp_path / "padded.csv"
    path.write_text("id,x,y\na,1.5,2\nb,  ,3\nc,2.5,4\nd,3.5,\ne,4.5,6\nf,\t,7\ng,abc,8\n")
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {"columns": ["x", "y"]},
        "rules": {"max_reject_share": 0.9},
    }
    for rule, kept, rejected in [
        ("model", ["a", "b", "c", "d", "e", "f"], [(7, "x", "coerce_dtype('float64')")]),
        (
            "reject",
            ["a", "c", "e"],
            [
                (2, "x", "not_nullable"),
                (4, "y", "not_nullable"),
                (6, "x", "not_nullable"),
                (7, "x", "coerce_dtype('float64')"),
            ],
        ),
    ]:
        s = load_settings(overrides=dict(over, features=dict(over["features"], missing=rule)))
        outcome = validate_input(load_input(s.input, s.features.columns), s)
        assert outcome.valid.to_frame()["customer_id"].tolist() == kept, rule
        got = sorted(map(tuple, outcome.rejects[["row_number", "column_name", "rule"]].values.tolist()))
        assert got == rejected, rule
    valid = validate_input(
        load_input(s.input, s.features.columns), load_settings(overrides=over)
    ).valid.to_frame()
    assert valid.set_index("customer_id")["x"].isna().to_dict() == {
        "a": False,
        "b": True,
        "c": False,
        "d": False,
        "e": False,
        "f": True,
    }


def test_a_feature_blank_for_everyone_is_refused_by_name():
    table = pd.DataFrame({"customer_id": ["a", "b", "c"], "x": [1.0, 2.0, 3.0], "y": [np.nan] * 3})
    with pytest.raises(Exception, match="feature 'y' is blank for every one of the 3 customers"):
        build_feature_matrix(table, ["x", "y"], ["", ""], ["none", "none"])


def test_trim_heap_returns_freed_memory_on_linux():
    import sys

    from flows.memory import trim_heap

    assert trim_heap() is sys.platform.startswith("linux")


def test_features_without_original_values_read_them_back_from_the_model_matrix():
    """After the fit a run drops X_original (issue 12): the values in original units come back from
    X_model a block at a time, equal to rounding, and the features' ranges stay as measured."""
    from flows.features import build_feature_matrix

    rng = np.random.default_rng(3)
    n = 500
    table = pd.DataFrame(
        {
            "customer_id": [f"c{i:03d}" for i in range(n)],
            "recency_days": rng.integers(0, 400, n).astype(float),
            "monetary": np.round(np.exp(rng.normal(4.0, 1.2, n)), 2),
        }
    )
    table.loc[::9, "monetary"] = np.nan
    features = build_feature_matrix(table, ["recency_days", "monetary"], ["days", "GBP"], ["none", "log1p"])
    lean = features.without_original_values()
    assert lean.X_original is None and lean.X_model is features.X_model
    np.testing.assert_allclose(lean.original_rows(slice(None)), features.X_original, rtol=1e-12)
    at = np.array([7, 0, 9, 499])
    np.testing.assert_allclose(lean.original_rows(at), features.X_original[at], rtol=1e-12)
    assert np.isnan(lean.original_rows(at)[2, 1])  # a blank stays blank
    np.testing.assert_array_equal(lean.value_range[0], np.nanmin(features.X_original, axis=0))
    np.testing.assert_array_equal(lean.value_range[1], np.nanmax(features.X_original, axis=0))
    np.testing.assert_array_equal(lean.missing_counts, np.isnan(features.X_original).sum(axis=1))
    assert lean.n_customers == n and lean.has_missing


@pytest.mark.parametrize("in_order", [True, False])
def test_a_matrix_without_original_values_is_the_same_matrix(in_order):
    """keep_original=False (what a run uses): the same model matrix, scaler, spikes and value
    range as keeping the values; ids in order hand their array over, transformed in place."""
    rng = np.random.default_rng(3)
    n = 300
    ids = np.array([f"c{i:04d}" for i in range(n)])
    X = np.column_stack([rng.poisson(2.0, n).astype(np.float64), rng.lognormal(3.0, 1.0, n)])
    X[5, 1] = np.nan
    if not in_order:
        order = rng.permutation(n)
        ids, X = ids[order], X[order]
    args = (["visits", "spend"], ["", "GBP"], ["log1p", "log1p"])
    kept = feature_matrix(ids, X.copy(), *args)
    given = X.copy()
    lean = feature_matrix(ids, given, *args, keep_original=False)
    assert lean.X_original is None and kept.X_original is not None
    np.testing.assert_array_equal(lean.X_model, kept.X_model)
    np.testing.assert_array_equal(lean.customer_ids, kept.customer_ids)
    for name in ("resolution", "spike_value", "spike_share", "lowest", "highest"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(kept, name))
    np.testing.assert_array_equal(lean.scaler.mean, kept.scaler.mean)
    assert (lean.X_model is given) == in_order
    np.testing.assert_allclose(lean.original_rows(slice(None)), kept.X_original, rtol=1e-12)


@pytest.mark.parametrize("purchase", ["invoice", "day", "line"])
def test_a_log_validated_into_duckdb_gives_the_rfm_of_its_lines_as_a_frame(tmp_path, monkeypatch, purchase):
    """A run validates a log a chunk at a time into DuckDB (TransactionLines) and computes RFM
    there: the same table and counts as the same lines as a DataFrame, for every purchase rule;
    releasing the lines removes their files and keeps their count."""
    rng = np.random.default_rng(5)
    n = 3_000
    log = pd.DataFrame(
        {
            "Inv": [("C" if rng.random() < 0.05 else "") + f"{i // 3}" for i in range(n)],
            "Cust No": np.where(rng.random(n) < 0.03, "", rng.integers(1, 400, n).astype(str)),
            "At": pd.Timestamp("2011-01-01") + pd.to_timedelta(rng.integers(0, 300 * 24 * 60, n), unit="min"),
            "Qty": rng.integers(-3, 20, n),
            "Price": rng.choice([0.5, 1.25, 2.1, 10.0], n),
        }
    )
    csv = tmp_path / "log.csv"
    log.to_csv(csv, index=False)
    s = settings_for(csv)
    monkeypatch.setattr("flows.load.FETCH_ROWS", 2048)  # two blocks: validated and appended one at a time
    loaded = load_input(s.input, [])
    assert sum(1 for _ in loaded.chunks()) == 2
    outcome = validate_input(loaded, s)
    lines = outcome.valid
    assert isinstance(lines, TransactionLines) and len(lines) == n - outcome.n_rejected_rows
    frame = lines.to_frame()
    assert frame.index.is_monotonic_increasing and len(frame) == len(lines)
    as_of = date(2011, 9, 1)
    in_duckdb = rfm_table(lines, as_of, "C", purchase)
    as_frame = rfm_table(frame, as_of, "C", purchase)
    pd.testing.assert_frame_equal(in_duckdb[0], as_frame[0])
    assert in_duckdb[1] == as_frame[1] and in_duckdb[0].shape[0] > 300
    assert default_as_of(lines) == default_as_of(frame)
    folder = lines.path.parent
    assert folder.exists()
    released = outcome.without_rows()
    assert not folder.exists() and len(released.valid) == len(frame)


def test_a_spilled_input_gives_the_frames_of_its_compact_blocks(tmp_path, monkeypatch):
    """A file's rows come back from the temporary DuckDB table straight into frames; those equal
    the frames of the compact blocks (numpy text) an in-memory input holds, blanks included."""
    monkeypatch.setattr("flows.load.FETCH_ROWS", 2048)
    n = 5000
    frame = pd.DataFrame(
        {
            "id": [f" c{i} " if i % 7 else "" for i in range(n)],
            "x": [str(i / 3) if i % 11 else "" for i in range(n)],
            "note": ['é, "quoted"' if i % 5 == 0 else "plain" for i in range(n)],
        }
    )
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    s = load_settings(
        overrides={
            "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
            "features": {"columns": ["x", "note"]},
        }
    )
    loaded = load_input(s.input, s.features.columns)
    assert loaded.spilled is not None
    direct = list(loaded.chunks())
    start, via_blocks = 0, []
    for block in loaded.spilled.blocks():
        size = len(next(iter(block.values())))
        via_blocks.append(loaded._frame(block, loaded.row_numbers[start : start + size]))
        start += size
    assert len(direct) == len(via_blocks) == 3
    for a, b in zip(direct, via_blocks, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert direct[0]["customer_id"].isna().sum() > 0 and direct[0]["x"].isna().sum() > 0


def test_a_customer_table_whose_features_fail_leaves_no_file_behind(tmp_path, monkeypatch):
    """The customers read into files for the features (ids and values in original units) go when
    the features cannot be built, not when the error is dropped (a run's state may keep it)."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = tmp_path / "customers.csv"
    path.write_text("id,x,y\n" + "".join(f"c{i},{i},7\n" for i in range(50)))
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {"columns": ["x", "y"]},
    }
    s = load_settings(overrides=over)
    outcome = validate_input(load_input(s.input, s.features.columns), s)
    with pytest.raises(FeatureError, match="feature 'y' has the same value") as caught:
        compute_features(outcome.valid, s, keep_original=False)
    # The error is kept (with its frames), as a run's failed state keeps it.
    assert caught.traceback and not list(scratch.glob("segment-matrix-*")), "the features' files are removed"
    outcome.without_rows()
    assert not list(scratch.iterdir())


@given(
    skipped=st.sets(st.integers(1, 60), max_size=20),
    n_kept=st.integers(0, 60),
    start=st.integers(0, 70),
    length=st.integers(0, 70),
)
@settings(max_examples=200, deadline=None)
def test_row_numbers_read_by_slice_are_the_rows_not_skipped(skipped, n_kept, start, length):
    """The rows read, numbered a slice at a time (flows.load.RowNumbers): the first n_kept of
    1, 2, ... once the rows the reader set aside are left out."""
    from flows.load import RowNumbers

    skipped = sorted(s for s in skipped if s <= n_kept + len(skipped))
    everything = [i for i in range(1, n_kept + len(skipped) + 1) if i not in set(skipped)][:n_kept]
    numbers = RowNumbers(n_kept, np.asarray(skipped, dtype=np.int64))
    assert len(numbers) == n_kept
    assert numbers[start : start + length].tolist() == everything[start : start + length]
    assert numbers[:].dtype == np.int64
