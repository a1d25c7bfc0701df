"""The model matrix in a file (flows.matrix_file, FeatureMatrix.in_file): what a run reads of it
and what it gives, against the same matrix held in memory, without Prefect."""

from __future__ import annotations

import gc
import pickle
from pathlib import Path

import numpy as np
import pytest
from test_choice import counts_table, matrix, settings_for

from flows import stages
from flows.matrix_file import MatrixFile
from flows.text_file import TextFile, text_objects
from gmm_engine import BlockData, InMemoryData
from reports import ReportData
from schemas.validation import TEXT_DTYPE


def mapped(path: Path) -> bool:
    """Whether this process maps ``path`` now (a mapping's pages count as its memory)."""
    return str(path) in Path("/proc/self/maps").read_text()


def test_a_matrix_file_is_written_from_blocks_that_must_add_up_to_its_shape():
    X = np.random.default_rng(1).normal(size=(25, 2))
    m = MatrixFile.from_blocks((X[i : i + 7] for i in range(0, 25, 7)), (25, 2))
    np.testing.assert_array_equal(m[:], X)
    m.remove()
    before = set(Path(m.path.parent.parent).glob("segment-matrix-*"))
    for blocks, shape in (([X[:10]], (25, 2)), ([X, X[:1]], (25, 2)), ([X[:, :1]], (25, 2))):
        with pytest.raises(ValueError, match=r"rows|shape"):
            MatrixFile.from_blocks(iter(blocks), shape)
    # A failed write leaves no folder behind.
    assert set(Path(m.path.parent.parent).glob("segment-matrix-*")) == before


@pytest.mark.parametrize("block", [1, 3, 1000])
def test_a_text_file_reads_the_ids_that_were_written_whatever_their_text(block):
    """Ids of any text (accents, other scripts, empty, a NUL inside) come back as written, by
    slice, position, mask or one at a time, whatever the blocks they were written in."""
    ids = np.asarray(
        ["C1", "é", "日本", "", "a b", "x\x00y", "Zoë", "42", "0042", "z" * 40] * 3, dtype=TEXT_DTYPE
    )
    texts = TextFile.write(ids, block_rows=block)
    assert len(texts) == 30 and texts.shape == (30,) and texts.dtype == TEXT_DTYPE
    assert texts[:].tolist() == ids.tolist() == texts.tolist() == np.asarray(texts).tolist()
    assert texts[7:23].tolist() == ids[7:23].tolist() and texts[5:5].tolist() == []
    assert texts[[29, 0, 5, 5]].tolist() == ids[[29, 0, 5, 5]].tolist()
    assert texts[ids == "é"].tolist() == ["é"] * 3
    assert texts[5] == "x\x00y" and texts[-1] == "z" * 40
    for held in (texts, ids):  # as DuckDB and Parquet take them, from a file or an array alike
        series = text_objects(held, slice(7, 23))
        assert series.tolist() == ids[7:23].tolist() and series.dtype == "str"
    with pytest.raises(IndexError):
        texts[30]
    plain = TextFile.write(np.asarray([f"C{i}" for i in range(1000)], dtype=TEXT_DTYPE), block_rows=block)
    assert plain[990:].tolist() == [f"C{i}" for i in range(990, 1000)]
    # A block of the file as bytes (what a cluster's worker is sent), read by any slice of it.
    for t, every in ((texts, ids.tolist()), (plain, plain.tolist())):
        sent = pickle.loads(pickle.dumps(t.block(4, 27)))
        assert len(sent) == 23 and sent.strings(0, 23) == every[4:27]
        assert sent.strings(3, 11) == every[7:15] and sent.strings(22, 99) == every[26:27]
        assert sent.strings(5, 5) == [] and text_objects(sent, slice(2, 6)).tolist() == every[6:10]
    assert len(texts.block(30, 40)) == 0
    for t in (texts, plain):
        t.remove()
        assert t.removed and not t.folder.exists()


def test_a_text_file_that_fails_while_written_leaves_nothing_behind(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def blocks():
        yield np.asarray(["a", "b"], dtype=TEXT_DTYPE)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        TextFile.from_blocks(blocks())
    assert not list(tmp_path.iterdir())


def test_a_matrix_file_reads_what_was_written_and_keeps_no_mapping():
    X = np.random.default_rng(0).normal(size=(1001, 3))
    m = MatrixFile.write(X, block_rows=100)
    assert m.shape == (1001, 3) and len(m) == 1001 and m.ndim == 2 and m.dtype == np.float64
    np.testing.assert_array_equal(m[:], X)
    np.testing.assert_array_equal(m[10:20], X[10:20])
    np.testing.assert_array_equal(m[[5, 0, 1000]], X[[5, 0, 1000]])
    np.testing.assert_array_equal(m[3:9, 2], X[3:9, 2])
    block = m[0:10]
    block[:] = 0.0  # a read is a copy: the file does not change
    np.testing.assert_array_equal(m[0:10], X[0:10])
    assert not mapped(m.path)  # plain reads: no page of the file counts as the process's memory
    assert np.load(m.path).shape == (1001, 3)  # a plain .npy file
    folder = m.path.parent
    m.remove()
    assert m.removed and not folder.exists()


@pytest.mark.parametrize("window", [1, 7, 1 << 16])
def test_a_matrix_file_indexes_rows_as_numpy_does(monkeypatch, window):
    """Scattered rows are gathered a window of the file at a time, in any order and shape."""
    import flows.matrix_file as matrix_file

    monkeypatch.setattr(matrix_file, "WINDOW_ROWS", window)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(257, 2))
    m = MatrixFile.write(X, block_rows=50)
    for index in (
        rng.integers(0, 257, 40),
        np.sort(rng.choice(257, 100, replace=False)),
        np.array([[3, -1], [0, 256]]),
        np.array([], dtype=np.int64),
        rng.random(257) < 0.3,
        slice(5, 200, 7),
        slice(None, None, -1),
        slice(250, 300),
        -2,
        (rng.integers(0, 257, 9), 1),
        (slice(10, 12), slice(None)),
        (4, 0),
    ):
        np.testing.assert_array_equal(m[index], X[index])
    for bad in (257, -258, np.array([0, 257]), np.array([1.0]), np.ones(5, dtype=bool), (1, 2, 3)):
        with pytest.raises(IndexError):
            m[bad]


def test_a_matrix_file_is_removed_with_its_object():
    m = MatrixFile.write(np.ones((5, 2)))
    folder = m.path.parent
    del m
    gc.collect()
    assert not folder.exists()


def test_features_in_a_file_give_the_in_memory_selection_choice_and_segments():
    """Past ``model.max_samples`` customers the candidates are fitted on the engine's sample,
    gathered from the file, and every pass over all customers reads it a block at a time: the
    same table, the same model and the same segments as the matrix held in memory."""
    held = matrix(counts_table(n=1500, seed=3))
    in_file = held.in_file()
    assert isinstance(in_file.X_model, MatrixFile) and isinstance(held.X_model, np.ndarray)
    assert in_file.X_original is None and not in_file.has_missing
    assert isinstance(in_file.full_data(), BlockData) and isinstance(held.full_data(), InMemoryData)
    np.testing.assert_array_equal(in_file.X_model[:], held.X_model)
    settings = settings_for(max_samples=600, k_max=4)

    mine = stages.select_segments(in_file, settings)
    theirs = stages.select_segments(held, settings)
    assert [(r["n_components"], r["covariance_type"], r["status"]) for r in mine.table] == [
        (r["n_components"], r["covariance_type"], r["status"]) for r in theirs.table
    ]
    for a, b in zip(mine.table, theirs.table, strict=True):
        assert a["bic"] == pytest.approx(b["bic"], rel=1e-11, nan_ok=True)
    np.testing.assert_allclose(mine.best.means_, theirs.best.means_, rtol=1e-8, atol=1e-10)

    choice = stages.choose(mine, in_file, None, settings)
    segments = stages.fit_segments(choice.model, in_file)
    reference = stages.fit_segments(choice.model, held)
    np.testing.assert_array_equal(segments.labels, reference.labels)
    np.testing.assert_allclose(segments.probability, reference.probability, rtol=1e-12)
    np.testing.assert_allclose(segments.totals.first, reference.totals.first, rtol=1e-10)
    # Probabilities and log-densities are computed when read, a block at a time.
    k = segments.n_segments
    sums = np.bincount(reference.labels, weights=reference.probability, minlength=k)
    np.testing.assert_allclose(segments.probability_sums(), sums, rtol=1e-12)
    np.testing.assert_allclose(segments.log_density, choice.model.score_samples(held.X_model), rtol=1e-12)
    np.testing.assert_array_equal(segments.probability_of(slice(10, 20)), segments.probability[10:20])
    np.testing.assert_allclose(
        segments.memberships.rows(np.array([4, 2, 1499])), reference.memberships.rows(np.array([4, 2, 1499]))
    )
    in_file.release()
    assert in_file.X_model.removed  # type: ignore[union-attr]
    held.release()  # nothing to remove: no error


def test_features_with_blanks_stay_in_memory():
    table = counts_table(n=300, seed=4)
    table.loc[[3, 7], "spend"] = np.nan
    features = matrix(table)
    assert features.has_missing and features.in_file() is features


def test_the_report_draws_a_seeded_sample_when_the_matrix_is_in_a_file(monkeypatch):
    """The figures of customers' values draw a sample of at most REPORT_SAMPLE customers (their
    rows and segments), the sizes and profiles count everyone."""
    monkeypatch.setattr(stages, "REPORT_SAMPLE", 400)
    held = matrix(counts_table(n=1000, seed=5))
    in_file = held.in_file()
    X_sample, rows = stages.report_sample(in_file, seed=2)
    assert rows is not None and rows.size == 400 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(X_sample, held.X_model[rows])
    again, rows_again = stages.report_sample(in_file, seed=2)
    np.testing.assert_array_equal(rows, rows_again)
    X_all, none = stages.report_sample(held, seed=2)
    assert none is None and X_all is held.X_model
    monkeypatch.setattr(stages, "REPORT_SAMPLE", 1000)
    X_whole, none = stages.report_sample(in_file, seed=2)
    assert none is None and X_whole.shape == (1000, 2)


def report_data(X_model: np.ndarray, labels: np.ndarray, sample_rows=None) -> ReportData:
    from reports.profiles import MembershipTotals

    n, d = labels.size, X_model.shape[1]
    P = np.zeros((n, 2))
    P[np.arange(n), labels] = 1.0
    return ReportData(
        run_id="1",
        title="t",
        feature_names=["a", "b"],
        feature_units=["", ""],
        feature_transforms=["none", "none"],
        scaler_mean=np.zeros(d),
        scaler_scale=np.ones(d),
        value_range=(np.full(d, -3.0), np.full(d, 3.0)),
        X_model=X_model,
        covariance_type="full",
        weights=np.array([0.5, 0.5]),
        means=np.array([[-1.0, -1.0], [1.0, 1.0]]),
        covariances=np.stack([np.eye(2), np.eye(2)]),
        segment_ids=[1, 2],
        labels=labels,
        max_probability=np.ones(n),
        totals=MembershipTotals.of(np.zeros((n, d)), P),
        lower_bounds=[-1.0],
        sample_rows=sample_rows,
    )


def test_report_data_checks_a_sample_against_every_customer(tmp_path):
    from reports import render_report

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    rows = np.arange(0, 500, 5)
    X_sample = rng.normal(size=(100, 2)) + np.where(labels[rows, None] == 1, 1.0, -1.0)
    data = report_data(X_sample, labels, rows)
    assert data.n_customers == 500
    np.testing.assert_array_equal(data.drawn_labels, labels[rows])
    page = render_report(data, tmp_path).read_text()
    for count in np.bincount(labels):  # the sizes count every customer, not the sample
        assert f"{count:,}" in page
    from reports import figures

    fig = figures.segments_figure(
        X_sample,
        data.means,
        data.covariances,
        data.drawn_labels,
        [1, 2],
        ["a", "b"],
        max_points=40,
        of_customers=500,
    )
    assert "40 of 500 customers shown" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match=r"ReportData.X_model: expected shape \(n_sampled = 100, 2\)"):
        report_data(X_sample[:99], labels, rows)
    with pytest.raises(ValueError, match=r"ReportData.sample_rows: positions must lie in 0..499"):
        report_data(X_sample, labels, rows + 5)
    with_blank = X_sample.copy()
    with_blank[3, 1] = np.nan
    with pytest.raises(ValueError, match="complete rows only"):
        report_data(with_blank, labels, rows)
    with pytest.raises(ValueError, match=r"expected shape \(n_customers = 500, 2\)"):
        report_data(X_sample, labels)


def test_a_stage_s_peak_memory_is_its_own():
    """The run summary's ``stage_peak_mb`` is each stage's own peak: the process's peak is
    started again from what it holds at each stage's start (Linux)."""
    from flows.pipeline import peak_rss_mb, reset_peak_rss

    big = np.ones(40_000_000)  # 305 MiB, returned to the system when freed (a mapping of its own)
    with_big = peak_rss_mb()
    del big
    assert reset_peak_rss()
    assert peak_rss_mb() < with_big - 250


def test_only_a_matrix_file_s_own_folder_is_removed_as_left_behind(tmp_path):
    """A killed run's journal names its matrix's folder; the next run removes that folder, and
    nothing else a journal might name."""
    from flows.matrix_file import remove_left_behind

    own = tmp_path / "segment-matrix-abc"
    own.mkdir()
    (own / "X_model.npy").write_bytes(b"")
    other = tmp_path / "segment-matrix-def"
    other.mkdir()
    (other / "notes.txt").write_text("not ours")
    stranger = tmp_path / "data"
    stranger.mkdir()
    named = [own, other, stranger, tmp_path / "segment-matrix-gone"]
    assert remove_left_behind(str(p) for p in named) == [str(own)]
    assert not own.exists() and other.exists() and stranger.exists()
