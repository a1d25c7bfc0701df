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

The rule is the last line of defence. Data known to be discrete are better fitted with
``resolution`` (no component narrower than the grid the values are recorded on) and
``covariance_prior="data"`` (mclust's conjugate prior, so a handful of identical points cannot
pull a variance to zero): then a spike of identical values is a legitimate component.

Grid edge. A best candidate with the largest number of components tried says only that more
might fit better; with ``k_limit`` the grid is extended one component at a time until the best
lies inside it (``SelectionResult.grid_note`` says what happened).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import cast

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from . import initialisation
from ._validation import (
    ConvergenceWarning,
    as_generator,
    check_array,
    check_per_feature,
    check_sample_weight,
)
from .covariance import COVARIANCE_MODELS, covariance_layout, n_parameters
from .data import FullData, InMemoryData
from .mixture import GaussianMixture
from .statistics import ScoreTotals, default_threads
from .threads import single_threaded_blas

CRITERIA = ("bic", "aic", "icl")
#: Default of ``variance_floor``: a component variance below this share of the data's is degenerate.
VARIANCE_FLOOR = 1e-3


class NoAcceptableModelError(ValueError):
    """Every candidate of the grid was degenerate or failed; ``table`` holds them with reasons."""

    def __init__(self, message: str, table: list[dict]):
        super().__init__(message)
        self.table = table


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
    k_max_given : int
        The largest number of components of the grid asked for.
    k_max_tried : int
        The largest number of components tried: ``k_max_given``, or more when the grid was
        extended because the best candidate sat at its edge (see ``k_limit``).
    k_limit : int
        How far the grid could be extended (``k_max_given`` when extension was off).
    """

    best: GaussianMixture
    criterion: str
    table: list[dict]
    models: dict = field(default_factory=dict)
    k_max_given: int = 0
    k_max_tried: int = 0
    k_limit: int = 0

    @property
    def extended(self) -> bool:
        """Whether components beyond the given grid were tried."""
        return self.k_max_tried > self.k_max_given

    @property
    def at_edge(self) -> bool:
        """Whether the chosen model has the largest number of components tried (of two or more)."""
        k_min = min(row["n_components"] for row in self.table)
        return self.k_max_tried > k_min and self.best.n_components >= self.k_max_tried

    @property
    def at_limit(self) -> bool:
        """Whether the choice sits at the edge of a grid that could not be extended further."""
        return self.at_edge and self.k_max_tried >= self.k_limit

    def grid_note(self) -> str:
        """One sentence on the grid's edge, or ``""`` when the choice lies inside the grid."""
        if not self.at_edge:
            if self.extended:
                return f"best at the edge of {self._given()}; extended to {self.k_max_tried}"
            return ""
        if self.extended:
            return (
                f"best at the edge of {self._given()}; extended to {self.k_max_tried}, the limit, "
                "and still at the edge"
            )
        return f"best at the edge of {self._given()}, which is also the limit"

    def _given(self) -> str:
        k_min = min(row["n_components"] for row in self.table)
        return f"k = {k_min}..{self.k_max_given}"


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
        shared = covariance_layout(model.covariance_type) == "tied"
        who = "shared covariance" if shared else f"component {j + 1}"
        return (
            f"{who} collapsed: variance {relative[j]:.2e} of the data's (< variance_floor {variance_floor:g})"
        )
    return ""


def criteria(model: GaussianMixture, X, w=None) -> dict:
    """A fitted model's table entries on ``X``: ``log_likelihood``, ``mean_log_likelihood``,
    ``bic``, ``aic`` and ``icl`` (the objective the model was fitted on). One pass over ``X``."""
    X = model._check_X_predict(X)
    return criteria_from_totals(model.n_parameters(), model._score_totals(X, w))


def criteria_on(model: GaussianMixture, data: FullData) -> dict:
    """:func:`criteria` of a fitted model on all the data ``data`` (in memory or partitioned)."""
    return criteria_from_totals(model.n_parameters(), data.scores(model))


def criteria_from_totals(n_params: int, totals: ScoreTotals) -> dict:
    """The table entries of a model with ``n_params`` free parameters from its score totals over
    the data (summed over partitions: :func:`gmm_engine.external.partition_scores`)."""
    total, n = totals.log_likelihood, totals.total_weight
    return {
        "log_likelihood": total,
        "mean_log_likelihood": total / n,
        "bic": -2.0 * total + n_params * np.log(n),
        "aic": -2.0 * total + 2.0 * n_params,
        "icl": -2.0 * total + n_params * np.log(n) + 2.0 * totals.entropy,
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


class SharedStart:
    """One starting partition (``"kmeans"`` or ``"ward"``) for several fits: a callable
    ``init_params`` that makes the labels at its first call, seeded by ``seed`` (entropy of a
    ``numpy.random.SeedSequence``), and gives the same labels to every later call. Thread-safe;
    every call must pass the same rows and number of components."""

    METHODS = ("kmeans", "ward")

    def __init__(self, method: str, seed):
        if method not in self.METHODS:
            raise ValueError(f"a shared start is one of {self.METHODS}, not {method!r}")
        self.method = method
        self.seed = seed
        self._labels: np.ndarray | None = None
        self._lock = threading.Lock()

    def __call__(self, X, n_components, rng, sample_weight) -> np.ndarray:
        with self._lock:
            if self._labels is None:
                make = initialisation.kmeans_labels if self.method == "kmeans" else initialisation.ward_labels
                rng = np.random.default_rng(np.random.SeedSequence(self.seed))
                labels = make(X, n_components, rng, sample_weight)
                # The smallest integer type that holds them: a grid keeps (k, restart) of these.
                self._labels = labels.astype(np.min_scalar_type(max(n_components - 1, 0)))
            return self._labels

    def __repr__(self) -> str:
        return f"SharedStart({self.method!r}, seed={self.seed})"


_ESTIMATOR_ARGUMENTS = (
    "max_iter",
    "tol",
    "reg_covar",
    "resolution",
    "covariance_prior",
    "init_params",
    "n_jobs",
    "missing",
)


@validate_params(
    {
        # What select_model hands to every GaussianMixture is checked by the estimator's own rules.
        **{name: GaussianMixture._parameter_constraints[name] for name in _ESTIMATOR_ARGUMENTS},
        "X": ["array-like"],
        "n_components": ["array-like"],
        "covariance_types": ["array-like"],
        "criterion": [StrOptions(set(CRITERIA))],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "sample_weight": ["array-like", None],
        "variance_floor": [Interval(Real, 0.0, None, closed="left")],
        "min_component_size": [Interval(Real, 0.0, None, closed="left"), None],
        "max_samples": [Interval(Integral, 1, None, closed="left"), None],
        "k_limit": [Interval(Integral, 1, None, closed="left"), None],
        "progress": [callable, None],
        "data": [FullData, None],
    },
    # The candidates' fits need no second check of what was checked here.
    prefer_skip_nested_validation=True,
)
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
    reg_covar=1e-6,
    resolution=None,
    covariance_prior: str | None = None,
    init_params: str = "kmeans",
    sample_weight=None,
    n_jobs: int | None = None,
    variance_floor: float = VARIANCE_FLOOR,
    min_component_size: float | None = None,
    max_samples: int | None = None,
    k_limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    missing: str = "error",
    data: FullData | None = None,
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
        Restarts per candidate, each with its own seed derived from ``random_state``. With
        ``init_params`` ``"kmeans"`` or ``"ward"``, restart r of k components starts every
        covariance type from one partition (:class:`SharedStart`), so a type's candidates are
        those a grid of that type alone would give.
    random_state : int or None
        Seed of every restart and of the subsample; the result does not depend on ``n_jobs``.
    max_iter, tol, reg_covar, resolution, covariance_prior, init_params
        As in :class:`GaussianMixture`. With ``resolution`` every candidate is fitted and scored
        on the cell-averaged log-likelihood, so the criteria compare like with like; with
        ``covariance_prior`` every candidate is a MAP fit scored on its likelihood (mclust's BIC
        with a prior).
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
    k_limit : int, optional
        Grid extension. When the best candidate has the largest number of components tried,
        try one more component (every covariance type, ``n_init`` restarts), and again, until
        the best has fewer components than the largest tried or ``k_limit`` components were
        tried. A choice at the edge of a grid says little: more components might fit better.
        Default: no extension.
    progress : callable(done, total), optional
        Called after every finished restart fit (``total`` grows when the grid is extended).
    missing : {"error", "marginalize"}, default="error"
        As in :class:`GaussianMixture`: with ``"marginalize"`` NaN marks a value missing at
        random, every candidate is fitted and scored on the observed values.
    data : FullData, optional
        Where all the data is, when not in ``X``: the candidates are fitted on ``X`` (or its
        ``max_samples`` subsample), scored on ``data``, and the chosen one is refitted on
        ``data`` when it holds more samples than the fit (``gmm_cluster.ClusterData`` keeps the
        data on a cluster's workers). Default: ``X`` and ``sample_weight`` themselves.

    Returns
    -------
    SelectionResult

    Raises
    ------
    ValueError
        Bad arguments, or no candidate that is neither failed nor degenerate.
    """
    X = check_array(X, allow_nan=missing == "marginalize")
    n, d = X.shape
    w = check_sample_weight(sample_weight, n)
    ks = list(n_components)
    types = list(covariance_types)
    if not ks or not types:
        raise ValueError("n_components and covariance_types must not be empty")
    if not all(isinstance(k, Integral) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(f"n_components entries must be integers >= 1, got {ks}")
    ks = sorted({int(k) for k in ks})
    for t in types:
        if t not in COVARIANCE_MODELS:
            raise ValueError(f"covariance_types entries must be among {sorted(COVARIANCE_MODELS)}, got {t!r}")
    reg_covar = check_per_feature(reg_covar, "reg_covar", d)
    if resolution is not None:
        resolution = check_per_feature(resolution, "resolution", d)
    min_size = float(d + 1 if min_component_size is None else min_component_size)
    n_jobs = default_threads() if n_jobs is None else int(n_jobs)
    limit = ks[-1] if k_limit is None else max(ks[-1], int(k_limit))
    if random_state is None:
        # Without arguments, SeedSequence draws its entropy: always an int.
        random_state = int(cast(int, np.random.SeedSequence().entropy) % (2**63))
    seed = int(random_state)

    if data is None:
        data = InMemoryData(X, w)
    elif sample_weight is not None:
        raise ValueError("with data, the weights are data's own: sample_weight must be None")
    X_fit, w_fit = X, w
    rows = sample_rows(n, max_samples, seed)
    if rows is not None:
        X_fit, w_fit = X[rows], (None if w is None else w[rows])
    n_fit = X_fit.shape[0]
    total_fit = float(n_fit if w_fit is None else w_fit.sum())
    data_std = observed_std(X_fit, w_fit)

    def estimator(k: int, covariance_type: str, **kwargs) -> GaussianMixture:
        return GaussianMixture(
            k,
            covariance_type=covariance_type,
            tol=tol,
            reg_covar=reg_covar,
            max_iter=max_iter,
            resolution=resolution,
            covariance_prior=covariance_prior,
            missing=missing,
            **kwargs,
        )

    # Restart r of k components starts every covariance type from one partition (as mclust
    # starts all its models from one hierarchical clustering): the types' criteria then differ
    # by the models, not by their starts, and k-means, most of a grid's time, runs once per
    # (k, restart) instead of once per type.
    starts: dict[tuple[int, int], SharedStart] = {}

    def fit_one(k: int, type_index: int, restart: int):
        start = time.perf_counter()
        shared = starts.get((k, restart))
        gm = estimator(
            k,
            types[type_index],
            init_params=init_params if shared is None else shared,
            random_state=np.random.SeedSequence([seed, k, type_index, restart]),
        )
        try:
            if k > n_fit:
                raise ValueError(f"n_components={k} exceeds the {n_fit} samples")
            gm.fit(X_fit, sample_weight=w_fit)  # ConvergenceWarning: silenced around the threads
        except (ValueError, np.linalg.LinAlgError) as exc:
            return None, str(exc), time.perf_counter() - start
        finally:
            # The fitted candidate names its method, not the shared start (which holds the
            # labels and a lock: a candidate travels to a cluster's workers to be scored).
            gm.set_params(init_params=init_params)
        reason = degeneracy_reason(gm, data_std, total_fit, variance_floor, min_size)
        return gm, reason, time.perf_counter() - start

    table: list[dict] = []
    models: dict = {}
    counter = {"done": 0, "total": 0}

    def report(_done: int, _total: int) -> None:
        counter["done"] += 1
        if progress:
            progress(counter["done"], counter["total"])

    def fit_grid(grid_ks: list[int]) -> None:
        jobs = [(k, ti, r) for k in grid_ks for ti in range(len(types)) for r in range(n_init)]
        counter["total"] += len(jobs)
        results: dict[tuple[int, int, int], tuple] = {}
        if init_params in SharedStart.METHODS and len(types) > 1:
            # The seed restart r of the first type has always had: its fits are as without sharing.
            starts.update(
                {(k, r): SharedStart(init_params, [seed, k, 0, r]) for k in grid_ks for r in range(n_init)}
            )
        # One filter for all the fitting threads, set here: catch_warnings inside each thread
        # would race (the warning filters are global) and let some warnings through.
        try:
            with single_threaded_blas(), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                _run_jobs(jobs, fit_one, results, n_jobs, report)
        finally:
            starts.clear()
        batch = []
        for k in grid_ks:
            for ti, ctype in enumerate(types):
                row, gm = _candidate_row(k, ctype, d, [results[(k, ti, r)] for r in range(n_init)])
                table.append(row)
                if gm is not None:
                    models[(k, ctype)] = gm
                    batch.append((row, gm))
        # Every candidate of the batch scored in one pass over all the data (on a cluster: one
        # task per partition for the batch, not one per candidate).
        for (row, gm), totals in zip(batch, data.scores_many([gm for _, gm in batch]), strict=True):
            row.update(criteria_from_totals(gm.n_parameters(), totals))

    def best_index() -> int | None:
        ok = [i for i, row in enumerate(table) if row["status"] == "ok"]
        return min(ok, key=lambda i: table[i][criterion]) if ok else None

    fit_grid(ks)
    best_i = best_index()
    k_tried = ks[-1]
    # Extend while the best sits at the edge: a choice at the edge says more components might fit.
    while (
        best_i is not None
        and table[best_i]["n_components"] == k_tried
        and k_tried < min(limit, n_fit)
        and len(ks) > 1
    ):
        k_tried += 1
        fit_grid([k_tried])
        best_i = best_index()

    if best_i is None:
        reasons = "; ".join(f"k={r['n_components']} {r['covariance_type']}: {r['reason']}" for r in table[:6])
        raise NoAcceptableModelError(f"no acceptable candidate among {len(table)}: {reasons}", table)
    chosen = table[best_i]
    best = models[(chosen["n_components"], chosen["covariance_type"])]

    if n_fit < data.n_samples:
        start = time.perf_counter()
        refit = estimator(
            best.n_components,
            best.covariance_type,
            weights_init=best.weights_,
            means_init=best.means_,
            precisions_init=best.precisions_,
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            refit = data.refit(refit)
        collapsed = degeneracy_reason(refit, data.observed_std(), data.total_weight, variance_floor, min_size)
        if collapsed:
            # Keep the subsample fit (already scored on all samples) rather than a collapsed one.
            chosen["reason"] = f"refit on all samples set aside: {collapsed}"
        else:
            best = refit
            models[(chosen["n_components"], chosen["covariance_type"])] = refit
            chosen.update(criteria_on(refit, data))
            chosen.update(converged=bool(refit.converged_), n_iter=chosen["n_iter"] + int(refit.n_iter_))
        chosen["seconds"] += time.perf_counter() - start
    chosen["selected"] = True
    return SelectionResult(
        best=best,
        criterion=criterion,
        table=table,
        models=models,
        k_max_given=ks[-1],
        k_max_tried=k_tried,
        k_limit=max(ks[-1], min(limit, n_fit)),
    )


def default_degeneracy(model: GaussianMixture, X: np.ndarray, sample_weight: np.ndarray | None = None) -> str:
    """:func:`degeneracy_reason` with ``select_model``'s default rule on the data ``X`` the model
    was fitted to (``VARIANCE_FLOOR``, components of at least d + 1 samples), or ``""``."""
    n, d = X.shape
    total = float(n if sample_weight is None else np.sum(sample_weight))
    return degeneracy_reason(model, observed_std(X, sample_weight), total, VARIANCE_FLOOR, float(d + 1))


def degeneracy_on(model: GaussianMixture, data: FullData) -> str:
    """:func:`default_degeneracy` of a model fitted to all the data ``data`` (in memory or
    partitioned), or ``""``."""
    d = model.means_.shape[1]
    return degeneracy_reason(model, data.observed_std(), data.total_weight, VARIANCE_FLOOR, float(d + 1))


def sample_rows(n: int, max_samples: int | None, random_state: int) -> np.ndarray | None:
    """The rows :func:`select_model` fits its candidates on when ``n > max_samples``: a seeded
    sample without replacement, in increasing order (None: all ``n``). A caller whose data are
    not in memory (:class:`~gmm_engine.data.BlockData`) gathers these rows and passes them as ``X``
    with ``data``, and the selection is the one made on the whole array."""
    if max_samples is None or n <= max_samples:
        return None
    generator = as_generator(np.random.SeedSequence([int(random_state), 0x5EED]))
    return np.sort(generator.choice(n, size=max_samples, replace=False))


def observed_std(X: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Each feature's (weighted) standard deviation over its observed values; 1 for a constant
    feature, which gives no scale to compare against (the one place this rule is written)."""
    d = X.shape[1]
    std = np.empty(d, dtype=np.float64)
    # One feature at a time: the temporaries are columns, not copies of X (at 10^7 customers
    # x 4 features, whole-matrix temporaries took 1.2 GiB at once).
    for j in range(d):
        x = X[:, j]
        observed = ~np.isnan(x)
        ww = observed.astype(np.float64) if w is None else np.where(observed, w, 0.0)
        total = ww.sum()
        xz = np.where(observed, x, 0.0)
        mean = (ww @ xz) / total
        xz -= mean
        np.square(xz, out=xz)
        std[j] = np.sqrt((ww @ xz) / total)
    return np.where(std > 0, std, 1.0)


def _candidate_row(k: int, ctype: str, d: int, restarts: list[tuple]) -> tuple[dict, GaussianMixture | None]:
    """The table row of one candidate from its restarts ``(model or None, reason, seconds)``,
    and the restart it keeps: the best non-degenerate one, else the best degenerate one. The
    criteria on all the data are the caller's to add (NaN until then)."""
    n_init = len(restarts)
    fitted = [(gm, reason, s) for gm, reason, s in restarts if gm is not None]
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
        "seconds": sum(s for _, _, s in restarts),
        "status": "failed",
        "reason": "",
        "selected": False,
    }
    if not fitted:
        row["reason"] = restarts[0][1]
        return row, None
    clean = [f for f in fitted if not f[1]]
    gm, reason, _ = max(clean or fitted, key=lambda f: f[0].lower_bound_)
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
    return row, gm
