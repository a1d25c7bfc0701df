"""MONIC transitions: how the previous run's segments survived, split, merged, disappeared or emerged.

External transitions after Spiliopoulou et al. (KDD 2006), classified from the customers in both
runs (:func:`classify_transitions`) with the thresholds of :class:`TransitionThresholds`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from constants import DEFAULT_TAU_MATCH, DEFAULT_TAU_SPLIT
from tracking.customers import pair_counts

#: The kinds of :class:`Transition`.
TRANSITION_KINDS = ("survived", "split", "merged", "disappeared", "emerged")


@dataclass(frozen=True)
class TransitionThresholds:
    """MONIC thresholds (Spiliopoulou et al., KDD 2006), as shares of customers.

    tau_match : float, default 0.5
        A previous segment survives into (or is absorbed by) the current segment that receives at
        least this share of its customers.
    tau_split : float, default 0.25
        Smallest share a part must receive to count as a piece of a split.
    """

    tau_match: float = DEFAULT_TAU_MATCH
    tau_split: float = DEFAULT_TAU_SPLIT

    def __post_init__(self) -> None:
        if not 0.0 < self.tau_split <= self.tau_match <= 1.0:
            raise ValueError(
                f"TransitionThresholds: need 0 < tau_split <= tau_match <= 1, "
                f"got tau_split={self.tau_split}, tau_match={self.tau_match}"
            )


@dataclass(frozen=True)
class Transition:
    """One external transition between the previous and the current run's segments.

    kind : one of ``survived``, ``split``, ``merged``, ``disappeared``, ``emerged``
    from_ids, to_ids : tuple of int (sorted; empty on the missing side)
    share : float, see :func:`classify_transitions`
    """

    kind: str
    from_ids: tuple[int, ...]
    to_ids: tuple[int, ...]
    share: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "from_ids": list(self.from_ids),
            "to_ids": list(self.to_ids),
            "share": self.share,
        }


def classify_transitions(
    previous_ids: Sequence[int] | np.ndarray | None = None,
    current_ids: Sequence[int] | np.ndarray | None = None,
    thresholds: TransitionThresholds = TransitionThresholds(),
    *,
    previous_counts: Mapping[int, int] | None = None,
    current_counts: Mapping[int, int] | None = None,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[Transition]:
    """Classify how the previous run's segments became the current ones, from shared customers (MONIC).

    With ``P[X, Y]`` the share of previous segment X's customers that are now in current segment
    Y, and the thresholds ``tau_match`` (0.5) and ``tau_split`` (0.25):

    - **survived** X -> Y: Y is the only current segment with ``P[X, Y] >= tau_match`` and no other
      previous segment reaches ``tau_match`` into Y. share = ``P[X, Y]``.
    - **merged** {X1, X2, ...} -> Y: two or more previous segments each send ``>= tau_match`` of
      their customers to Y (MONIC's absorption). share = the share of those segments' customers
      that went to Y.
    - **split** X -> {Y1, Y2, ...}: no single current segment takes ``tau_match`` of X, but two or
      more take ``>= tau_split`` each and together ``>= tau_match``. share = their sum.
    - **disappeared** X -> (): none of the above (in particular when no current segment takes
      ``tau_split`` of X, or most of X's customers left). share = the largest ``P[X, Y]``.
    - **emerged** () -> Y: Y is the target of no survival, merge or split; it is formed mostly of
      new customers or of small pieces of previous segments (each previous segment then typically
      contributes less than ``tau_split`` of Y's customers). share = the largest share of Y's
      customers that comes from one previous segment.

    As in MONIC, a segment's share is taken of **all** its customers in its own run
    (``previous_counts`` / ``current_counts``): customers who left count against survival, so a
    segment whose customers mostly left has disappeared even if its few remaining customers moved
    together. Without the counts, shares are taken of the customers in both runs.

    Parameters
    ----------
    previous_ids, current_ids : arrays of shape (m,)
        Aligned segment labels of the customers in both runs (any integer labels).
    thresholds : TransitionThresholds
    previous_counts, current_counts : mapping of segment id to customers, optional
        Every segment of each run with its number of customers in that run (segments without
        shared customers are then classified too). Each must be at least the shared customers.
    pairs : (ndarray, ndarray, ndarray), optional
        The customers in both runs counted already (:func:`tracking.pair_counts`: previous id,
        current id, customers), instead of ``previous_ids`` and ``current_ids``.

    Returns
    -------
    list of Transition
        Every previous segment appears in exactly one survived, merged, split or disappeared row;
        every current segment is the target of at least one row or is emerged. Rows follow the
        previous ids, emerged rows last.
    """
    if pairs is None:
        p = np.asarray([] if previous_ids is None else previous_ids, dtype=np.int64).reshape(-1)
        c = np.asarray([] if current_ids is None else current_ids, dtype=np.int64).reshape(-1)
        if p.shape != c.shape:
            raise ValueError("classify_transitions: previous_ids and current_ids differ in length")
        # Counted as pairs first: the customers' ids are read once, a block at a time (issue 12).
        pairs = pair_counts(p, c)
    from_ids, to_ids, counts = (np.asarray(a, dtype=np.int64).reshape(-1) for a in pairs)
    prev = np.unique(np.concatenate([from_ids, np.fromiter((previous_counts or {}).keys(), np.int64)]))
    cur = np.unique(np.concatenate([to_ids, np.fromiter((current_counts or {}).keys(), np.int64)]))
    C = np.zeros((prev.size, cur.size), dtype=np.float64)
    np.add.at(C, (np.searchsorted(prev, from_ids), np.searchsorted(cur, to_ids)), counts.astype(np.float64))

    def totals(
        shared: np.ndarray, ids: np.ndarray, counts: Mapping[int, int] | None, side: str
    ) -> np.ndarray:
        if counts is None:
            return shared
        given = np.array([float(counts.get(int(s), 0)) for s in ids])
        if np.any(given < shared):
            bad = int(ids[np.argmax(given < shared)])
            raise ValueError(
                f"classify_transitions: {side}_counts[{bad}] is smaller than its customers in both runs"
            )
        return given

    row_total = totals(C.sum(axis=1), prev, previous_counts, "previous")
    col_total = totals(C.sum(axis=0), cur, current_counts, "current")
    P = np.divide(C, row_total[:, None], out=np.zeros_like(C), where=row_total[:, None] > 0)
    Q = np.divide(C, col_total[None, :], out=np.zeros_like(C), where=col_total[None, :] > 0)
    tm, ts = thresholds.tau_match, thresholds.tau_split

    strong = tm <= P
    # A previous segment with two targets at >= tau_match (only possible at an exact 50/50 with
    # tau_match = 0.5) is a split, not a survival into an arbitrary one of them.
    single = strong.sum(axis=1) == 1
    target = np.where(single, P.argmax(axis=1), -1)
    absorbers = {j: np.flatnonzero(target == j) for j in range(cur.size)}

    rows: list[tuple[int, Transition]] = []
    reached = np.zeros(cur.size, dtype=bool)
    for i in range(prev.size):
        if target[i] >= 0:
            j = int(target[i])
            group = absorbers[j]
            reached[j] = True
            if group.size == 1:
                rows.append((i, Transition("survived", (int(prev[i]),), (int(cur[j]),), float(P[i, j]))))
            elif i == group[0]:
                share = float(C[group, j].sum() / row_total[group].sum())
                rows.append(
                    (i, Transition("merged", tuple(int(v) for v in prev[group]), (int(cur[j]),), share))
                )
            continue
        parts = np.flatnonzero(P[i] >= ts)
        if parts.size >= 2 and P[i, parts].sum() >= tm:
            reached[parts] = True
            rows.append(
                (
                    i,
                    Transition(
                        "split", (int(prev[i]),), tuple(int(v) for v in cur[parts]), float(P[i, parts].sum())
                    ),
                )
            )
        else:
            rows.append(
                (i, Transition("disappeared", (int(prev[i]),), (), float(P[i].max()) if P.shape[1] else 0.0))
            )
    out = [t for _, t in sorted(rows, key=lambda r: r[0])]
    for j in np.flatnonzero(~reached).tolist():
        out.append(Transition("emerged", (), (int(cur[j]),), float(Q[:, j].max()) if Q.shape[0] else 0.0))
    return out


def transition_table(transitions: Sequence[Transition]) -> pd.DataFrame:
    """Transitions as a DataFrame: ``kind``, ``from_ids`` (list), ``to_ids`` (list), ``share``."""
    return pd.DataFrame([t.as_dict() for t in transitions], columns=["kind", "from_ids", "to_ids", "share"])
