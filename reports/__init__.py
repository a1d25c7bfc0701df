"""Run reports: matplotlib figures of a segmentation run and the index.html that shows them.

Attributes load on first use, so the pipeline's numeric code can import :mod:`reports.profiles`
without importing matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ReportData", "figure_files", "render_report"]

if TYPE_CHECKING:
    from .render import figure_files, render_report
    from .report_data import ReportData


def __getattr__(name: str) -> Any:
    if name in ("figure_files", "render_report"):
        from . import render

        return getattr(render, name)
    if name == "ReportData":
        from .report_data import ReportData

        return ReportData
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
