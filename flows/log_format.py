"""The console formatter and filter that ``flows/logging.yml`` installs on Prefect's console handler.

Imported by :func:`logging.config.dictConfig` when Prefect configures logging, not by the CLI
itself (it imports Prefect's formatter, and ``segment sql`` must start without Prefect).
"""

from __future__ import annotations

import copy
import logging
import os

from prefect.logging.formatters import PrefectFormatter

from flows.console import HIDE_TRACEBACKS_ENV, ONE_FAILURE_LINE_ENV


class OneLineFormatter(PrefectFormatter):
    """Prefect's formatter; with ``SEGMENT_HIDE_TRACEBACKS=1`` a record's traceback and stack are
    left out. The record is copied, so the API handler still sends the traceback to the UI."""

    def format(self, record: logging.LogRecord) -> str:
        if os.environ.get(HIDE_TRACEBACKS_ENV) == "1" and (
            record.exc_info or record.exc_text or record.stack_info
        ):
            record = copy.copy(record)
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return super().format(record)


class OneFailureLine(logging.Filter):
    """With ``SEGMENT_ONE_FAILURE_LINE=1``, drops the log lines that repeat a run's failure: the
    command prints it once, at the end (``segment run``)."""

    _REPEATS = (
        "Finished in state Failed",
        "Encountered exception during execution",
        "Task run failed with ",
        " failed in stage ",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get(ONE_FAILURE_LINE_ENV) != "1":
            return True
        if not record.name.startswith(("prefect.task_runs", "prefect.flow_runs")):
            return True
        message = record.getMessage()
        if " - Retry " in message:  # a retry to come is news, not a repeat
            return True
        return not any(text in message for text in self._REPEATS)
