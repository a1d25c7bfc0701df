"""Input checks shared by the estimator and model selection, and the engine's exception types."""

from __future__ import annotations

import numbers
from typing import cast

import numpy as np

# scikit-learn's own types, so a caller's ``except NotFittedError`` or warning filter for
# ConvergenceWarning covers this engine and scikit-learn alike.
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: F401  (re-exported)


def check_array(X, *, name: str = "X", min_samples: int = 1, allow_nan: bool = False) -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 matrix, or raise ``ValueError`` saying why not.

    The messages name ``X`` and carry the phrases scikit-learn's own checks use ("Reshape your
    data", "Complex data not supported", "0 feature(s)"), so callers who match on them keep
    working; a non-finite value is reported with its row and column. With ``allow_nan`` NaN
    marks a missing value and only infinities are refused.
    """
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):
        raise TypeError(
            f"{name} is a sparse matrix; sparse input is not supported: pass a dense array ({name}.toarray())"
        )
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to a numeric array: {exc}") from exc
    if np.iscomplexobj(arr):
        raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
    if arr.dtype == object:
        # Numbers held as Python objects (a pandas object column) are numbers; anything else
        # fails here with numpy's own TypeError or ValueError, which names the offending value.
        try:
            arr = arr.astype(np.float64)
        except ValueError as exc:
            raise ValueError(f"{name} must be numeric: {exc}") from exc
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"Expected a 2D array for {name} of shape (n_samples, n_features), got "
            f"{arr.ndim}D with shape {arr.shape}. Reshape your data: X.reshape(-1, 1) for a "
            f"single feature, X.reshape(1, -1) for a single sample."
        )
    n, d = arr.shape
    if d == 0:
        raise ValueError(f"{name} has 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if n < min_samples:
        raise ValueError(f"{name} has {n} samples; at least {min_samples} are required")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = ~np.isinf(arr) if allow_nan else np.isfinite(arr)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(arr[row, col]) else "infinity"
        count = int((~finite).sum())
        raise ValueError(
            f"{name} contains {kind} (first at row {row}, column {col}; {count} non-finite values in all)"
        )
    return arr


def check_sample_weight(sample_weight, n_samples: int) -> np.ndarray | None:
    """Validate weights; ``None`` means all ones (kept as None so no multiply is spent on it)."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or infinity")
    if (w < 0).any():
        row = int(np.argmax(w < 0))
        raise ValueError(f"sample_weight must be non-negative; row {row} is {w[row]}")
    if not (w > 0).any():
        raise ValueError("sample_weight must not be all zero")
    return np.ascontiguousarray(w)


def check_float(value, name: str, minimum: float = 0.0, inclusive: bool = True) -> float:
    # cast: numpy's stubs do not list numbers.Real among isfinite's inputs; it takes any real number.
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(cast(float, value))
    if ok:
        ok = value >= minimum if inclusive else value > minimum
    if not ok:
        rel = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be a finite number {rel} {minimum}, got {value!r}")
    return float(value)


def check_per_feature(value, name: str, n_features: int) -> float | np.ndarray:
    """A finite number >= 0, or one per feature (shape (n_features,)); returned as float or array."""
    if np.ndim(value) == 0:
        return check_float(value, name, 0.0)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or one number per feature, got {value!r}") from None
    if arr.shape != (n_features,):
        raise ValueError(
            f"{name} must be a number or have shape ({n_features},) (one per feature), got shape {arr.shape}"
        )
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must hold finite numbers >= 0, got {arr.tolist()}")
    return arr


def as_generator(random_state) -> np.random.Generator:
    """``None``, an int, a ``SeedSequence`` or a ``Generator`` -> a ``Generator``."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, np.random.SeedSequence):
        return np.random.default_rng(random_state)
    if isinstance(random_state, numbers.Integral):
        return np.random.default_rng(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    raise ValueError(
        f"random_state must be None, an int, a SeedSequence or a Generator, got {random_state!r}"
    )
