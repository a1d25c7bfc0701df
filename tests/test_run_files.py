"""Each run's bulk rows as Parquet files beside the results file (flows/run_files.py)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import duckdb
import numpy as np
import pandas as pd
import pytest
from pandera.errors import SchemaError
from test_store import record, start

from flows import store
from flows.run_files import hold_staged, remove_staged, root_for, run_file, run_ids_on_disk, staging_root
from flows.sql_shell import open_results
from flows.store import StoreFileError, fail_run, finish_run, publishing, read_latest_run, results_path


def kinds(db) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_name IN ('assignments', 'rejected_rows', 'runs')"
        ).fetchall()
    return dict(rows)


def test_bulk_rows_live_in_one_file_per_run_and_the_database_holds_views(tmp_path):
    db = tmp_path / "segments.duckdb"
    finish_run(db, start(db), record(n_customers=5))
    fail_run(db, start(db), "validate", "too many rejects", rejects=record().rejects, rows_loaded=4)
    root = tmp_path / "segments.runs"
    assert run_file(root, "assignments", 1).is_file() and run_file(root, "rejected_rows", 2).is_file()
    assert not run_file(root, "assignments", 2).exists(), "a failed run writes no assignments"
    assert kinds(db) == {"assignments": "VIEW", "rejected_rows": "VIEW", "runs": "BASE TABLE"}
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id, count(*) FROM assignments GROUP BY 1").fetchall() == [(1, 5)]
        assert con.execute("SELECT run_id, row_number FROM rejected_rows ORDER BY 1").fetchall() == [
            (1, 4),
            (2, 4),
        ]
        # The file's own types, not whatever Parquet inferred.
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE assignments)").fetchall())
    assert types == {
        "run_id": "BIGINT",
        "customer_id": "VARCHAR",
        "segment_id": "INTEGER",
        "probability": "DOUBLE",
        "probabilities": "DOUBLE[]",
        "log_density": "DOUBLE",
        "held": "BOOLEAN",
        "missing_features": "INTEGER",
    }


def test_a_fresh_database_with_only_a_failed_run_has_empty_typed_views(tmp_path):
    db = tmp_path / "segments.duckdb"
    fail_run(db, start(db), "load", "input file not found")
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM current_assignments").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM rejected_rows").fetchall() == [(0,)]
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE rejected_rows)").fetchall())
    assert types["row_number"] == "BIGINT" and types["value"] == "VARCHAR"


def test_files_of_a_run_that_never_published_are_invisible_then_removed(tmp_path):
    db = tmp_path / "segments.duckdb"
    finish_run(db, start(db), record())
    # A run that wrote its file and died before its publication (what a SIGKILL leaves).
    orphan = run_file(root_for(results_path(db)), "assignments", 9)
    orphan.parent.mkdir(parents=True)
    shutil.copyfile(run_file(root_for(results_path(db)), "assignments", 1), orphan)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM assignments").fetchall() == [(1,)]
    finish_run(db, start(db), record())
    assert run_ids_on_disk(tmp_path / "segments.runs") == {1, 2}


def test_retention_removes_the_files_of_pruned_runs(tmp_path):
    db = tmp_path / "segments.duckdb"
    for _ in range(4):
        finish_run(db, start(db), record(), keep_runs=2)
    assert run_ids_on_disk(tmp_path / "segments.runs") == {3, 4}
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM assignments ORDER BY 1").fetchall() == [(3,), (4,)]


def test_a_moved_results_folder_is_read_by_segment_sql_and_fixed_by_the_next_run(tmp_path):
    first = tmp_path / "a" / "segments.duckdb"
    finish_run(first, start(first), record())
    shutil.move(tmp_path / "a", tmp_path / "b")
    db = tmp_path / "b" / "segments.duckdb"
    with open_results(db) as con:
        assert con.execute("SELECT count(*) FROM current_assignments").fetchall() == [(3,)]
        assert con.execute("SELECT count(*) FROM rejected_rows").fetchall() == [(1,)]
    with (
        duckdb.connect(str(db), read_only=True) as con,
        pytest.raises(duckdb.IOException, match="No files found"),
    ):
        # Plain DuckDB reads the folder the file was published in (documented), until ...
        con.execute("SELECT count(*) FROM current_assignments").fetchall()
    moved = read_latest_run(db).assignments
    assert moved is not None and str(tmp_path) in moved
    with duckdb.connect() as con:  # the next run reads the moved folder
        assert con.execute(f"SELECT count(*) FROM read_parquet('{moved}')").fetchall() == [(3,)]
    finish_run(db, start(db), record())  # ... and publishes it here.
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id, count(*) FROM assignments GROUP BY 1 ORDER BY 1").fetchall() == [
            (1, 3),
            (2, 3),
        ]


def test_a_results_file_from_before_the_runs_folder_is_moved_there_whole(tmp_path):
    db = tmp_path / "segments.duckdb"
    finish_run(db, start(db), record())
    # The layout before: the bulk rows as tables inside the file (no held / missing_features yet).
    with duckdb.connect(str(db)) as con:
        con.execute("DROP VIEW assignments")
        con.execute("DROP VIEW rejected_rows")
        con.execute("DROP TABLE run_files_root")
        con.execute(
            "CREATE TABLE assignments (run_id BIGINT NOT NULL, customer_id VARCHAR NOT NULL, "
            "segment_id INTEGER NOT NULL, probability DOUBLE NOT NULL, probabilities DOUBLE[] NOT NULL, "
            "log_density DOUBLE NOT NULL)"
        )
        con.execute("INSERT INTO assignments VALUES (1, 'old', 2, 0.9, [0.1, 0.9], -3.5)")
        con.execute(
            "CREATE TABLE rejected_rows (run_id BIGINT NOT NULL, source VARCHAR NOT NULL, "
            "row_number BIGINT NOT NULL, column_name VARCHAR NOT NULL, rule VARCHAR NOT NULL, value VARCHAR)"
        )
        con.execute("INSERT INTO rejected_rows VALUES (1, 'in.csv', 7, 'spend', 'not a number', 'abc')")
    shutil.rmtree(tmp_path / "segments.runs")
    finish_run(db, start(db), record())
    assert kinds(db)["assignments"] == "VIEW"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT * FROM assignments WHERE run_id = 1").fetchall() == [
            (1, "old", 2, 0.9, [0.1, 0.9], -3.5, None, None)
        ]
        assert con.execute("SELECT run_id, row_number, value FROM rejected_rows ORDER BY 1").fetchall() == [
            (1, 7, "abc"),
            (2, 4, None),
        ]
    assert run_ids_on_disk(tmp_path / "segments.runs") == {1, 2}


def test_a_publication_that_fails_leaves_no_visible_trace(tmp_path):
    db = tmp_path / "segments.duckdb"
    finish_run(db, start(db), record())
    before = db.read_bytes()
    run = start(db)
    with pytest.raises(RuntimeError, match="disk"), publishing(db) as con:
        from flows.store import _insert_children

        _insert_children(con, root_for(results_path(db)), run.run_id, record())
        raise RuntimeError("disk full")
    assert db.read_bytes() == before
    assert run_ids_on_disk(tmp_path / "segments.runs") == {1, 2}, "its file was written"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM assignments").fetchall() == [(1,)]
    finish_run(db, start(db), record(n_customers=5))  # run 2 again: nothing of it was published
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id, count(*) FROM assignments GROUP BY 1 ORDER BY 1").fetchall() == [
            (1, 3),
            (2, 5),
        ]


def test_a_large_run_is_written_in_parts_and_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "ASSIGNMENT_CHUNK_ROWS", 2)
    db = tmp_path / "segments.duckdb"
    finish_run(db, start(db), record(n_customers=5))
    parts = sorted(p.name for p in run_file(root_for(results_path(db)), "assignments", 1).parent.iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    with duckdb.connect(str(db), read_only=True) as con:
        ids = con.execute("SELECT customer_id FROM current_assignments ORDER BY 1").fetchall()
    assert [i[0] for i in ids] == ["c0", "c1", "c2", "c3", "c4"]


def test_assignment_rows_are_built_and_validated_a_chunk_at_a_time():
    from flows.features import build_feature_matrix
    from flows.segments import AssignmentRows, assign_segments, assignment_table
    from gmm_engine import GaussianMixture

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(3, 2)), 5.0 + rng.normal(size=(4, 2))])
    table = pd.DataFrame({"customer_id": [f"c{i}" for i in range(7)], "a": X[:, 0], "b": X[:, 1]})
    features = build_feature_matrix(table, ["a", "b"], ["", ""], ["none", "none"])
    model = GaussianMixture(2, covariance_type="spherical", random_state=0).fit(features.X_model)
    assigned = assign_segments(model, features)
    result = replace(assigned, held=assigned.labels == 0)
    ids = np.array([f"c{i}" for i in range(7)], dtype=object)
    rows = AssignmentRows(result, ids, np.arange(7) % 2)
    chunks = list(rows.chunks(3))
    assert [len(c) for c in chunks] == [3, 3, 1] and len(rows) == 7
    pd.testing.assert_frame_equal(
        pd.concat(chunks, ignore_index=True), assignment_table(result, ids, np.arange(7) % 2)
    )
    # A customer so far from every segment that no probability can be computed (they are
    # computed when read): the chunk holding it fails the Assignments schema.
    far = np.r_[features.X_model[:6], [[1e200, 1e200]]]
    broken = AssignmentRows(replace(result, memberships=replace(result.memberships, X_model=far)), ids)
    chunks_of_broken = broken.chunks(4)
    assert len(next(chunks_of_broken)) == 4  # the bad row is in the second chunk
    with pytest.raises(SchemaError, match="'probability' contains null"), np.errstate(invalid="ignore"):
        next(chunks_of_broken)


def test_a_deleted_runs_folder_loses_the_customer_comparison_not_the_run(tmp_path):
    db = tmp_path / "segments.duckdb"
    finish_run(db, start(db), record())
    shutil.rmtree(tmp_path / "segments.runs")
    said: list[str] = []
    stored = read_latest_run(db, said.append)
    assert stored is not None and stored.run_id == 1 and len(stored.segments) == 2
    assert stored.assignments is None  # its customers' moves are not measured; the model is kept
    assert len(said) == 1 and "run 1's assignments cannot be read" in said[0] and "segments.runs/" in said[0]


def test_a_results_path_with_glob_characters_is_refused_before_anything_is_written(tmp_path):
    db = tmp_path / "out[1]" / "segments.duckdb"
    with pytest.raises(StoreFileError, match=r"glob character"):
        start(db)  # a run stops when it starts, before any work
    assert not db.parent.exists()


def test_the_stored_runs_customers_are_joined_with_this_runs_by_their_text(tmp_path, monkeypatch):
    """The previous run's customers stay in its Parquet files and are joined with this run's ids
    in DuckDB: id for id, whatever the text (accents, spaces, digits, a palindrome), in this
    run's order, however many ids are sent to DuckDB at once."""
    from flows import continuity

    ids = ["c0", "Zoë 7", " padded ", "12321", "x" * 40, "北京-1", "0042"]
    frame = record(n_customers=len(ids)).assignments.assign(customer_id=ids)
    db = tmp_path / "segments.duckdb"
    finish_run(db, start(db), record(n_customers=len(ids), assignments=frame))
    stored = read_latest_run(db).assignments
    assert stored is not None

    current = np.array(["0042", "new", "北京-1", "c0", "12321", " padded ", "Zoë 7", "x" * 40, "42", "C0"])
    segments, (ip, ic) = continuity.join_customers(stored, current)
    assert ic.tolist() == [0, 2, 3, 4, 5, 6, 7]  # everyone but "new", "42" and "C0"
    with duckdb.connect() as con:
        by_id = dict(con.execute(f"SELECT customer_id, segment_id FROM read_parquet('{stored}')").fetchall())
    assert [int(s) for s in segments[ip]] == [by_id[current[i]] for i in ic]
    # 4 bytes a customer for each array a run holds (every value fits).
    assert segments.dtype == ip.dtype == ic.dtype == np.int32
    monkeypatch.setattr(continuity, "_JOIN_BLOCK", 3)
    again, (ip3, ic3) = continuity.join_customers(stored, current)
    assert np.array_equal(ip3, ip) and np.array_equal(ic3, ic) and np.array_equal(again, segments)
    nobody = continuity.join_customers(stored, np.array([], dtype=object))
    assert nobody[1][0].size == 0 and nobody[1][1].size == 0 and nobody[0].size == len(ids)


def test_a_customer_repeated_in_the_stored_run_stops_the_comparison_in_one_line(tmp_path):
    from flows import continuity

    files = tmp_path / "assignments"
    files.mkdir()
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT * FROM (VALUES ('a', 1), ('b', 2), ('a', 2)) t(customer_id, segment_id)) "
            f"TO '{files / 'part-00000.parquet'}' (FORMAT parquet)"
        )
    with pytest.raises(ValueError, match="a customer id is repeated in the previous run's assignments"):
        continuity.join_customers(str(files / "*.parquet"), np.array(["b", "a"], dtype=object))


def test_previous_files_removed_before_the_join_leave_nobody_in_both_runs(tmp_path):
    """The store found the previous run's files, then they went (a hand-deleted folder): the
    run goes on without its customers' moves, and says so."""
    from flows.continuity import PreviousRun
    from flows.features import build_feature_matrix

    table = pd.DataFrame({"customer_id": ["a", "b", "c"], "x": [1.0, 2.0, 4.0]})
    features = build_feature_matrix(table, ["x"], [""], ["none"])
    previous = PreviousRun(
        run_id=7,
        model=None,
        max_id_used=3,
        assignments=str(tmp_path / "run_id=7" / "*.parquet"),  # type: ignore[arg-type]
    )
    said: list[str] = []
    aligned = previous.aligned_with(features, said.append)
    assert aligned.segment_ids is not None and aligned.segment_ids.size == 0
    assert aligned.alignment is not None and aligned.alignment[1].size == 0
    assert len(said) == 1 and said[0].startswith("run 7's assignments cannot be read (")


def test_a_publication_clears_what_failed_runs_staged_but_not_what_this_run_still_reads(tmp_path):
    """A killed run's staged parts go with the next publication; the rows a cluster's workers
    validated for the run publishing (held) stay until the run removes them, and the staging
    folder goes with the last of them."""
    db = tmp_path / "segments.duckdb"
    staging = staging_root(root_for(results_path(db)))
    stale = run_file(staging, "assignments", 7)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a killed run")
    (staging / "validation-old").mkdir()
    held = staging / "validation-new"
    held.mkdir()
    (held / "p00000-0.parquet").write_bytes(b"rows")
    hold_staged(held)
    try:
        finish_run(db, start(db), record(n_customers=5))
        assert sorted(p.name for p in staging.iterdir()) == ["validation-new"]
        assert (held / "p00000-0.parquet").read_bytes() == b"rows"
    finally:
        remove_staged(held)
    assert not staging.exists()
    held.mkdir(parents=True)  # the same name, no longer held: what a killed run left
    finish_run(db, start(db), record(n_customers=5))
    assert not staging.exists()


def test_the_workers_validate_into_the_staging_folder_of_the_file_a_link_points_to(tmp_path):
    """A results path that is a symbolic link: the workers' validated rows go where the
    publication clears what a killed run left, beside the file the link points to."""
    from flows.partition_validation import staging_folder

    (tmp_path / "real").mkdir()
    finish_run(tmp_path / "real" / "segments.duckdb", start(tmp_path / "real" / "segments.duckdb"), record())
    link = tmp_path / "segments.duckdb"
    link.symlink_to(tmp_path / "real" / "segments.duckdb")
    assert staging_folder(link) == tmp_path.resolve() / "real" / "segments.runs" / ".staging"
    assert staging_folder(link) == staging_root(root_for(results_path(link)))
