"""One segmentation run at a time per results database: an OS file lock held for the whole run,
whose file doubles as the run's journal.

Runs can start from the nightly schedule, a manual trigger or ``segment run`` on the command line;
whatever started them, a run first takes an exclusive ``flock`` on ``<database>.lock`` and waits
its turn while another run holds it. The kernel releases the lock when the holding process ends,
even by SIGKILL, so a crashed run never leaves a stale lock behind.

While it holds the lock, a run keeps a small JSON journal in the lock file (its run id, stage,
parameters) and empties it when it ends. A journal still present when the next run takes the
lock was left by a run that was killed; the next run records it in ``runs`` as ``killed``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class RunLockTimeout(RuntimeError):
    """Another run kept the database for longer than this run was willing to wait."""


def lock_path(database: str | Path) -> Path:
    """The lock file beside the results database."""
    return Path(f"{Path(database).resolve()}.lock")


def _holder(fh) -> str:
    fh.seek(0)
    try:
        info = json.loads(fh.read() or "{}")
    except json.JSONDecodeError:
        return "another run"
    parts = [f"pid {info['pid']}" if "pid" in info else "", info.get("label", ""), info.get("since", "")]
    return "another run (" + ", ".join(p for p in parts if p) + ")"


class RunJournal:
    """What the run holding the lock says about itself, kept in the lock file.

    Attributes
    ----------
    previous : dict or None
        The journal a previous holder left behind because it ended without cleaning up (killed),
        or None.
    """

    def __init__(self, fh, base: dict, previous: dict | None):
        self._fh = fh
        self._content = dict(base)
        self.previous = previous
        #: Set once the run (and any killed predecessor) is recorded in the database.
        self.recorded = False
        # Until this holder records them, a killed predecessor's journal stays in the file.
        self._content["unrecorded"] = killed_runs(previous)
        self._write()

    def leave(self) -> None:
        """Called when the lock is released: keep in the file whatever is not recorded yet, so
        the next holder records it (a run stopped by Ctrl-C, a cancellation or a failing write)."""
        pending = [] if self.recorded else killed_runs(self._content)
        self._fh.seek(0)
        self._fh.truncate()
        if pending:
            self._fh.write(json.dumps({"unrecorded": pending}, default=str))
        self._fh.flush()

    def note(self, **fields) -> None:
        """Add or update fields of the journal (written through at once)."""
        self._content.update(fields)
        self._write()

    def _write(self) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(self._content, default=str))
        self._fh.flush()
        os.fsync(self._fh.fileno())


def killed_runs(journal: Mapping[str, Any] | None) -> list[dict]:
    """The journals of every run a journal says was not recorded: its own (if it had claimed a
    run id) and those it carried on from killed predecessors."""
    if not journal:
        return []
    own = {k: v for k, v in journal.items() if k != "unrecorded"}
    return list(journal.get("unrecorded") or []) + ([own] if own.get("run_id") else [])


def _read_journal(fh) -> dict | None:
    fh.seek(0)
    text = fh.read()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"label": "unreadable journal"}


@contextmanager
def database_lock(
    database: str | Path,
    wait_seconds: float,
    label: str = "",
    on_wait: Callable[[str], None] | None = None,
    poll_seconds: float = 0.5,
) -> Iterator[RunJournal]:
    """Hold the run lock of ``database`` for the duration of the block; yield the run's journal.

    Parameters
    ----------
    database : path of the results DuckDB file.
    wait_seconds : how long to wait for a run that holds the lock; then :class:`RunLockTimeout`.
    label : who holds the lock (shown to runs that wait), e.g. ``"flow run 'calm-coucal'"``.
    on_wait : called once, with a description of the holder, when this run has to wait.
    """
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+" creates the file without truncating what the holder wrote about itself.
    with open(path, "a+", encoding="utf-8") as fh:
        deadline = time.monotonic() + wait_seconds
        told = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fh)
                if time.monotonic() >= deadline:
                    raise RunLockTimeout(
                        f"{database}: {holder} has been using this database for longer than this run "
                        f"waits ({wait_seconds / 60:.0f} min, output.lock_wait_minutes); try again later"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(holder)
                    told = True
                time.sleep(poll_seconds)
        try:
            since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            journal = RunJournal(
                fh, {"pid": os.getpid(), "label": label, "since": f"since {since}"}, _read_journal(fh)
            )
            try:
                yield journal
            finally:
                # A recorded run leaves an empty journal; anything unrecorded stays for the next.
                journal.leave()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
