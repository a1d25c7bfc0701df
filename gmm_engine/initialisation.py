"""Starting partitions for EM: k-means, Ward's hierarchical agglomeration, k-means++ seeds,
random and random-from-data.

Each initialiser returns a function that gives the responsibilities of a slice of rows, so the
first M-step runs chunk by chunk like every later one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RespFor = Callable[[slice], np.ndarray]


#: Rows per block of :func:`_nearest`: a block's (rows, k) distances stay in the CPU's cache.
_NEAREST_ROWS = 8192


def _sq_distances(X: np.ndarray, centres: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    d2 = x_sq[:, None] - 2.0 * (X @ centres.T) + (centres**2).sum(axis=1)[None, :]
    np.maximum(d2, 0.0, out=d2)
    return d2


def _nearest(X: np.ndarray, centres: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """Each row's nearest centre: ``argmin`` of :func:`_sq_distances` (bitwise the same
    arithmetic), a block of rows at a time and in place, so that no (n, k) array is made."""
    n = X.shape[0]
    labels = np.empty(n, dtype=np.intp)
    c_sq = (centres**2).sum(axis=1)
    for start in range(0, n, _NEAREST_ROWS):
        stop = min(start + _NEAREST_ROWS, n)
        d2 = X[start:stop] @ centres.T
        d2 *= -2.0  # x_sq - 2 x.c and (-2 x.c) + x_sq are the same floating-point sum
        d2 += x_sq[start:stop, None]
        d2 += c_sq
        np.maximum(d2, 0.0, out=d2)
        np.argmin(d2, axis=1, out=labels[start:stop])
    return labels


def kmeans_plusplus(
    X: np.ndarray, k: int, rng: np.random.Generator, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Indices of k seeds chosen by greedy k-means++ (Arthur & Vassilvitskii 2007).

    Like scikit-learn, each step draws ``2 + log(k)`` candidates with probability proportional
    to weight x squared distance and keeps the one that lowers the potential most.
    """
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else sample_weight
    x_sq = np.einsum("ij,ij->i", X, X)
    trials = 2 + int(np.log(k))
    first = rng.choice(n, p=w / w.sum())
    indices = [first]
    closest = _sq_distances(X, X[[first]], x_sq)[:, 0]
    for _ in range(1, k):
        potential = w * closest
        total = potential.sum()
        if total <= 0.0:  # every remaining point coincides with a seed
            candidates = rng.choice(n, size=trials, p=w / w.sum())
        else:
            cum = np.cumsum(potential)
            candidates = np.searchsorted(cum, rng.random(trials) * cum[-1])
            candidates = np.minimum(candidates, n - 1)
        d2 = _sq_distances(X, X[candidates], x_sq)
        np.minimum(d2, closest[:, None], out=d2)
        best = int(np.argmin(w @ d2))
        indices.append(int(candidates[best]))
        closest = d2[:, best]
    return np.asarray(indices)


def kmeans_labels(
    X: np.ndarray,
    k: int,
    rng: np.random.Generator,
    sample_weight: np.ndarray | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> np.ndarray:
    """Labels of Lloyd's k-means from k-means++ seeds (one run; EM refines it anyway).

    Stops when the squared movement of the centres falls below ``tol`` times the mean feature
    variance, scikit-learn's criterion.
    """
    n, d = X.shape
    w = np.ones(n) if sample_weight is None else sample_weight
    centres = X[kmeans_plusplus(X, k, rng, sample_weight)].copy()
    x_sq = np.einsum("ij,ij->i", X, X)
    threshold = tol * float(X.var(axis=0).mean())
    weighted = [X[:, j] * w for j in range(d)]  # contiguous, made once for every iteration
    labels = np.zeros(n, dtype=np.intp)
    for _ in range(max_iter):
        labels = _nearest(X, centres, x_sq)
        counts = np.bincount(labels, weights=w, minlength=k)
        sums = np.stack([np.bincount(labels, weights=weighted[j], minlength=k) for j in range(d)], axis=1)
        empty = counts <= 0
        new = centres.copy()
        new[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():
            # Re-seed an empty cluster at the point farthest from its centre, as scikit-learn does.
            far = np.argsort(-((X - new[labels]) ** 2).sum(axis=1))[: int(empty.sum())]
            new[empty] = X[far]
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if shift <= threshold:
            break
    return _nearest(X, centres, x_sq)


#: Most rows :func:`ward_labels` agglomerates (mclust's default subset for its hierarchical
#: start): Ward's linkage needs memory and time quadratic in them.
WARD_MAX_SAMPLES = 2000


def canonical_order(X: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Indices that sort the rows by their values (then weight): the same rows in any order give
    the same sorted rows, so a draw made in this order does not depend on the input's row order."""
    keys = [X[:, j] for j in range(X.shape[1] - 1, -1, -1)]
    if sample_weight is not None:
        keys.insert(0, sample_weight)
    return np.lexsort(keys)


def ward_labels(
    X: np.ndarray,
    k: int,
    rng: np.random.Generator,
    sample_weight: np.ndarray | None = None,
    max_samples: int | None = None,
) -> np.ndarray:
    """Labels of a cut of Ward's hierarchical agglomeration into ``k`` clusters.

    A model-based start in the spirit of mclust's hierarchical agglomeration (Ward's criterion
    is its spherical, equal-volume case): identical rows merge first, at distance 0, so a spike
    of repeated values (customers with exactly one purchase, or zero net spend) enters the tree
    as one heavy point instead of being split between k-means centres.

    At most ``max_samples`` rows are agglomerated (``scipy.cluster.hierarchy.linkage``, method
    ``"ward"``): a draw without replacement, made by ``rng`` (with probability proportional to
    ``sample_weight``) over the rows sorted by value, so it does not depend on the row order.
    The tree is cut at ``k`` clusters; every row then joins the cluster whose mean (over the
    agglomerated rows, weighted) is nearest.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        No missing values.
    k : int
        Number of clusters. With fewer distinct rows agglomerated than ``k``, some clusters get
        no row (their components start empty, as EM allows).
    rng : numpy.random.Generator
        Draws the subsample (unused when every row is agglomerated).
    sample_weight : ndarray of shape (n_samples,), optional
        Non-negative weights: the subsample is drawn in proportion to them (rows of weight 0
        are never agglomerated) and the clusters' means are weighted by them; the linkage itself
        counts every agglomerated row once.
    max_samples : int, optional
        Most rows agglomerated; default :data:`WARD_MAX_SAMPLES`.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        Cluster of every row, in ``0 .. k-1``.
    """
    from scipy.cluster.hierarchy import cut_tree, linkage

    n, d = X.shape
    order = canonical_order(X, sample_weight)
    if sample_weight is None:
        p = None
        eligible = n
    else:
        ws = sample_weight[order]
        eligible = int(np.count_nonzero(ws))
        p = ws / ws.sum()
    m = min(WARD_MAX_SAMPLES if max_samples is None else max_samples, eligible)
    rows = order[np.sort(rng.choice(n, size=m, replace=False, p=p))] if m < n else order
    Xs = X[rows]
    ws = np.ones(m) if sample_weight is None else sample_weight[rows]
    if m < 2 or k == 1:
        sub = np.zeros(m, dtype=np.intp)
    else:
        tree = linkage(Xs, method="ward")
        sub = cut_tree(tree, n_clusters=min(k, m))[:, 0]
    # cut_tree numbers the clusters in order of first appearance in Xs (sorted rows): stable.
    counts = np.bincount(sub, weights=ws, minlength=k)
    sums = np.stack([np.bincount(sub, weights=Xs[:, j] * ws, minlength=k) for j in range(d)], axis=1)
    present = counts > 0
    centres = sums[present] / counts[present, None]
    x_sq = np.einsum("ij,ij->i", X, X)
    nearest = _nearest(X, centres, x_sq)
    return np.flatnonzero(present)[nearest]


def initial_responsibilities(
    method: str | Callable,
    X: np.ndarray,
    k: int,
    rng: np.random.Generator,
    sample_weight: np.ndarray | None,
) -> RespFor:
    """Responsibilities of the starting partition, served by row slices; ``method`` is one of
    the ``init_params`` names or a callable giving each row's component (see
    :class:`~gmm_engine.GaussianMixture`)."""
    n = X.shape[0]
    if callable(method):
        return _one_hot(_given_labels(method(X, k, rng, sample_weight), n, k), k)
    if method in ("kmeans", "ward"):
        labels = (kmeans_labels if method == "kmeans" else ward_labels)(X, k, rng, sample_weight)
        return _one_hot(labels, k)
    if method == "random":
        resp = rng.uniform(size=(n, k))
        resp /= resp.sum(axis=1, keepdims=True)
        return lambda sl: resp[sl]
    if method == "k-means++":
        indices = kmeans_plusplus(X, k, rng, sample_weight)
    elif method == "random_from_data":
        p = None if sample_weight is None else sample_weight / sample_weight.sum()
        if p is not None and np.count_nonzero(p) < k:
            raise ValueError(
                f"init_params='random_from_data' needs at least n_components={k} samples with positive weight"
            )
        indices = rng.choice(n, size=k, replace=False, p=p)
    else:  # pragma: no cover - parameters are validated before
        raise ValueError(f"unknown init_params {method!r}")

    # scikit-learn semantics: each seed point alone carries its component.
    def resp_for(sl: slice) -> np.ndarray:
        R = np.zeros((sl.stop - sl.start, k))
        inside = (indices >= sl.start) & (indices < sl.stop)
        R[indices[inside] - sl.start, np.flatnonzero(inside)] = 1.0
        return R

    return resp_for


def _one_hot(labels: np.ndarray, k: int) -> RespFor:
    eye = np.eye(k)
    return lambda sl: eye[labels[sl]]


def _given_labels(labels, n: int, k: int) -> np.ndarray:
    """A callable ``init_params``' result, checked: n integers in 0..k-1."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"init_params returned {labels.dtype} of shape {labels.shape}; it must give each of the "
            f"{n} rows an integer component in 0..{k - 1}"
        )
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"init_params returned components {int(labels.min())}..{int(labels.max())}; "
            f"they must be in 0..{k - 1}"
        )
    return labels
