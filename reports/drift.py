"""Figures of what changed between two runs: the migration heat-map of customers between segments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .style import plain


def migration_rows(table: Any) -> list[dict[str, int]]:
    """Rows ``{"from_segment", "to_segment", "customers"}`` from a DataFrame or an iterable of mappings."""
    records: Iterable[Mapping[str, Any]] = table.to_dict("records") if hasattr(table, "to_dict") else table
    rows = []
    for i, r in enumerate(records):
        try:
            row = {
                "from_segment": int(r["from_segment"]),
                "to_segment": int(r["to_segment"]),
                "customers": int(r["customers"]),
            }
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"migration row {i + 1}: needs integer from_segment, to_segment and customers ({err})"
            ) from None
        if row["customers"] < 0:
            raise ValueError(f"migration row {i + 1}: customers must be >= 0, got {row['customers']}")
        rows.append(row)
    return rows


def migration_matrix(
    table: Any, previous_ids: Sequence[int], current_ids: Sequence[int]
) -> tuple[np.ndarray, list[int], list[int]]:
    """Counts as a (previous x current) matrix; ids of rows and columns sorted, including any id that
    only the table names."""
    rows = migration_rows(table)
    prev = sorted({int(v) for v in previous_ids} | {r["from_segment"] for r in rows})
    cur = sorted({int(v) for v in current_ids} | {r["to_segment"] for r in rows})
    counts = np.zeros((len(prev), len(cur)), dtype=np.int64)
    pi = {s: i for i, s in enumerate(prev)}
    ci = {s: j for j, s in enumerate(cur)}
    for r in rows:
        counts[pi[r["from_segment"]], ci[r["to_segment"]]] += r["customers"]
    return counts, prev, cur


def migration_figure(
    table: Any, previous_ids: Sequence[int], current_ids: Sequence[int], *, previous_run_id: Any = None
) -> Figure:
    """Heat-map of customers moving from each previous segment (rows) to each current one (columns).

    Parameters
    ----------
    table : DataFrame or iterable of mappings
        Rows with ``from_segment``, ``to_segment``, ``customers`` (customers in both runs).
    previous_ids, current_ids : sequences of int
        Every segment id of the previous and the current run (rows/columns without customers are
        still drawn; previous ids missing from the current run are marked retired, current ids
        missing from the previous run new).
    previous_run_id : optional
        Named in the title ("since run N").

    Returns
    -------
    Figure
        One heat-map axes plus its colour bar. Colour is the share of the row's customers (each row
        sums to 1), the text in each cell the number of customers; cells where a segment keeps its
        id are outlined.
    """
    counts, prev, cur = migration_matrix(table, previous_ids, current_ids)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    since = f"run {previous_run_id}" if previous_run_id is not None else "the previous run"
    width = float(np.clip(3.2 + 0.95 * len(cur), 5.5, 16.0))
    height = float(np.clip(2.0 + 0.6 * len(prev), 3.5, 12.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.set_label("share of the previous segment's customers")
    for i in range(len(prev)):
        for j in range(len(cur)):
            if counts[i, j] == 0:
                continue
            percent = "<1%" if share[i, j] < 0.005 else f"{share[i, j]:.0%}"
            ax.text(
                j,
                i,
                f"{counts[i, j]:,}\n{percent}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if share[i, j] > 0.6 else "#222222",
            )
            if prev[i] == cur[j]:
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#111111", linewidth=1.6)
                )
    current_set, previous_set = set(cur), set(prev)
    ax.set_xticks(range(len(cur)), [f"{s}" if s in previous_set else f"{s} (new)" for s in cur])
    ax.set_yticks(range(len(prev)), [f"{s}" if s in current_set else f"{s} (retired)" for s in prev])
    ax.set_xlabel("segment in this run")
    ax.set_ylabel(plain(f"segment in {since}"))
    ax.set_title(
        plain(
            f"Customers moving between segments since {since}\n"
            f"{int(counts.sum()):,} customers in both runs; outlined: same segment id"
        )
    )
    if counts.sum() == 0:
        ax.text(0.5, 0.5, "no customers in both runs", transform=ax.transAxes, ha="center", va="center")
    return fig
