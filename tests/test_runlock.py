"""The database run lock: one run at a time, waits its turn, released when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from flows.runlock import RunLockTimeout, database_lock, killed_runs, lock_path

HOLD = """
import sys, time
from flows.runlock import database_lock
with database_lock(sys.argv[1], 5, label="holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[1] + ".released", "w").write(repr(time.time()))
"""


def _holder(db, seconds):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_waits_for_the_first(tmp_path):
    db = tmp_path / "seg.duckdb"
    proc = _holder(db, 1.5)
    waited_for = []
    start = time.monotonic()
    with database_lock(db, 30, on_wait=waited_for.append, poll_seconds=0.05):
        granted = time.time()
        elapsed = time.monotonic() - start
    released = float((tmp_path / "seg.duckdb.released").read_text())
    assert granted >= released, "the lock was granted while the holder still held it"
    assert elapsed > 0.5
    proc.wait()
    assert len(waited_for) == 1 and "pid" in waited_for[0] and "holder" in waited_for[0]


def test_gives_up_after_the_wait_with_a_clear_message(tmp_path):
    db = tmp_path / "seg.duckdb"
    proc = _holder(db, 10)
    try:
        with (
            pytest.raises(
                RunLockTimeout, match=r"seg\.duckdb: another run \(pid \d+, holder.*lock_wait_minutes"
            ),
            database_lock(db, 0.3, poll_seconds=0.05),
        ):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    db = tmp_path / "seg.duckdb"
    proc = _holder(db, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with database_lock(db, 1, poll_seconds=0.05):
        assert lock_path(db).exists()


def test_the_lock_is_reentrant_across_sequential_runs(tmp_path):
    db = tmp_path / "seg.duckdb"
    for _ in range(3):
        with database_lock(db, 1):
            pass
    assert lock_path(db).read_text() == ""  # nothing claimed, nothing left


def test_an_unrecorded_run_stays_in_the_journal_for_the_next_holder(tmp_path):
    """A run stopped by an exception, Ctrl-C or a cancellation before it was recorded is left
    for the next holder; a holder that records nothing (e.g. `segment name`) passes it on."""
    db = tmp_path / "seg.duckdb"
    with pytest.raises(KeyboardInterrupt), database_lock(db, 1) as journal:
        journal.note(run_id=7, stage="select")
        raise KeyboardInterrupt
    with database_lock(db, 1) as journal:  # records nothing
        assert [j["run_id"] for j in killed_runs(journal.previous)] == [7]
    with database_lock(db, 1) as journal:
        assert [j["run_id"] for j in killed_runs(journal.previous)] == [7]
        assert killed_runs(journal.previous)[0]["stage"] == "select"
        journal.recorded = True
    with database_lock(db, 1) as journal:
        assert journal.previous is None
