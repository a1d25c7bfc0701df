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
    changed = 0
    for handler in _console_handlers():
        if not isinstance(handler.formatter, _NoTraceback):
            handler.setFormatter(_NoTraceback(handler.formatter))
            changed += 1
    return changed


def hide_tracebacks_if_asked() -> None:
    """:func:`hide_tracebacks` in a process whose environment asks for it (a served run)."""
    if os.environ.get(HIDE_TRACEBACKS_ENV) == "1":
        hide_tracebacks()


class _OneFailureLine(logging.Filter):
    """Drops the log lines that repeat a run's failure: the command prints it once, at the end."""

    _REPEATS = (
        "Finished in state Failed",
        "Encountered exception during execution",
        "Task run failed with ",
        " failed in stage ",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("prefect.task_runs", "prefect.flow_runs")):
            return True
        message = record.getMessage()
        if " - Retry " in message:  # a retry to come is news, not a repeat
            return True
        return not any(text in message for text in self._REPEATS)


def one_failure_line() -> int:
    """Keep a failed run's error off the terminal's log lines, for a command that prints it itself.

    Prefect logs a failure three times (the task, the flow's exception, the flow's final state) and
    the run logs it once more; ``segment run`` ends with the error in one line of its own. The
    Prefect UI and the run's database record keep every line. Returns how many handlers changed.
    """
    changed = 0
    for handler in _console_handlers():
        if not any(isinstance(f, _OneFailureLine) for f in handler.filters):
            handler.addFilter(_OneFailureLine())
            changed += 1
    return changed


def _console_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)
    ]
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in streams
    ]
