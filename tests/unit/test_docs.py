"""The README documents every setting, with its real default."""

from __future__ import annotations

import re

from service.settings import Settings
from tests.support import ROOT


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", readme, flags=re.MULTILINE))
    for name, field in Settings.model_fields.items():
        assert name.upper() in rows, f"README lacks a row for {name.upper()}"
        # MODEL_TAG's default follows the contract (models/contract.py): documented as such.
        default = "<model_name>:latest" if name == "model_tag" else str(field.default)
        assert rows[name.upper()] == default, name
    # And no row for a setting that is gone: an operator would set it, to no effect.
    assert set(rows) <= {name.upper() for name in Settings.model_fields}


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
