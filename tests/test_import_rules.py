"""The layering of the packages, as a test: which package may import which.

Every ``import`` and ``from ... import`` in every module of a package is read from the source with
:mod:`ast` (module level, inside functions, under ``if TYPE_CHECKING``; relative imports resolved),
plus ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. Nothing is
imported, so a rule broken by a function-level import fails here too, naming file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package -> (top-level names it must not import, why).
RULES = {
    "gmm_engine": (
        (
            "flows",
            "schemas",
            "reports",
            "tracking",
            "constants",
            "gmm_cluster",
            "pandas",
            "prefect",
            "duckdb",
            "dask",
            "distributed",
        ),
        "the engine is numpy, scipy and scikit-learn only: "
        "nothing of the project, no pandas, Prefect, DuckDB or dask",
    ),
    "gmm_cluster": (
        ("flows", "schemas", "reports", "tracking", "pandas", "prefect"),
        "the cluster EM is the engine plus dask.distributed and DuckDB: no pipeline, no pandas or Prefect",
    ),
    "constants": (
        ("flows", "schemas", "reports", "tracking", "gmm_engine"),
        "the shared constants are the bottom layer and import nothing of the project",
    ),
    "schemas": (("flows",), "schemas never import the pipeline"),
    "reports": (("flows",), "reports never import the pipeline"),
    "tracking": (
        ("flows", "reports", "schemas", "prefect", "duckdb"),
        "tracking is plain numpy/scipy/pandas: no pipeline, reports or schemas, no Prefect or DuckDB",
    ),
}


def module_name(path: Path, root: Path) -> tuple[str, ...]:
    """Dotted name of a source file as parts: ``reports/render.py`` -> ("reports", "render")."""
    parts = path.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_in(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in one file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or ""
                continue
            if node.level - 1 > len(package) - 1:
                raise AssertionError(
                    f"{path.relative_to(root)}:{node.lineno}: relative import beyond the top level"
                )
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                yield node.lineno, ".".join((*base, node.module))
            else:  # from . import a, b: the names are submodules (or attributes) of the base package
                for alias in node.names:
                    yield node.lineno, ".".join((*base, alias.name))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            yield node.lineno, node.args[0].value


def source_files(package: str, root: Path) -> list[Path]:
    files = sorted((root / package).rglob("*.py"))
    assert files, f"no Python files under {root / package}: the rule would pass without checking anything"
    return files


def violations(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """One line per import of a forbidden top-level package: ``path:line: import name``."""
    found = []
    for path in source_files(package, root):
        for line, imported in imports_in(path, root):
            if imported.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(root).as_posix()}:{line}: imports {imported}")
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_follow_the_layering(package):
    forbidden, why = RULES[package]
    found = violations(package, forbidden)
    assert not found, f"{package} must not import {', '.join(forbidden)} ({why}):\n" + "\n".join(found)


def test_the_scan_sees_relative_and_function_level_imports():
    """The scanner finds what the rules depend on in the real sources (it is not vacuous)."""
    seen = {imported for path in source_files("reports", ROOT) for _, imported in imports_in(path, ROOT)}
    assert "reports.report_data" in seen  # `from .report_data import ...` resolved
    assert "gmm_engine" in seen
    seen = {imported for path in source_files("flows", ROOT) for _, imported in imports_in(path, ROOT)}
    assert "tracking" in seen and "prefect" in seen


def test_a_broken_rule_fails_naming_file_and_line(tmp_path):
    """Every way of importing a forbidden package in a synthetic tree is reported, with its line."""
    pkg = tmp_path / "tracking"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from tracking.sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import other\n")
    (pkg / "sub" / "helper.py").write_text(
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "import numpy as np\n"
        "if TYPE_CHECKING:\n"
        "    from flows.config import Settings\n"
        "def f():\n"
        "    import flows.pipeline\n"
        "    from reports import render\n"
        "    return importlib.import_module('schemas.customers')\n"
    )
    (pkg / "other.py").write_text("import os, duckdb\n")
    found = violations("tracking", RULES["tracking"][0], root=tmp_path)
    assert found == [
        "tracking/other.py:1: imports duckdb",
        "tracking/sub/helper.py:5: imports flows.config",
        "tracking/sub/helper.py:7: imports flows.pipeline",
        "tracking/sub/helper.py:8: imports reports",
        "tracking/sub/helper.py:9: imports schemas.customers",
    ]
    # A relative import is resolved to the package it names, and caught when that is forbidden.
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "__init__.py").write_text("def f():\n    from . import figures\n")
    (tmp_path / "reports" / "figures.py").write_text("x = 1\n")
    assert violations("reports", ("reports",), root=tmp_path) == [
        "reports/__init__.py:2: imports reports.figures"
    ]


def test_a_relative_import_above_the_top_level_is_an_error(tmp_path):
    (tmp_path / "tracking" / "sub").mkdir(parents=True)
    (tmp_path / "tracking" / "__init__.py").write_text("")
    (tmp_path / "tracking" / "sub" / "helper.py").write_text(
        "class C:\n    def g(self):\n        from ... import flows\n"
    )
    with pytest.raises(
        AssertionError, match=r"tracking/sub/helper.py:3: relative import beyond the top level"
    ):
        violations("tracking", RULES["tracking"][0], root=tmp_path)
