"""Named fault points, so crash-safety tests can kill a real run at a chosen moment.

A run started with ``SEGMENT_FAULT=<name>`` in its environment kills itself with SIGKILL when it
reaches the fault point of that name; otherwise a fault point does nothing. The points are where
a crash matters: ``fit`` (during model selection), ``cluster-write`` (a cluster's workers about
to write the assignments), ``write`` (rows inserted into the private copy, not yet published)
and ``report`` (results published, report being drawn).
"""

from __future__ import annotations

import os
import signal
from contextlib import suppress


def fault_point(name: str) -> None:
    """Die here, as a power cut or OOM kill would, if the environment asks for it.

    With ``SEGMENT_FAULT_KILL=<pid>[,<pid>...]`` those other processes die instead (once), e.g.
    the Prefect server a run reports to, or every worker of a dask cluster, to see what the run
    does without them.
    """
    if os.environ.get("SEGMENT_FAULT") != name:
        return
    other = os.environ.pop("SEGMENT_FAULT_KILL", None)
    if other:
        os.environ.pop("SEGMENT_FAULT", None)
        for pid in filter(None, (p.strip() for p in other.split(","))):
            with suppress(ProcessLookupError):  # gone already: the others still die
                os.kill(int(pid), signal.SIGKILL)
        return
    os.kill(os.getpid(), signal.SIGKILL)
