"""The documentation lists every setting, with its real default: the README's Configuration
table, and the settings tables of the topics it links to."""

from __future__ import annotations

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
        # MODEL_TAG's default follows the contract (models/contract.py): documented as such.
        default = "<model_name>:latest" if name == "model_tag" else str(field.default)
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


# Of these only a part is data-specific, and the rest of the suite uses the other part.
PARTLY_DATA_SPECIFIC = {"tests/drift/helpers.py"}  # its SHIFTS/SHIFTED only


def test_no_test_of_the_machinery_imports_a_file_the_readme_calls_data_specific() -> None:
    # README "Serving your own model" tells a fork to adapt or delete those files: a test of the
    # machinery that imports one (test_overload.py took scrape() from test_observability.py)
    # breaks when it is deleted.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Serving your own model", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(tests/[\w/]+\.py)`", section)) - PARTLY_DATA_SPECIFIC
    assert "tests/integration/test_observability.py" in listed
    modules = {path.removesuffix(".py").replace("/", ".") for path in listed}
    importing = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        if name in listed:
            continue
        for module in modules:
            if re.search(rf"^\s*(from|import) {re.escape(module)}\b", path.read_text(), re.M):
                importing.append((name, module))
    assert importing == []
