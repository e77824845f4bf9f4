"""The PromQL of the committed dashboards: expressions as Grafana sends them, metric names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.monitoring.support import DASHBOARDS

# What Grafana puts in place of its variables when it sends a query (the instance and model
# version variables are regexes; their "All" is .*)
VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$model_version": ".*"}
FUNCTIONS_AND_KEYWORDS = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right|and|or|unless|offset|bool|inf|nan)\b"
)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def expressions() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression as Grafana sends it) for every query."""
    return [
        (path.name, panel["title"], substitute(target["expr"]))
        for path in DASHBOARDS
        for panel in panels(load(path))
        for target in panel.get("targets", [])
    ]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label matchers, strings, grouping clauses dropped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = FUNCTIONS_AND_KEYWORDS.sub(" ", text)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", text)
    return {name for name, call in names if not call}
