"""Model selection: fit a grid of component counts x covariance types, set degenerate fits aside,
and choose by BIC, AIC or ICL.

Degenerate fits. On discrete or heavily repeated features (counts, scores, rounded money) a
component can collapse onto one repeated value: its variance shrinks to ``reg_covar`` and the
likelihood grows without bound, so BIC rewards a spurious extra component. A restart is set
aside as *degenerate* when any component

* has a variance, in some direction, below ``variance_floor`` times the data's own variance in
  that direction (covariances are compared after dividing every feature by its standard
  deviation; for ``full`` and ``tied`` the smallest eigenvalue counts), or
* carries fewer than ``min_component_size`` samples' worth of weight (default ``d + 1``, the
  fewest points that define a full covariance).

A candidate keeps its best non-degenerate restart; a candidate whose every restart is degenerate
is reported with ``status="degenerate"`` and the reason, and is never selected.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ._validation import (
    ConvergenceWarning,
    as_generator,
    check_array,
    check_float,
    check_int,
    check_sample_weight,
)
from .covariance import COVARIANCE_MODELS, n_parameters
from .mixture import GaussianMixture
from .threads import single_threaded_blas

CRITERIA = ("bic", "aic", "icl")
#: Default of ``variance_floor``: a component variance below this share of the data's is degenerate.
VARIANCE_FLOOR = 1e-3


@dataclass
class SelectionResult:
    """Outcome of :func:`select_model`.

    Attributes
    ----------
    best : GaussianMixture
        The chosen model, fitted on all samples.
    criterion : str
        ``"bic"``, ``"aic"`` or ``"icl"`` (lower is better).
    table : list of dict
        One row per candidate, in grid order, with keys ``n_components``, ``covariance_type``,
        ``n_parameters``, ``log_likelihood``, ``mean_log_likelihood``, ``bic``, ``aic``,
        ``icl``, ``converged``, ``n_iter``, ``seconds``, ``status`` (``ok``, ``degenerate``,
        ``failed``), ``reason`` (why it was set aside or failed; for an ``ok`` row, which of its
        restarts were set aside, else empty) and ``selected``.
    models : dict
        ``(n_components, covariance_type) -> GaussianMixture`` for every candidate that fitted.
    """

    best: GaussianMixture
    criterion: str
    table: list[dict]
    models: dict = field(default_factory=dict)


def degeneracy_reason(
    model: GaussianMixture,
    data_std: np.ndarray,
    total_weight: float,
    variance_floor: float,
    min_component_size: float,
) -> str:
    """Why a fitted model is degenerate, or ``""`` if it is not (see the module docstring)."""
    k, d = model.means_.shape
    sizes = model.weights_ * total_weight
    small = np.flatnonzero(sizes < min_component_size)
    if small.size:
        j = int(small[0])
        return (
            f"component {j + 1} holds {sizes[j]:.1f} samples' weight "
            f"(< min_component_size {min_component_size:g})"
        )
    full = COVARIANCE_MODELS[model.covariance_type].full_covariances(model.covariances_, k, d)
    scaled = full / np.outer(data_std, data_std)[None, :, :]
    relative = np.linalg.eigvalsh(scaled)[:, 0]
    low = np.flatnonzero(relative < variance_floor)
    if low.size:
        j = int(low[np.argmin(relative[low])])
        who = "shared covariance" if model.covariance_type == "tied" else f"component {j + 1}"
        return (
            f"{who} collapsed: variance {relative[j]:.2e} of the data's "
            f"(< variance_floor {variance_floor:g})"
        )
    return ""


def _criteria(model: GaussianMixture, X, w) -> dict:
    ll = model.score_samples(X)
    total = float(ll.sum() if w is None else ll @ w)
    n = float(X.shape[0] if w is None else w.sum())
    p = model._n_parameters()
    return {
        "log_likelihood": total,
        "mean_log_likelihood": total / n,
        "bic": -2.0 * total + p * np.log(n),
        "aic": -2.0 * total + 2.0 * p,
        "icl": model.icl(X, sample_weight=w),
    }


def _run_jobs(jobs, fit_one, results: dict, n_jobs: int, progress) -> None:
    """Fit every (k, type, restart) job, on ``n_jobs`` threads, reporting progress as they finish."""
    if n_jobs == 1:
        for i, job in enumerate(jobs, 1):
            results[job] = fit_one(*job)
            if progress:
                progress(i, len(jobs))
        return
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        futures = {pool.submit(fit_one, *job): job for job in jobs}
        for i, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if progress:
                progress(i, len(jobs))


def _default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def select_model(
    X,
    n_components: Iterable[int] = range(1, 9),
    covariance_types: Iterable[str] = ("full", "tied", "diag", "spherical"),
    *,
    criterion: str = "bic",
    n_init: int = 3,
    random_state=0,
    max_iter: int = 200,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init_params: str = "kmeans",
    sample_weight=None,
    n_jobs: int | None = None,
    variance_floor: float = VARIANCE_FLOOR,
    min_component_size: float | None = None,
    max_samples: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SelectionResult:
    """Fit every (n_components, covariance_type) candidate and choose one by a criterion.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    n_components : iterable of int
        Component counts to try.
    covariance_types : iterable of str
        Any of ``full``, ``tied``, ``diag``, ``spherical``.
    criterion : {"bic", "aic", "icl"}
        Lower is better.
    n_init : int
        Restarts per candidate, each with its own seed derived from ``random_state``.
    random_state : int or None
        Seed of every restart and of the subsample; the result does not depend on ``n_jobs``.
    max_iter, tol, reg_covar, init_params
        As in :class:`GaussianMixture`.
    sample_weight : array-like of shape (n_samples,), optional
    n_jobs : int, optional
        Restarts fitted at once in threads (numpy releases the GIL in its kernels);
        default ``min(2, cpu_count)``.
    variance_floor, min_component_size : float
        Degeneracy rules; see the module docstring.
    max_samples : int, optional
        If there are more samples, fit candidates on a seeded uniform subsample of this size,
        compute the table's criteria on all samples, and refit the chosen candidate on all
        samples from its subsample parameters.
    progress : callable(done, total), optional
        Called after every finished restart fit.

    Returns
    -------
    SelectionResult

    Raises
    ------
    ValueError
        Bad arguments, or no candidate that is neither failed nor degenerate.
    """
    X = check_array(X)
    n, d = X.shape
    w = check_sample_weight(sample_weight, n)
    ks = [check_int(k, "n_components", 1) for k in n_components]
    types = list(covariance_types)
    if not ks or not types:
        raise ValueError("n_components and covariance_types must not be empty")
    for t in types:
        if t not in COVARIANCE_MODELS:
            raise ValueError(
                f"covariance_types entries must be among {sorted(COVARIANCE_MODELS)}, got {t!r}"
            )
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    n_init = check_int(n_init, "n_init", 1)
    variance_floor = check_float(variance_floor, "variance_floor", 0.0)
    min_size = float(d + 1 if min_component_size is None else min_component_size)
    n_jobs = _default_jobs() if n_jobs is None else check_int(n_jobs, "n_jobs", 1)
    if random_state is None:
        random_state = int(np.random.SeedSequence().entropy % (2**63))
    seed = check_int(random_state, "random_state", 0)

    X_fit, w_fit = X, w
    if max_samples is not None and n > check_int(max_samples, "max_samples", 1):
        rows = np.sort(
            as_generator(np.random.SeedSequence([seed, 0x5EED])).choice(
                n, size=max_samples, replace=False
            )
        )
        X_fit, w_fit = X[rows], (None if w is None else w[rows])
    n_fit = X_fit.shape[0]
    total_fit = float(n_fit if w_fit is None else w_fit.sum())
    data_std = np.sqrt(
        np.average((X_fit - np.average(X_fit, axis=0, weights=w_fit)) ** 2, axis=0, weights=w_fit)
    )
    # A constant feature gives no scale to compare against; any variance counts as relative 1.
    data_std = np.where(data_std > 0, data_std, 1.0)

    def fit_one(k: int, type_index: int, restart: int):
        start = time.perf_counter()
        gm = GaussianMixture(
            k,
            covariance_type=types[type_index],
            tol=tol,
            reg_covar=reg_covar,
            max_iter=max_iter,
            init_params=init_params,
            random_state=np.random.SeedSequence([seed, k, type_index, restart]),
        )
        try:
            if k > n_fit:
                raise ValueError(f"n_components={k} exceeds the {n_fit} samples")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm.fit(X_fit, sample_weight=w_fit)
        except (ValueError, np.linalg.LinAlgError) as exc:
            return None, str(exc), time.perf_counter() - start
        reason = degeneracy_reason(gm, data_std, total_fit, variance_floor, min_size)
        return gm, reason, time.perf_counter() - start

    jobs = [
        (k, ti, r) for k in ks for ti in range(len(types)) for r in range(n_init)
    ]
    results: dict[tuple[int, int, int], tuple] = {}
    with single_threaded_blas():
        _run_jobs(jobs, fit_one, results, n_jobs, progress)

    table: list[dict] = []
    models: dict = {}
    for k in ks:
        for ti, ctype in enumerate(types):
            restarts = [results[(k, ti, r)] for r in range(n_init)]
            fitted = [(gm, reason, s) for gm, reason, s in restarts if gm is not None]
            seconds = sum(s for _, _, s in restarts)
            row = {
                "n_components": k,
                "covariance_type": ctype,
                "n_parameters": n_parameters(ctype, k, d),
                "log_likelihood": np.nan,
                "mean_log_likelihood": np.nan,
                "bic": np.nan,
                "aic": np.nan,
                "icl": np.nan,
                "converged": False,
                "n_iter": 0,
                "seconds": seconds,
                "status": "failed",
                "reason": "",
                "selected": False,
            }
            if not fitted:
                row["reason"] = restarts[0][1]
                table.append(row)
                continue
            clean = [f for f in fitted if not f[1]]
            pool_ = clean or fitted
            gm, reason, _ = max(pool_, key=lambda f: f[0].lower_bound_)
            models[(k, ctype)] = gm
            row.update(_criteria(gm, X, w))
            dropped = [f[1] for f in fitted if f[1]]
            if not clean:
                note = f"all {n_init} restarts degenerate: {reason}"
            elif dropped:
                note = f"{len(dropped)} of {n_init} restarts set aside: {dropped[0]}"
            else:
                note = ""
            row.update(
                converged=bool(gm.converged_),
                n_iter=int(gm.n_iter_),
                status="ok" if clean else "degenerate",
                reason=note,
            )
            table.append(row)

    ok = [i for i, row in enumerate(table) if row["status"] == "ok"]
    if not ok:
        reasons = "; ".join(
            f"k={r['n_components']} {r['covariance_type']}: {r['reason']}" for r in table[:6]
        )
        raise ValueError(f"no acceptable candidate among {len(table)}: {reasons}")
    best_i = min(ok, key=lambda i: table[i][criterion])
    chosen = table[best_i]
    best = models[(chosen["n_components"], chosen["covariance_type"])]

    if n_fit < n:
        start = time.perf_counter()
        refit = GaussianMixture(
            best.n_components,
            covariance_type=best.covariance_type,
            tol=tol,
            reg_covar=reg_covar,
            max_iter=max_iter,
            weights_init=best.weights_,
            means_init=best.means_,
            precisions_init=best.precisions_,
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            refit.fit(X, sample_weight=w)
        total = float(n if w is None else w.sum())
        full_std = np.sqrt(np.average((X - np.average(X, axis=0, weights=w)) ** 2, axis=0, weights=w))
        collapsed = degeneracy_reason(
            refit, np.where(full_std > 0, full_std, 1.0), total, variance_floor, min_size
        )
        if collapsed:
            # Keep the subsample fit (already scored on all samples) rather than a collapsed one.
            chosen["reason"] = f"refit on all samples set aside: {collapsed}"
        else:
            best = refit
            models[(chosen["n_components"], chosen["covariance_type"])] = refit
            chosen.update(_criteria(refit, X, w))
            chosen.update(converged=bool(refit.converged_), n_iter=chosen["n_iter"] + int(refit.n_iter_))
        chosen["seconds"] += time.perf_counter() - start
    chosen["selected"] = True
    return SelectionResult(best=best, criterion=criterion, table=table, models=models)
