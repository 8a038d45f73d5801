"""The documentation holds together: the README stays one page, every relative link resolves,
every reference page is listed in docs/index.md, and no page speaks of how the project is
worked on instead of what the gateway is."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
INDEX = DOCS / "index.md"
README_MAX_LINES = 150

PAGES = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md", *DOCS.glob("*.md")]
)
"""Every page the checks cover."""

PROCESS = re.compile(
    r"\bissue\s*#?\d|\bsession\b|\bhelper\b|\bthe seed\b|temporary script", re.IGNORECASE
)
"""Words about the project's process (its tickets, its work sittings, its throwaway tools),
which a reader of the product's documentation has no use for."""

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
_INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose(path: Path) -> list[tuple[int, str]]:
    """The lines of `path` outside fenced code blocks, numbered from 1."""
    lines: list[tuple[int, str]] = []
    fence = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            continue
        if match:
            fence = match.group(1)
            continue
        lines.append((number, line))
    return lines


def _links(path: Path) -> list[tuple[int, str]]:
    """The link targets of `path` (inline and reference definitions), with their line, leaving
    out code: a `[x](y)` inside backticks or a code block is not a link."""
    found: list[tuple[int, str]] = []
    for number, line in _prose(path):
        text = _CODE_SPAN.sub("", line)
        found += [(number, target) for target in _INLINE_LINK.findall(text)]
        reference = _REFERENCE.match(text)
        if reference:
            found.append((number, reference.group(1)))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped (word characters,
    `-` and spaces stay), each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """The anchors of every heading of `path`; a repeated one gets `-1`, `-2`... as on GitHub."""
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for _, line in _prose(path):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken(page: Path, target: str) -> str | None:
    """Why the relative link `target` of `page` leads nowhere, or None when it resolves."""
    where, _, anchor = target.partition("#")
    if where:
        base = ROOT if where.startswith("/") else page.parent
        resolved = (base / unquote(where.lstrip("/"))).resolve()
    else:
        resolved = page
    if not resolved.exists():
        return f"no file {_id(resolved)}"
    if anchor and resolved.suffix == ".md" and unquote(anchor) not in _anchors(resolved):
        return f"no heading #{anchor} in {_id(resolved)}"
    return None


def _id(path: Path) -> str:
    """`path` as the repository names it."""
    return os.path.relpath(path, ROOT)


def test_readme_fits_on_one_page() -> None:
    """README.md is a front page of at most 150 lines; the reference lives in docs/."""
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link points at a file that exists, and an `#anchor` at one of its headings."""
    broken = [
        f"{_id(page)}:{number}: {target}: {reason}"
        for number, target in _links(page)
        if target and not _SCHEME.match(target)
        for reason in [_broken(page, target)]
        if reason is not None
    ]
    assert not broken, "\n".join(broken)


def test_index_lists_every_page() -> None:
    """docs/index.md links to every other page in docs/."""
    linked = {
        (INDEX.parent / unquote(target.partition("#")[0])).resolve()
        for _, target in _links(INDEX)
        if target and not _SCHEME.match(target)
    }
    missing = [
        _id(page) for page in sorted(DOCS.glob("*.md")) if page != INDEX and page not in linked
    ]
    assert not missing, f"docs/index.md does not link to {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_pages_describe_the_product_not_its_process(page: Path) -> None:
    """No page speaks of the project's tickets, work sittings or throwaway tools."""
    found = [
        f"{_id(page)}:{number}: {match.group(0)!r}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        for match in PROCESS.finditer(line)
    ]
    assert not found, "\n".join(found)
