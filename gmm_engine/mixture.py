"""GaussianMixture: a scikit-learn estimator fitted by chunked, weighted EM."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.validation import check_is_fitted, validate_data

from . import statistics as st
from ._validation import (
    ConvergenceWarning,
    as_generator,
    check_array,
    check_per_feature,
    check_sample_weight,
)
from .covariance import ALL_COVARIANCE_TYPES, COVARIANCE_MODELS, covariance_layout, n_parameters
from .initialisation import initial_responsibilities
from .missing import find_patterns, missing_log_prob, missing_statistics
from .threads import single_threaded_blas

INIT_METHODS = ("kmeans", "ward", "k-means++", "random", "random_from_data")

# scikit-learn adds this to every component's summed responsibility so that an emptied
# component keeps a finite (negligible) weight and a defined mean instead of 0/0.
_NK_FLOOR = 10 * np.finfo(np.float64).eps


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture model fitted by expectation-maximisation.

    A scikit-learn estimator (``BaseEstimator``, ``DensityMixin``; it passes scikit-learn's
    ``check_estimator``), so it works in ``Pipeline``, ``GridSearchCV`` (``score`` is the mean
    log-likelihood), ``clone``, and takes pandas input (``feature_names_in_``). Parameters are
    checked by declarative rules (``_parameter_constraints``) when ``fit`` is called.

    Same parameters, attributes and semantics as ``sklearn.mixture.GaussianMixture``, plus
    ``sample_weight`` (weighted EM: integer weights give the model of repeated rows), the
    ``icl`` criterion and ``resolution`` (features recorded on a grid). E- and M-steps run on
    chunks of samples as one matrix product each (see :mod:`gmm_engine.statistics`), so memory
    stays flat on large inputs.

    Discrete features. A count, a price in cents or a day number is recorded on a grid; with
    ``resolution`` (the grid's spacing per feature) each recorded value stands for its rounding
    cell, which carries ``resolution**2 / 12`` of variance (Sheppard's correction). EM then
    maximises the *cell-averaged* log-likelihood: each component's log-density is averaged over
    the cell (``log N(x) - tr(P R) / 2`` with ``R = diag(resolution**2 / 12)``, ``P`` the
    precision), and the M-step adds ``R`` to every covariance's diagonal. No component's variance
    along a feature can fall below its cell's, so a spike of identical values (say, customers with
    exactly one purchase) is fitted by a component of bounded density instead of a collapsed one;
    the objective is bounded, EM ascends it at every iteration, and ``score_samples``,
    ``predict_proba``, ``score``, ``bic``, ``aic``, ``icl`` and ``lower_bound_`` all use it. It is
    a lower bound of the log of each cell's probability per unit of cell volume. A resolution of
    0 marks a continuous feature; with no resolution (the default) everything is as in
    scikit-learn.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : str, default="full"
        ``full``: each component its own covariance; ``tied``: one shared covariance;
        ``diag``: each its own diagonal covariance; ``spherical``: each its own variance. Or any
        of mclust's fourteen names (EII, VII, EEI, VEI, EVI, VVI, EEE, VEE, EVE, VVE, EEV, VEV,
        EVV, VVV; see :mod:`gmm_engine.families`), VVV, EEE, VVI and VII being the four above.
    tol : float, default=1e-3
        EM stops when the mean per-sample log-likelihood changes by less than this.
    reg_covar : float or array-like of shape (n_features,), default=1e-6
        Added to the diagonal of every covariance, keeping it positive definite (one value per
        feature, or one for all; ``spherical`` adds their mean).
    max_iter : int, default=100
        EM iterations per initialisation.
    n_init : int, default=1
        Initialisations; the one with the highest final lower bound is kept.
    init_params : {"kmeans", "ward", "k-means++", "random", "random_from_data"}, default="kmeans"
        How the starting partition is chosen. ``"ward"`` (not in scikit-learn) cuts Ward's
        hierarchical agglomeration of a seeded subsample of at most 2,000 rows at
        ``n_components`` clusters and gives every row the cluster of the nearest mean: identical
        rows merge first, so a spike of repeated values enters as one heavy point (see
        :func:`gmm_engine.initialisation.ward_labels`). A callable
        ``init_params(X, n_components, rng, sample_weight)`` gives the starting partition
        itself: each row's component, an integer array of shape (n_samples,) (``X``: the rows
        EM starts from, a missing value as its feature's mean; ``rng``: a
        ``numpy.random.Generator`` from ``random_state``), as scikit-learn's ``KMeans`` takes
        a callable ``init``.
    weights_init : array-like of shape (n_components,), default=None
    means_init : array-like of shape (n_components, n_features), default=None
    precisions_init : array-like, default=None
        Shape as ``precisions_`` for the covariance type.
    random_state : int, Generator, SeedSequence or None, default=None
        Seed of every random choice (initialisation, ``sample``).
    warm_start : bool, default=False
        Start a new ``fit`` from the current parameters (with ``n_init`` ignored).
    verbose : int, default=0
        1 prints each initialisation and every ``verbose_interval``-th iteration; 2 adds the
        time and the change of the lower bound (scikit-learn's messages).
    verbose_interval : int, default=10
    n_jobs : int, default=None
        Threads that process chunks of samples at once (``None``: up to 2). Results do not
        depend on it: chunk totals are always summed in the same order.
    resolution : float or array-like of shape (n_features,), default=None
        Spacing of the grid each feature is recorded on, in the units of ``X`` (0: continuous).
        See *Discrete features* above.
    covariance_prior : {"data"} or None, default=None
        A conjugate prior on the covariances, fitted by MAP EM as mclust's ``priorControl()``
        (Fraley & Raftery 2007, "Bayesian regularization for normal mixture estimation and
        model-based clustering"): inverse-Wishart for ``full`` and ``tied`` (inverse-gamma per
        variance for ``diag`` and ``spherical``) with scale ``cov(X) / n_components**(2/d)``
        (its diagonal, or their mean) and ``degrees_of_freedom_prior`` degrees of freedom. Each
        M-step covariance becomes ``(n_k * S_k + scale) / (n_k + dof + d + 1)`` (``d + 1`` is
        ``2`` per variance), so a component on a handful of identical points keeps a variance
        of the prior's order while a large component is hardly changed. Means and weights stay
        maximum-likelihood. ``score``, ``bic`` and the other criteria are the likelihood at the
        MAP estimate (as mclust); ``lower_bound_`` adds the log prior, the objective EM ascends.
    degrees_of_freedom_prior : float, default=None
        Degrees of freedom of that prior (``None``: ``n_features + 2``, mclust's default).
    missing : {"error", "marginalize"}, default="error"
        ``"error"`` refuses NaN, as scikit-learn does. ``"marginalize"``: NaN marks a value
        missing at random; a sample is scored by the marginal density of its observed features
        (``score_samples``, ``predict_proba``, ``bic``...) and EM fills the missing part with each
        component's conditional expectation, adding its conditional covariance to the second
        moments (Ghahramani & Jordan 1994), so EM ascends the observed-data likelihood. Complete
        samples keep the fast chunked path; incomplete ones are grouped by pattern of missing
        features (see :mod:`gmm_engine.missing`). A sample needs one observed feature.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        ``full`` (k, d, d), ``tied`` (d, d), ``diag`` (k, d), ``spherical`` (k,).
    precisions_ : ndarray
        Inverses of ``covariances_``, same shape.
    precisions_cholesky_ : ndarray
        Upper-triangular ``U`` with ``U @ U.T == precision`` (same shape convention).
    converged_ : bool
    n_iter_ : int
        EM iterations of the kept initialisation.
    lower_bound_ : float
        Mean (weighted) log-likelihood of the kept initialisation at its last iteration
        (cell-averaged when ``resolution`` is given; plus the log prior density of the
        covariances, divided by the total weight, with ``covariance_prior``).
    lower_bounds_ : list of float
        ``lower_bound_`` after every iteration of the kept initialisation.
    rounding_variance_ : ndarray of shape (n_features,) or None
        ``resolution**2 / 12``, the variance of each feature's rounding cell (None without
        ``resolution``).
    covariance_prior_ : ndarray, float or None
        The prior scale used (shape of one covariance of the type), or None without a prior.
    degrees_of_freedom_prior_ : float or None
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``X`` was a DataFrame with string column names.
    """

    # Declared for the type checker (EM starts from it on a warm start); set by fit.
    lower_bound_: float

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(ALL_COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left"), "array-like"],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(INIT_METHODS)), callable],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "random_state": ["random_state", np.random.Generator, np.random.SeedSequence],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
        "resolution": [Interval(Real, 0.0, None, closed="left"), "array-like", None],
        "covariance_prior": [StrOptions({"data"}), None],
        "degrees_of_freedom_prior": [Interval(Real, 0.0, None, closed="left"), None],
        "missing": [StrOptions({"error", "marginalize"})],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str | Callable = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        n_jobs: int | None = None,
        resolution=None,
        covariance_prior: str | None = None,
        degrees_of_freedom_prior: float | None = None,
        missing: str = "error",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.n_jobs = n_jobs
        self.resolution = resolution
        self.covariance_prior = covariance_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.missing = missing

    # ------------------------------------------------------------------ parameter checks
    @property
    def _model(self):
        return COVARIANCE_MODELS[self.covariance_type]

    def _check_parameters(self, X: np.ndarray) -> None:
        """The checks that need the data; types and ranges are ``_parameter_constraints``'."""
        n, d = X.shape
        k = self.n_components
        if k > n:
            raise ValueError(
                f"n_components={k} must be <= n_samples={n}: cannot fit more components than samples"
            )
        check_per_feature(self.reg_covar, "reg_covar", d)
        if self.resolution is not None:
            check_per_feature(self.resolution, "resolution", d)
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,):
                raise ValueError(f"weights_init must have shape ({k},), got {w.shape}")
            if not np.isfinite(w).all() or (w < 0).any() or (w > 1).any():
                raise ValueError("weights_init must be finite and in [0, 1]")
            if not np.isclose(w.sum(), 1.0, rtol=0.0, atol=1e-6):
                raise ValueError(f"weights_init must sum to 1, got sum {w.sum():.8f}")
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (k, d):
                raise ValueError(f"means_init must have shape ({k}, {d}), got {m.shape}")
            if not np.isfinite(m).all():
                raise ValueError("means_init contains NaN or infinity")
        if self.precisions_init is not None:
            p = np.asarray(self.precisions_init, dtype=np.float64)
            self._model.validate_precisions_init(p, k, d)
            if not np.isfinite(p).all():
                raise ValueError("precisions_init contains NaN or infinity")
            square = covariance_layout(self.covariance_type) in ("full", "tied")
            if square and not np.allclose(p, np.swapaxes(p, -1, -2), atol=1e-10, rtol=1e-8):
                raise ValueError("precisions_init must be symmetric")

    def _validate_X(self, X, *, reset: bool) -> np.ndarray:
        """``X`` as a float64 matrix (our messages), with scikit-learn's bookkeeping of
        ``n_features_in_`` and ``feature_names_in_`` (set on fit, checked after)."""
        checked = check_array(X, allow_nan=self.missing == "marginalize")
        if self.missing == "marginalize":
            empty = np.isnan(checked).all(axis=1)
            if empty.any():
                row = int(np.argmax(empty))
                raise ValueError(
                    f"X row {row} has every feature missing (NaN); {int(empty.sum())} such rows "
                    f"in all: a sample needs at least one observed feature"
                )
            if reset and np.isnan(checked).all(axis=0).any():
                col = int(np.argmax(np.isnan(checked).all(axis=0)))
                raise ValueError(f"X column {col} is missing (NaN) in every sample")
        validate_data(self, X, reset=reset, skip_check_array=True)
        return checked

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.missing == "marginalize"
        return tags

    def _check_X_predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self._validate_X(X, reset=False)

    # ------------------------------------------------------------------ parameter state
    def _rounding_variance(self, d: int) -> np.ndarray | None:
        """``resolution**2 / 12`` per feature, or None when no feature has a resolution."""
        if self.resolution is None:
            return None
        r = np.broadcast_to(np.asarray(self.resolution, dtype=np.float64), (d,))
        return r**2 / 12.0 if np.any(r > 0) else None

    def _covariance_floor(self, d: int):
        """What the M-step adds to the covariance diagonal: ``reg_covar`` plus the rounding variance.

        A plain number when it is one (the scikit-learn case, kept bitwise identical).
        """
        floor = check_per_feature(self.reg_covar, "reg_covar", d)
        rounding = self._rounding_variance(d)
        return floor if rounding is None else floor + rounding

    def _prior(self, XcT: np.ndarray, w, total_weight: float, data_second) -> tuple | None:
        """``(scale, dof)`` of the covariance prior for centred data ``XcT``, or None."""
        if self.covariance_prior is None:
            return None
        second = data_second if data_second is not None else st.data_second_moment(XcT, w)
        return self._prior_from_moment(second, total_weight)

    def _prior_from_moment(self, second: np.ndarray, total_weight: float) -> tuple:
        """``(scale, dof)`` of the covariance prior from the centred data second moment (d, d)."""
        d = second.shape[0]
        scale = self._model.prior_scale(second / total_weight, self.n_components)
        dof = float(d + 2 if self.degrees_of_freedom_prior is None else self.degrees_of_freedom_prior)
        return scale, dof

    def _params_from_stats(self, sums: np.ndarray, d: int, shift, data_second, prior=None, previous=None):
        """M-step: (weights, means, covariances, precisions_cholesky) from summed statistics."""
        model = self._model
        nk = sums[:, 0] + _NK_FLOOR
        means_c = sums[:, 1 : 1 + d] / nk[:, None]
        covariances = model.m_step(
            nk, means_c, sums[:, 1 + d :], self._covariance_floor(d), data_second, prior, previous
        )
        prec_chol = model.precision_cholesky(covariances)
        weights = nk / nk.sum()
        return weights, means_c + shift, covariances, prec_chol

    def _initial_params(self, X, XcT, w, shift, rng, data_second, prior=None):
        k, d = self.n_components, X.shape[1]
        needs_partition = self.weights_init is None or self.means_init is None or self.precisions_init is None
        if needs_partition:
            resp_for = initial_responsibilities(self.init_params, X, k, rng, w)
            sums = st.responsibility_statistics(self._model, XcT, w, resp_for)
            if data_second is not None:
                # Pool only the rows the starting partition covers. scikit-learn pools every
                # row, which for single-point seeds (k-means++, random_from_data) inflates the
                # first tied covariance by n/k and can stall EM in a poor optimum.
                covered = np.concatenate(
                    [resp_for(slice(i, min(i + 65536, len(X)))).sum(axis=1) for i in range(0, len(X), 65536)]
                )
                data_second = st.data_second_moment(XcT, covered if w is None else covered * w)
            weights, means, covariances, prec_chol = self._params_from_stats(
                sums, d, shift, data_second, prior
            )
        if self.weights_init is not None:
            weights = np.array(self.weights_init, dtype=np.float64)
        if self.means_init is not None:
            means = np.array(self.means_init, dtype=np.float64)
        if self.precisions_init is not None:
            model = self._model
            prec_chol = model.precision_cholesky_from_precisions(
                np.asarray(self.precisions_init, dtype=np.float64)
            )
            covariances = model.covariances_from_precision_cholesky(prec_chol)
        return weights, means, covariances, prec_chol

    def _internal(self, shift: np.ndarray) -> st.MixtureParameters:
        with np.errstate(divide="ignore"):
            log_weights = np.log(self.weights_)
        return st.MixtureParameters(
            log_weights,
            self.means_ - shift,
            self.precisions_cholesky_,
            getattr(self, "rounding_variance_", None),
        )

    def _set(self, weights, means, covariances, prec_chol) -> None:
        self.weights_ = weights
        self.means_ = means
        self.covariances_ = covariances
        self.precisions_cholesky_ = prec_chol
        self.precisions_ = self._model.precisions(prec_chol)

    def _shift(self) -> np.ndarray:
        # Centring near the data keeps the one-pass moments free of cancellation; the mixture
        # mean is as good as the training mean and needs no extra state.
        return self.weights_ @ self.means_

    # ------------------------------------------------------------------ fitting
    def __sklearn_is_fitted__(self) -> bool:
        # n_features_in_ is set before EM starts, so a fit that failed is not a fitted model.
        return hasattr(self, "precisions_cholesky_")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None) -> GaussianMixture:
        """Estimate the parameters by EM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; integer weights are equivalent to repeating rows.

        Returns
        -------
        self : GaussianMixture
        """
        with single_threaded_blas():
            self._fit(X, sample_weight)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit, then return the component of every sample (consistent with ``predict``)."""
        with single_threaded_blas():
            X = self._fit(X, sample_weight)
            return self.predict(X)

    def _fit(self, X, sample_weight) -> np.ndarray:
        X = self._validate_X(X, reset=True)
        self._check_parameters(X)
        w = check_sample_weight(sample_weight, X.shape[0])
        if w is not None and np.count_nonzero(w) < self.n_components:
            raise ValueError(
                f"n_components={self.n_components} must be <= the {np.count_nonzero(w)} samples "
                f"with positive sample_weight"
            )
        model = self._model
        n, d = X.shape
        total_weight = float(n if w is None else w.sum())
        patterns = find_patterns(X) if self.missing == "marginalize" else None
        if patterns is None:
            shift = X.mean(axis=0) if w is None else (w @ X) / total_weight
            X_init = X
        else:
            observed = ~np.isnan(X)
            ww = np.ones(n) if w is None else w
            shift = (np.where(observed, X, 0.0).T @ ww) / (observed.T @ ww)
            # The starting partition (and the prior's scale) see missing values as the feature's
            # mean; EM itself uses only what was observed.
            X_init = np.where(observed, X, shift)
        # EM works on the centred, transposed copy: centring keeps the one-pass moments free of
        # cancellation, and (d, n) rows make every per-chunk array contiguous.
        XcT = st.centred_transposed(X_init, shift)
        data_second = st.data_second_moment(XcT, w) if model.needs_data_second_moment() else None
        # Complete rows go through the chunked statistics; incomplete ones through missing.py.
        XcT_em, w_em, second_complete = XcT, w, data_second
        if patterns is not None:
            XcT_em = np.ascontiguousarray(XcT[:, patterns.complete])
            w_em = None if w is None else w[patterns.complete]
            if data_second is not None:
                second_complete = st.data_second_moment(XcT_em, w_em)

        warm = self.warm_start and hasattr(self, "converged_")
        if warm and self.means_.shape != (self.n_components, d):
            raise ValueError("warm_start needs the same n_components and n_features as the previous fit")
        n_init = 1 if warm else self.n_init
        rng = as_generator(self.random_state)
        rounding = self._rounding_variance(d)
        prior = self._prior(XcT, w, total_weight, data_second)

        best: tuple[Any, int, bool, list[float]] | None = None
        best_bound = -np.inf
        for init in range(n_init):
            clock = self._verbose_start(init)
            if warm:
                params = (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
                bound = self.lower_bound_
            else:
                params = self._initial_params(X_init, XcT, w, shift, rng, data_second, prior)
                bound = -np.inf

            def e_step(internal, covariances):
                return self._em_statistics(
                    XcT_em, w_em, internal, patterns, X, w, shift, covariances, second_complete
                )

            params, bound, n_iter, converged, bounds = self._em(
                params, bound, e_step, total_weight, shift, rounding, prior, clock
            )
            self._verbose_end(init, bound, converged)
            if bound > best_bound or best is None:
                best_bound = bound
                best = (params, n_iter, converged, bounds)

        assert best is not None  # n_init >= 1 (checked with the other parameters)
        params, n_iter, converged, bounds = best
        # The caller of fit: fit's _fit_context wrapper -> fit -> _fit -> _finish.
        self._finish(params, n_iter, converged, best_bound, bounds, rounding, prior, stacklevel=5)
        return X

    def refit_from_statistics(
        self,
        statistics: Callable[[st.MixtureParameters, np.ndarray], st.SufficientStatistics],
        *,
        moments: st.DataMoments | Callable[[np.ndarray], st.DataMoments] | None = None,
        shift=None,
    ) -> GaussianMixture:
        """Run EM from the current parameters, the E-step totals coming from ``statistics``.

        For data that is not one in-memory array (partitions on disk or on a cluster's workers):
        ``statistics(params, shift)`` must return the :class:`~gmm_engine.statistics.SufficientStatistics`
        summed over all the data (complete rows only), for the parameters ``params`` given in
        coordinates centred at ``shift`` (:func:`gmm_engine.external.partition_statistics`
        computes one partition's share; shares add up with ``+``). The M-step, convergence test
        (``tol``, ``max_iter``), ``reg_covar``, ``resolution`` and ``covariance_prior`` are those
        of :meth:`fit`.

        It starts where ``fit`` with ``warm_start=True`` would: from the fitted parameters, with
        ``lower_bound_`` as the previous bound (an unfitted estimator starts from
        ``weights_init``, ``means_init`` and ``precisions_init``, which must then all be given).
        On the same data it gives ``fit``'s parameters up to the rounding of the sums' order.
        Every fitted attribute is set only when EM has run to the end: if ``statistics`` raises,
        the estimator is unchanged.

        Parameters
        ----------
        statistics : callable ``(MixtureParameters, shift) -> SufficientStatistics``
        moments : DataMoments or callable ``shift -> DataMoments``, default=None
            Total weight, first and second moments of the data centred at ``shift``
            (:func:`gmm_engine.external.partition_moments`, summed). Needed by the covariance types
            that pool the data's scatter (``tied`` and the other shared-volume/shape families) and
            by ``covariance_prior``; ignored otherwise (a callable is then not called, so a
            cluster need not read the data an extra time).
        shift : array-like of shape (n_features,), default=None
            Centre of the coordinates the statistics are computed in (None: the mixture mean of the
            starting parameters). Any point near the data keeps the sums free of cancellation.

        Returns
        -------
        self : GaussianMixture
        """
        validate_parameter_constraints(self._parameter_constraints, self.get_params(deep=False), "refit")
        if self.__sklearn_is_fitted__():
            params = (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
            bound = self.lower_bound_
        elif self.weights_init is None or self.means_init is None or self.precisions_init is None:
            raise ValueError(
                "refit_from_statistics starts from a fitted estimator, or from weights_init, "
                "means_init and precisions_init all given"
            )
        else:
            prec_chol = self._model.precision_cholesky_from_precisions(
                np.asarray(self.precisions_init, dtype=np.float64)
            )
            params = (
                np.array(self.weights_init, dtype=np.float64),
                np.array(self.means_init, dtype=np.float64),
                self._model.covariances_from_precision_cholesky(prec_chol),
                prec_chol,
            )
            bound = -np.inf
        weights, means = params[0], params[1]
        k, d = means.shape
        if k != self.n_components:
            raise ValueError(f"the starting parameters have {k} components, n_components={self.n_components}")
        shift = weights @ means if shift is None else np.asarray(shift, dtype=np.float64)
        if shift.shape != (d,) or not np.isfinite(shift).all():
            raise ValueError(f"shift must be {d} finite numbers, got shape {shift.shape}")
        model = self._model
        check_per_feature(self.reg_covar, "reg_covar", d)
        if self.resolution is not None:
            check_per_feature(self.resolution, "resolution", d)
        needs_second = model.needs_data_second_moment() or self.covariance_prior is not None
        data_moments: st.DataMoments | None = None
        if needs_second:
            if moments is None:
                raise ValueError(
                    f"covariance_type={self.covariance_type!r}"
                    + (" with a covariance_prior" if self.covariance_prior is not None else "")
                    + " needs the data's moments (moments=DataMoments from partition_moments, summed)"
                )
            data_moments = moments(shift) if callable(moments) else moments
            shapes = (data_moments.first.shape, data_moments.second.shape)
            if shapes != ((d,), (d, d)) or not data_moments.total_weight > 0:
                raise ValueError(
                    f"moments must have ({d},) and ({d}, {d}) moments and a positive total weight, "
                    f"got {shapes} and {data_moments.total_weight}"
                )
        rounding = self._rounding_variance(d)
        prior = None
        data_second = None
        if data_moments is not None:
            if self.covariance_prior is not None:
                # fit centres at the data mean; here the shift is only near it.
                prior = self._prior_from_moment(data_moments.scatter_about_mean(), data_moments.total_weight)
            if model.needs_data_second_moment():
                data_second = data_moments.second
        p = 1 + d + model.n_second_order(d)

        def e_step(internal, covariances):
            stats = statistics(internal, shift)
            if not isinstance(stats, st.SufficientStatistics):
                raise TypeError(f"statistics must return SufficientStatistics, got {type(stats).__name__}")
            if stats.sums.shape != (k, p) or not np.isfinite(stats.sums).all():
                raise ValueError(
                    f"statistics returned sums of shape {stats.sums.shape} (finite: "
                    f"{bool(np.isfinite(stats.sums).all())}); expected finite ({k}, {p}) for "
                    f"covariance_type={self.covariance_type!r} and {d} features"
                )
            if not stats.total_weight > 0:
                raise ValueError(f"statistics cover no data (total weight {stats.total_weight})")
            return stats, data_second

        clock = self._verbose_start(0)
        params, bound, n_iter, converged, bounds = self._em(
            params, bound, e_step, None, shift, rounding, prior, clock
        )
        self._verbose_end(0, bound, converged)
        # The caller of refit_from_statistics: refit_from_statistics -> _finish.
        self._finish(params, n_iter, converged, bound, bounds, rounding, prior, stacklevel=3)
        self.n_features_in_ = d
        return self

    def _em(self, params, bound, e_step, total_weight, shift, rounding, prior, clock):
        """EM iterations from ``params`` (weights, means, covariances, precisions_cholesky) until
        the bound changes by less than ``tol`` or ``max_iter`` is reached.

        ``e_step(internal, covariances)`` returns the summed statistics over all data and the data
        second moment the M-step needs (or None). ``total_weight`` None: each iteration's
        ``stats.total_weight``. Returns (params, bound, n_iter, converged, bounds).
        """
        model = self._model
        d = params[1].shape[1]
        bounds: list[float] = []
        converged = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            previous = bound
            weights, means, covariances, prec_chol = params
            with np.errstate(divide="ignore"):
                internal = st.MixtureParameters(np.log(weights), means - shift, prec_chol, rounding)
            stats, second = e_step(internal, covariances)
            weight = stats.total_weight if total_weight is None else total_weight
            bound = stats.log_likelihood / weight
            if prior is not None:
                bound += model.log_prior(prec_chol, prior[0], prior[1], self.n_components, d) / weight
            params = self._params_from_stats(stats.sums, d, shift, second, prior, covariances)
            bounds.append(bound)
            clock = self._verbose_iteration(n_iter, bound - previous, clock)
            if abs(bound - previous) < self.tol:
                converged = True
                break
        return params, bound, n_iter, converged, bounds

    def _finish(self, params, n_iter, converged, bound, bounds, rounding, prior, *, stacklevel) -> None:
        """Warn when EM did not converge, then set every fitted attribute."""
        if not converged and self.max_iter > 0:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations (last change of "
                f"the lower bound >= tol={self.tol}); try a larger max_iter or tol.",
                ConvergenceWarning,
                stacklevel=stacklevel,
            )
        self._set(*params)
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bound_ = float(bound)
        self.lower_bounds_ = bounds
        self.rounding_variance_ = rounding
        self.covariance_prior_ = None if prior is None else prior[0]
        self.degrees_of_freedom_prior_ = None if prior is None else prior[1]

    def _em_statistics(self, XcT, w, internal, patterns, X, w_all, shift, covariances, second):
        """E-step totals over all rows, and the data second moment ``tied`` needs (None else):
        the complete rows chunk by chunk, the incomplete ones by their observed features."""
        model = self._model
        k, d = internal.means_c.shape
        stats = None
        if XcT.shape[1]:
            stats = st.em_statistics(model, XcT, w, internal, self._threads())
        if patterns is not None:
            full = model.full_covariances(covariances, k, d)
            extra, expected_second = missing_statistics(model, patterns, X, shift, w_all, internal, full)
            stats = extra if stats is None else stats + extra
            if second is not None:
                second = second + expected_second
        return stats, second

    # ------------------------------------------------------------------ progress (verbose)
    # The messages and their cadence are scikit-learn's, so logs read the same.
    def _verbose_start(self, init: int) -> float:
        if self.verbose:
            print(f"Initialization {init}")
        return time.perf_counter()

    def _verbose_iteration(self, n_iter: int, change: float, clock: float) -> float:
        if self.verbose and n_iter % self.verbose_interval == 0:
            now = time.perf_counter()
            if self.verbose == 1:
                print(f"  Iteration {n_iter}")
            else:
                print(f"  Iteration {n_iter}\t time lapse {now - clock:.5f}s\t ll change {change:.5f}")
            return now
        return clock

    def _verbose_end(self, init: int, bound: float, converged: bool) -> None:
        if self.verbose:
            state = "converged" if converged else "did not converge"
            extra = f" lower bound {bound:.5f}" if self.verbose >= 2 else ""
            print(f"Initialization {state}.{extra}")

    # ------------------------------------------------------------------ inference
    def _threads(self) -> int:
        return st.default_threads() if self.n_jobs is None else int(self.n_jobs)

    def _map_log_prob(self, X: np.ndarray, reduce) -> None:
        shift = self._shift()
        internal = self._internal(shift)
        patterns = find_patterns(X) if self.missing == "marginalize" else None
        with single_threaded_blas():
            if patterns is None:
                st.map_weighted_log_prob(self._model, X, shift, internal, reduce, self._threads())
                return
            complete = patterns.complete
            if complete.size:
                st.map_weighted_log_prob(
                    self._model,
                    X[complete],
                    shift,
                    internal,
                    lambda rows, LT: reduce(complete[rows], LT),
                    self._threads(),
                )
            k, d = self.means_.shape
            full = self._model.full_covariances(self.covariances_, k, d)
            missing_log_prob(self._model, patterns, X, shift, internal, full, reduce)

    def score_samples(self, X) -> np.ndarray:
        """Log of the mixture density at every sample, shape (n_samples,)."""
        X = self._check_X_predict(X)
        out = np.empty(X.shape[0])

        def reduce(sl, LT):
            out[sl] = st.log_normalise_(LT)

        self._map_log_prob(X, reduce)
        return out

    def predict_proba(self, X) -> np.ndarray:
        """Posterior probability of every component, shape (n_samples, n_components)."""
        X = self._check_X_predict(X)
        out = np.empty((X.shape[0], self.n_components))

        def reduce(sl, LT):
            st.log_normalise_(LT)
            out[sl] = LT.T

        self._map_log_prob(X, reduce)
        return out

    def predict_proba_and_density(self, X) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_proba` and :meth:`score_samples` of ``X`` from one pass over it: shapes
        (n_samples, n_components) and (n_samples,)."""
        X = self._check_X_predict(X)
        proba = np.empty((X.shape[0], self.n_components))
        density = np.empty(X.shape[0])

        def reduce(sl, LT):
            density[sl] = st.log_normalise_(LT)
            proba[sl] = LT.T

        self._map_log_prob(X, reduce)
        return proba, density

    def predict(self, X) -> np.ndarray:
        """Most probable component of every sample, shape (n_samples,)."""
        X = self._check_X_predict(X)
        out = np.empty(X.shape[0], dtype=np.intp)

        def reduce(sl, LT):
            out[sl] = LT.argmax(axis=0)

        self._map_log_prob(X, reduce)
        return out

    def _log_likelihood(self, X, sample_weight) -> tuple[float, float]:
        """Weighted total log-likelihood and total weight of checked ``X``."""
        w = check_sample_weight(sample_weight, X.shape[0])
        ll = self.score_samples(X)
        if w is None:
            return float(ll.sum()), float(X.shape[0])
        return float(ll @ w), float(w.sum())

    def score(self, X, y=None, sample_weight=None) -> float:
        """Mean (weighted) log-likelihood per sample."""
        X = self._check_X_predict(X)
        total, n = self._log_likelihood(X, sample_weight)
        return total / n

    def n_parameters(self) -> int:
        """Free parameters of the fitted model (weights, means, covariances), as BIC counts them."""
        return n_parameters(self.covariance_type, self.n_components, self.means_.shape[1])

    def bic(self, X, sample_weight=None) -> float:
        """Bayesian information criterion (lower is better)."""
        X = self._check_X_predict(X)
        total, n = self._log_likelihood(X, sample_weight)
        return -2.0 * total + self.n_parameters() * np.log(n)

    def aic(self, X, sample_weight=None) -> float:
        """Akaike information criterion (lower is better)."""
        X = self._check_X_predict(X)
        total, _ = self._log_likelihood(X, sample_weight)
        return -2.0 * total + 2.0 * self.n_parameters()

    def icl(self, X, sample_weight=None) -> float:
        """Integrated completed likelihood (Biernacki et al. 2000; lower is better).

        BIC plus twice the entropy of the hard assignment,
        ``-2 * sum_i w_i * log max_k tau_ik``, as mclust's ``icl`` (which uses the opposite sign).
        """
        X = self._check_X_predict(X)
        totals = self._score_totals(X, sample_weight)
        return float(
            -2.0 * totals.log_likelihood
            + self.n_parameters() * np.log(totals.total_weight)
            + 2.0 * totals.entropy
        )

    def _score_totals(self, X: np.ndarray, sample_weight) -> st.ScoreTotals:
        """Log-likelihood and hard-assignment entropy of checked ``X`` in one pass over it."""
        w = check_sample_weight(sample_weight, X.shape[0])
        ll = np.empty(X.shape[0])
        log_tau_max = np.empty(X.shape[0])

        def reduce(sl, LT):
            top = LT.max(axis=0)
            ll[sl] = st.log_normalise_(LT)
            log_tau_max[sl] = top - ll[sl]

        self._map_log_prob(X, reduce)
        if w is None:
            return st.ScoreTotals(float(ll.sum()), float(-log_tau_max.sum()), float(X.shape[0]))
        return st.ScoreTotals(float(ll @ w), float(-(log_tau_max @ w)), float(w.sum()))

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples from the fitted mixture.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of every sample, sorted as scikit-learn does.
        """
        check_is_fitted(self)
        validate_parameter_constraints(
            {"n_samples": [Interval(Integral, 1, None, closed="left")]},
            {"n_samples": n_samples},
            caller_name="sample",
        )
        rng = as_generator(self.random_state)
        k, d = self.means_.shape
        counts = rng.multinomial(n_samples, self.weights_)
        full = self._model.full_covariances(self.covariances_, k, d)
        parts = []
        for j in range(k):
            if counts[j] == 0:
                continue
            chol = np.linalg.cholesky(full[j])
            z = rng.standard_normal((counts[j], d))
            parts.append(self.means_[j] + z @ chol.T)
        X = np.vstack(parts)
        y = np.repeat(np.arange(k), counts)
        return X, y
