"""Shared look of the report figures: segment colours, covariance-type styles and safe labels."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

# Fixed per covariance type so the criteria panels read the same in every run.
COVARIANCE_STYLES = {
    "full": {"color": "#1b9e77", "marker": "o"},
    "tied": {"color": "#d95f02", "marker": "s"},
    "diag": {"color": "#7570b3", "marker": "^"},
    "spherical": {"color": "#e7298a", "marker": "D"},
    # mclust's other ten models (its names for the four above share their style).
    "EII": {"color": "#66a61e", "marker": "v"},
    "EEI": {"color": "#e6ab02", "marker": "<"},
    "VEI": {"color": "#a6761d", "marker": ">"},
    "EVI": {"color": "#1f78b4", "marker": "p"},
    "VEE": {"color": "#b2df8a", "marker": "h"},
    "EVE": {"color": "#fb9a99", "marker": "P"},
    "VVE": {"color": "#cab2d6", "marker": "X"},
    "EEV": {"color": "#6a3d9a", "marker": "*"},
    "VEV": {"color": "#b15928", "marker": "d"},
    "EVV": {"color": "#33a02c", "marker": "8"},
}
COVARIANCE_STYLES.update(
    {
        "VVV": COVARIANCE_STYLES["full"],
        "EEE": COVARIANCE_STYLES["tied"],
        "VVI": COVARIANCE_STYLES["diag"],
        "VII": COVARIANCE_STYLES["spherical"],
    }
)
_FALLBACK_STYLE = {"color": "#666666", "marker": "v"}


def covariance_style(covariance_type: str) -> dict[str, str]:
    """Colour and marker of one covariance type in the criteria figure."""
    return COVARIANCE_STYLES.get(covariance_type, _FALLBACK_STYLE)


def segment_colors(segment_ids: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """Colour of each segment id, the same in every figure of a report.

    Colours follow the sorted order of the ids, so a report always uses the first colours of the
    palette; tab10 for up to 10 segments, tab20 beyond that, cycling past 20.
    """
    ordered = sorted(int(s) for s in segment_ids)
    palette = matplotlib.colormaps["tab10" if len(ordered) <= 10 else "tab20"]
    return {s: palette(i % palette.N) for i, s in enumerate(ordered)}


def plain(text: str) -> str:
    """Text shown literally by matplotlib: a '$' in a name must not start mathtext."""
    return str(text).replace("$", r"\$")


def feature_axis_label(name: str, unit: str, transform: str) -> str:
    """Axis label of a feature before standardisation, e.g. 'log(1 + monetary) [GBP]'."""
    shown = f"log(1 + {name})" if transform == "log1p" else name
    return plain(f"{shown} [{unit}]" if unit else shown)


def original_axis_label(name: str, unit: str) -> str:
    """Axis label of a feature in original units, e.g. 'monetary [GBP]'."""
    return plain(f"{name} [{unit}]" if unit else name)


def nice_ticks(low: float, high: float) -> np.ndarray:
    """1-2-5 ticks between low and high (original units of a log1p axis, low >= 0)."""
    low, high = max(low, 0.0), max(high, 0.0)
    if high <= 0:
        return np.array([0.0])
    decades = 10.0 ** np.arange(-3, int(np.ceil(np.log10(high))) + 1)
    candidates = np.concatenate([[0.0], np.outer(decades, [1.0, 2.0, 5.0]).ravel()])
    ticks = candidates[(candidates >= low) & (candidates <= high)]
    if len(ticks) < 2:
        return ticks
    # The axis is drawn in log(1 + x): ticks are kept at least an eighth of its width apart there,
    # from the top down, so small values (0, 0.002, 0.5 all sit near 0) do not print on each other.
    positions = np.log1p(ticks)
    min_gap = (np.log1p(high) - np.log1p(low)) / 8.0
    kept = [len(ticks) - 1]
    for i in range(len(ticks) - 2, -1, -1):
        if positions[kept[-1]] - positions[i] >= min_gap:
            kept.append(i)
    if ticks[0] == 0.0:  # zero anchors the axis: keep it, drop what crowds it
        kept = [0] + [i for i in kept if positions[i] >= min_gap]
    return ticks[sorted(set(kept))]
