"""Which model a run keeps: the previous run's structure, unless a fresh choice is clearly better.

A fresh model choice on discrete customer data flips between neighbouring structures (7 or 8
segments, full or tied) from night to night on evidence too weak to matter, and every flip moves
customers between segments. So a run that follows a successful run on the same features refits
the previous run's number of segments and covariance type, starting EM from the previous
parameters (mapped to this run's scaler), and keeps that structure unless the best fresh
candidate beats it by more than ``model.switch_margin`` on the run's criterion (default 10: "very
strong" evidence on Kass & Raftery's BIC scale). The previous structure is judged by its best fit,
the refit or the grid's own fit of the same structure, so a refit caught in a poor optimum does not
hand the choice to another structure; the refit's parameters are kept unless the grid's fit beats
them by the margin too. A manual re-segmentation asks for a
fresh choice (``segment run --fresh``, flow parameter ``fresh``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.features import FeatureMatrix
from gmm_engine import (
    ConvergenceWarning,
    FullData,
    GaussianMixture,
    SelectionResult,
    criteria_on,
    degeneracy_on,
    n_parameters,
)
from tracking import TrackedModel, same_features, warm_start_init

#: What a run did about its model structure (``runs.decision``).
#: ``refreshed``: the structure kept, with the parameters of a fresh fit of it that beat the refit
#: by the switch margin (segments may move as much as at a switch).
DECISIONS = ("first_run", "fresh", "features_changed", "previous_unusable", "kept", "refreshed", "switched")


@dataclass(frozen=True)
class PreviousStructure:
    """The previous successful run's model, as the choice needs it."""

    run_id: int
    model: TrackedModel

    @property
    def n_components(self) -> int:
        return self.model.n_segments

    @property
    def covariance_type(self) -> str:
        return self.model.covariance_type


@dataclass(frozen=True)
class ModelChoice:
    """The model a run keeps, and why.

    Attributes
    ----------
    model : GaussianMixture
        The kept model, fitted on all customers.
    table : list of dict
        The candidates (the selection grid, plus the refit of the previous model when there was
        one), each with ``origin`` (``grid``, ``extension`` or ``previous``); exactly one is
        ``selected``. New rows: the selection's own table is left as it was.
    criterion : str
    decision : str
        One of :data:`DECISIONS`.
    note : str
        The decision in one sentence, for the console, the report and ``runs.decision_note``.
    fresh_value : float
        Criterion value of the best fresh candidate.
    previous_value : float or None
        Criterion value of the previous structure's best fit: its refit, or the grid's own fit of
        the same structure when that is better (None when not refitted).
    margin : float
    previous_run_id : int or None
    grid_note : str
        What happened at the edge of the grid (:meth:`SelectionResult.grid_note`).
    k_max_tried : int
    at_limit : bool
        The fresh choice sat at the edge of a grid that could not be extended further.
    """

    model: GaussianMixture
    table: list[dict[str, Any]]
    criterion: str
    decision: str
    note: str
    fresh_value: float
    previous_value: float | None
    margin: float
    previous_run_id: int | None
    grid_note: str
    k_max_tried: int
    at_limit: bool

    @property
    def chosen(self) -> dict[str, Any]:
        return next(row for row in self.table if row["selected"])


def _structure(k: int, covariance_type: str) -> str:
    return f"{k} {covariance_type}"


def _grid_table(selection: SelectionResult) -> list[dict[str, Any]]:
    return [
        {**row, "origin": "grid" if row["n_components"] <= selection.k_max_given else "extension"}
        for row in selection.table
    ]


def _polished(model: GaussianMixture, data: FullData, tol: float, max_iter: int) -> GaussianMixture:
    """More EM iterations of a fitted model, from its own parameters, down to ``tol``."""
    gm = GaussianMixture(
        model.n_components,
        covariance_type=model.covariance_type,
        tol=tol,
        reg_covar=model.reg_covar,
        max_iter=max_iter,
        resolution=model.resolution,
        covariance_prior=model.covariance_prior,
        missing=model.missing,
        weights_init=model.weights_,
        means_init=model.means_,
        precisions_init=model.precisions_,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return data.refit(gm)


def decision_tol(tol: float, n_samples: int) -> float:
    """EM tolerance for the two models a decision compares.

    ``tol`` is a change of the mean log-likelihood per customer; the criteria are totals, so at
    ``tol = 1e-3`` and 4,000 customers a fit stops while BIC still moves by about 8 an iteration,
    as much as the switch margin. The two models compared are taken on until the total moves by
    less than 0.5 (BIC by 1).
    """
    return min(tol, 0.5 / n_samples)


def refit_previous(
    previous: PreviousStructure,
    features: FeatureMatrix,
    *,
    tol: float,
    reg_covar: float,
    max_iter: int,
    covariance_prior: str | None = None,
    data: FullData | None = None,
) -> tuple[GaussianMixture | None, str]:
    """EM for the previous structure, started from the previous parameters in this run's space,
    on ``data`` (default: all customers, :meth:`FeatureMatrix.full_data`).

    Returns the fitted model (None when it failed) and why it cannot be used (``""`` when it can:
    the rule ``select_model`` applies to every candidate).
    """
    data = features.full_data() if data is None else data
    n, d = data.n_samples, len(features.names)
    k, ctype = previous.n_components, previous.covariance_type
    if k * (d + 1) > n:
        return None, f"{k} segments need at least {k * (d + 1):,} customers, this run has {n:,}"
    init = warm_start_init(
        previous.model,
        features.scaler.mean,
        features.scaler.scale,
        ctype,
        feature_names=features.names,
        transforms=features.transforms,
    )
    gm = GaussianMixture(
        k,
        covariance_type=ctype,
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        resolution=features.resolution,
        covariance_prior=covariance_prior,
        missing="marginalize" if features.has_missing else "error",
        **init,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm = data.refit(gm)
    except ValueError as exc:
        return None, f"the refit failed: {exc}"
    reason = degeneracy_on(gm, data)
    return gm, (f"the refit is degenerate: {reason}" if reason else "")


def choose_model(
    selection: SelectionResult,
    features: FeatureMatrix,
    previous: PreviousStructure | None,
    *,
    switch_margin: float,
    fresh: bool = False,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 200,
    allowed: tuple[int, int, tuple[str, ...]] | None = None,
    data: FullData | None = None,
) -> ModelChoice:
    """Keep the previous run's structure or switch to the best fresh candidate (module docstring).

    Parameters
    ----------
    selection : SelectionResult
        The fresh choice over the grid (not changed).
    features : FeatureMatrix
        This run's customers.
    previous : PreviousStructure or None
        The previous successful run's model (None on a first run).
    switch_margin : float
        How much better (lower) the fresh criterion value must be to switch.
    fresh : bool
        Choose afresh: ignore the previous structure.
    tol, reg_covar, max_iter
        EM settings of the refit, as for the grid.
    allowed : (k_min, k_limit, covariance types), optional
        What this run's settings allow; a previous structure outside them is not kept.
    data : FullData, optional
        Where this run's customers are for the refits and criteria (``gmm_cluster.ClusterData``
        on a cluster); default all customers (:meth:`FeatureMatrix.full_data`).
    """
    criterion = selection.criterion
    table = _grid_table(selection)
    best_fresh = next(row for row in table if row["selected"])
    fresh_label = _structure(best_fresh["n_components"], best_fresh["covariance_type"])
    name = criterion.upper()
    grid = f"the best of k = {min(r['n_components'] for r in table)}..{selection.k_max_tried} by {name}"

    def result(
        decision: str, note: str, model: GaussianMixture, previous_value: float | None = None
    ) -> ModelChoice:
        return ModelChoice(
            model=model,
            table=table,
            criterion=criterion,
            decision=decision,
            note=note,
            fresh_value=float(best_fresh[criterion]),
            previous_value=previous_value,
            margin=float(switch_margin),
            previous_run_id=None if previous is None else previous.run_id,
            grid_note=selection.grid_note(),
            k_max_tried=selection.k_max_tried,
            at_limit=selection.at_limit,
        )

    if previous is None:
        return result("first_run", f"First run: {fresh_label}, {grid}.", selection.best)
    if fresh:
        return result("fresh", f"Fresh choice asked for: {fresh_label}, {grid}.", selection.best)
    if not same_features(
        features.names, features.transforms, previous.model.feature_names, previous.model.transforms
    ):
        return result(
            "features_changed",
            f"The features or their transforms changed since run {previous.run_id}, so the model was "
            f"chosen afresh: {fresh_label}, {grid}.",
            selection.best,
        )

    k, ctype = previous.n_components, previous.covariance_type
    if allowed is not None and not (allowed[0] <= k <= allowed[1] and ctype in allowed[2]):
        types = ", ".join(allowed[2])
        return result(
            "previous_unusable",
            f"Run {previous.run_id}'s {_structure(k, ctype)} is outside this run's settings (k = "
            f"{allowed[0]}..{allowed[1]}, {types}), so the model was chosen afresh: {fresh_label}, {grid}.",
            selection.best,
        )
    start = time.perf_counter()
    data = features.full_data() if data is None else data
    tight = decision_tol(tol, data.n_samples)
    gm, problem = refit_previous(
        previous,
        features,
        tol=tight,
        reg_covar=reg_covar,
        max_iter=max_iter,
        covariance_prior=selection.best.covariance_prior,
        data=data,
    )
    previous_label = _structure(k, ctype)
    row: dict[str, Any] = {
        "n_components": k,
        "covariance_type": ctype,
        "n_parameters": n_parameters(ctype, k, len(features.names)),
        "log_likelihood": np.nan,
        "mean_log_likelihood": np.nan,
        "bic": np.nan,
        "aic": np.nan,
        "icl": np.nan,
        "converged": False,
        "n_iter": 0,
        "status": "failed",
        "selected": False,
        "origin": "previous",
        "reason": f"run {previous.run_id}'s model refitted from its parameters",
    }
    if gm is not None:
        row.update(
            criteria_on(gm, data),
            converged=bool(gm.converged_),
            n_iter=int(gm.n_iter_),
            status="degenerate" if problem else "ok",
        )
    if problem:
        row["reason"] += f"; {problem}"
    row["seconds"] = time.perf_counter() - start
    table.append(row)
    if gm is None or problem:
        return result(
            "previous_unusable",
            f"Run {previous.run_id}'s {previous_label} could not be kept ({problem}), so the model was "
            f"chosen afresh: {fresh_label}, {grid}.",
            selection.best,
        )

    # Both sides of the comparison converged alike (decision_tol), so the margin is not spent on
    # one of them having stopped earlier. (Should the longer run collapse a component, the grid's
    # own fit stands.)
    polished = _polished_row(selection.best, best_fresh, data, tight, max_iter)
    fresh_model = selection.best if polished is None else polished
    fresh_value = float(best_fresh[criterion])
    previous_value = float(row[criterion])
    same_structure = (best_fresh["n_components"], best_fresh["covariance_type"]) == (k, ctype)

    # The previous structure is judged by its best fit, not by where one warm start happened to
    # converge: the grid's own fit of the same (k, type) counts too. Otherwise a refit stuck in a
    # poor optimum would hand the switch to another structure on evidence about EM, not the data.
    kept_model, kept_value, refreshed_gain = gm, previous_value, 0.0
    if not same_structure:
        grid_same = _grid_fit(selection, table, k, ctype, data, tight, max_iter, criterion)
        if grid_same is not None and grid_same[1] < previous_value:
            refreshed_gain = previous_value - grid_same[1]
            if refreshed_gain > switch_margin:
                kept_model, kept_value = grid_same
    best_previous_value = previous_value - refreshed_gain
    gain = best_previous_value - fresh_value
    if gain > switch_margin and same_structure:
        return result(
            "refreshed",
            f"Kept run {previous.run_id}'s {previous_label}, fitted afresh ({name} {fresh_value:,.1f}): "
            f"better than the refit from its parameters ({name} {previous_value:,.1f}) by {gain:,.1f}, "
            f"more than the switch margin {switch_margin:g}.",
            fresh_model,
            best_previous_value,
        )
    if gain > switch_margin:
        return result(
            "switched",
            f"Switched from run {previous.run_id}'s {previous_label} ({name} {best_previous_value:,.1f}) to "
            f"{fresh_label} ({name} {fresh_value:,.1f}): better by {gain:,.1f}, more than the switch "
            f"margin {switch_margin:g}.",
            fresh_model,
            best_previous_value,
        )
    best_fresh["selected"] = False
    if kept_model is gm:
        row["selected"] = True
    else:
        next(
            r
            for r in table
            if r["origin"] != "previous" and r["n_components"] == k and r["covariance_type"] == ctype
        )["selected"] = True
    # A gain that shows as 0.0 is rounding (the same fit reached twice), not a better model.
    if round(gain, 1) > 0:
        why = (
            f"the best fresh model, {fresh_label} ({name} {fresh_value:,.1f}), is better by only {gain:,.1f}"
        )
    else:
        why = f"the best fresh model, {fresh_label} ({name} {fresh_value:,.1f}), is not better"
    if kept_model is not gm:
        how = (
            f"fitted afresh ({name} {kept_value:,.1f}, better than the refit from run "
            f"{previous.run_id}'s parameters by {refreshed_gain:,.1f})"
        )
    elif refreshed_gain > 0:
        how = f"refitted ({name} {kept_value:,.1f}; its best fit in the grid: {best_previous_value:,.1f})"
    else:
        how = f"refitted ({name} {kept_value:,.1f})"
    return result(
        "kept" if kept_model is gm else "refreshed",
        f"Kept run {previous.run_id}'s {previous_label}, {how}: {why}, "
        f"within the switch margin {switch_margin:g}.",
        kept_model,
        best_previous_value,
    )


def _grid_fit(
    selection: SelectionResult,
    table: list[dict[str, Any]],
    k: int,
    ctype: str,
    data: FullData,
    tol: float,
    max_iter: int,
    criterion: str,
) -> tuple[GaussianMixture, float] | None:
    """The grid's own acceptable fit of (k, ctype), taken on to ``tol``, and its criterion value
    (its table row updated), or None when the grid has none."""
    row = next(
        (
            r
            for r in table
            if r["origin"] != "previous"
            and r["n_components"] == k
            and r["covariance_type"] == ctype
            and r["status"] == "ok"
        ),
        None,
    )
    model = selection.models.get((k, ctype))
    if row is None or model is None:
        return None
    polished = _polished_row(model, row, data, tol, max_iter)
    return None if polished is None else (polished, float(row[criterion]))


def _polished_row(
    model: GaussianMixture, row: dict[str, Any], data: FullData, tol: float, max_iter: int
) -> GaussianMixture | None:
    """:func:`_polished` with the candidate's table row updated to the longer fit; None (the row
    unchanged) when the longer run collapses a component."""
    polished = _polished(model, data, tol, max_iter)
    if degeneracy_on(polished, data):
        return None
    row.update(
        criteria_on(polished, data),
        n_iter=row["n_iter"] + int(polished.n_iter_),
        converged=bool(polished.converged_),
    )
    return polished
