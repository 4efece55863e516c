"""Markdown links, heading anchors and tracker references, read as GitHub reads them, for tests/test_docs.py.

Links are parsed with markdown-it-py (CommonMark plus GitHub's tables), so only real links count: inline links
and images (``[text](target)``, ``![alt](src)``) and reference definitions (``[label]: target``). A path in a
code span or in a fenced or indented code block is text, not a link, and is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark").enable("table")

# RFC 3986 section 4.3: a reference with a scheme is absolute; only these three appear in the docs, and they
# are left to the reader's browser. Every other target is a path relative to the file (or, with a leading /,
# to the repository root, as GitHub resolves it).
ABSOLUTE = re.compile(r"^(?:https?://|mailto:)", re.I)


@dataclass(frozen=True)
class Link:
    line: int  # 1-based, in the file the link is written in
    target: str  # as markdown-it normalised it (spaces and non-ASCII percent-encoded)


def _find(block: str, href: str, start: int) -> int:
    """Where ``href`` is written in ``block`` from ``start``: after ``](`` first, as an inline link writes it."""
    for raw in dict.fromkeys((href, unquote(href))):
        for written in (f"]({raw}", f"](<{raw}>", raw):
            at = block.find(written, start)
            if at >= 0:
                return at
    return -1


def links(text: str) -> list[Link]:
    """Every link of a Markdown document, with the line it is written on."""
    env: dict[str, Any] = {}
    tokens = _MD.parse(text, env)
    lines = text.splitlines()
    references = env.get("references", {}).values()
    out = [Link(ref["map"][0] + 1, ref["href"]) for ref in references]
    defined = {ref["href"] for ref in references}
    for tok in tokens:
        if tok.type != "inline" or tok.map is None:
            continue
        first, last = tok.map
        block = "\n".join(lines[first:last])
        cursor = 0
        for child in tok.children or []:
            href = child.attrGet("href") if child.type == "link_open" else child.attrGet("src")
            if child.type not in ("link_open", "image") or not isinstance(href, str):
                continue
            at = _find(block, href, cursor)
            if at < 0 and href in defined:
                continue  # `[text][label]`: checked once, on the line of its definition
            line = first + 1 + (block.count("\n", 0, at) if at >= 0 else 0)
            cursor = max(cursor, at + 1)
            out.append(Link(line, href))
    return sorted(out, key=lambda link: link.line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, every character but letters, digits, ``_``, ``-``
    and spaces dropped, each space made a ``-`` (so ``1. One path (`paths.py`)`` is ``1-one-path-pathspy``)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a document; a repeated heading gets ``-1``, ``-2``, ..."""
    tokens = _MD.parse(text)
    seen: dict[str, int] = {}
    out = set()
    for opening, inline in zip(tokens, tokens[1:], strict=False):
        if opening.type != "heading_open":
            continue
        words = "".join(c.content for c in inline.children or [] if c.type in ("text", "text_special", "code_inline"))
        base = slug(words)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(paths: Iterable[Path], root: Path) -> list[str]:
    """``file:line: (target) why`` for every relative link of ``paths`` that does not resolve: a file that does
    not exist or lies outside ``root``, or a ``#fragment`` that no heading of the Markdown file it names has."""
    root = root.resolve()
    out = []
    for path in paths:
        path = path.resolve()
        for link in links(path.read_text(encoding="utf-8")):
            if ABSOLUTE.match(link.target):
                continue
            where = f"{path.relative_to(root)}:{link.line}: ({link.target})"
            rel, _, fragment = link.target.partition("#")
            rel = unquote(rel.partition("?")[0])
            target = path if not rel else (root / rel.lstrip("/")) if rel.startswith("/") else path.parent / rel
            target = target.resolve()
            if not target.is_relative_to(root):
                out.append(f"{where} points outside the repository")
            elif not target.exists():
                out.append(f"{where} {target.relative_to(root)} does not exist")
            elif fragment and target.suffix == ".md" and target.is_file():
                if unquote(fragment) not in anchors(target.read_text(encoding="utf-8")):
                    out.append(f"{where} {target.relative_to(root)} has no heading whose anchor is #{fragment}")
    return out


# A tracker reference in prose: the word issue (or pull request) with a number, with or without "#", a bare
# "#" and number after a space or bracket, and the word issue as a noun after the/this/that/earlier/previous/
# security/tracker. The product names the behaviour instead: the number means nothing to a reader without the
# tracker. Examples are in tests/test_docs.py, spelt so that its own text does not match.
TRACKER_REFERENCE = re.compile(
    r"\bissues?\s*#?\s*\d+"
    r"|(?:^|[\s(\[])#\d+\b"
    r"|\b(?:the|this|that|earlier|previous|security|tracker)\s+issue(?:'s|s)?\b"
    r"|\bissue[- ]tracker\b"
    r"|\bpull[- ]request\s*#?\s*\d+",
    re.I,
)


def tracker_references(paths: Iterable[Path], root: Path) -> Iterator[str]:
    """``file:line: text`` for every line of the text files under ``paths`` that points at the tracker rather
    than naming a behaviour."""
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            below = path.relative_to(top).parts if top.is_dir() else ()
            if any(part.startswith(".") or part == "__pycache__" for part in below):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # a binary file: no prose in it
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if TRACKER_REFERENCE.search(line):
                    yield f"{path.relative_to(root)}:{number}: {line.strip()}"
