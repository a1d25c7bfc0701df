"""One function per report figure: plain values in, a matplotlib Figure out, no files touched.

Figures are built with ``matplotlib.figure.Figure`` directly, never through pyplot, so nothing is
registered in pyplot's global figure list and a caller only has to drop the reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from numpy.typing import ArrayLike

from .profiles import SegmentProfiles
from .report_data import CRITERIA
from .style import (
    COVARIANCE_STYLES,
    covariance_style,
    feature_axis_label,
    nice_ticks,
    original_axis_label,
    plain,
    segment_colors,
)

_MAX_NAME = 40


def _cut(name: str, limit: int = _MAX_NAME) -> str:
    """A feature name cut to fit a title or label (not yet escaped for matplotlib)."""
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _short(name: str, limit: int = _MAX_NAME) -> str:
    """A feature name cut to fit a title or label, shown literally by matplotlib."""
    return plain(_cut(name, limit))


def _number(value: Any) -> float:
    """A criterion value from a selection row; None (e.g. NULL read back from DuckDB) is NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _thousands(value: float, _pos: int | None = None) -> str:
    return f"{value:,.0f}"


# --------------------------------------------------------------------------- model selection
def criteria_figure(selection: Sequence[Mapping[str, Any]], criterion: str = "bic") -> Figure:
    """BIC, AIC and ICL versus the number of segments, one line per covariance type.

    Parameters
    ----------
    selection : sequence of mapping
        Model-selection table rows with keys ``n_components``, ``covariance_type``, ``bic``,
        ``aic``, ``icl``, ``status`` and ``selected``.
    criterion : {"bic", "aic", "icl"}
        The criterion that chose the model; its panel says so.

    Returns
    -------
    Figure
        Three axes (BIC, AIC, ICL). Each holds exactly one line per covariance type (accepted
        grid candidates); set-aside candidates with a value are hollow markers, the previous run's
        model refitted (a row with ``origin`` ``previous``) is a black diamond, and the chosen
        candidate is a star.
    """
    rows: list[dict[str, Any]] = [
        {
            "k": int(r["n_components"]),
            "type": str(r["covariance_type"]),
            "status": str(r.get("status", "ok")),
            "selected": bool(r.get("selected", False)),
            "previous": r.get("origin") == "previous",
            **{name: _number(r.get(name)) for name in CRITERIA},
        }
        for r in selection
    ]
    refit = next((r for r in rows if r["previous"]), None)
    rows = [r for r in rows if not r["previous"]]
    present = {r["type"] for r in rows}
    types = [t for t in COVARIANCE_STYLES if t in present] + sorted(present - set(COVARIANCE_STYLES))
    chosen = next((r for r in rows if r["selected"]), refit if refit and refit["selected"] else None)

    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, len(CRITERIA), sharex=True)
    for ax, name in zip(axes, CRITERIA, strict=True):
        for cov in types:
            style = covariance_style(cov)
            accepted = sorted(
                (r["k"], r[name])
                for r in rows
                if r["type"] == cov and r["status"] == "ok" and np.isfinite(r[name])
            )
            ks = [k for k, _ in accepted]
            ax.plot(
                ks,
                [v for _, v in accepted],
                color=style["color"],
                marker=style["marker"],
                markersize=5,
                linewidth=1.6,
                label=cov,
            )
            # Set-aside candidates are not drawn: a collapsed fit's score can be far off every
            # candidate that could be chosen and would stretch the axis; the legend lists them.
        if refit is not None and np.isfinite(refit[name]):
            ax.scatter(
                [refit["k"]], [refit[name]], marker="D", s=60, facecolor="black", edgecolor="black", zorder=4
            )
        if chosen is not None and np.isfinite(chosen[name]):
            ax.scatter(
                [chosen["k"]],
                [chosen[name]],
                marker="*",
                s=320,
                facecolor="gold",
                edgecolor="black",
                linewidths=1.0,
                zorder=5,
            )
        used = " (used for the choice)" if name == criterion else ""
        ax.set_title(f"{name.upper()}{used}", fontweight="bold" if used else "normal")
        ax.set_xlabel("number of segments k")
        ax.set_ylabel(f"{name.upper()} (lower is better)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        values = [r[name] for r in rows if np.isfinite(r[name]) and r["status"] == "ok"]
        if values and max(values) - min(values) > 10:
            ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
        else:
            # Small spreads need decimals; an offset label ("+1e4") is hard to read, so none.
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.grid(alpha=0.3)
        if not rows:
            ax.text(
                0.5,
                0.5,
                "no model-selection table",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )

    handles: list[Any] = [
        Line2D(
            [],
            [],
            color=covariance_style(t)["color"],
            marker=covariance_style(t)["marker"],
            label=f"{plain(t)} covariance",
        )
        for t in types
    ]
    aside = sorted((r["k"], r["type"]) for r in rows if r["status"] != "ok")
    if aside:
        listed = ", ".join(f"k={k} {t}" for k, t in aside[:6])
        more = f" and {len(aside) - 6} more (table below)" if len(aside) > 6 else ""
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="none",
                label=f"set aside as degenerate or failed, not drawn: {listed}{more}",
            )
        )
    if refit is not None:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="D",
                markersize=7,
                color="black",
                label=f"previous run's model refitted: k={refit['k']}, {plain(refit['type'])}",
            )
        )
    if chosen is not None:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="*",
                markersize=14,
                markerfacecolor="gold",
                markeredgecolor="black",
                label=f"chosen: k={chosen['k']}, {plain(chosen['type'])}",
            )
        )
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    fig.suptitle(
        "Model selection: information criteria by number of segments and covariance type (lower is better)"
    )
    return fig


# --------------------------------------------------------------------------- segments in 2-D
def principal_axes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First two principal axes of X with a deterministic sign.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), n_features >= 2

    Returns
    -------
    centre : ndarray of shape (n_features,)
    axes : ndarray of shape (n_features, 2)
        Orthonormal columns; each column's largest-magnitude loading is positive.
    explained : ndarray of shape (2,)
        Share of the total variance along each axis.
    """
    X = np.asarray(X, dtype=np.float64)
    centre = X.mean(axis=0)
    d = X.shape[1]
    scatter = np.zeros((d, d), dtype=np.float64)
    # Block by block: a centred copy of all customers would double the report's memory.
    for start in range(0, len(X), _BLOCK_ROWS):
        block = X[start : start + _BLOCK_ROWS] - centre
        scatter += block.T @ block
    scatter /= max(len(X) - 1, 1)
    variances, vectors = np.linalg.eigh(scatter)
    top = np.argsort(variances)[::-1][:2]
    axes = vectors[:, top]
    signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), [0, 1]])
    axes = axes * np.where(signs == 0, 1.0, signs)
    total = variances.sum()
    explained = np.clip(variances[top], 0.0, None) / total if total > 0 else np.zeros(2)
    return centre, axes, explained


#: Rows per block where a figure reduces all customers (memory stays flat whatever their number).
_BLOCK_ROWS = 65_536


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _add_ellipses(ax: Any, mean: np.ndarray, cov: np.ndarray, color: Any) -> None:
    variances, vectors = np.linalg.eigh(cov)
    variances = np.clip(variances, 0.0, None)
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    for n_sigma, style in ((1.0, "-"), (2.0, "--")):
        ax.add_patch(
            Ellipse(
                tuple(mean),
                width=2 * n_sigma * math.sqrt(variances[1]),
                height=2 * n_sigma * math.sqrt(variances[0]),
                angle=angle,
                fill=False,
                edgecolor=color,
                linewidth=2.0 if n_sigma == 1 else 1.3,
                linestyle=style,
                zorder=4,
            )
        )


def _pc_label(index: int, explained: float, loadings: np.ndarray, feature_names: Sequence[str]) -> str:
    top = np.argsort(np.abs(loadings))[::-1][:3]
    parts = ", ".join(f"{loadings[j]:+.2f} {_short(feature_names[j], 20)}" for j in top)
    more = ", …" if len(loadings) > len(top) else ""
    return f"PC{index} ({explained:.0%} of variance) = {parts}{more}\n(weights of the standardised features)"


def segments_figure(
    X_model: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    labels: np.ndarray,
    segment_ids: Sequence[int],
    feature_names: Sequence[str],
    *,
    max_points: int = 4000,
    seed: int = 0,
    of_customers: int | None = None,
) -> Figure:
    """Customers and each segment's covariance ellipse in two dimensions.

    Two features are drawn as they are; more than two are projected on the first two principal
    components of ``X_model`` (means ``W^T mu``, covariances ``W^T S W``); a single feature is a
    strip plot with 1- and 2-sigma intervals.

    Parameters
    ----------
    X_model : ndarray of shape (n_customers, n_features)
        Standardised features the model was fitted on.
    means : ndarray of shape (n_segments, n_features)
    covariances : ndarray of shape (n_segments, n_features, n_features)
    labels : ndarray of shape (n_customers,)
        Component index of each customer.
    segment_ids : sequence of int, length n_segments
    feature_names : sequence of str, length n_features
    max_points : int, default 4000
        At most this many customers are drawn (seeded uniform subsample).
    seed : int, default 0
    of_customers : int, optional
        How many customers there are when ``X_model`` is a sample of them (for the note).

    Returns
    -------
    Figure
        One axes; for two or more features it holds two ellipses (1 and 2 sigma) per segment.
    """
    X_model = np.asarray(X_model, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    covariances = np.asarray(covariances, dtype=np.float64)
    labels = np.asarray(labels)
    complete = ~np.isnan(X_model).any(axis=1)
    gaps = int(np.count_nonzero(~complete))
    if gaps and complete.sum() >= 2:
        # A customer with a blank feature has no point in this space: drawn are those with all.
        X_model, labels = X_model[complete], labels[complete]
    elif gaps:
        X_model = np.where(np.isnan(X_model), 0.0, X_model)  # the feature's mean, standardised
    n, d = X_model.shape
    shown = _subsample(n, max_points, seed)
    colors = segment_colors(segment_ids)
    fig = Figure(figsize=(8.5, 7.0) if d > 1 else (9.0, 1.6 + 0.7 * len(segment_ids)), layout="constrained")
    ax = fig.add_subplot()
    total = n if of_customers is None else int(of_customers)
    sample_note = (
        f"{len(shown):,} of {total:,} customers shown (random sample)"
        if len(shown) < total
        else f"all {total:,} customers shown"
    )
    if gaps:
        sample_note += (
            f"; {gaps:,} with a blank feature not drawn"
            if complete.sum() >= 2
            else f"; blank features drawn at their mean ({gaps:,} customers)"
        )

    if d == 1:
        _segments_strip(
            ax, X_model[shown, 0], labels[shown], means[:, 0], covariances[:, 0, 0], segment_ids, colors, seed
        )
        ax.set_xlabel(f"{_short(feature_names[0])} (standardised)")
        ax.set_title(
            f"Segments along the only feature, with mean ± 1 and 2 standard deviations\n{sample_note}"
        )
        return fig

    if d == 2:
        centre, W = np.zeros(2), np.eye(2)
        xlabel, ylabel = (f"{_short(name)} (standardised)" for name in feature_names)
        heading = "Segments in the two standardised features"
    else:
        centre, W, explained = principal_axes(X_model)
        xlabel = _pc_label(1, explained[0], W[:, 0], feature_names)
        ylabel = _pc_label(2, explained[1], W[:, 1], feature_names)
        heading = (
            f"Segments on the first two principal components of the {d} standardised "
            f"features\n(together {explained.sum():.0%} of their variance)"
        )
    points = (X_model[shown] - centre) @ W
    centres = (means - centre) @ W
    projected = np.einsum("ji,cjl,lm->cim", W, covariances, W)
    point_labels = labels[shown]
    handles: list[Any] = []
    for c, sid in enumerate(segment_ids):
        mine = points[point_labels == c]
        ax.scatter(mine[:, 0], mine[:, 1], s=5, alpha=0.35, color=colors[sid], linewidths=0, rasterized=True)
        handles.append(
            Line2D([], [], linestyle="none", marker="o", color=colors[sid], label=f"segment {sid}")
        )
    for c, sid in enumerate(segment_ids):
        _add_ellipses(ax, centres[c], projected[c], colors[sid])
        ax.scatter(
            centres[c][0],
            centres[c][1],
            marker="X",
            s=110,
            color=colors[sid],
            edgecolor="black",
            linewidths=1.0,
            zorder=5,
        )
    handles += [
        Line2D([], [], color="black", linewidth=2.0, label="1-sigma ellipse"),
        Line2D([], [], color="black", linewidth=1.3, linestyle="--", label="2-sigma ellipse"),
        Line2D(
            [],
            [],
            linestyle="none",
            marker="X",
            markersize=9,
            color="white",
            markeredgecolor="black",
            label="segment mean",
        ),
    ]
    ax.legend(handles=handles, loc="best", fontsize="small", framealpha=0.85)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{heading}\n{sample_note}; colour = assigned segment", fontsize="medium")
    ax.grid(alpha=0.3)
    return fig


def _segments_strip(
    ax: Any,
    values: np.ndarray,
    labels: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    segment_ids: Sequence[int],
    colors: Mapping[int, Any],
    seed: int,
) -> None:
    rows = {sid: row for row, sid in enumerate(sorted(segment_ids))}
    jitter = np.random.default_rng(seed).uniform(-0.18, 0.18, size=len(values))
    for c, sid in enumerate(segment_ids):
        mine = labels == c
        y = rows[sid] + jitter[mine]
        ax.scatter(values[mine], y, s=5, alpha=0.35, color=colors[sid], linewidths=0, rasterized=True)
        sd = math.sqrt(variances[c])
        level = rows[sid] + 0.32
        ax.hlines(
            level, means[c] - 2 * sd, means[c] + 2 * sd, color=colors[sid], linewidth=1.3, linestyle="--"
        )
        ax.hlines(level, means[c] - sd, means[c] + sd, color=colors[sid], linewidth=4.0)
        ax.plot([means[c]], [level], marker="X", markersize=10, color=colors[sid], markeredgecolor="black")
    ax.set_yticks(range(len(rows)), [f"segment {sid}" for sid in sorted(segment_ids)])
    ax.set_ylim(-0.6, len(rows) - 0.3)
    ax.grid(axis="x", alpha=0.3)


# --------------------------------------------------------------------------- EM and assignment
def log_likelihood_figure(lower_bounds: Sequence[float]) -> Figure:
    """Mean log-likelihood per customer after every EM iteration of the chosen model.

    Returns
    -------
    Figure
        One axes with one line (empty when no iterations were recorded).
    """
    values = np.asarray(list(lower_bounds), dtype=np.float64)
    iterations = np.arange(1, len(values) + 1)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(
        iterations,
        values,
        marker="o" if len(values) <= 60 else None,
        markersize=4,
        color="#1f4e79",
        linewidth=1.8,
    )
    if len(values):
        ax.annotate(
            f"final: {values[-1]:.4f} after {len(values)} iterations",
            xy=(iterations[-1], values[-1]),
            xytext=(-10, -28),
            textcoords="offset points",
            ha="right",
            fontsize="small",
            arrowprops={"arrowstyle": "-", "color": "grey"},
        )
    else:
        ax.text(
            0.5,
            0.5,
            "no EM iterations recorded",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood per customer [nats]")
    ax.set_title(
        "Fit of the chosen model: log-likelihood after each EM iteration\n"
        "(rises, then flattens when EM has converged)"
    )
    ax.grid(alpha=0.3)
    return fig


def membership_figure(
    max_probability: np.ndarray, labels: np.ndarray, segment_ids: Sequence[int], *, threshold: float = 0.9
) -> Figure:
    """Histogram of each customer's probability of belonging to the assigned segment.

    Bars are stacked by segment; the share of customers below ``threshold`` is annotated.

    Returns
    -------
    Figure
        One axes with a dashed line at ``threshold``.
    """
    p = np.asarray(max_probability, dtype=np.float64)
    labels = np.asarray(labels)
    colors = segment_colors(segment_ids)
    edges = np.linspace(0.0, 1.0, 41)
    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    order = sorted(range(len(segment_ids)), key=lambda c: segment_ids[c])
    # Counted per segment and drawn from the counts: ax.hist on the raw values would copy every
    # customer's probability several times over.
    k, n_bins = len(segment_ids), len(edges) - 1
    flat = np.zeros(k * n_bins, dtype=np.int64)
    below = np.zeros(k, dtype=np.int64)
    for start in range(0, len(p), _BLOCK_ROWS):
        pb, lb = p[start : start + _BLOCK_ROWS], labels[start : start + _BLOCK_ROWS]
        # The bins of np.histogram: closed on the left, the last one closed on both sides.
        bins = np.clip(np.searchsorted(edges, pb, side="right") - 1, 0, n_bins - 1)
        flat += np.bincount(lb * n_bins + bins, minlength=k * n_bins)
        below += np.bincount(lb[pb < threshold], minlength=k)
    counts = flat.reshape(k, n_bins)
    sizes = counts.sum(axis=1)
    names = [
        f"segment {segment_ids[c]} ({(below[c] / sizes[c] if sizes[c] else 0.0):.0%} below {threshold:g})"
        for c in order
    ]
    ax.hist(
        [edges[:-1]] * k,
        weights=[counts[c] for c in order],
        bins=edges.tolist(),
        stacked=True,
        color=[colors[segment_ids[c]] for c in order],
        label=names,
        edgecolor="white",
        linewidth=0.3,
    )
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
    share = float(below.sum() / len(p)) if len(p) else 0.0
    ax.text(
        threshold - 0.01,
        0.97,
        f"{share:.1%} of customers\nbelow {threshold:g}",
        transform=ax.get_xaxis_transform(),
        ha="right",
        va="top",
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "grey"},
    )
    ax.set_xlim(0.0, 1.0)
    ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.set_xlabel("probability of the assigned segment (1 = certain)")
    ax.set_ylabel("customers")
    ax.set_title("How sure the assignment is: membership probability of each customer's segment")
    ax.legend(loc="upper left", fontsize="small", title="colour = assigned segment")
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- segment summaries
def sizes_figure(counts: np.ndarray, segment_ids: Sequence[int]) -> Figure:
    """Customers per segment with each segment's share of all customers.

    Returns
    -------
    Figure
        One axes with one bar per segment.
    """
    counts = np.asarray(counts, dtype=np.int64)
    colors = segment_colors(segment_ids)
    order = sorted(range(len(segment_ids)), key=lambda c: segment_ids[c])
    total = int(counts.sum())
    fig = Figure(figsize=(max(5.5, 1.0 + 0.9 * len(segment_ids)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(order))
    heights = counts[order]
    bars = ax.bar(positions, heights, color=[colors[segment_ids[c]] for c in order], width=0.7)
    shares = heights / total if total else np.zeros(len(order))
    ax.bar_label(
        bars,
        labels=[f"{h:,}\n({s:.1%})" for h, s in zip(heights, shares, strict=True)],
        padding=2,
        fontsize="small",
    )
    ax.set_xticks(positions, [str(segment_ids[c]) for c in order])
    ax.set_ylim(0, max(heights.max(initial=0), 1) * 1.18)
    ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.set_xlabel("segment")
    ax.set_ylabel("customers")
    ax.set_title(f"Segment sizes: customers per segment\n(share of all {total:,} customers)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def profiles_figure(
    profiles: SegmentProfiles, feature_names: Sequence[str], feature_units: Sequence[str]
) -> Figure:
    """Every feature per segment in original units: the segment's centre (bar), one model standard
    deviation either side (whiskers) and the membership-weighted mean (diamond); the dashed line is
    the mean of all customers (:mod:`reports.profiles` for the definitions).

    Returns
    -------
    Figure
        One axes per feature, one bar per segment in each.
    """
    d = len(feature_names)
    ncols = min(d, 3)
    nrows = math.ceil(d / ncols)
    colors = segment_colors(profiles.segment_ids)
    order = sorted(range(len(profiles.segment_ids)), key=lambda c: profiles.segment_ids[c])
    ids = [profiles.segment_ids[c] for c in order]
    positions = np.arange(len(order))
    fig = Figure(figsize=(max(4.4 * ncols, 6.0), 3.4 * nrows + 0.9), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for j in range(nrows * ncols):
        ax = grid.flat[j]
        if j >= d:
            ax.remove()
            continue
        centre = profiles.centre[order, j]
        below = np.clip(centre - profiles.spread_low[order, j], 0.0, None)
        above = np.clip(profiles.spread_high[order, j] - centre, 0.0, None)
        ax.bar(positions, np.nan_to_num(centre), color=[colors[s] for s in ids], width=0.7)
        ax.errorbar(
            positions, centre, yerr=[below, above], fmt="none", ecolor="black", capsize=4, linewidth=1.2
        )
        ax.scatter(
            positions,
            profiles.mean[order, j],
            marker="D",
            s=30,
            facecolor="white",
            edgecolor="black",
            zorder=4,
        )
        ax.axhline(profiles.overall_mean[j], color="grey", linestyle="--", linewidth=1.0)
        for position in positions[profiles.counts[order] == 0]:
            ax.text(position, 0, "no\ncustomers", ha="center", va="bottom", fontsize="x-small", color="grey")
        ax.set_xticks(positions, [str(s) for s in ids])
        ax.set_xlabel("segment")
        ax.set_ylabel(original_axis_label(_cut(feature_names[j], 28), feature_units[j]))
        ax.set_title(_short(feature_names[j]))
        ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(facecolor="lightgrey", label="segment centre (bar colour = segment)"),
        Line2D([], [], color="black", marker="_", markersize=10, label="centre -/+ one standard deviation"),
        Line2D(
            [],
            [],
            linestyle="none",
            marker="D",
            markerfacecolor="white",
            markeredgecolor="black",
            label="weighted mean",
        ),
        Line2D([], [], color="grey", linestyle="--", label="mean of all customers"),
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=4 if ncols > 1 else 2,
        frameon=False,
        fontsize="small",
    )
    fig.suptitle("Segment profiles in original units")
    return fig


# --------------------------------------------------------------------------- feature densities
def feature_density_figure(
    x_model: np.ndarray,
    *,
    weights: np.ndarray,
    component_means: np.ndarray,
    component_variances: np.ndarray,
    scaler_mean: float,
    scaler_scale: float,
    segment_ids: Sequence[int],
    name: str,
    unit: str,
    transform: str,
    bins: int = 60,
) -> Figure:
    """One feature's histogram with the mixture's marginal density and the weighted components.

    Everything is drawn in the transformed space before standardisation
    (``x_model * scaler_scale + scaler_mean``), so a log1p feature reads as ``log(1 + name)``;
    a log1p feature also gets a top axis in original units.

    Parameters
    ----------
    x_model : ndarray of shape (n_customers,)
        The feature's column of the standardised model matrix.
    weights : ndarray of shape (n_segments,)
    component_means : ndarray of shape (n_segments,)
        Means of the feature in model space.
    component_variances : ndarray of shape (n_segments,)
        Variances of the feature in model space (diagonal entries of the covariances).
    scaler_mean, scaler_scale : float
    segment_ids : sequence of int
    name, unit : str
    transform : {"none", "log1p"}
    bins : int, default 60

    Returns
    -------
    Figure
        One axes with one line per segment plus one for the mixture density.
    """
    values = np.asarray(x_model, dtype=np.float64) * scaler_scale
    values += scaler_mean  # in place: one array the size of the feature, not two
    mu = np.asarray(component_means, dtype=np.float64) * scaler_scale + scaler_mean
    sd = np.sqrt(np.asarray(component_variances, dtype=np.float64)) * scaler_scale
    weights = np.asarray(weights, dtype=np.float64)
    colors = segment_colors(segment_ids)

    # A few extreme customers must not squeeze the bulk into one bin. ``values`` is this
    # function's own array and nothing below depends on its order: partitioning it in place
    # spares a copy of one value per customer.
    low, high = np.percentile(values, [0.1, 99.9], overwrite_input=True)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = histogram_edges(values, low, high, bins)
    counts, _ = np.histogram(values, bins=edges)
    density = counts / (len(values) * np.diff(edges))
    outside = 1.0 - counts.sum() / len(values)
    pad = 0.04 * (high - low)
    # Never past the values the feature takes: no density at negative days or below zero spend.
    grid = np.linspace(max(low - pad, float(values.min())), min(high + pad, float(values.max())), 500)
    z = (grid[None, :] - mu[:, None]) / sd[:, None]
    component = weights[:, None] * np.exp(-0.5 * z**2) / (sd[:, None] * math.sqrt(2.0 * math.pi))

    fig = Figure(figsize=(8.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    histogram_label = "customers (histogram)"
    if outside > 0:
        histogram_label += f"; {outside:.1%} outside the shown range"
    ax.stairs(density, edges, fill=True, color="#c9d3df", label=histogram_label)
    order = sorted(range(len(segment_ids)), key=lambda c: segment_ids[c])
    for c in order:
        ax.plot(
            grid,
            component[c],
            color=colors[segment_ids[c]],
            linewidth=1.6,
            label=f"segment {segment_ids[c]} (weight {weights[c]:.2f})",
        )
    ax.plot(grid, component.sum(axis=0), color="black", linewidth=2.2, label="mixture density")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(0, None)
    axis_label = feature_axis_label(name, unit, transform)
    ax.set_xlabel(axis_label)
    ax.set_ylabel(f"density [1 / unit of {'log(1 + x)' if transform == 'log1p' else 'x'}]")
    ax.set_title(
        f"{_short(name)}: histogram with the fitted mixture density\nand each segment's weighted density"
    )
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
    ax.grid(alpha=0.3)
    if transform == "log1p":
        top = ax.secondary_xaxis("top", functions=(_expm1, _log1p))
        top.set_xticks(nice_ticks(float(np.expm1(grid[0])), float(np.expm1(grid[-1]))))
        top.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.6g}"))
        top.set_xlabel(original_axis_label(_cut(name), unit))
    return fig


#: Values :func:`histogram_edges` looks at first to tell a continuous feature (seeded sample).
_SAMPLE_ROWS = 100_000


def histogram_edges(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Bin edges on [low, high] that respect discrete values.

    Counts such as invoices (and their log1p) take few distinct values spaced unevenly; equal bins
    narrower than that spacing show false spikes and gaps next to a continuous density. When the
    values inside the range are few enough, every bin edge lies half-way between neighbouring
    values and neighbouring bins are merged until each is at least ``(high - low) / bins`` wide.

    Returns
    -------
    ndarray of shape (n_bins + 1,)
        Increasing edges; ``bins + 1`` equal-width edges when the values are effectively continuous.
    """
    target = (high - low) / bins
    if values.size > _SAMPLE_ROWS:
        # More distinct values in a sample than the limit means more in all: continuous, without
        # sorting every customer's value (10^7 of them) to find out.
        sample = values[np.random.default_rng(0).choice(values.size, _SAMPLE_ROWS, replace=False)]
        if np.unique(sample[(sample >= low) & (sample <= high)]).size > 20 * bins:
            return np.linspace(low, high, bins + 1)
    inside = np.unique(values[(values >= low) & (values <= high)])
    if len(inside) < 2 or len(inside) > 20 * bins:
        return np.linspace(low, high, bins + 1)
    middles = (inside[1:] + inside[:-1]) / 2.0
    first = inside[0] - min(middles[0] - inside[0], target / 2.0)
    last = inside[-1] + min(inside[-1] - middles[-1], target / 2.0)
    edges = [first]
    for edge in middles:
        if edge - edges[-1] >= target:
            edges.append(float(edge))
    if last - edges[-1] < target and len(edges) > 1:
        edges.pop()
    edges.append(last)
    return np.asarray(edges, dtype=np.float64)


def _expm1(x: ArrayLike) -> np.ndarray:
    return np.expm1(x)


def _log1p(y: ArrayLike) -> np.ndarray:
    # The secondary axis probes values below -1 while laying out; keep them finite.
    return np.log1p(np.maximum(y, -1.0 + 1e-12))
