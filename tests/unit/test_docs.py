"""The documentation lists every setting, with its real default: the README's Configuration
table, and the settings tables of the topics it links to."""

from __future__ import annotations

import ast
import re

from service.settings import Settings
from tests.support import ROOT

# Where each settings table lives, and its anchor: README's Configuration links to each.
SETTINGS_TABLES = {
    "README.md": "configuration",
    "docs/prediction-log.md": "prediction-log-settings",
    "docs/drift.md": "drift-settings",
}


def test_every_setting_is_in_a_settings_table_with_its_default() -> None:
    rows: dict[str, str] = {}
    for doc in SETTINGS_TABLES:
        text = (ROOT / doc).read_text()
        found = re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", text, flags=re.MULTILINE)
        assert found, f"{doc} has no settings table"
        for name, default in found:
            assert name not in rows, f"{name} has a row in two tables"
            rows[name] = default
    for name, field in Settings.model_fields.items():
        assert name.upper() in rows, f"no settings table has a row for {name.upper()}"
        # MODEL_TAG's default follows the contract (models/contract.py): documented as such;
        # an empty list (CORS_ALLOW_ORIGINS) is a variable left unset.
        default = "<model_name>:latest" if name == "model_tag" else str(field.default)
        default = "unset" if field.default == () else default
        assert rows[name.upper()] == default, name
    # And no row for a setting that is gone: an operator would set it, to no effect.
    assert set(rows) <= {name.upper() for name in Settings.model_fields}


def test_the_readmes_configuration_links_to_every_settings_table() -> None:
    # A platform engineer reads Configuration first: it must lead to every other table.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    for doc, anchor in SETTINGS_TABLES.items():
        if doc != "README.md":
            assert f"]({doc}#{anchor})" in section, doc


def files_of_tests_about_the_example() -> set[str]:
    """The test files holding a test marked ``example_model_only`` (tests/support.py)."""
    files = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            decorated = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if decorated and any(
                ast.unparse(d) == "example_model_only"
                for d in node.decorator_list  # type: ignore[union-attr]
            ):
                files.add(str(path.relative_to(ROOT)))
    return files


def test_the_readme_names_every_file_of_tests_about_the_example_data() -> None:
    # README "Serving your own model" tells a data scientist which tests are skipped for their
    # model and why: the list must be the tests' own.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Serving your own model", 1)[1].split("\n## ", 1)[0]
    paragraph = next(p for p in section.split("\n\n") if "example_model_only" in p)
    listed = set(re.findall(r"`(tests/[\w/]+\.py)`", paragraph)) - {"tests/support.py"}
    assert listed == files_of_tests_about_the_example()
