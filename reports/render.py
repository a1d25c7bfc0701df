"""Render a run report: every figure as PNG plus an index.html that embeds them."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jinja2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import drift as drift_figures
from . import figures
from .profiles import SegmentProfiles, segment_profiles
from .report_data import ALL_COVARIANCE_TYPES, ReportData

__all__ = ["ReportData", "figure_files", "render_report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f4f7; } td.text, th.text { text-align: left; }
tr.chosen td { font-weight: bold; background: #fff7d6; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; }
ul.flags li { color: #8a3b00; font-weight: bold; }
pre.what-changed { background: #f6f8fa; padding: 0.8em; white-space: pre-wrap; }
"""


def figure_files(n_features: int, *, drift: bool = False) -> list[str]:
    """Names of the PNG files a report with ``n_features`` features contains, in page order
    (``migration.png`` first when the report compares with a previous run)."""
    return (
        (["migration.png"] if drift else [])
        + [
            "criteria.png",
            "sizes.png",
            "profiles.png",
            "segments.png",
            "membership.png",
            "log_likelihood.png",
        ]
        + [f"feature_{j + 1:02d}.png" for j in range(n_features)]
    )


def render_report(
    data: ReportData,
    out_dir: str | os.PathLike[str],
    *,
    dpi: int = 110,
    max_points: int = 4000,
    seed: int = 0,
) -> pathlib.Path:
    """Write every figure as PNG plus index.html into out_dir (created if missing).

    Parameters
    ----------
    data : ReportData
    out_dir : str or path-like
    dpi : int, default 110
        Resolution of the PNG files.
    max_points : int, default 4000
        At most this many customers are drawn in the 2-D segment figure.
    seed : int, default 0
        Seed of that subsample.

    Returns
    -------
    pathlib.Path
        Path of the written ``index.html``.
    """
    if not isinstance(data, ReportData):
        raise TypeError(f"render_report: data must be a ReportData, got {type(data).__name__}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profiles = segment_profiles(
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
    names = figure_files(data.n_features, drift=data.drift is not None)
    drift = data.drift
    builders: list[Callable[[], Figure]] = (
        []
        if drift is None
        else [
            lambda: drift_figures.migration_figure(
                drift["migration"],
                drift["previous_segment_ids"],
                data.segment_ids,
                previous_run_id=drift["previous_run_id"],
            )
        ]
    )
    builders += [
        lambda: figures.criteria_figure(data.selection, data.criterion),
        lambda: figures.sizes_figure(profiles.counts, data.segment_ids),
        lambda: figures.profiles_figure(profiles, data.feature_names, data.feature_units),
        lambda: figures.segments_figure(
            data.X_model,
            data.means,
            data.covariances,
            data.drawn_labels,
            data.segment_ids,
            data.feature_names,
            max_points=max_points,
            seed=seed,
            of_customers=data.n_customers,
        ),
        lambda: figures.membership_figure(data.max_probability, data.labels, data.segment_ids),
        lambda: figures.log_likelihood_figure(data.lower_bounds),
    ] + [_feature_builder(data, j) for j in range(data.n_features)]
    for name, build in zip(names, builders, strict=True):
        _save(build(), out / name, dpi)
    index = out / "index.html"
    index.write_text(_page(data, profiles, names), encoding="utf-8")
    return index


def _feature_builder(data: ReportData, j: int) -> Callable[[], Figure]:
    values = data.X_model[:, j]
    blank = np.isnan(values)
    return lambda: figures.feature_density_figure(
        values[~blank] if blank.any() else values,
        weights=data.weights,
        component_means=data.means[:, j],
        component_variances=data.covariances[:, j, j],
        scaler_mean=float(data.scaler_mean[j]),
        scaler_scale=float(data.scaler_scale[j]),
        segment_ids=data.segment_ids,
        name=data.feature_names[j],
        unit=data.feature_units[j],
        transform=data.feature_transforms[j],
    )


def _save(fig: Figure, path: pathlib.Path, dpi: int) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    # Not created through pyplot, so dropping the last reference frees it; clearing helps the GC.
    fig.clear()


# --------------------------------------------------------------------------- HTML
# Autoescape: every value the page shows (feature names, reasons, notes) is escaped by Jinja2.
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("reports", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def _fmt(value: Any, digits: int = 1) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–" if value is None else str(value)
    if math.isnan(number):
        return "–"
    return f"{number:,.{digits}f}"


def _figure(src: str, alt: str, caption: str) -> dict[str, str]:
    return {"src": src, "alt": alt, "caption": caption}


def _profile_table(data: ReportData, profiles: SegmentProfiles) -> dict[str, Any]:
    order = sorted(range(data.n_segments), key=lambda c: data.segment_ids[c])
    header = ["segment", "customers", "share of customers"] + [
        f"{name} [{unit}] centre (weighted mean)" if unit else f"{name} centre (weighted mean)"
        for name, unit in zip(data.feature_names, data.feature_units, strict=True)
    ]
    rows = []
    for c in order:
        rows.append(
            [str(data.segment_ids[c]), f"{int(profiles.counts[c]):,}", f"{profiles.shares[c]:.1%}"]
            + [
                f"{_fmt(profiles.centre[c, j], 2)} ({_fmt(profiles.mean[c, j], 2)})"
                for j in range(data.n_features)
            ]
        )
    rows.append(
        ["all", f"{int(profiles.counts.sum()):,}", "100.0%"]
        + [_fmt(profiles.overall_mean[j], 2) + " (mean)" for j in range(data.n_features)]
    )
    return {"header": header, "rows": rows}


def _selection_table(data: ReportData) -> dict[str, Any]:
    header = ["k", "covariance type", "origin", "status", "reason", "BIC", "AIC", "ICL", "chosen"]
    rows, chosen = [], []
    known = list(ALL_COVARIANCE_TYPES)

    def place(row: dict[str, Any]) -> tuple[int, str, int]:
        cov = str(row.get("covariance_type"))
        return (known.index(cov) if cov in known else len(known), cov, int(row.get("n_components", 0)))

    for r in sorted(data.selection or [], key=place):
        rows.append(
            [
                str(r.get("n_components", "")),
                str(r.get("covariance_type", "")),
                str(r.get("origin") or "grid"),
                str(r.get("status", "")),
                str(r.get("reason", "") or ""),
                _fmt(r.get("bic")),
                _fmt(r.get("aic")),
                _fmt(r.get("icl")),
                "yes" if r.get("selected") else "",
            ]
        )
        chosen.append(bool(r.get("selected")))
    return {"header": header, "rows": rows, "chosen": chosen}


def _drift_context(drift: dict[str, Any], src: str) -> dict[str, Any]:
    run = drift["previous_run_id"]
    return {
        "previous_run_id": run,
        "flags": list(drift["flags"]),
        "what_changed": drift["what_changed"],
        "figure": _figure(
            src,
            f"Customers moving between segments since run {run}",
            f"Customers in both runs, from their segment in run {run} (rows) to their "
            f"segment now (columns); colour is the share of the row, outlined cells "
            f"keep their segment id.",
        ),
        "transitions": [
            [
                t["kind"],
                ", ".join(map(str, t["from_ids"])) or "–",
                ", ".join(map(str, t["to_ids"])) or "–",
                f"{t['share']:.1%}",
            ]
            for t in drift["transitions"]
        ],
    }


def _page(data: ReportData, profiles: SegmentProfiles, names: list[str]) -> str:
    criterion = data.criterion.upper()
    # Page positions of the figures that every report has, whether or not a drift section leads.
    files = names[1:] if data.drift is not None else names
    features = []
    for j, name in enumerate(data.feature_names):
        unit = data.feature_units[j]
        shown = f"log(1 + {name})" if data.feature_transforms[j] == "log1p" else name
        features.append(
            {
                "name": name,
                "figure": _figure(
                    files[6 + j],
                    f"Histogram and mixture density of {name}",
                    f"{shown} [{unit}]: histogram of all customers with the mixture's "
                    f"density (black) and each segment's weighted density.",
                ),
            }
        )
    return _TEMPLATES.get_template("report.html.j2").render(
        css=_CSS,
        title=data.title,
        summary=[[key, value] for key, value in data.summary.items()],
        run_id=data.run_id,
        n_segments=data.n_segments,
        covariance_type=data.covariance_type,
        criterion=criterion,
        drift=None if data.drift is None else _drift_context(data.drift, names[0]),
        choice_note=data.choice_note,
        selection=_selection_table(data),
        profile=_profile_table(data, profiles),
        features=features,
        figures={
            "criteria": _figure(
                files[0],
                "Information criteria versus number of segments",
                f"BIC, AIC and ICL for every candidate (lower is better); the star marks "
                f"the model chosen by {criterion}; candidates set aside as degenerate or "
                f"failed are listed under the figure, not drawn.",
            ),
            "sizes": _figure(
                files[1],
                "Segment sizes",
                "Customers given each segment and their share "
                "of all customers (the segments table's customer_count).",
            ),
            "profiles": _figure(
                files[2],
                "Segment profiles",
                "Every feature per segment in original "
                "units: the segment's centre (bar) with one model standard deviation "
                "either side, and the membership-weighted mean (diamond), as in the "
                "segment_profiles view.",
            ),
            "segments": _figure(
                files[3],
                "Segments in two dimensions",
                "Customers coloured by assigned segment with each segment's 1- and "
                "2-sigma covariance ellipse, in standardised model space.",
            ),
            "membership": _figure(
                files[4],
                "Membership probabilities",
                "Probability of each customer's assigned segment; low values mean the "
                "customer sits between segments.",
            ),
            "log_likelihood": _figure(
                files[5],
                "Log-likelihood per EM iteration",
                "Mean log-likelihood per customer after each EM iteration of the chosen model.",
            ),
        },
    )
