"""Text summaries of a run's drift: the plain-text 'what changed' and the Prefect artifact's Markdown.

Both read a :class:`tracking.drift.RunDrift` and compute nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tracking.drift import RunDrift


def drift_markdown(drift: RunDrift) -> str:
    """Markdown for the run's Prefect artifact: the summary, the flags and the migration table."""
    run = drift.previous_run_id
    lines = [f"### What changed since run {run}" if drift.previous is not None else "### Segment ids", ""]
    lines += [f"- {line}" for line in what_changed(drift).splitlines()]
    if drift.flags:
        lines += ["", "**Flags:** " + "; ".join(drift.flags)]
    if not drift.migration.empty:
        lines += ["", "| from segment | to segment | customers |", "|---:|---:|---:|"]
        m = drift.migration
        lines += [
            f"| {int(a)} | {int(b)} | {int(n):,} |"
            for a, b, n in zip(m["from_segment"], m["to_segment"], m["customers"], strict=True)
        ]
    return "\n".join(lines) + "\n"


def _ids(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def what_changed(drift: RunDrift) -> str:
    """A short plain-text summary (3 to 8 lines) of a :class:`RunDrift`."""
    m, prev, cur = drift.match, drift.previous, drift.model
    if prev is None:
        return "\n".join(
            [
                "First tracked run: no previous run to compare with.",
                f"{cur.n_segments} segments, {cur.covariance_type} covariance; "
                f"ids {_ids(sorted(m.new_ids))} given.",
                "Later runs keep these ids for the segments they continue.",
                *(["Flags: " + "; ".join(drift.flags) + "."] if drift.flags else []),
            ]
        )
    run = f"run {prev.run_id}" if prev.run_id is not None else "the previous run"
    lines = []
    if drift.overlap is not None:
        o = drift.overlap
        moved = "–" if not np.isfinite(drift.moved_share) else f"{drift.moved_share:.1%}"
        lines.append(
            f"Since {run}: {o.n_customers:,} customers in both runs ({o.entered:,} new, "
            f"{o.left:,} gone); {moved} of them changed segment."
        )
        if drift.held is not None:
            lines.append(
                f"{drift.held_count:,} customers kept their segment although another is now more "
                f"probable, by no more than {drift.hold_odds:g} to 1 (tracking.hold_odds)."
            )
    else:
        lines.append(f"Since {run}: no customer assignments to compare.")
    how = {
        "bhattacharyya": f"matched by Bhattacharyya distance <= {_fmt_num(drift.max_distance)}",
        "customer_overlap": "matched by customer overlap (features changed)",
        "none": "features changed and no shared customers: all ids new",
        "first_run": "",
    }[m.method]
    lines.append(
        f"Segments {prev.n_segments} -> {cur.n_segments} ({prev.covariance_type} -> {cur.covariance_type}), "
        f"{how}: kept {_ids(m.kept_ids)}; new {_ids(m.new_ids)}; retired {_ids(m.retired_ids)}."
    )
    changes = [t for t in drift.transitions if t.kind != "survived"]
    if drift.transitions and not changes:
        lines.append(f"All {len(drift.transitions)} previous segments survived (MONIC).")
    elif changes:
        words = []
        for t in changes[:4]:
            if t.kind == "split":
                words.append(f"{t.from_ids[0]} split into {_ids(t.to_ids)} ({t.share:.0%})")
            elif t.kind == "merged":
                words.append(f"{_ids(t.from_ids)} merged into {t.to_ids[0]}")
            elif t.kind == "disappeared":
                words.append(f"{t.from_ids[0]} disappeared")
            else:
                words.append(f"{t.to_ids[0]} emerged")
        more = f" (+{len(changes) - 4} more)" if len(changes) > 4 else ""
        lines.append("Transitions: " + "; ".join(words) + more + ".")
    if not drift.shifts.empty:
        # pandas-stubs type idxmax() as Hashable, which no overload of .loc takes; it is a row label.
        per = drift.shifts.loc[drift.shifts["shift_sd"].abs().idxmax()]  # type: ignore[call-overload]
        unit = f" {per['unit']}" if per["unit"] else ""
        lines.append(
            f"Largest move: segment {int(per['segment_id'])} moved {per['distance_sd']:.2f} of its standard "
            f"deviations; {per['feature']} centre {_fmt_num(per['previous_centre'])} -> "
            f"{_fmt_num(per['current_centre'])}{unit}."
        )
    flows = drift.migration[drift.migration["from_segment"] != drift.migration["to_segment"]]
    if not flows.empty:
        top = flows.sort_values(
            ["customers", "from_segment", "to_segment"], ascending=[False, True, True]
        ).head(3)
        lines.append(
            "Largest flows: "
            + "; ".join(
                f"{int(a)} -> {int(b)}: {int(n):,}"
                for a, b, n in zip(top["from_segment"], top["to_segment"], top["customers"], strict=True)
            )
            + "."
        )
    lines.append("Flags: " + "; ".join(drift.flags) + "." if drift.flags else "No drift flags.")
    return "\n".join(lines)


def _fmt_num(value: float) -> str:
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
