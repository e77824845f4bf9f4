"""Every relative link of the documentation leads somewhere: the file exists and, for a markdown
file, the #anchor is one of its headings, by GitHub's rules. The README is the front door and
docs/ holds the reference; a section moved from one to the other must not leave a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import ROOT

DOCUMENTS = sorted(
    {
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("monitoring/**/*.md"),
        *ROOT.glob("loadtests/**/*.md"),
        *ROOT.glob("models/**/*.md"),
    }
)

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:...


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced code blocks and code spans blanked."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub("CODE", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation but - and _
    dropped, spaces made -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text())
    for heading in HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found |= set(re.findall(r"<a (?:name|id)=\"([^\"]+)\"", text))
    return found


def links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path.read_text()))]


def test_the_slug_rules_are_githubs() -> None:
    assert slug("Prometheus: `GET /metrics`") == "prometheus-get-metrics"
    assert slug("The `drift_runs` table") == "the-drift_runs-table"
    assert slug("How records travel, and why none is lost") == (
        "how-records-travel-and-why-none-is-lost"
    )
    assert slug("What observability costs: `make overhead`") == (
        "what-observability-costs-make-overhead"
    )
    assert slug("The model, its contract and the registry") == (
        "the-model-its-contract-and-the-registry"
    )


def test_the_checker_sees_links_and_skips_code(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text(
        "# Title\n\nSee [a](docs/x.md#y), [`b`](#title) and ![c](img.png).\n"
        "`[not](a-link.md)`\n\n```md\n[not](either.md)\n# Not a heading\n```\n"
    )
    assert links(sample) == ["docs/x.md#y", "#title", "img.png"]
    assert anchors(sample) == {"title"}
    (tmp_path / "img.png").write_bytes(b"")
    assert broken_links(sample) == ["docs/x.md#y: no such file"]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no such heading in {destination.relative_to(ROOT)}")
    return broken


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_documents_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in DOCUMENTS}
    assert {"README.md", "monitoring/RUNBOOK.md", "models/MODEL_CARD.md"} <= names


def test_every_doc_is_listed_in_the_readme_and_says_what_it_covers() -> None:
    # A reference page nobody can find from the front door is lost; each opens with its title
    # and a paragraph saying what it covers and for whom.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert docs
    for path in docs:
        name = str(path.relative_to(ROOT))
        assert f"]({name})" in section, name
        title, intro = path.read_text().split("\n\n", 2)[:2]
        assert title.startswith("# "), name
        assert "\n" not in title, name
        assert intro.strip(), name
        assert not intro.startswith(("#", "|", "```", "-")), name
