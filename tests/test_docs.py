"""The docs hold together: every link leads somewhere, every documented option exists and is documented.

README.md is short and links to docs/*.md, one page per reader's question. These checks keep the
pages' links, anchors and the options table of docs/configuration.md in step with the code.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from flows.cli import _flags, build_parser
from flows.config import Settings
from flows.parameters import RunParameters, param_of

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
CONFIGURATION = DOCS / "configuration.md"
RESULTS = DOCS / "results-database.md"
EXAMPLES = ROOT / "flows" / "sql" / "examples.sql"

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
OPTION = re.compile(r"--[a-z][a-z0-9-]*")
KEY = re.compile(r"`([a-z_]+\.[a-z_]+)`")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped except '-' and '_', spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file (a repeated heading gets -1, -2, ... as on GitHub)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = anchor(match.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link of a Markdown file (not http:, mailto:, ...).

    A link's text may run over two lines; code blocks and inline code are left out."""
    numbered = dict(prose_lines(path))
    total = len(path.read_text(encoding="utf-8").splitlines())
    text = "\n".join(re.sub(r"`[^`]*`", "``", numbered.get(n, "")) for n in range(1, total + 1))
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in LINK.finditer(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", match.group(1))
    ]


def broken_links(path: Path) -> list[str]:
    """What is wrong with a Markdown file's relative links, one line each."""
    problems = []
    for number, target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{number}: {target}"
        if not linked.exists():
            problems.append(f"{where}: no file {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            problems.append(f"{where}: no heading with anchor #{fragment} in {linked.name}")
    return problems


def settings_keys(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every dotted settings key (``model.k_max``), walking the pydantic model's sections."""
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= settings_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def options_table(path: Path = CONFIGURATION) -> list[list[str]]:
    """The rows of the options table (``| key | default | CLI option |``), as lists of cells."""
    rows, inside = [], False
    for _, line in prose_lines(path):
        cells = (
            [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] if line.startswith("|") else []
        )
        if cells[:3] == ["key", "default", "CLI option"]:
            inside = True
        elif inside and not cells:
            break
        elif inside and not set(cells[0]) <= set("-: "):
            rows.append(cells)
    return rows


def subcommand_options(command: str) -> set[str]:
    """The option strings of one ``segment`` subcommand."""
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag for action in subparsers.choices[command]._actions for flag in action.option_strings}


def documented_keys(rows: list[list[str]]) -> dict[str, str]:
    """Settings key -> the whole row that documents it."""
    return {key: " | ".join(row) for row in rows for key in KEY.findall(row[0])}


# --- links ------------------------------------------------------------------------------------


def test_the_anchor_rule_is_githubs():
    assert anchor("The engine: `gmm_engine`") == "the-engine-gmm_engine"
    assert anchor("What happened to each segment (MONIC)") == "what-happened-to-each-segment-monic"
    assert anchor("Retention: `benchmarks/retention.py`") == "retention-benchmarksretentionpy"
    assert anchor("Nightly runs and manual re-segmentation") == "nightly-runs-and-manual-re-segmentation"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_a_heading(path):
    assert relative_links(path) or path == README, f"{path.name} links nowhere"
    assert broken_links(path) == []


def test_a_wrong_link_or_anchor_is_caught(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Some heading: `code`\n\n```sh\n# not a heading\n```\n")
    page.write_text(
        "[ok](other.md#some-heading-code) [ok](#title) [web](https://example.org/x#y) `[code](nowhere.md)`\n"
        "[two\nlines](elsewhere.md)\n"
        "# Title\n[bad file](missing.md) [bad anchor](other.md#no-such-heading)\n"
        "[fenced](other.md#not-a-heading)\n"
    )
    assert [p.split(": ")[1] for p in broken_links(page)] == [
        "elsewhere.md",
        "missing.md",
        "other.md#no-such-heading",
        "other.md#not-a-heading",
    ]


def test_the_readme_links_every_docs_page_and_every_page_links_back():
    readme_targets = {target.partition("#")[0] for _, target in relative_links(README)}
    for page in PAGES:
        assert f"docs/{page.name}" in readme_targets, f"README.md does not link docs/{page.name}"
        assert "../README.md" in {t.partition("#")[0] for _, t in relative_links(page)}, page.name


# --- options ----------------------------------------------------------------------------------


def unknown_keys(rows: list[list[str]]) -> list[str]:
    """Settings keys named in the table's rows that ``Settings`` does not have."""
    return sorted(set(documented_keys(rows)) - settings_keys())


def unknown_options(rows: list[list[str]]) -> list[str]:
    """Options named in the rows that ``segment run`` lacks (``segment serve`` in a cell marked "(serve)")."""
    run, serve = subcommand_options("run"), subcommand_options("serve")
    return [
        option
        for row in rows
        for cell in row
        for option in OPTION.findall(cell)
        if option not in (serve if "(serve)" in cell else run)
    ]


def test_every_documented_settings_key_exists():
    rows = options_table()
    assert len(rows) >= 30, "the options table of docs/configuration.md was not found"
    assert unknown_keys(rows) == [], "docs/configuration.md documents settings keys that do not exist"


def test_every_documented_option_exists():
    assert unknown_options(options_table()) == [], "docs/configuration.md names options segment run lacks"


def test_every_settings_key_is_in_the_options_table():
    missing = sorted(settings_keys() - set(documented_keys(options_table())))
    assert missing == [], f"settings keys missing from the options table of docs/configuration.md: {missing}"


def test_every_run_parameter_is_documented():
    rows = documented_keys(options_table())
    docs = "\n".join(p.read_text(encoding="utf-8") for p in [README, *PAGES])
    problems = []
    for name in RunParameters.model_fields:
        key, flags = param_of(name).setting, [f for f in _flags(name) if f.startswith("--")]
        if key is not None:
            if key not in rows:
                problems.append(f"{name}: its key {key} is not in the options table")
            named = set(OPTION.findall(rows.get(key, "")))
            problems += [f"{name}: {f} is not in the row of {key}" for f in flags if f not in named]
        elif not (set(flags) & set(OPTION.findall(docs)) or f"`{name}`" in docs):
            problems.append(f"{name}: neither {flags} nor `{name}` appears in the docs")
    assert problems == []


def test_a_wrong_key_or_option_is_caught(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text(
        "# Configuration\n\n| key | default | CLI option |\n|---|---|---|\n"
        "| `model.k_min`, `model.k_max` | 1, 8 | `--k-min`, `--k-max` |\n"
        "| `model.k_maxx` | 8 | `--k-maximum` |\n"
        "| `input.table` / `input.query` | - | `--table` / `--query` |\n"
        "| `schedule.cron`, `schedule.timezone` | `0 2 * * *` | `--cron`, `--timezone` (serve) |\n"
        "| `model.seed` | 0 | `--cron` |\n"
        "\nafter the table: `model.nothing` `--nothing`\n"
    )
    rows = options_table(page)
    assert len(rows) == 5
    assert unknown_keys(rows) == ["model.k_maxx"]
    assert unknown_options(rows) == ["--k-maximum", "--cron"]  # --cron is serve's, not run's


# --- example queries --------------------------------------------------------------------------


def statements(sql: str) -> list[str]:
    """SQL statements without their comment lines."""
    found = []
    for statement in sql.split(";\n"):
        lines = [line for line in statement.strip().splitlines() if not line.startswith("--")]
        if lines:
            found.append("\n".join(lines).strip().rstrip(";"))
    return found


def test_the_documented_example_queries_are_the_ones_the_tests_run():
    """docs/results-database.md shows flows/sql/examples.sql, which test_pipeline_e2e runs on a real run."""
    blocks = re.findall(r"```sql\n(.*?)```", RESULTS.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    assert statements(blocks[0]) == statements(EXAMPLES.read_text(encoding="utf-8"))
    assert len(statements(blocks[0])) == 15
