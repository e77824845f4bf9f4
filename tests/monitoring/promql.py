"""The PromQL of the committed dashboards (expressions as Grafana sends them) and of the runbook;
metric names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.monitoring.support import DASHBOARDS, RUNBOOK

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


# A code span of the runbook is a query when it selects a series, calls a function or aggregates
# (`name{`, `name[`, `rate(`, `max by (`); its placeholders are filled in as the on-call would.
RUNBOOK_QUERY = re.compile(r"[a-z][a-z0-9_:]*[({\[]|\b(?:sum|min|max|avg|count) by \(")
RUNBOOK_PLACEHOLDERS = ("<version>",)


def runbook_code() -> list[str]:
    """Every code span of the runbook, whitespace of wrapped lines collapsed."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", RUNBOOK.read_text())]


def runbook_queries(placeholders: dict[str, str]) -> list[str]:
    """The runbook's PromQL, ``placeholders`` (each of ``RUNBOOK_PLACEHOLDERS``) filled in."""
    queries = []
    for span in runbook_code():
        if not RUNBOOK_QUERY.search(span) or span.startswith(("python ", "curl ", "GET ")):
            continue
        for name in RUNBOOK_PLACEHOLDERS:
            span = span.replace(name, placeholders[name])
        queries.append(span)
    return queries


def runbook_names() -> set[str]:
    """The bare names the runbook gives in code: metric names, and label names and values."""
    return {span for span in runbook_code() if re.fullmatch(r"[a-z_:][a-z0-9_:]*", span)}


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
