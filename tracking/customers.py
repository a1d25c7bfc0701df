"""Customers of two runs: who is in both, who moved between segments, and who is held in theirs.

Assignments are aligned on the customers present in both runs (:func:`customer_overlap`); the
migration table and the moved share count them, and :func:`hold_segments` keeps a customer in
last run's segment unless the model now clearly favours another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True, eq=False)
class CustomerOverlap:
    """Customers present in both runs, aligned. It holds the runs' own arrays and their alignment,
    nothing per customer of its own (at 10^7 customers in both runs, two aligned copies of their
    segments took 0.15 GiB; issue 12): the aligned segments are made when read, and
    :meth:`pair_counts` counts them a block at a time.

    Attributes
    ----------
    current_customers : ndarray of shape (n_current,)
        Every customer of the current run (the run's own array, not a copy).
    positions : ndarray of shape (m,), int
        Where the customers in both runs are in ``current_customers``, in its order.
    previous_positions : ndarray of shape (m,), int
        Where the same customers are among the previous run's.
    previous_all, current_all : ndarray of shape (n_previous,) and (n_current,), int64
        Every customer's segment in each run.
    entered : int
        Customers only in the current run.
    left : int
        Customers only in the previous run.
    """

    current_customers: np.ndarray
    positions: np.ndarray
    previous_positions: np.ndarray
    previous_all: np.ndarray
    current_all: np.ndarray
    entered: int
    left: int

    @property
    def previous_segments(self) -> np.ndarray:
        """The customers in both runs' previous segments, in the current run's order (a copy
        made on each access)."""
        return self.previous_all[self.previous_positions]

    @property
    def current_segments(self) -> np.ndarray:
        """The customers in both runs' current segments, in the current run's order (a copy
        made on each access)."""
        return self.current_all[self.positions]

    def pair_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`pair_counts` of (previous segment, current segment) over the customers in both runs."""
        return pair_counts(self.previous_all, self.current_all, self.previous_positions, self.positions)

    @property
    def customer_ids(self) -> np.ndarray:
        """The customers in both runs, in the current run's order (a copy made on each access:
        at 10^7 customers the overlap does not hold one of its own)."""
        return self.current_customers[self.positions]

    @property
    def n_customers(self) -> int:
        """How many customers are in both runs."""
        return int(self.positions.size)


def integers(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """``values`` as an integer array, without a copy when they are one already (of any width:
    a run holds positions and segment ids in 32 bits; issue 12)."""
    a = np.asarray(values)
    return a if np.issubdtype(a.dtype, np.integer) else a.astype(np.int64)


def as_text(ids: Any) -> np.ndarray:
    """Customer ids as text (ids are compared as text): an array of numpy's variable-width strings
    stays as it is, an object array of Python strings too; anything else becomes Python strings.

    A fixed-width numpy string copy of 10^7 ids would take gigabytes and sort slowly. Ids read a
    block at a time from a file (any sized object whose ``dtype`` is numpy text and whose slices
    are numpy text arrays) stay as they are too: reading them whole would defeat the file."""
    if not isinstance(ids, np.ndarray) and isinstance(getattr(ids, "dtype", None), np.dtypes.StringDType):
        return ids  # read a block at a time by whoever needs them
    a = np.asarray(ids)
    if isinstance(a.dtype, np.dtypes.StringDType):
        return a
    if a.dtype == object and pd.api.types.infer_dtype(a, skipna=False) == "string":
        return a
    return np.asarray(a.astype(str), dtype=object)


def align_customers(
    previous_customers: Sequence[Any] | np.ndarray, current_customers: Sequence[Any] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(ip, ic)`` of the customers in both runs, in the current run's order: customer
    ``current[ic[j]]`` is ``previous[ip[j]]``.

    The ids are joined on 64-bit hashes of their text (sorted integers, not a hash table of
    Python strings: 12 s instead of 20 at 10^7 customers), and every pair found is checked on the
    text itself; repeated hashes (a repeated id, or two ids sharing a hash) take the exact path.

    Raises
    ------
    ValueError
        Either run's customer ids are not unique.
    """
    # Python strings: pandas hashes and indexes those (numpy text would be turned into them anyway).
    previous = np.asarray(as_text(previous_customers), dtype=object)
    current = np.asarray(as_text(current_customers), dtype=object)
    if previous.size and current.size:
        joined = _sorted_join(
            pd.util.hash_array(previous, categorize=False), pd.util.hash_array(current, categorize=False)
        )
        if joined is not None and bool(np.all(previous[joined[0]] == current[joined[1]])):
            return joined
    return _align_exactly(pd.Index(previous), pd.Index(current))


def _sorted_join(previous_hash: np.ndarray, current_hash: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ip, ic)`` of equal hashes, in current order; None when either side repeats a hash."""
    # Temporaries are dropped as soon as they are used, and the sorted current hashes' buffer is
    # reused for their matches: at 10^7 customers each array is 80 MB.
    previous_order = np.argsort(previous_hash, kind="stable")
    previous_sorted = previous_hash[previous_order]
    if _repeats(previous_sorted):
        return None
    current_order = np.argsort(current_hash, kind="stable")
    matched = current_hash[current_order]
    if _repeats(matched):
        return None
    last = previous_sorted.size - 1
    for lo in range(0, matched.size, _JOIN_BLOCK):
        # Both sides sorted: the binary searches walk memory in order (12 s -> 0.5 s at 10^7).
        wanted = matched[lo : lo + _JOIN_BLOCK]
        at = np.minimum(np.searchsorted(previous_sorted, wanted), last)
        found = previous_sorted[at] == wanted
        # The block's hashes are read: their slots now hold each one's previous position, or -1.
        wanted.view(np.int64)[...] = np.where(found, previous_order[at], -1)
    del previous_sorted, previous_order
    positions = np.empty(current_hash.size, dtype=np.int64)
    positions[current_order] = matched.view(np.int64)
    del current_order, matched
    ic = np.flatnonzero(positions >= 0)
    return positions[ic], ic


#: Hashes compared at a time in :func:`_sorted_join`.
_JOIN_BLOCK = 1 << 20


def _repeats(sorted_values: np.ndarray) -> bool:
    return bool(np.any(sorted_values[1:] == sorted_values[:-1]))


def _align_exactly(previous: pd.Index, current: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """:func:`align_customers` on hash tables of the ids (or keys) themselves."""
    for name, index in (("previous", previous), ("current", current)):
        if not index.is_unique:
            raise ValueError(f"customer_overlap: {name} customer ids are not unique")
    positions = previous.get_indexer(current)
    ic = np.flatnonzero(positions >= 0)
    return positions[ic].astype(np.int64), ic


def customer_overlap(
    previous_customers: Sequence[Any] | np.ndarray | None,
    previous_segments: Sequence[int] | np.ndarray,
    current_customers: Sequence[Any] | np.ndarray,
    current_segments: Sequence[int] | np.ndarray,
    alignment: tuple[np.ndarray, np.ndarray] | None = None,
) -> CustomerOverlap:
    """Align two runs' assignments on the customers present in both (ids compared as text), in
    the current run's order. ``alignment``: :func:`align_customers` of the two runs' customers
    (or any join giving the same positions), when the caller has it already (at 10^7 customers
    it takes seconds); ``previous_customers`` may then be None."""
    ps, cs = integers(previous_segments), integers(current_segments)
    if previous_customers is None and alignment is None:
        raise ValueError("customer_overlap: the previous customers or their alignment are needed")
    n_previous = ps.size if previous_customers is None else len(previous_customers)
    n_current = len(current_customers)
    for name, n, seg in (("previous", n_previous, ps), ("current", n_current, cs)):
        if seg.shape != (n,):
            raise ValueError(
                f"customer_overlap: {name} customers and segments differ in length ({n} vs {seg.size})"
            )
    if alignment is None:
        assert previous_customers is not None  # checked above
        alignment = align_customers(previous_customers, current_customers)
    ip, ic = alignment
    return CustomerOverlap(
        current_customers=as_text(current_customers),
        positions=ic,
        previous_positions=ip,
        previous_all=ps,
        current_all=cs,
        entered=int(n_current - ic.size),
        left=int(n_previous - ic.size),
    )


def migration_table(
    previous_ids: Sequence[int] | np.ndarray | None = None,
    current_ids: Sequence[int] | np.ndarray | None = None,
    *,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Customers per (previous segment, current segment), stayers included, for customers in both runs.

    Parameters
    ----------
    previous_ids, current_ids : arrays of shape (m,)
        Aligned segment ids of the same customers in the previous and the current run.
    pairs : (ndarray, ndarray, ndarray), optional
        Those customers counted already (:func:`pair_counts`), instead of the two arrays.

    Returns
    -------
    DataFrame with int64 columns ``from_segment``, ``to_segment``, ``customers`` (> 0 only),
    sorted by ``from_segment``, ``to_segment``; ``customers`` sums to m.
    """
    if pairs is None:
        p = np.asarray([] if previous_ids is None else previous_ids, dtype=np.int64).reshape(-1)
        c = np.asarray([] if current_ids is None else current_ids, dtype=np.int64).reshape(-1)
        if p.shape != c.shape:
            raise ValueError(
                f"migration_table: previous_ids and current_ids differ in length ({p.size} vs {c.size})"
            )
        pairs = pair_counts(p, c)
    from_ids, to_ids, counts = (np.asarray(a, dtype=np.int64).reshape(-1) for a in pairs)
    keep = counts > 0
    from_ids, to_ids, counts = from_ids[keep], to_ids[keep], counts[keep]
    order = np.lexsort((to_ids, from_ids))
    return pd.DataFrame(
        {"from_segment": from_ids[order], "to_segment": to_ids[order], "customers": counts[order]}
    )


#: Customers counted at a time by :func:`pair_counts`.
_PAIR_BLOCK = 1 << 20


def pair_counts(
    previous_ids: np.ndarray,
    current_ids: np.ndarray,
    previous_at: np.ndarray | None = None,
    current_at: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How many customers go from each previous id to each current id: the pairs that occur, in
    order of (previous, current), and their counts (int64 arrays).

    ``previous_at``, ``current_at``: positions, when the pairs are
    ``(previous_ids[previous_at[j]], current_ids[current_at[j]])`` (the aligned customers of two
    runs), read a block at a time without an array of the pairs.

    One integer per pair, counted a block of customers at a time: no temporary the size of the
    input (issue 12), and no sort of every customer's pair (11 s at 10^7 customers)."""
    p, c = integers(previous_ids).reshape(-1), integers(current_ids).reshape(-1)
    if (previous_at is None) != (current_at is None):
        raise ValueError("pair_counts: give both positions or neither")
    m = p.size if previous_at is None else len(previous_at)
    if (c.size if current_at is None else len(current_at)) != m:
        raise ValueError("pair_counts: the previous and current ids differ in length")
    if m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)

    def block(lo: int) -> tuple[np.ndarray, np.ndarray]:
        # int64 a block at a time: the ids themselves may be held in a narrower type.
        if previous_at is None or current_at is None:
            a, b = p[lo : lo + _PAIR_BLOCK], c[lo : lo + _PAIR_BLOCK]
        else:
            a, b = p[previous_at[lo : lo + _PAIR_BLOCK]], c[current_at[lo : lo + _PAIR_BLOCK]]
        return a.astype(np.int64), b.astype(np.int64)

    # Over every id of either run (a superset of the pairs' ids): no pass over the pairs for it.
    p_low, c_low = int(p.min()), int(c.min())
    width = int(c.max()) - c_low + 1
    cells = (int(p.max()) - p_low + 1) * width
    if cells > 1 << 24:  # ids far apart: count the pairs that occur instead of every cell
        a, b = (p, c) if previous_at is None or current_at is None else (p[previous_at], c[current_at])
        a, b = a.astype(np.int64), b.astype(np.int64)
        keys, counts = np.unique((a - p_low) * width + (b - c_low), return_counts=True)
    else:
        total = np.zeros(cells, dtype=np.int64)
        for lo in range(0, m, _PAIR_BLOCK):
            a, b = block(lo)
            code = a
            code -= p_low
            code *= width
            code += b
            code -= c_low
            total += np.bincount(code, minlength=cells)
        keys = np.flatnonzero(total)
        counts = total[keys]
    return keys // width + p_low, keys % width + c_low, counts.astype(np.int64)


def moved_share(
    previous_ids: Sequence[int] | np.ndarray | None = None,
    current_ids: Sequence[int] | np.ndarray | None = None,
    *,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> float:
    """Share of the customers in both runs whose segment id changed (NaN when there are none);
    ``pairs``: those customers counted already (:func:`pair_counts`), instead of the arrays."""
    if pairs is not None:
        from_ids, to_ids, counts = (np.asarray(a, dtype=np.int64).reshape(-1) for a in pairs)
        total = int(counts.sum())
        return float(counts[from_ids != to_ids].sum() / total) if total else float("nan")
    p = np.asarray(previous_ids, dtype=np.int64)
    c = np.asarray(current_ids, dtype=np.int64)
    if p.shape != c.shape:
        raise ValueError("moved_share: previous_ids and current_ids differ in length")
    if not p.size:
        return float("nan")
    return float(
        sum(
            np.count_nonzero(p[lo : lo + _PAIR_BLOCK] != c[lo : lo + _PAIR_BLOCK])
            for lo in range(0, p.size, _PAIR_BLOCK)
        )
        / p.size
    )


#: Customers whose probabilities :func:`hold_segments` reads at a time.
_HOLD_BLOCK = 1 << 16


def hold_segments(
    components: np.ndarray,
    probabilities: np.ndarray | Callable[[np.ndarray], np.ndarray],
    previous_components: np.ndarray,
    hold_odds: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each customer in last run's segment unless the model now favours another by more than
    ``hold_odds`` to 1.

    A customer whose membership probabilities are 0.45 / 0.55 has not changed segment in any sense
    an analyst acts on; flipping them on every refit is noise. The rule is hysteresis on the
    posterior odds: the customer moves only when their most probable segment is more than
    ``hold_odds`` times as probable as the segment they were in (the segment must still exist).

    Parameters
    ----------
    components : ndarray of shape (n,), int
        Each customer's most probable component (0..k-1).
    probabilities : ndarray of shape (n, k), or callable
        Membership probabilities; or a function that gives those of the customers at the
        positions it is passed (an int array), shape (m, k), for callers that do not hold them.
    previous_components : ndarray of shape (n,), int
        The component that carries the customer's previous segment id, or -1 (new customer, or
        their segment was retired).
    hold_odds : float >= 1
        1 keeps nothing: every customer takes their most probable segment.

    Returns
    -------
    components : ndarray of shape (n,), int64
        The segment each customer is given.
    held : ndarray of shape (n,), bool
        Customers kept in their previous segment although another is more probable.
    """
    components = np.asarray(components, dtype=np.int64)
    previous_components = np.asarray(previous_components, dtype=np.int64)
    if not hold_odds >= 1.0:
        raise ValueError(f"hold_odds must be at least 1, got {hold_odds!r}")
    rows = np.flatnonzero((previous_components >= 0) & (previous_components != components))
    if callable(probabilities):
        rows_of = probabilities
    else:
        every = np.asarray(probabilities, dtype=np.float64)

        def rows_of(rows: np.ndarray) -> np.ndarray:
            return every[rows]

    keep = np.empty(rows.size, dtype=bool)
    for lo in range(0, rows.size, _HOLD_BLOCK):  # the probabilities of a block of customers at a time
        part = rows[lo : lo + _HOLD_BLOCK]
        p = rows_of(part)
        at = np.arange(part.size)
        # Compared as products, not ratios: a previous segment's probability may underflow to 0.
        keep[lo : lo + part.size] = p[at, previous_components[part]] * hold_odds >= p[at, components[part]]
    held = np.zeros(components.shape, dtype=bool)
    held[rows[keep]] = True
    return np.where(held, previous_components, components), held
