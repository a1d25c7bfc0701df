"""Partitioned Parquet input (issue 12): a folder or a glob of Parquet files read as one table."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from flows.config import load_settings
from flows.load import InputError, load_input
from flows.stages import compute_features, validate_input


def _customers(n: int = 900, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": [f"c{i:04d}" for i in rng.permutation(n)],
            "spend": np.round(rng.gamma(2.0, 50.0, n), 2),
            "visits": rng.integers(1, 9, n).astype(np.int64),
            "region": rng.choice(["north", "south", "west"], n),
        }
    )
    frame.loc[[5, n - 1], "spend"] = -3.0  # rejected by log1p's rule
    return frame


def _settings(path: Path | str, **extra):
    over = {
        "input": {"path": str(path), "kind": "customers", "columns": {"customer_id": "id"}},
        "features": {"columns": ["spend", "visits"], "transforms": {"spend": "log1p"}},
        **extra,
    }
    return load_settings(overrides=over)


def _run(path: Path | str):
    s = _settings(path)
    loaded = load_input(s.input, s.features.columns)
    outcome = validate_input(loaded, s)
    return loaded, outcome, compute_features(outcome.valid, s)


def _export(frame: pd.DataFrame, folder: Path) -> None:
    """What an analyst would run: a DuckDB query exported as Hive partitions by region."""
    con = duckdb.connect()
    con.register("frame", frame)
    con.execute(f"COPY (SELECT * FROM frame) TO '{folder}' (FORMAT parquet, PARTITION_BY (region))")
    con.close()


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.register("frame", frame)
    con.execute(f"COPY (SELECT * FROM frame) TO '{path}' (FORMAT parquet)")
    con.close()


def test_a_folder_or_glob_of_partitions_is_read_as_one_table(tmp_path):
    frame = _customers()
    single = tmp_path / "customers.parquet"
    _write(single, frame)
    folder = tmp_path / "parts"
    _export(frame, folder)
    (folder / "_SUCCESS").write_text("")  # what Spark leaves beside its parts: skipped
    files = sorted(folder.rglob("*.parquet"))
    assert len(files) == 3 and all("region=" in str(f) for f in files)

    _, one_outcome, one = _run(single)
    for path in (folder, f"{folder}/*/*.parquet"):
        loaded, outcome, got = _run(path)
        # The same customers, features and model matrix: rows are put in id order either way.
        np.testing.assert_array_equal(got.customer_ids, one.customer_ids)
        np.testing.assert_array_equal(got.X_model, one.X_model)
        assert outcome.n_rows == one_outcome.n_rows == len(frame)
        assert outcome.n_rejected_rows == one_outcome.n_rejected_rows == 2
        assert [name for name, _ in loaded.partitions] == [str(f) for f in files]
        # Each reject names its partition and its row there.
        for _, reject in outcome.rejects.iterrows():
            row = int(reject["row_number"]) - 1
            spend = duckdb.sql(f"SELECT spend FROM read_parquet('{reject['source']}') LIMIT 1 OFFSET {row}")
            assert spend.fetchall() == [(-3.0,)]
        assert set(outcome.rejects["source"]) <= {str(f) for f in files}


def test_rows_are_numbered_within_their_partition_when_too_many_fail(tmp_path):
    frame = _customers(60)
    frame["spend"] = -1.0  # every row fails
    folder = tmp_path / "parts"
    _export(frame, folder)
    s = _settings(folder)
    loaded = load_input(s.input, s.features.columns)
    first = sorted(folder.rglob("*.parquet"))[0]
    with pytest.raises(ValueError, match=re.escape(f"first: row 1 of {first}, column 'spend'")):
        validate_input(loaded, s)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="visits"), "column 'visits' is missing: other columns than"),
        (lambda f: f.assign(extra=1), "column 'extra' is extra: other columns than"),
        (lambda f: f.assign(visits=f.visits.astype(float)), "column 'visits' is DOUBLE, not BIGINT"),
        (lambda f: f.iloc[0:0], "an empty partition"),
    ],
)
def test_a_bad_partition_stops_the_run_naming_its_file(tmp_path, change, message):
    frame = _customers(300)
    _write(tmp_path / "parts" / "part-0.parquet", frame.iloc[:150])
    bad = tmp_path / "parts" / "part-1.parquet"
    _write(bad, change(frame.iloc[150:]))
    s = _settings(tmp_path / "parts")
    for read in (True, False):  # False: partitions left to a cluster's workers are checked alike
        with pytest.raises(InputError) as caught:
            load_input(s.input, s.features.columns, read_partitions=read)
        text = str(caught.value)
        assert text.startswith(f"{bad}: ") and message in text and "\n" not in text


def test_partitions_left_unread_give_the_rows_read_here_partition_by_partition(tmp_path):
    """What a cluster's worker reads of its partition (flows.load.partition_frames) is what the
    run's process reads of the same rows: the same frames, types and row numbers."""
    from flows.load import partition_frames

    folder = tmp_path / "parts"
    _export(_customers(), folder)
    s = _settings(folder)
    read = load_input(s.input, s.features.columns)
    left = load_input(s.input, s.features.columns, read_partitions=False)
    assert left.n_blocks == 0 and left.n_read == read.n_read == 900
    assert left.partitions == read.partitions and left.dtypes == read.dtypes
    assert left.partition_select is not None and read.partition_select is None
    first, frames = 0, []
    for name, count in left.partitions:
        frames.extend(partition_frames(name, left.partition_select, list(left.dtypes), first))
        first += count
    pd.testing.assert_frame_equal(pd.concat(frames), read.to_frame())


def test_a_missing_or_empty_folder_or_a_glob_without_matches_stops_the_run(tmp_path):
    for path, message in (
        (tmp_path / "nowhere" / "*.parquet", "no file matches"),
        (tmp_path, "the folder holds no Parquet file"),
    ):
        s = _settings(path)
        with pytest.raises(InputError, match=message):
            load_input(s.input, s.features.columns)
    s = _settings(tmp_path / "missing")
    with pytest.raises(InputError, match="input file not found"):
        load_input(s.input, s.features.columns)
    (tmp_path / "notes.csv").write_text("id,spend\n")
    s = _settings(tmp_path / "*")
    with pytest.raises(InputError, match=r"notes\.csv: not a Parquet file by its name"):
        load_input(s.input, s.features.columns)


def test_hidden_names_are_skipped_in_a_folder_but_a_glob_may_name_any_folder(tmp_path):
    from flows.partitions import partition_files

    frame = _customers(40)
    _write(tmp_path / "_exports" / "part-0.parquet", frame)
    _write(tmp_path / "_exports" / "_tmp" / "part-9.parquet", frame)  # a writer's scratch: skipped
    _write(tmp_path / "_exports" / ".part-1.parquet", frame)
    assert partition_files(str(tmp_path / "_exports")) == [str(tmp_path / "_exports" / "part-0.parquet")]
    assert partition_files(str(tmp_path / "_exports" / "*.parquet")) == [
        str(tmp_path / "_exports" / "part-0.parquet")
    ]


def test_a_file_whose_name_looks_like_a_glob_is_that_file(tmp_path):
    from flows.partitions import is_partitioned

    literal = tmp_path / "customers[2024].parquet"
    _write(literal, _customers(40))
    assert not is_partitioned(str(literal)) and is_partitioned(str(tmp_path / "customers[0-9].parquet"))
    loaded, outcome, features = _run(literal)
    assert loaded.partitions == [] and features.n_customers == 40 - outcome.n_rejected_rows
