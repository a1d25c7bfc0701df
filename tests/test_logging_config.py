"""The console's logging: Prefect's own configuration file with one formatter and one filter added
(flows/logging.yml, flows/log_format.py, flows/console.py)."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import prefect
import pytest
import yaml

from flows.console import HIDE_TRACEBACKS_ENV, LOGGING_CONFIG, ONE_FAILURE_LINE_ENV, configure_console
from flows.log_format import OneFailureLine, OneLineFormatter

PREFECT_DEFAULT = Path(prefect.__file__).parent / "logging" / "logging.yml"


def test_the_file_is_prefects_default_plus_the_console_additions():
    ours = yaml.safe_load(LOGGING_CONFIG.read_text())
    default = yaml.safe_load(PREFECT_DEFAULT.read_text())
    console = ours["handlers"]["console"]
    assert console.pop("formatter") == "one_line" and console.pop("filters") == ["one_failure_line"]
    assert ours["formatters"].pop("one_line")["()"] == "flows.log_format.OneLineFormatter"
    assert ours.pop("filters") == {"one_failure_line": {"()": "flows.log_format.OneFailureLine"}}
    del default["handlers"]["console"]["formatter"]
    # Everything else is Prefect's installed default: an upgrade that changes it fails here.
    assert ours == default


def failed_record(name: str = "prefect.flow_runs", message: str = "Finished in state Failed('boom')"):
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, info)


def test_the_formatter_leaves_out_tracebacks_only_when_asked(monkeypatch):
    formatter = OneLineFormatter(format="%(levelname)s | %(name)s - %(message)s")
    record = failed_record()
    monkeypatch.delenv(HIDE_TRACEBACKS_ENV, raising=False)
    assert "Traceback (most recent call last)" in formatter.format(copy.copy(record))
    monkeypatch.setenv(HIDE_TRACEBACKS_ENV, "1")
    line = formatter.format(record)
    assert line == "ERROR | prefect.flow_runs - Finished in state Failed('boom')"
    assert record.exc_info is not None  # the API handler still gets the traceback


@pytest.mark.parametrize(
    ("name", "message", "kept"),
    [
        ("prefect.flow_runs", "Finished in state Failed('boom')", False),
        ("prefect.task_runs", "Task run failed with exception: ValueError", False),
        ("prefect.flow_runs", "run 3 failed in stage features: boom", False),
        ("prefect.task_runs", "Encountered exception during execution - Retry 1/2 in 1s", True),
        ("prefect.flow_runs", "run 3 started (trigger cli)", True),
        ("flows.store", "Finished in state Failed", True),  # not one of Prefect's run loggers
    ],
)
def test_the_filter_drops_only_prefects_repeats_of_a_failure(monkeypatch, name, message, kept):
    record = failed_record(name, message)
    monkeypatch.setenv(ONE_FAILURE_LINE_ENV, "1")
    assert OneFailureLine().filter(record) is kept
    monkeypatch.delenv(ONE_FAILURE_LINE_ENV)
    assert OneFailureLine().filter(record) is True


def test_configure_console_sets_what_the_file_reads(monkeypatch):
    for name in ("PREFECT_LOGGING_SETTINGS_PATH", HIDE_TRACEBACKS_ENV, ONE_FAILURE_LINE_ENV):
        monkeypatch.delenv(name, raising=False)
    configure_console(debug=False, one_failure_line=True)
    assert os.environ["PREFECT_LOGGING_SETTINGS_PATH"] == str(LOGGING_CONFIG)
    assert os.environ[HIDE_TRACEBACKS_ENV] == os.environ[ONE_FAILURE_LINE_ENV] == "1"
    configure_console(debug=True, one_failure_line=True)  # --debug: an inherited "1" must go
    assert HIDE_TRACEBACKS_ENV not in os.environ and ONE_FAILURE_LINE_ENV not in os.environ
    monkeypatch.setenv("PREFECT_LOGGING_SETTINGS_PATH", "/etc/mine.yml")  # a user's own file wins
    configure_console(debug=False)
    assert os.environ["PREFECT_LOGGING_SETTINGS_PATH"] == "/etc/mine.yml"


def test_prefect_installs_them_on_its_console_handler():
    env = {**os.environ, "PREFECT_LOGGING_SETTINGS_PATH": str(LOGGING_CONFIG)}
    code = (
        "import logging; from prefect import flow; "  # Prefect configures logging on first use
        "h = [h for h in logging.getLogger().handlers if type(h).__name__ == 'PrefectConsoleHandler'][0]; "
        "print(type(h.formatter).__name__, [type(f).__name__ for f in h.filters])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OneLineFormatter", "['OneFailureLine']"]
