"""Tests of the report layer: figure contents, PNG files and the escaped index.html."""

from __future__ import annotations

import dataclasses
import math
import re

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Rectangle

from reports import ReportData, figure_files, figures, render_report
from reports import drift as figures_drift
from reports.profiles import MembershipTotals, segment_profiles, to_original_units, value_range
from reports.style import segment_colors

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 40
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _truth_covariances(rng: np.random.Generator, covariance_type: str, k: int, d: int) -> np.ndarray:
    """Full (k, d, d) matrices with the structure of the covariance type."""
    if covariance_type == "full":
        A = rng.normal(scale=0.3, size=(k, d, d))
        return A @ A.transpose(0, 2, 1) + 0.05 * np.eye(d)
    if covariance_type == "tied":
        A = rng.normal(scale=0.3, size=(d, d))
        return np.repeat((A @ A.T + 0.05 * np.eye(d))[None], k, axis=0)
    if covariance_type == "diag":
        return np.stack([np.diag(v) for v in rng.uniform(0.05, 0.3, size=(k, d))])
    return np.stack([s * np.eye(d) for s in rng.uniform(0.05, 0.3, size=k)])


def _selection_rows(k_true: int, covariance_type: str) -> list[dict]:
    rows = []
    for cov in COVARIANCE_TYPES:
        for k in range(1, 5):
            value = 1000.0 + 40.0 * (k - k_true) ** 2 + 10.0 * COVARIANCE_TYPES.index(cov)
            status = "ok"
            if (cov, k) == ("full", 4):
                status = "degenerate"
            if (cov, k) == ("spherical", 4):
                status = "failed"
                value = math.nan
            rows.append(
                {
                    "n_components": k,
                    "covariance_type": cov,
                    "n_parameters": 3 * k,
                    "bic": value,
                    "aic": value - 25.0,
                    "icl": value + 15.0 if k > 1 else value,
                    "status": status,
                    "reason": "" if status == "ok" else "a component collapsed",
                    "selected": (cov, k) == (covariance_type, k_true),
                }
            )
    return rows


def true_posterior(X_model, weights, means, covariances) -> np.ndarray:
    """Posterior probabilities from the true parameters, as the engine would report them."""
    n, d = X_model.shape
    chol = np.linalg.cholesky(covariances)
    log_density = np.empty((n, len(weights)))
    for c in range(len(weights)):
        diff = np.linalg.solve(chol[c], (X_model - means[c]).T)
        log_det = 2.0 * np.log(np.diag(chol[c])).sum()
        log_density[:, c] = (
            np.log(weights[c]) - 0.5 * (diff**2).sum(axis=0) - 0.5 * log_det - 0.5 * d * np.log(2 * np.pi)
        )
    posterior = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    return posterior / posterior.sum(axis=1, keepdims=True)


def original_of(data: ReportData) -> np.ndarray:
    """The customers' values in original units, from ``data.X_model``."""
    return to_original_units(data.X_model, data.scaler_mean, data.scaler_scale, data.feature_transforms)


def posterior_of(data: ReportData) -> np.ndarray:
    """The memberships make_report_data summed into ``data.totals``."""
    return true_posterior(data.X_model, data.weights, data.means, data.covariances)


def make_report_data(
    d: int,
    covariance_type: str = "full",
    *,
    n: int = 240,
    k: int = 3,
    seed: int = 0,
    segment_ids: list[int] | None = None,
    feature_names: list[str] | None = None,
    feature_units: list[str] | None = None,
    summary: dict[str, str] | None = None,
) -> ReportData:
    """ReportData built from generated blobs and their true parameters (no model fit)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(scale=2.0, size=(k, d))
    covariances = _truth_covariances(rng, covariance_type, k, d)
    labels = rng.choice(k, size=n, p=weights)
    chol = np.linalg.cholesky(covariances)
    X_model = means[labels] + np.einsum("nij,nj->ni", chol[labels], rng.normal(size=(n, d)))

    posterior = true_posterior(X_model, weights, means, covariances)

    transforms = ["none" if j % 2 == 0 else "log1p" for j in range(d)]
    scaler_mean = np.array([30.0 if t == "none" else 5.0 for t in transforms])
    scaler_scale = np.array([10.0 if t == "none" else 0.8 for t in transforms])
    transformed = X_model * scaler_scale + scaler_mean
    X_original = np.where(np.array(transforms) == "log1p", np.expm1(transformed), transformed)
    return ReportData(
        run_id="run-7",
        title="Customer segments, run 7",
        feature_names=feature_names or [f"feature_{chr(97 + j)}" for j in range(d)],
        feature_units=feature_units or ["days" if t == "none" else "GBP" for t in transforms],
        feature_transforms=transforms,
        scaler_mean=scaler_mean,
        scaler_scale=scaler_scale,
        value_range=value_range(X_original),
        X_model=X_model,
        covariance_type=covariance_type,
        weights=weights,
        means=means,
        covariances=covariances,
        segment_ids=segment_ids or list(range(1, k + 1)),
        labels=posterior.argmax(axis=1),
        max_probability=posterior.max(axis=1),
        totals=MembershipTotals.of(X_original, posterior),
        lower_bounds=list(-3.0 + 0.5 * (1 - np.exp(-np.arange(1, 13) / 3.0))),
        selection=_selection_rows(k, covariance_type),
        criterion="bic",
        summary=summary or {"run id": "run-7", "customers": str(n)},
    )


def profiles_of(data: ReportData):
    return segment_profiles(
        data.value_range,
        data.totals,
        data.labels,
        data.means,
        data.covariances,
        data.scaler_mean,
        data.scaler_scale,
        data.feature_transforms,
        data.segment_ids,
    )


def _read_png(path) -> np.ndarray:
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    return matplotlib.image.imread(path)


# --------------------------------------------------------------------------- whole report
# Rendering costs ~2 s per report, so d = 1, 2, 4 and the four covariance types share four cases;
# the segments tests below draw all four covariance types without saving.
@pytest.mark.parametrize(("d", "covariance_type"), [(1, "spherical"), (2, "diag"), (4, "full"), (4, "tied")])
def test_render_report_writes_every_png_and_links_them(tmp_path, d, covariance_type):
    data = make_report_data(d, covariance_type, seed=d)
    out = tmp_path / "report"
    figures_before = plt.get_fignums()

    index = render_report(data, out, dpi=DPI)

    assert index == out / "index.html"
    expected = figure_files(d)
    assert len(expected) == 6 + d
    assert sorted(p.name for p in out.iterdir()) == sorted(expected + ["index.html"])
    for name in expected:
        image = _read_png(out / name)
        height, width = image.shape[:2]
        # Every figure is between 3 and 16 inches wide and 1.5 and 12 inches high.
        assert 3 * DPI <= width <= 16 * DPI, (name, width)
        assert 1.5 * DPI <= height <= 12 * DPI, (name, height)
        assert image[..., :3].std() > 0.01, f"{name} is blank"
    page = index.read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert sorted(sources) == sorted(expected)
    assert "http://" not in page and "https://" not in page
    assert plt.get_fignums() == figures_before


def test_index_html_escapes_hostile_names_and_summary(tmp_path):
    hostile = "<script>alert(1)</script>"
    data = make_report_data(
        2,
        "diag",
        feature_names=[hostile, "price $ paid"],
        feature_units=["days", "$"],
        summary={"input": 'orders & <returns> "2011"', "note": '&<>"'},
    )

    page = render_report(data, tmp_path, dpi=DPI).read_text(encoding="utf-8")

    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;&lt;&gt;&#34;" in page  # markupsafe writes " as &#34;
    assert "orders &amp; &lt;returns&gt; &#34;2011&#34;" in page
    assert "<script" not in page.lower()
    # File names never carry a feature name.
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(figure_files(2))


def test_render_report_handles_an_empty_segment_and_missing_history(tmp_path):
    data = make_report_data(3, "full")
    nobody_in_third = np.where(data.labels == 2, 0, data.labels)
    data = ReportData(**{**data.__dict__, "labels": nobody_in_third, "lower_bounds": [], "selection": []})

    page = render_report(data, tmp_path, dpi=DPI).read_text(encoding="utf-8")

    for name in figure_files(3):
        assert _read_png(tmp_path / name).size > 0
    assert "No model-selection table was recorded." in page
    assert '<td class="text">3</td><td>0</td><td>0.0%</td>' in page
    profiles = profiles_of(data)
    fig = figures.profiles_figure(profiles, data.feature_names, data.feature_units)
    assert "no\ncustomers" in _texts(fig)


def test_render_report_rejects_anything_but_report_data(tmp_path):
    with pytest.raises(TypeError, match="ReportData"):
        render_report({"run_id": "x"}, tmp_path)


# --------------------------------------------------------------------------- ReportData checks
def test_report_data_names_the_field_with_a_wrong_shape():
    good = make_report_data(2, "full")
    with pytest.raises(ValueError, match=r"ReportData\.means: expected shape \(3, 2\)"):
        ReportData(**{**good.__dict__, "means": good.means[:, :1]})
    with pytest.raises(ValueError, match=r"ReportData\.labels: component indices must lie in 0"):
        ReportData(**{**good.__dict__, "labels": np.full(len(good.labels), 3)})
    with pytest.raises(ValueError, match=r"ReportData\.weights: must be non-negative and sum to 1"):
        ReportData(**{**good.__dict__, "weights": good.weights * 2})
    with pytest.raises(ValueError, match=r"ReportData\.feature_transforms: entry 1 is 'log'"):
        ReportData(**{**good.__dict__, "feature_transforms": ["none", "log"]})


def test_report_data_checks_every_block_of_customers(monkeypatch):
    """The per-customer checks run a block of rows at a time: a bad row in a later block counts."""
    import reports.report_data as report_data

    good = make_report_data(2, "full")
    monkeypatch.setattr(report_data, "_CHECK_ROWS", 7)
    last = len(good.labels) - 1
    short = posterior_of(good)
    short[last] *= 0.5
    bad = MembershipTotals.of(original_of(good), short)
    with pytest.raises(ValueError, match=r"ReportData\.totals: memberships must be non-negative and sum"):
        ReportData(**{**good.__dict__, "totals": bad})
    blank = good.X_model.copy()
    blank[last] = np.nan
    with pytest.raises(ValueError, match=r"ReportData\.X_model: every customer needs at least one feature"):
        ReportData(**{**good.__dict__, "X_model": blank})
    ReportData(**good.__dict__)  # the good data still pass


def test_report_data_accepts_every_transform_the_pipeline_applies():
    from flows.config import TRANSFORMS

    good = make_report_data(2, "full")
    for name in TRANSFORMS:
        data = ReportData(**{**good.__dict__, "feature_transforms": [name, name]})
        assert data.feature_transforms == [name, name]
        # The profiles map the model's centres back through that transform.
        centre = profiles_of(data).centre
        back = good.means * good.scaler_scale + good.scaler_mean
        np.testing.assert_allclose(centre, np.expm1(back) if name == "log1p" else back)
    with pytest.raises(ValueError, match=r"feature_transforms: entry 0 is 'sqrt'"):
        ReportData(**{**good.__dict__, "feature_transforms": ["sqrt", "none"]})


# --------------------------------------------------------------------------- single figures
def _texts(fig: Figure) -> str:
    return " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_criteria_figure_draws_one_line_per_covariance_type_and_marks_the_choice():
    rows = _selection_rows(3, "tied")
    fig = figures.criteria_figure(rows, "aic")

    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["BIC", "AIC (used for the choice)", "ICL"]
    for ax, name in zip(fig.axes, ("bic", "aic", "icl"), strict=True):
        assert len(ax.lines) == len(COVARIANCE_TYPES)
        assert ax.get_xlabel() == "number of segments k"
        assert ax.get_ylabel() == f"{name.upper()} (lower is better)"
        by_type = {line.get_label(): line for line in ax.lines}
        # Lines hold accepted candidates only: degenerate full k=4 and failed spherical k=4 are off.
        assert list(by_type["full"].get_xdata()) == [1, 2, 3]
        assert list(by_type["spherical"].get_xdata()) == [1, 2, 3]
        assert list(by_type["tied"].get_xdata()) == [1, 2, 3, 4]
        points = np.concatenate([c.get_offsets() for c in ax.collections])
        chosen = next(r for r in rows if r["selected"])
        assert [3, chosen[name]] in points.tolist()
        # Set-aside candidates are listed, not drawn, and do not set the axis.
        degenerate = next(r for r in rows if r["status"] == "degenerate")
        assert [4, degenerate[name]] not in points.tolist()
        accepted = [r[name] for r in rows if r["status"] == "ok"]
        low, high = ax.get_ylim()
        assert low <= min(accepted) and max(accepted) <= high
    assert "lower is better" in fig.get_suptitle()
    assert "chosen: k=3, tied" in _texts(fig)
    assert "set aside as degenerate or failed, not drawn: k=4 full, k=4 spherical" in _texts(fig)


def test_a_collapsed_candidates_score_does_not_stretch_the_criteria_axis():
    rows = _selection_rows(3, "full")
    far = next(r for r in rows if r["status"] == "degenerate")
    far.update(bic=-300_000.0, aic=-300_000.0, icl=-300_000.0)
    fig = figures.criteria_figure(rows, "bic")
    accepted = [r["bic"] for r in rows if r["status"] == "ok"]
    low, high = fig.axes[0].get_ylim()
    assert low > -300_000.0 and high - low < 2 * (max(accepted) - min(accepted)) + 1


def test_criteria_figure_accepts_none_values_and_an_empty_table():
    rows = _selection_rows(2, "full")
    rows[0]["icl"] = None
    fig = figures.criteria_figure(rows, "bic")
    assert list(fig.axes[2].lines[0].get_xdata()) == [2, 3]
    empty = figures.criteria_figure([], "bic")
    assert "no model-selection table" in _texts(empty)


def test_principal_axes_match_scikit_learn_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    centre, W, explained = figures.principal_axes(X)
    reference = PCA(n_components=2).fit(X)

    np.testing.assert_allclose(centre, reference.mean_)
    np.testing.assert_allclose(explained, reference.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(np.abs(W.T @ reference.components_.T), np.eye(2), atol=1e-8)
    assert np.all(W[np.argmax(np.abs(W), axis=0), [0, 1]] > 0)
    centre_flipped, W_flipped, _ = figures.principal_axes(X * np.array([1, -1, 1, 1]))
    assert np.all(W_flipped[np.argmax(np.abs(W_flipped), axis=0), [0, 1]] > 0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_segments_figure_projects_means_and_covariances_with_pca(covariance_type):
    data = make_report_data(4, covariance_type, seed=5)
    fig = figures.segments_figure(
        data.X_model,
        data.means,
        data.covariances,
        data.labels,
        data.segment_ids,
        data.feature_names,
        max_points=100,
    )

    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("PC1 (") and "% of variance" in ax.get_xlabel()
    assert ax.get_ylabel().startswith("PC2 (")
    assert "principal components" in ax.get_title()
    assert "100 of 240 customers shown" in ax.get_title()
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2 * data.n_segments
    centre, W, _ = figures.principal_axes(data.X_model)
    for c in range(data.n_segments):
        projected = W.T @ data.covariances[c] @ W
        one_sigma = ellipses[2 * c]
        np.testing.assert_allclose(one_sigma.center, (data.means[c] - centre) @ W)
        np.testing.assert_allclose(
            sorted([one_sigma.width, one_sigma.height]), 2 * np.sqrt(np.linalg.eigvalsh(projected)), rtol=1e-9
        )
        np.testing.assert_allclose(ellipses[2 * c + 1].width, 2 * one_sigma.width)
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == ["segment 1", "segment 2", "segment 3"]


def test_segments_figure_uses_feature_names_for_two_features_and_strips_for_one():
    two = make_report_data(2, "tied")
    fig = figures.segments_figure(
        two.X_model, two.means, two.covariances, two.labels, two.segment_ids, ["recency_days", "monetary"]
    )
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("recency_days (standardised)", "monetary (standardised)")
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    np.testing.assert_allclose(ellipses[0].center, two.means[0])

    one = make_report_data(1, "spherical", segment_ids=[7, 2, 5])
    fig = figures.segments_figure(
        one.X_model, one.means, one.covariances, one.labels, one.segment_ids, ["recency_days"]
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "recency_days (standardised)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["segment 2", "segment 5", "segment 7"]


def test_feature_density_figure_maps_the_marginal_density_to_the_transformed_space():
    rng = np.random.default_rng(1)
    x_model = rng.normal(0.5, 2.0, size=5000)
    fig = figures.feature_density_figure(
        x_model,
        weights=np.array([1.0]),
        component_means=np.array([0.5]),
        component_variances=np.array([4.0]),
        scaler_mean=6.0,
        scaler_scale=0.5,
        segment_ids=[1],
        name="monetary",
        unit="GBP",
        transform="log1p",
    )

    (ax,) = fig.axes
    assert ax.get_xlabel() == "log(1 + monetary) [GBP]"
    assert "monetary" in ax.get_title()
    assert len(ax.lines) == 2
    total = ax.lines[-1]
    x, y = total.get_xdata(), total.get_ydata()
    # N(0.5, 4) in model space is N(0.5 * 0.5 + 6, (2 * 0.5)^2) before standardisation.
    assert x[np.argmax(y)] == pytest.approx(6.25, abs=0.02)
    assert y.max() == pytest.approx(1.0 / math.sqrt(2.0 * math.pi), rel=1e-3)
    (top,) = ax.child_axes
    assert top.get_xlabel() == "monetary [GBP]"


def test_dollar_signs_in_names_are_shown_literally_not_as_mathtext():
    fig = figures.feature_density_figure(
        np.linspace(-2, 2, 200),
        weights=np.array([1.0]),
        component_means=np.array([0.0]),
        component_variances=np.array([1.0]),
        scaler_mean=3.0,
        scaler_scale=1.0,
        segment_ids=[1],
        name="price $ paid",
        unit="$",
        transform="log1p",
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == r"log(1 + price \$ paid) [\$]"
    assert ax.child_axes[0].get_xlabel() == r"price \$ paid [\$]"
    FigureCanvasAgg(fig).draw()  # unescaped, mathtext would swallow the text between the dollars


def test_feature_density_figure_draws_weighted_components_that_sum_to_the_mixture():
    data = make_report_data(2, "full", seed=2)
    fig = figures.feature_density_figure(
        data.X_model[:, 0],
        weights=data.weights,
        component_means=data.means[:, 0],
        component_variances=data.covariances[:, 0, 0],
        scaler_mean=30.0,
        scaler_scale=10.0,
        segment_ids=data.segment_ids,
        name="recency_days",
        unit="days",
        transform="none",
    )

    ax = fig.axes[0]
    assert ax.get_xlabel() == "recency_days [days]"
    assert ax.child_axes == []
    assert len(ax.lines) == data.n_segments + 1
    components = np.array([line.get_ydata() for line in ax.lines[:-1]])
    np.testing.assert_allclose(components.sum(axis=0), ax.lines[-1].get_ydata())
    # The histogram is a density: its area is the share of customers inside the shown range.
    (histogram,) = ax.patches
    heights, edges, _baseline = histogram.get_data()
    assert np.sum(heights * np.diff(edges)) == pytest.approx(1.0, abs=0.01)


def test_histogram_edges_give_each_discrete_value_its_own_bin():
    invoices = np.log1p(np.repeat([1, 2, 3, 4, 5, 8, 13], [50, 20, 10, 6, 4, 2, 1]))
    edges = figures.histogram_edges(invoices, invoices.min(), invoices.max(), bins=60)
    counts, _ = np.histogram(invoices, bins=edges)
    assert np.all(np.diff(edges) > 0)
    assert list(counts[counts > 0]) == [50, 20, 10, 6, 4, 2, 1]
    continuous = np.random.default_rng(0).normal(size=5000)
    edges = figures.histogram_edges(continuous, -2.0, 2.0, bins=40)
    np.testing.assert_allclose(edges, np.linspace(-2.0, 2.0, 41))


def test_histogram_edges_of_many_customers_depend_only_on_their_distinct_values():
    """Past the sample size the continuous case is told from a sample; the edges are still those
    of the distinct values, whether 40 of them or some 10^5."""
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 41, size=300_000).astype(np.float64)  # 40 distinct values
    edges = figures.histogram_edges(counts, 1.0, 40.0, bins=60)
    np.testing.assert_array_equal(edges, figures.histogram_edges(np.unique(counts), 1.0, 40.0, bins=60))
    assert edges.size == 41  # one bin per value, not 60 equal ones
    spend = rng.gamma(2.0, 30.0, size=300_000)
    np.testing.assert_array_equal(
        figures.histogram_edges(spend, 1.0, 200.0, bins=60), np.linspace(1.0, 200.0, 61)
    )


def test_membership_figure_annotates_the_share_below_the_threshold():
    p = np.array([0.45, 0.6, 0.85, 0.95, 0.99, 1.0, 1.0, 0.5])
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    fig = figures.membership_figure(p, labels, [1, 2])

    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 1.0)
    assert "50.0% of customers\nbelow 0.9" in _texts(fig)
    assert [line.get_xdata()[0] for line in ax.lines] == [0.9]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["segment 1 (67% below 0.9)", "segment 2 (40% below 0.9)"]
    assert ax.get_xlabel().startswith("probability of the assigned segment")
    assert ax.get_ylabel() == "customers"


def test_membership_figure_bars_are_numpys_histogram_of_each_segment():
    # Counted block by block (more customers than one block), the stacked bars must be exactly
    # np.histogram of each segment's probabilities, edges and the closed last bin included.
    rng = np.random.default_rng(5)
    n = figures._BLOCK_ROWS + 7_001
    labels = rng.integers(0, 3, size=n)
    p = np.round(rng.uniform(0.3, 1.0, size=n), 3)
    p[:50] = 1.0
    p[50:100] = 0.5  # on an interior edge
    fig = figures.membership_figure(p, labels, [2, 9, 4])

    edges = np.linspace(0.0, 1.0, 41)
    ax = fig.axes[0]
    bars = [b for b in ax.patches if isinstance(b, Rectangle)]
    heights = np.array([b.get_height() for b in bars]).reshape(3, 40)
    # Stacked in id order (2, 4, 9): component 0, then 2, then 1.
    for row, c in enumerate([0, 2, 1]):
        expected, _ = np.histogram(p[labels == c], bins=edges)
        np.testing.assert_array_equal(heights[row], expected)
    assert f"{np.mean(p < 0.9):.1%} of customers\nbelow 0.9" in _texts(fig)


def test_principal_axes_by_blocks_equal_the_whole_matrix_formula():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(2 * figures._BLOCK_ROWS + 11, 3)) @ rng.normal(size=(3, 3)) + 5.0
    centre, W, explained = figures.principal_axes(X)
    scatter = (X - X.mean(axis=0)).T @ (X - X.mean(axis=0)) / (len(X) - 1)
    variances, vectors = np.linalg.eigh(scatter)
    top = np.argsort(variances)[::-1][:2]
    np.testing.assert_allclose(explained, variances[top] / variances.sum(), rtol=1e-9)
    np.testing.assert_allclose(np.abs(W.T @ vectors[:, top]), np.eye(2), atol=1e-9)


def test_sizes_and_profiles_figures_show_the_grouped_data():
    data = make_report_data(4, "diag", segment_ids=[3, 1, 2], seed=4)
    profiles = profiles_of(data)

    sizes = figures.sizes_figure(profiles.counts, data.segment_ids)
    ax = sizes.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    counts_by_id = {s: int(np.sum(data.labels == c)) for c, s in enumerate(data.segment_ids)}
    assert [b.get_height() for b in bars] == [counts_by_id[s] for s in (1, 2, 3)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    share = counts_by_id[1] / len(data.labels)
    assert f"{counts_by_id[1]:,}\n({share:.1%})" in _texts(sizes)

    fig = figures.profiles_figure(profiles, data.feature_names, data.feature_units)
    assert len(fig.axes) == data.n_features
    for j, ax in enumerate(fig.axes):
        assert ax.get_title() == data.feature_names[j]
        assert ax.get_ylabel() == f"{data.feature_names[j]} [{data.feature_units[j]}]"
        # Bars are the segments' centres: the model means mapped back to original units.
        heights = [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]
        centre = data.means[:, j] * data.scaler_scale[j] + data.scaler_mean[j]
        if data.feature_transforms[j] == "log1p":
            centre = np.expm1(centre)
        np.testing.assert_allclose(heights, [centre[data.segment_ids.index(s)] for s in (1, 2, 3)])
        # Diamonds are the membership-weighted means.
        R = posterior_of(data)
        weighted = (R.T @ original_of(data)[:, j]) / R.sum(axis=0)
        diamonds = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets()) == 3])
        np.testing.assert_allclose(diamonds[:, 1], [weighted[data.segment_ids.index(s)] for s in (1, 2, 3)])


def test_log_likelihood_figure_plots_every_iteration():
    bounds = [-3.0, -2.5, -2.3, -2.29]
    fig = figures.log_likelihood_figure(bounds)
    (ax,) = fig.axes
    (line,) = ax.lines
    assert list(line.get_xdata()) == [1, 2, 3, 4]
    assert list(line.get_ydata()) == bounds
    assert ax.get_xlabel() == "EM iteration"
    assert "log-likelihood" in ax.get_ylabel() and "log-likelihood" in ax.get_title()
    assert "no EM iterations recorded" in _texts(figures.log_likelihood_figure([]))


def test_each_segment_keeps_its_colour_across_figures():
    data = make_report_data(2, "full", segment_ids=[3, 1, 2])
    colors = segment_colors(data.segment_ids)
    sizes = figures.sizes_figure(np.bincount(data.labels, minlength=3), data.segment_ids)
    bar_colors = [p.get_facecolor() for p in sizes.axes[0].patches]
    assert bar_colors == [colors[s] for s in (1, 2, 3)]
    density = figures.feature_density_figure(
        data.X_model[:, 0],
        weights=data.weights,
        component_means=data.means[:, 0],
        component_variances=data.covariances[:, 0, 0],
        scaler_mean=0.0,
        scaler_scale=1.0,
        segment_ids=data.segment_ids,
        name="x",
        unit="",
        transform="none",
    )
    line_colors = {
        line.get_label(): matplotlib.colors.to_rgba(line.get_color()) for line in density.axes[0].lines
    }
    for c, s in enumerate(data.segment_ids):
        assert line_colors[f"segment {s} (weight {data.weights[c]:.2f})"] == colors[s]
    assert len(set(colors.values())) == 3


# --------------------------------------------------------------------------- drift since the previous run
def _drift(previous_run_id="6", flags=None, what_changed=None) -> dict:
    """A drift section as tracking.RunDrift.report_drift() gives it: segment 3 retired (its
    customers went to 1 and 2), segment 4 new (with 20 customers from segment 2)."""
    return {
        "previous_run_id": previous_run_id,
        "previous_segment_ids": [1, 2, 3],
        "migration": [
            {"from_segment": 1, "to_segment": 1, "customers": 90},
            {"from_segment": 1, "to_segment": 2, "customers": 10},
            {"from_segment": 2, "to_segment": 2, "customers": 60},
            {"from_segment": 2, "to_segment": 4, "customers": 20},
            {"from_segment": 3, "to_segment": 1, "customers": 5},
            {"from_segment": 3, "to_segment": 2, "customers": 15},
        ],
        "transitions": [
            {"kind": "survived", "from_ids": [1], "to_ids": [1], "share": 0.9},
            {"kind": "survived", "from_ids": [2], "to_ids": [2], "share": 0.75},
            {"kind": "disappeared", "from_ids": [3], "to_ids": [], "share": 0.75},
            {"kind": "emerged", "from_ids": [], "to_ids": [4], "share": 1.0},
        ],
        "what_changed": what_changed or "Since run 6: 200 customers in both runs.\nSegment 3 disappeared.",
        "flags": ["covariance type changed full -> diag"] if flags is None else flags,
    }


def test_migration_figure_shows_counts_with_row_normalised_colour():
    drift = _drift()
    fig = figures_drift.migration_figure(drift["migration"], [1, 2, 3], [1, 2, 4], previous_run_id=6)

    ax = fig.axes[0]
    assert ax.get_xlabel() == "segment in this run"
    assert ax.get_ylabel() == "segment in run 6"
    assert ax.get_title().startswith("Customers moving between segments since run 6")
    assert "200 customers in both runs" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4 (new)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3 (retired)"]
    (image,) = ax.get_images()
    np.testing.assert_allclose(image.get_array(), [[0.9, 0.1, 0.0], [0.0, 0.75, 0.25], [0.25, 0.75, 0.0]])
    cells = {t.get_text() for t in ax.texts}
    assert {"90\n90%", "10\n10%", "60\n75%", "20\n25%", "5\n25%", "15\n75%"} == cells
    # The cells where a segment keeps its id (1 -> 1, 2 -> 2) are outlined.
    outlined = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert sorted((p.get_x(), p.get_y()) for p in outlined) == [(-0.5, -0.5), (0.5, 0.5)]
    assert "share of the previous segment" in fig.axes[1].get_ylabel()


def test_migration_figure_accepts_a_dataframe_and_no_shared_customers():
    import pandas as pd

    table = pd.DataFrame(_drift()["migration"])
    fig = figures_drift.migration_figure(table, [1, 2, 3], [1, 2, 4])
    assert fig.axes[0].get_ylabel() == "segment in the previous run"
    empty = figures_drift.migration_figure([], [1, 2], [3])
    assert "no customers in both runs" in _texts(empty)
    with pytest.raises(ValueError, match="migration row 1: needs integer"):
        figures_drift.migration_figure([{"from_segment": 1, "customers": 3}], [1], [1])


def test_render_report_with_drift_leads_with_what_changed(tmp_path):
    hostile = "<script>alert('x')</script>"
    drift = _drift(
        flags=["31% of customers changed segment (threshold 20%)", hostile],
        what_changed="Since run 6: <b>bold</b> & more\nsecond line",
    )
    data = make_report_data(2, "diag", segment_ids=[1, 2, 4])
    with_drift = ReportData(**{**data.__dict__, "drift": drift})

    page = render_report(with_drift, tmp_path, dpi=DPI).read_text(encoding="utf-8")

    expected = figure_files(2, drift=True)
    assert expected[0] == "migration.png" and expected[1:] == figure_files(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected + ["index.html"])
    assert re.findall(r'src="([^"]*)"', page) == expected
    image = _read_png(tmp_path / "migration.png")
    assert image[..., :3].std() > 0.01
    assert "<h2>What changed since run 6</h2>" in page
    assert page.index("What changed since run 6") < page.index("<h2>Model selection</h2>")
    assert "<li>31% of customers changed segment (threshold 20%)</li>" in page
    assert hostile not in page and "&lt;script&gt;" in page
    assert "Since run 6: &lt;b&gt;bold&lt;/b&gt; &amp; more\nsecond line" in page
    assert (
        '<td class="text">disappeared</td><td class="text">3</td><td class="text">–</td><td>75.0%</td>'
        in page
    )

    quiet = ReportData(**{**data.__dict__, "drift": _drift(flags=[])})
    assert "<p>No drift flags.</p>" in render_report(quiet, tmp_path / "quiet", dpi=DPI).read_text(
        encoding="utf-8"
    )


def test_report_without_drift_has_no_drift_section(tmp_path):
    data = make_report_data(1, "spherical")
    assert data.drift is None
    page = render_report(data, tmp_path, dpi=DPI).read_text(encoding="utf-8")
    assert "What changed" not in page and "migration.png" not in page
    assert not (tmp_path / "migration.png").exists()


def test_report_data_checks_the_drift_dict():
    good = make_report_data(2, "full")
    drift = _drift()
    del drift["flags"]
    with pytest.raises(ValueError, match=r"ReportData\.drift: missing key 'flags'"):
        ReportData(**{**good.__dict__, "drift": drift})
    with pytest.raises(ValueError, match=r"ReportData\.drift: migration row 2 needs integer"):
        ReportData(
            **{
                **good.__dict__,
                "drift": {
                    **_drift(),
                    "migration": [
                        {"from_segment": 1, "to_segment": 1, "customers": 1},
                        {"from_segment": "a", "to_segment": 1, "customers": 1},
                    ],
                },
            }
        )
    with pytest.raises(ValueError, match=r"ReportData\.drift: flags must be a list"):
        ReportData(**{**good.__dict__, "drift": {**_drift(), "flags": "k changed"}})
    # Without previous_segment_ids the rows of the migration name the previous segments.
    drift = _drift()
    del drift["previous_segment_ids"]
    assert ReportData(**{**good.__dict__, "drift": drift}).drift["previous_segment_ids"] == [1, 2, 3]


@pytest.mark.parametrize("high", [0.6, 1.0, 250.0, 80_000.0])
def test_log_axis_ticks_include_zero_and_never_crowd_each_other(high):
    from reports.style import nice_ticks

    ticks = nice_ticks(0.0, high)
    assert ticks[0] == 0.0 and ticks[-1] <= high and len(ticks) >= 2
    gaps = np.diff(np.log1p(ticks))
    assert gaps.min() >= np.log1p(high) / 8.0 - 1e-12  # at least an eighth of the axis apart


def test_the_density_stays_inside_the_values_the_feature_takes():
    # Recency-like days: many customers at 0-10 days, none below 0.
    rng = np.random.default_rng(4)
    days = np.concatenate([rng.integers(0, 10, 400), rng.integers(150, 370, 200)]).astype(float)
    mean, scale = days.mean(), days.std()
    fig = figures.feature_density_figure(
        (days - mean) / scale,
        weights=np.array([0.65, 0.35]),
        component_means=(np.array([4.0, 260.0]) - mean) / scale,
        component_variances=(np.array([30.0, 60.0]) / scale) ** 2,
        scaler_mean=mean,
        scaler_scale=scale,
        segment_ids=[1, 2],
        name="recency_days",
        unit="days",
        transform="none",
    )
    ax = fig.axes[0]
    assert min(line.get_xdata().min() for line in ax.lines) >= 0.0
    assert ax.get_xlim()[0] >= 0.0


def test_segment_spreads_stay_inside_the_observed_range():
    from flows.features import build_feature_matrix
    from flows.segments import assign_segments, feature_profiles
    from gmm_engine import GaussianMixture

    rng = np.random.default_rng(5)
    # Most customers bought in the last days, a few long ago: one segment's band, centre -/+ one
    # standard deviation, reaches below 0 days unless it is kept to the values recency takes.
    table = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(600)],
            "recency_days": np.concatenate([rng.integers(0, 6, 400), rng.integers(200, 300, 200)]).astype(
                float
            ),
            "monetary": np.round(np.exp(rng.normal(4.0, 1.0, 600)), 2),
        }
    )
    features = build_feature_matrix(table, ["recency_days", "monetary"], ["days", "GBP"], ["none", "log1p"])
    model = GaussianMixture(1, random_state=0).fit(features.X_model)
    unclipped = features.scaler.inverse_transform(
        model.means_ - np.sqrt(np.diagonal(model.covariances_, axis1=1, axis2=2))
    )
    assert unclipped[0, 0] < 0.0  # the case the clip is for
    profiles = feature_profiles(assign_segments(model, features), features).set_index("feature")
    assert profiles.loc["recency_days", "spread_low"] == 0.0
    for feature in ("recency_days", "monetary"):
        assert table[feature].min() <= profiles.loc[feature, "spread_low"] <= profiles.loc[feature, "centre"]
        assert profiles.loc[feature, "centre"] <= profiles.loc[feature, "spread_high"] <= table[feature].max()


def test_blank_features_are_left_out_of_profiles_and_drawings(tmp_path):
    """A customer with a blank feature (NaN) counts in sizes, and in each feature's weighted mean
    only where they have it; the segments figure draws the customers with every feature."""
    data = make_report_data(3, "full", n=300, seed=11)
    full = profiles_of(data)
    X_original = original_of(data)
    holed_original, holed_model = X_original.copy(), data.X_model.copy()
    blank = np.zeros_like(holed_model, dtype=bool)
    blank[::7, 0] = True
    blank[3::11, 2] = True
    holed_original[blank], holed_model[blank] = np.nan, np.nan
    R = posterior_of(data)
    holed = dataclasses.replace(data, X_model=holed_model, totals=MembershipTotals.of(holed_original, R))
    got = profiles_of(holed)
    np.testing.assert_array_equal(got.counts, full.counts)
    np.testing.assert_allclose(got.centre, full.centre)  # the model's, not the data's
    for j in range(3):
        have = ~blank[:, j]
        expected = (R[have].T @ X_original[have, j]) / R[have].sum(axis=0)
        np.testing.assert_allclose(got.mean[:, j], expected, rtol=1e-12)
    assert (
        np.isfinite(got.mean).all()
        and np.isfinite(got.spread_low).all()
        and np.isfinite(got.overall_mean).all()
    )
    fig = figures.segments_figure(
        holed.X_model, holed.means, holed.covariances, holed.labels, holed.segment_ids, holed.feature_names
    )
    shown = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert shown == int((~blank.any(axis=1)).sum()) + len(holed.segment_ids)  # plus one mean marker each
    assert f"{int(blank.any(axis=1).sum()):,} with a blank feature not drawn" in fig.axes[0].get_title()
    index = render_report(holed, tmp_path / "r", dpi=40)
    assert index.exists()
    with pytest.raises(ValueError, match=r"ReportData\.totals"):
        dataclasses.replace(data, X_model=holed_model)  # totals of customers who have every feature
