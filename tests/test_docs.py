"""The documentation stays true to the repository: every relative link and anchor resolves, every
path it quotes exists, every flag of the command line is documented, and the README stays a
short guide (reference belongs in docs/)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("bench/results/*.md")])
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
# Paths the documents quote in backticks, under the repository's own top-level folders.
_QUOTED_PATH = re.compile(r"`((?:bench|deploy|docs|models|protos|service|tests)/[^`\s*{}<>$]*)`")


def prose(text: str) -> str:
    """The text without fenced code blocks (a `# comment` there is not a heading)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in _HEADING.findall(prose(path.read_text())):
        base = slug(heading)
        anchor, n = base, 0
        while anchor in found:  # repeated headings get -1, -2, ...
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def links(path: Path) -> Iterator[str]:
    text = _CODE_SPAN.sub("", prose(path.read_text()))
    for target in _LINK.findall(text):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            yield target


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_relative_link_points_at_a_file_and_heading_that_exist(document: Path) -> None:
    broken = []
    for target in links(document):
        file_part, _, anchor = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {name(resolved)}")
    assert not broken, f"{name(document)}: " + "; ".join(broken)


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_quoted_repository_path_exists(document: Path) -> None:
    missing = [
        quoted
        for quoted in _QUOTED_PATH.findall(document.read_text())
        if not (ROOT / quoted.rstrip("/")).exists()
    ]
    assert not missing, f"{name(document)} quotes files the repository does not have: {missing}"


def test_the_readme_is_a_short_guide() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, "move reference to docs/, not into the README"
    headings = [line for line in lines if line.startswith("## ")]
    for section in ("## The two commands", "## A first request, three ways", "## Documentation"):
        assert section in headings


def test_every_docs_file_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unlinked = [name(p) for p in ROOT.glob("docs/*.md") if p.resolve() not in linked]
    assert not unlinked, f"the README's map does not lead to {unlinked}"


def test_every_flag_of_every_subcommand_is_documented() -> None:
    import argparse

    from plexserve.cli import parser

    top = parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    docs = "\n".join(p.read_text() for p in ROOT.glob("docs/*.md"))
    missing = [
        f"{command} {option}"
        for command, sub in [("plexserve", top), *commands.items()]
        for action in sub._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
        if not re.search(rf"{re.escape(option)}(?![\w-])", docs)
    ]
    assert not missing, f"flags that docs/ never mentions: {missing}"


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    """The link and anchor finders see what a reader would follow, and nothing in code."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n## A `code` heading: twice\n## A `code` heading: twice\n"
        "[ok](#title) [also](#a-code-heading-twice-1) ![img](pic.png) [web](https://x.y)\n"
        "`[not](a-link.md)`\n```\n[not](either.md)\n# not a heading\n```\n"
    )
    assert list(links(page)) == ["#title", "#a-code-heading-twice-1", "pic.png"]
    assert anchors(page) == {"title", "a-code-heading-twice", "a-code-heading-twice-1"}
