"""gmm_engine: Gaussian mixtures fitted by chunked, weighted EM, with model selection.

numpy, scipy and scikit-learn's estimator base: :class:`GaussianMixture` is a scikit-learn
estimator (``fit``, ``predict``, trailing-underscore fitted attributes, ``check_estimator``
passes); :func:`select_model` is the entry point the pipeline uses. ``NotFittedError`` and
``ConvergenceWarning`` are scikit-learn's own.
"""

from ._validation import ConvergenceWarning, NotFittedError
from .covariance import (
    ALL_COVARIANCE_TYPES,
    COVARIANCE_TYPES,
    MCLUST_MODELS,
    covariance_layout,
    full_covariances,
    n_parameters,
)
from .data import BlockData, FullData, InMemoryData
from .external import DataMoments, ScoreTotals, partition_moments, partition_scores, partition_statistics
from .mixture import GaussianMixture
from .selection import (
    CRITERIA,
    VARIANCE_FLOOR,
    NoAcceptableModelError,
    SelectionResult,
    criteria,
    criteria_from_totals,
    criteria_on,
    default_degeneracy,
    degeneracy_on,
    degeneracy_reason,
    observed_std,
    sample_rows,
    select_model,
)

__all__ = [
    "ALL_COVARIANCE_TYPES",
    "COVARIANCE_TYPES",
    "CRITERIA",
    "MCLUST_MODELS",
    "VARIANCE_FLOOR",
    "BlockData",
    "ConvergenceWarning",
    "DataMoments",
    "FullData",
    "GaussianMixture",
    "InMemoryData",
    "NoAcceptableModelError",
    "NotFittedError",
    "ScoreTotals",
    "SelectionResult",
    "covariance_layout",
    "criteria",
    "criteria_from_totals",
    "criteria_on",
    "default_degeneracy",
    "degeneracy_on",
    "degeneracy_reason",
    "full_covariances",
    "n_parameters",
    "observed_std",
    "partition_moments",
    "partition_scores",
    "partition_statistics",
    "sample_rows",
    "select_model",
]
