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
