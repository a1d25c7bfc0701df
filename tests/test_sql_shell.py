"""`segment sql`: analysts' read-only SQL on the results file, without Prefect."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import duckdb
import pytest

from flows.cli import main
from flows.run_files import root_for
from flows.store import ensure_schema


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    db = tmp_path / "segments.duckdb"
    with duckdb.connect(str(db)) as con:
        ensure_schema(con, root_for(db))
        con.execute("INSERT INTO segment_names VALUES (1, 'Loyal; big spenders', TIMESTAMP '2026-01-01')")
    return db


def test_one_query_prints_duckdbs_table_and_csv_on_request(results, capsys):
    assert main(["sql", "--database", str(results), "SELECT segment_id, name FROM segment_names"]) == 0
    out = capsys.readouterr().out
    assert "segment_id" in out and "Loyal; big spenders" in out and "┌" in out
    # Two statements, a semicolon inside quotes.
    assert (
        main(
            ["sql", "--database", str(results), "--csv", "SELECT name FROM segment_names; SELECT 'a;b' AS x"]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines() == ["name", "Loyal; big spenders", "x", "a;b"]


def test_the_file_is_opened_read_only_and_errors_are_one_line(results, tmp_path, capsys):
    before = results.read_bytes()
    assert main(["sql", "--database", str(results), "CREATE TABLE mine AS SELECT 1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segment: error:") and "read-only" in err and "\n" not in err
    assert results.read_bytes() == before
    assert main(["sql", "--database", str(results), "SELECT nope"]) == 2
    assert 'Referenced column "nope"' in capsys.readouterr().err
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n")
    assert main(["sql", "--database", str(csv), "SELECT 1"]) == 2
    assert "not a DuckDB results file (it looks like text" in capsys.readouterr().err
    assert main(["sql", "--database", str(tmp_path / "none.duckdb"), "SELECT 1"]) == 2
    assert "no results file yet" in capsys.readouterr().err


def test_the_prompt_reads_statements_over_lines_and_goes_on_after_an_error(results, capsys, monkeypatch):
    script = (
        ".tables\nSELECT count(*) AS names_given\n  FROM segment_names;\n"
        "SELECT nope;\nSELECT 41 + 1 AS answer;\n.quit\nSELECT 0;\n"
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["sql", "--database", str(results)]) == 0
    out = capsys.readouterr().out
    assert "current_segments" in out and "view" in out and "runs" in out  # .tables
    assert "names_given" in out  # a statement over two lines ran
    assert "Error: Binder Error" in out and "42" in out
    assert "│ 0 " not in out  # nothing runs after .quit
