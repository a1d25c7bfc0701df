"""GaussianMixture: a scikit-learn-compatible estimator fitted by chunked, weighted EM."""

from __future__ import annotations

import warnings

import numpy as np

from . import statistics as st
from ._validation import (
    ConvergenceWarning,
    NotFittedError,
    as_generator,
    check_array,
    check_float,
    check_int,
    check_sample_weight,
)
from .covariance import COVARIANCE_MODELS, n_parameters
from .initialisation import initial_responsibilities
from .threads import single_threaded_blas

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")

# scikit-learn adds this to every component's summed responsibility so that an emptied
# component keeps a finite (negligible) weight and a defined mean instead of 0/0.
_NK_FLOOR = 10 * np.finfo(np.float64).eps


class GaussianMixture:
    """Gaussian mixture model fitted by expectation-maximisation.

    Same parameters, attributes and semantics as ``sklearn.mixture.GaussianMixture``, plus
    ``sample_weight`` (weighted EM: integer weights give the model of repeated rows) and the
    ``icl`` criterion. E- and M-steps run on chunks of samples as one matrix product each
    (see :mod:`gmm_engine.statistics`), so memory stays flat on large inputs.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        ``full``: each component its own covariance; ``tied``: one shared covariance;
        ``diag``: each its own diagonal covariance; ``spherical``: each its own variance.
    tol : float, default=1e-3
        EM stops when the mean per-sample log-likelihood changes by less than this.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance, keeping it positive definite.
    max_iter : int, default=100
        EM iterations per initialisation.
    n_init : int, default=1
        Initialisations; the one with the highest final lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How the starting partition is chosen.
    weights_init : array-like of shape (n_components,), default=None
    means_init : array-like of shape (n_components, n_features), default=None
    precisions_init : array-like, default=None
        Shape as ``precisions_`` for the covariance type.
    random_state : int, Generator, SeedSequence or None, default=None
        Seed of every random choice (initialisation, ``sample``).
    warm_start : bool, default=False
        Start a new ``fit`` from the current parameters (with ``n_init`` ignored).
    n_jobs : int, default=None
        Threads that process chunks of samples at once (``None``: up to 2). Results do not
        depend on it: chunk totals are always summed in the same order.

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
        Mean (weighted) log-likelihood of the kept initialisation at its last iteration.
    lower_bounds_ : list of float
        ``lower_bound_`` after every iteration of the kept initialisation.
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        n_jobs: int | None = None,
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
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ scikit-learn API glue
    def get_params(self, deep: bool = True) -> dict:
        names = (
            "n_components covariance_type tol reg_covar max_iter n_init init_params "
            "weights_init means_init precisions_init random_state warm_start n_jobs"
        ).split()
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params) -> "GaussianMixture":
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for GaussianMixture")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = GaussianMixture().get_params()
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if not (isinstance(v, np.ndarray) or isinstance(defaults[k], np.ndarray))
            and v != defaults[k]
        ]
        return f"GaussianMixture({', '.join(changed)})"

    # ------------------------------------------------------------------ parameter checks
    @property
    def _model(self):
        return COVARIANCE_MODELS[self.covariance_type]

    def _check_parameters(self, X: np.ndarray) -> None:
        n, d = X.shape
        k = check_int(self.n_components, "n_components", 1)
        if k > n:
            raise ValueError(
                f"n_components={k} must be <= n_samples={n}: cannot fit more components "
                f"than samples"
            )
        if self.covariance_type not in COVARIANCE_MODELS:
            raise ValueError(
                f"covariance_type must be one of {sorted(COVARIANCE_MODELS)}, got "
                f"{self.covariance_type!r}"
            )
        if self.init_params not in INIT_METHODS:
            raise ValueError(
                f"init_params must be one of {list(INIT_METHODS)}, got {self.init_params!r}"
            )
        check_float(self.tol, "tol", 0.0)
        check_float(self.reg_covar, "reg_covar", 0.0)
        check_int(self.max_iter, "max_iter", 0)
        check_int(self.n_init, "n_init", 1)
        if self.n_jobs is not None:
            check_int(self.n_jobs, "n_jobs", 1)
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
            square = self.covariance_type in ("full", "tied")
            if square and not np.allclose(p, np.swapaxes(p, -1, -2), atol=1e-10, rtol=1e-8):
                raise ValueError("precisions_init must be symmetric")

    def _check_fitted(self) -> None:
        if not hasattr(self, "precisions_cholesky_"):
            raise NotFittedError(
                "This GaussianMixture instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    def _check_X_predict(self, X) -> np.ndarray:
        self._check_fitted()
        X = check_array(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but this GaussianMixture was fitted with "
                f"{self.n_features_in_} features"
            )
        return X

    # ------------------------------------------------------------------ parameter state
    def _params_from_stats(self, sums: np.ndarray, d: int, shift, data_second):
        """M-step: (weights, means, covariances, precisions_cholesky) from summed statistics."""
        model = self._model
        nk = sums[:, 0] + _NK_FLOOR
        means_c = sums[:, 1 : 1 + d] / nk[:, None]
        covariances = model.covariances_from_stats(
            nk, means_c, sums[:, 1 + d :], self.reg_covar, data_second
        )
        prec_chol = model.precision_cholesky(covariances)
        weights = nk / nk.sum()
        return weights, means_c + shift, covariances, prec_chol

    def _initial_params(self, X, XcT, w, shift, rng, data_second):
        k, d = self.n_components, X.shape[1]
        needs_partition = (
            self.weights_init is None or self.means_init is None or self.precisions_init is None
        )
        if needs_partition:
            resp_for = initial_responsibilities(self.init_params, X, k, rng, w)
            sums = st.responsibility_statistics(self._model, XcT, w, resp_for)
            if data_second is not None:
                # Pool only the rows the starting partition covers. scikit-learn pools every
                # row, which for single-point seeds (k-means++, random_from_data) inflates the
                # first tied covariance by n/k and can stall EM in a poor optimum.
                covered = np.concatenate(
                    [resp_for(slice(i, min(i + 65536, len(X)))).sum(axis=1)
                     for i in range(0, len(X), 65536)]
                )
                data_second = st.data_second_moment(XcT, covered if w is None else covered * w)
            weights, means, covariances, prec_chol = self._params_from_stats(
                sums, d, shift, data_second
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
        return st.MixtureParameters(log_weights, self.means_ - shift, self.precisions_cholesky_)

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
    def fit(self, X, y=None, sample_weight=None) -> "GaussianMixture":
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

    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit, then return the component of every sample (consistent with ``predict``)."""
        with single_threaded_blas():
            X = self._fit(X, sample_weight)
            return self.predict(X)

    def _fit(self, X, sample_weight) -> np.ndarray:
        X = check_array(X, min_samples=1)
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
        shift = (X.mean(axis=0) if w is None else (w @ X) / total_weight)
        # EM works on the centred, transposed copy: centring keeps the one-pass moments free of
        # cancellation, and (d, n) rows make every per-chunk array contiguous.
        XcT = st.centred_transposed(X, shift)
        data_second = (
            st.data_second_moment(XcT, w) if model.needs_data_second_moment() else None
        )

        warm = self.warm_start and hasattr(self, "converged_")
        if warm and self.means_.shape != (self.n_components, d):
            raise ValueError(
                "warm_start needs the same n_components and n_features as the previous fit"
            )
        n_init = 1 if warm else self.n_init
        rng = as_generator(self.random_state)

        best = None
        best_bound = -np.inf
        for _ in range(n_init):
            if warm:
                params = (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
                bound = self.lower_bound_
            else:
                params = self._initial_params(X, XcT, w, shift, rng, data_second)
                bound = -np.inf
            bounds: list[float] = []
            converged = False
            n_iter = 0
            for n_iter in range(1, self.max_iter + 1):
                previous = bound
                weights, means, _, prec_chol = params
                with np.errstate(divide="ignore"):
                    internal = st.MixtureParameters(np.log(weights), means - shift, prec_chol)
                stats = st.em_statistics(model, XcT, w, internal, self._threads())
                bound = stats.log_likelihood / total_weight
                params = self._params_from_stats(stats.sums, d, shift, data_second)
                bounds.append(bound)
                if abs(bound - previous) < self.tol:
                    converged = True
                    break
            if bound > best_bound or best is None:
                best_bound = bound
                best = (params, n_iter, converged, bounds)

        params, n_iter, converged, bounds = best
        if not converged and self.max_iter > 0:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations (last change of "
                f"the lower bound >= tol={self.tol}); try a larger max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._set(*params)
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bound_ = float(best_bound)
        self.lower_bounds_ = bounds
        self.n_features_in_ = d
        return X

    # ------------------------------------------------------------------ inference
    def _threads(self) -> int:
        return st.default_threads() if self.n_jobs is None else int(self.n_jobs)

    def _map_log_prob(self, X: np.ndarray, reduce) -> None:
        shift = self._shift()
        with single_threaded_blas():
            st.map_weighted_log_prob(
                self._model, X, shift, self._internal(shift), reduce, self._threads()
            )

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

    def _n_parameters(self) -> int:
        return n_parameters(self.covariance_type, self.n_components, self.means_.shape[1])

    def bic(self, X, sample_weight=None) -> float:
        """Bayesian information criterion (lower is better)."""
        X = self._check_X_predict(X)
        total, n = self._log_likelihood(X, sample_weight)
        return -2.0 * total + self._n_parameters() * np.log(n)

    def aic(self, X, sample_weight=None) -> float:
        """Akaike information criterion (lower is better)."""
        X = self._check_X_predict(X)
        total, _ = self._log_likelihood(X, sample_weight)
        return -2.0 * total + 2.0 * self._n_parameters()

    def icl(self, X, sample_weight=None) -> float:
        """Integrated completed likelihood (Biernacki et al. 2000; lower is better).

        BIC plus twice the entropy of the hard assignment,
        ``-2 * sum_i w_i * log max_k tau_ik``, as mclust's ``icl`` (which uses the opposite sign).
        """
        X = self._check_X_predict(X)
        w = check_sample_weight(sample_weight, X.shape[0])
        n = float(X.shape[0] if w is None else w.sum())
        ll = np.empty(X.shape[0])
        log_tau_max = np.empty(X.shape[0])

        def reduce(sl, LT):
            top = LT.max(axis=0)
            ll[sl] = st.log_normalise_(LT)
            log_tau_max[sl] = top - ll[sl]

        self._map_log_prob(X, reduce)
        if w is None:
            loglik, entropy = ll.sum(), -log_tau_max.sum()
        else:
            loglik, entropy = ll @ w, -(log_tau_max @ w)
        return float(-2.0 * loglik + self._n_parameters() * np.log(n) + 2.0 * entropy)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples from the fitted mixture.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of every sample, sorted as scikit-learn does.
        """
        self._check_fitted()
        n_samples = check_int(n_samples, "n_samples", 1)
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
