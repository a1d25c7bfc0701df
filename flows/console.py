"""Console log lines without tracebacks, for terminals and service logs (the Prefect UI keeps them)."""

from __future__ import annotations

import copy
import logging
import os
import sys

#: Set (to "1") by `segment serve` without --debug: the runs it starts then log failures in one line.
HIDE_TRACEBACKS_ENV = "SEGMENT_HIDE_TRACEBACKS"


class _NoTraceback(logging.Formatter):
    """Formats a record with another formatter, leaving out its traceback and stack.

    The record is copied so that other handlers of the same record (Prefect's API handler, which
    sends the traceback to the UI) still see it whole.
    """

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)
            record.exc_info = record.exc_text = record.stack_info = None
        return self.inner.format(record)


def hide_tracebacks() -> int:
    """Stop tracebacks from reaching the terminal through logging; returns how many handlers changed.

    Prefect logs a failed task or flow with ``exc_info``; without ``--debug`` its console handlers
    (and any other handler writing to stdout/stderr) print the log line without the traceback. Call
    after Prefect has configured logging (importing ``prefect`` does). Idempotent.
    """
    loggers = [logging.getLogger()] + [
        obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)
    ]
    changed = 0
    for logger in loggers:
        for handler in logger.handlers:
            if not isinstance(handler, logging.StreamHandler) or isinstance(handler.formatter, _NoTraceback):
                continue
            if getattr(handler, "stream", None) not in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__):
                continue
            handler.setFormatter(_NoTraceback(handler.formatter))
            changed += 1
    return changed


def hide_tracebacks_if_asked() -> None:
    """:func:`hide_tracebacks` in a process whose environment asks for it (a served run)."""
    if os.environ.get(HIDE_TRACEBACKS_ENV) == "1":
        hide_tracebacks()
