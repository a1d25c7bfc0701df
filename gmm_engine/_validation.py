"""Input checks shared by the estimator and model selection, and the engine's exception types."""

from __future__ import annotations

import numbers

import numpy as np


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted model is called before ``fit``."""


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the lower bound changed by less than ``tol``."""


def check_array(X, *, name: str = "X", min_samples: int = 1) -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 matrix, or raise ``ValueError`` saying why not."""
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to a numeric array: {exc}") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"Expected a 2D array for {name} of shape (n_samples, n_features), got "
            f"{arr.ndim}D with shape {arr.shape}; reshape a single feature with "
            f"X.reshape(-1, 1)."
        )
    n, d = arr.shape
    if d == 0:
        raise ValueError(f"{name} has 0 features; at least 1 is required")
    if n < min_samples:
        raise ValueError(f"{name} has {n} samples; at least {min_samples} are required")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(arr[row, col]) else "infinity"
        count = int((~finite).sum())
        raise ValueError(
            f"{name} contains {kind} (first at row {row}, column {col}; {count} non-finite "
            f"values in all)"
        )
    return arr


def check_sample_weight(sample_weight, n_samples: int) -> np.ndarray | None:
    """Validate weights; ``None`` means all ones (kept as None so no multiply is spent on it)."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight must have shape ({n_samples},), got {w.shape}"
        )
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or infinity")
    if (w < 0).any():
        row = int(np.argmax(w < 0))
        raise ValueError(f"sample_weight must be non-negative; row {row} is {w[row]}")
    if not (w > 0).any():
        raise ValueError("sample_weight must not be all zero")
    return np.ascontiguousarray(w)


def check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(value, name: str, minimum: float = 0.0, inclusive: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
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
    if random_state is None or isinstance(
        random_state, (numbers.Integral, np.random.SeedSequence)
    ):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    raise ValueError(
        f"random_state must be None, an int, a SeedSequence or a Generator, got {random_state!r}"
    )
