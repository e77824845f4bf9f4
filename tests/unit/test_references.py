"""Every repository path and every `make` target the documentation names exists. Most paths are
named in prose, not linked (tests/unit/test_links.py checks the links): in the docs, and in the
code's comments and docstrings, where a reader goes next. A file moved or a target renamed must
not leave a reader looking for what is gone."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from tests.support import ROOT

DOCUMENTS = sorted(
    {
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("monitoring/**/*.md"),
        *ROOT.glob("loadtests/*.md"),
        *ROOT.glob("models/**/*.md"),
    }
)
SOURCES = sorted(
    path
    for folder in ("service", "models", "loadtests", "monitoring", "container", "tests")
    for path in (ROOT / folder).rglob("*.py")
    if "generated" not in path.parts
)
CONFIGURATION = sorted({ROOT / "bentofile.yaml", *ROOT.glob("monitoring/**/*.y*ml")})
FILES = [*DOCUMENTS, *SOURCES, *CONFIGURATION, ROOT / "Makefile"]

# A path from the repository's root, in the folders that hold its files. A path with a wildcard
# or a placeholder (`loadtests/results/drift.{json,md}`, `tests/**`) names no one file.
PATH = re.compile(
    r"(?<![\w./-])((?:service|models|loadtests|tests|monitoring|docs|container|requirements|\.ci)"
    r"/[\w./*{},<>-]*[\w*}>])"
)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
MAKE_IN_CODE_SPAN = re.compile(r"`+make ([a-z][a-z-]*)")
MAKE_IN_FENCE = re.compile(r"^\s*(?:\$ )?make ([a-z][a-z-]*)", re.MULTILINE)


def python_prose(path: Path) -> str:
    """The comments and docstrings of a Python file: its code's own strings are data."""
    source = path.read_text()
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = [token.string for token in tokens if token.type == tokenize.COMMENT]
    documented = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
    docstrings = [
        ast.get_docstring(node, clean=False) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, documented)
    ]
    return "\n".join(comments + docstrings)


def prose(path: Path) -> str:
    """What a reader reads of ``path``: a Makefile's comments, a Python file's prose."""
    if path.suffix == ".py":
        return python_prose(path)
    if path.name == "Makefile":
        return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    return path.read_text()


def outputs() -> tuple[str, ...]:
    """Folders the repository ignores (.gitignore): what runs write, absent from a checkout."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return tuple(line.rstrip("/") for line in lines if "/" in line.rstrip("/"))


def missing_paths(text: str) -> list[str]:
    written_by_runs = tuple(f"{folder}/" for folder in outputs())
    return [
        path
        for path in PATH.findall(text)
        if not re.search(r"[*{}<>]", path)
        and not f"{path}/".startswith(written_by_runs)
        and not (ROOT / path).exists()
    ]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def named_targets(text: str, markdown: bool) -> set[str]:
    """The targets of the `make X` commands of ``text``: in code spans and, in markdown, on the
    lines of fenced code blocks (prose can say "make sure")."""
    named = set(MAKE_IN_CODE_SPAN.findall(text))
    if markdown:
        for block in FENCE.finditer(text):
            named |= set(MAKE_IN_FENCE.findall(block.group(0)))
    return named


def test_the_checkers_see_what_is_gone_and_skip_the_rest() -> None:
    text = (
        "See `service/gone.py`, service/http.py, docs/grpc.md#tls and tests/unit/test_links.py.\n"
        "Not: ../service/http.py is relative, loadtests/results/drift.{json,md} and tests/** "
        "name no one file, loadtests/reports/mix.html is written by a run.\n"
    )
    assert missing_paths(text) == ["service/gone.py"]
    markdown = "Run `make serve`, make sure it works.\n\n```\n$ make tset\nmake lint\n```\n"
    assert named_targets(markdown, markdown=True) == {"serve", "tset", "lint"}
    assert named_targets("# ``make proto`` regenerates them; make sure", markdown=False) == {
        "proto"
    }


def test_python_prose_is_comments_and_docstrings(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        '"""Module: service/a.py."""\n\n'
        "PATTERN = 'service/events'  # a comment: service/b.py\n\n\n"
        "async def f() -> None:\n"
        '    """Function: service/c.py."""\n'
    )
    assert sorted(PATH.findall(python_prose(source))) == [
        "service/a.py",
        "service/b.py",
        "service/c.py",
    ]


def test_the_files_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in FILES}
    wanted = {"README.md", "monitoring/RUNBOOK.md", "service/service.py", "tests/support.py"}
    assert wanted | {"monitoring/prometheus/rules/alerts.yml", "Makefile"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_and_make_target_named_exists(path: Path) -> None:
    markdown = path.suffix == ".md"
    text = prose(path)
    assert missing_paths(text) == []
    assert named_targets(text, markdown) - make_targets() == set()
