"""The repository stands alone: nothing in it points at documents outside it, and the relative
links of the docs resolve.

A user clones only this repository. The specification the code cites is
docs/specification.md, the implementation pitfalls are docs/pitfalls.md. tests/ is not
scanned: tests may read the reference data in ../shared/data when it exists and skip otherwise.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


#: What is scanned: the package, configs, docs, benchmarks, scripts and the top-level files.
FOLDERS = ("lit_scsdpo", "configs", "docs", "benchmarks", "scripts")
TOP_FILES = ("README.md", "pyproject.toml", "Makefile", "CITATION.cff", "mkdocs.yml")

#: A pointer outside the repository: the team documents that used to sit beside it, any path
#: into the folder beside it, and a numbered pitfall cited without its page.
OUTSIDE = re.compile(r"paper-spec|DESIGN\.md|tiny-model-notes|\.\./shared|\bpitfalls?\s+\d", re.IGNORECASE)


def repository_files() -> list[str]:
    """Tracked and untracked, not ignored, files under FOLDERS and TOP_FILES (relative paths)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--",
                              *FOLDERS, *TOP_FILES], cwd=ROOT, capture_output=True, text=True, check=True)
        names = out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file on disk
        names = [str(p.relative_to(ROOT)) for folder in FOLDERS for p in (ROOT / folder).rglob("*")]
        names += list(TOP_FILES)
    skip = ("__pycache__", ".egg-info")
    return sorted({n for n in names if (ROOT / n).is_file() and not any(s in n for s in skip)})


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    return None if b"\0" in data else data.decode("utf-8", errors="replace")


def test_no_file_points_outside_the_repository():
    hits = []
    for name in repository_files():
        text = text_of(ROOT / name)
        for number, line in enumerate((text or "").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not hits, ("these lines point outside the repository (cite docs/specification.md or "
                      "docs/pitfalls.md instead):\n" + "\n".join(hits))


# ------------------------------------------------------------------ Markdown links
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
ATTR_ID = re.compile(r"\s*\{[^}]*#([^\s}]+)[^}]*\}\s*$")
HTML_ID = re.compile(r"<[^>]+\bid=[\"']([^\"']+)[\"']")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and code spans, where links are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slugify(title: str) -> str:
    """Python-Markdown's ``toc`` slug of a heading (the id it gets without an explicit one)."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text
    title = re.sub(r"<[^>]+>", "", title)
    title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    title = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", title)


def anchors(path: Path) -> set[str]:
    """The ids a Markdown page defines: ``{#id}`` on headings (attr_list), the toc slugs of the
    other headings (repeats get ``_1``, ``_2``, ...), and ``id="..."`` in raw HTML."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    ids: set[str] = set(HTML_ID.findall(text))
    for _, title in HEADING.findall(text):
        explicit = ATTR_ID.search(title)
        if explicit:
            ids.add(explicit.group(1))
            continue
        slug, n = slugify(title), 1
        while slug in ids:
            slug = f"{slugify(title)}_{n}"
            n += 1
        ids.add(slug)
    return ids


def markdown_pages() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def relative_links(page: Path) -> list[str]:
    text = prose(page.read_text(encoding="utf-8"))
    targets = INLINE_LINK.findall(text) + LINK_DEFINITION.findall(text)
    return [t for t in targets if not re.match(r"^[a-zA-Z][\w+.-]*:", t)]  # no http:, mailto:, ...


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_markdown_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading or id {fragment!r} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    """The checker itself: it finds inline links and definitions, ignores code, and knows
    explicit and automatic heading ids."""
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n## 1.4 Importance weighting {#s1-4}\n\n### Data\n\n### Data\n\n"
                    "See [x](b.md#top), ![img](c.png \"t\") and `[no](skip.md)`.\n\n"
                    "```\n[no](skip2.md)\n# not a heading\n```\n\n* item\n\n  ```\n  [no](skip3.md)\n  ```\n\n"
                    "[ref]: d.md\n", encoding="utf-8")
    assert relative_links(page) == ["b.md#top", "c.png", "d.md"]
    assert anchors(page) == {"title", "s1-4", "data", "data_1"}
    assert slugify("3.3 The algorithm: `p̂` (⚠ where unconfirmed)") == "33-the-algorithm-p-where-unconfirmed"
