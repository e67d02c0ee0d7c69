"""Every relative link of README.md and docs/*.md leads somewhere: the file exists (relative to
the page that links to it), and a `#fragment` names a heading of the target page under GitHub's
anchor rule. Links to http(s):, mailto: (any URL scheme) are not followed. Links and headings
inside fenced code blocks and inline code do not count. Reads files only; starts no process."""
import glob
import os
import re
from urllib.parse import unquote

import pytest

from helpers import ROOT

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*(?:[ \t]#+[ \t]*)?$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target), the target optionally in <...> and followed by a "title"
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]+)(?:\s+"[^"]*")?\s*\)')
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HTML_TAG = re.compile(r"<[^>]+>")
INLINE_LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def prose_lines(text):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            yield number, line
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(m.group(1)):]:
            fence = None


def slug(heading):
    """GitHub's anchor of a heading: its text as rendered (no markup), lowercased, characters
    other than letters, digits, spaces, hyphens and underscores dropped, spaces to hyphens."""
    text = INLINE_LINK_TEXT.sub(r"\1", heading)
    text = CODE_SPAN.sub(lambda m: m.group(2), text)
    text = HTML_TAG.sub("", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        seen, found = {}, set()
        for _, line in prose_lines(text):
            m = HEADING.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def links(path):
    """(line number, target) of every Markdown link of the page outside code."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for number, line in prose_lines(text):
        line = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        for m in LINK.finditer(line):
            target = m.group(1)
            if target.startswith("<"):
                target = target[1:-1]
            yield number, target


def broken_links(page):
    path = os.path.join(ROOT, page)
    broken = []
    for number, target in links(path):
        if SCHEME.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part))) if file_part else path
        if not os.path.exists(dest):
            broken.append(f"{page}:{number}: {target}: no such file")
            continue
        if fragment and dest.endswith(".md") and os.path.isfile(dest):
            if unquote(fragment).lower() not in anchors(dest):
                broken.append(f"{page}:{number}: {target}: no heading #{fragment} in "
                              f"{os.path.relpath(dest, ROOT)}")
    return broken


def test_slug_follows_githubs_rule():
    assert slug("`queuectl dlq list`, `queuectl dlq retry ID… | --all`") == "queuectl-dlq-list-queuectl-dlq-retry-id----all"
    assert slug("Several hosts, one spool: operators' guide") == "several-hosts-one-spool-operators-guide"
    assert slug("5. Transitions, step by step") == "5-transitions-step-by-step"
    assert slug("The view of `pending/`") == "the-view-of-pending"
    assert slug("A [link](x.md) and **bold** and snake_case") == "a-link-and-bold-and-snake_case"


def test_the_pages_are_found():
    assert "README.md" in PAGES and "docs/contract.md" in PAGES


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    broken = broken_links(page)
    assert not broken, "broken links:\n" + "\n".join(broken)
