"""Run reports: matplotlib figures of a segmentation run and the index.html that shows them."""

from .render import figure_files, render_report
from .report_data import ReportData

__all__ = ["ReportData", "figure_files", "render_report"]
