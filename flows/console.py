"""Console log lines without tracebacks, for terminals and service logs (the Prefect UI keeps them).

Done with Prefect's own logging configuration: ``flows/logging.yml`` (Prefect's default plus a
formatter and a filter on the console handler, see :mod:`flows.log_format`), selected through
``PREFECT_LOGGING_SETTINGS_PATH`` before Prefect is imported, and switched by two environment
variables that runs started by ``segment serve`` inherit.
"""

from __future__ import annotations

import os
from pathlib import Path

#: "1": console log lines leave out tracebacks (``segment`` without --debug; served runs inherit it).
HIDE_TRACEBACKS_ENV = "SEGMENT_HIDE_TRACEBACKS"
#: "1": Prefect's repeats of a run's failure stay off the console (``segment run``, which prints it).
ONE_FAILURE_LINE_ENV = "SEGMENT_ONE_FAILURE_LINE"
#: Prefect's default logging configuration with the two console additions.
LOGGING_CONFIG = Path(__file__).with_name("logging.yml")


def configure_console(*, debug: bool, one_failure_line: bool = False) -> None:
    """Select ``flows/logging.yml`` (unless ``PREFECT_LOGGING_SETTINGS_PATH`` names another file)
    and set what it hides. Call before Prefect is imported: Prefect configures logging on import.

    Parameters
    ----------
    debug : bool
        Show tracebacks (and every log line).
    one_failure_line : bool, default False
        Keep Prefect's repeats of a failure off the console: the caller prints the error itself.
    """
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(LOGGING_CONFIG))
    for name, on in (
        (HIDE_TRACEBACKS_ENV, not debug),
        (ONE_FAILURE_LINE_ENV, one_failure_line and not debug),
    ):
        if on:
            os.environ[name] = "1"
        else:
            os.environ.pop(name, None)
