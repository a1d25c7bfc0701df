"""Named fault points, so crash-safety tests can kill a real run at a chosen moment.

A run started with ``SEGMENT_FAULT=<name>`` in its environment kills itself with SIGKILL when it
reaches the fault point of that name; otherwise a fault point does nothing. The points are where
a crash matters: ``fit`` (during model selection) and ``write`` (rows inserted into the private
copy, not yet published).
"""

from __future__ import annotations

import os
import signal


def fault_point(name: str) -> None:
    """Die here, as a power cut or OOM kill would, if the environment asks for it."""
    if os.environ.get("SEGMENT_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
