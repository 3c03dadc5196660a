"""MkDocs hooks of the docs site (``hooks:`` in mkdocs.yml).

* The ``API`` entry of the navigation (``reference/api/index.md``) becomes a section with
  every page of ``docs/reference/api/`` (written by ``scripts/api_pages.py``), so a new module
  needs no edit of mkdocs.yml.
* The docstrings' Sphinx roles (``:class:`X```) show as the code span alone.
* Links from a page to a file of the repository outside ``docs/`` (``../lit_scsdpo/forward.py``,
  ``../configs/tiny/sdpo.yaml``, ``../README.md``) are not pages of the site. Such a link to a
  module with an API page points at that page; any other becomes its text plus the repository
  path. A link to a repository path that does not exist is a warning (an error under
  ``mkdocs build --strict``), and links between pages are left to MkDocs' own checks, so a
  broken link between pages still fails the strict build.
"""

from __future__ import annotations

import html
import logging
import os
import posixpath
import re
import sys
import xml.etree.ElementTree as etree
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown import Extension, util
from markdown.treeprocessors import Treeprocessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_pages  # noqa: E402

log = logging.getLogger("mkdocs.hooks.repo_links")

API_INDEX = "reference/api/index.md"
_current: dict[str, str] = {}


def _expand_api(items):
    """The navigation with the API index replaced by a section of every API page."""
    out = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if value == API_INDEX:
                pages = [API_INDEX] + [f"reference/api/{name}.md" for name, _ in api_pages.public_modules()]
                item = {title: pages}
            elif isinstance(value, list):
                item = {title: _expand_api(value)}
        out.append(item)
    return out


def on_config(config):
    if config.nav:
        config.nav = _expand_api(config.nav)
    config.markdown_extensions.append(_RepoLinks(config))
    return config


def on_page_markdown(markdown, page, config, files):
    _current["src_uri"] = page.file.src_uri
    return markdown


_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|obj|data|exc|const):(?=<code>)")


def on_page_content(html_text, page, config, files):
    # the docstrings' Sphinx roles (:class:`X`) render as ":class:" before the code span
    return _SPHINX_ROLE.sub("", html_text)


class _RepoLinks(Extension):
    def __init__(self, config):
        super().__init__()
        self.docs_dir = os.path.realpath(config.docs_dir)
        self.repo_root = os.path.dirname(os.path.realpath(config.config_file_path))

    def extendMarkdown(self, md):  # noqa: N802 (Markdown's name)
        # after the inline patterns made the <a> elements (20), before MkDocs' link check (0)
        md.treeprocessors.register(_RepoLinkProcessor(md, self), "repo_links", 1)


class _RepoLinkProcessor(Treeprocessor):
    def __init__(self, md, ext: _RepoLinks):
        super().__init__(md)
        self.ext = ext

    def _repo_path(self, url: str) -> str | None:
        """The repository path a relative link points at, when it is outside docs/."""
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or not parts.path or url.startswith(("/", "\\")):
            return None
        src_dir = posixpath.dirname(_current.get("src_uri", ""))
        target = os.path.realpath(os.path.join(self.ext.docs_dir, src_dir, unquote(parts.path)))
        if target == self.ext.docs_dir or target.startswith(self.ext.docs_dir + os.sep):
            return None
        if not target.startswith(self.ext.repo_root + os.sep):
            return None
        return os.path.relpath(target, self.ext.repo_root).replace(os.sep, "/")

    def run(self, root: etree.Element) -> None:
        src_uri = _current.get("src_uri", "")
        for el in root.iter():
            attr = "href" if el.tag == "a" else "src" if el.tag == "img" else None
            url = el.get(attr) if attr else None
            if not url:
                continue
            path = self._repo_path(url)
            if path is None:
                continue
            if not os.path.exists(os.path.join(self.ext.repo_root, path)):
                log.warning(f"Doc file '{src_uri}' links to '{url}': the repository has no '{path}'.")
                self._to_text(el, path, self._plain_text(el))
                continue
            if el.tag == "img":
                log.warning(f"Doc file '{src_uri}' shows the image '{url}' from outside docs/: "
                            f"move it to docs/figures.")
                continue
            page = self._api_page(path)
            if page is not None:
                el.set("href", posixpath.relpath(page, posixpath.dirname(src_uri) or "."))
                continue
            self._to_text(el, path, self._plain_text(el))

    def _plain_text(self, el: etree.Element) -> str:
        """The element's text, with the code spans that extensions stashed put back."""
        stash = self.md.htmlStash.rawHtmlBlocks

        def unstash(m: re.Match) -> str:
            i = int(m.group(1))
            return html.unescape(str(stash[i])) if i < len(stash) else ""

        return util.HTML_PLACEHOLDER_RE.sub(unstash, "".join(el.itertext()))

    @staticmethod
    def _api_page(path: str) -> str | None:
        if not path.endswith(".py"):
            return None
        module = path[:-3].replace("/", ".")
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        return api_pages.page_of(module)

    @staticmethod
    def _to_text(el: etree.Element, path: str, text: str) -> None:
        """``<a href=../x>text</a>`` -> ``text`` (``<code>x</code>`` when the text does not say it)."""
        el.tag = "span"
        el.attrib.clear()
        el.set("class", "repo-path")
        el.set("title", path)
        shown = path.rstrip("/")
        if shown in text or posixpath.basename(shown) in text:
            return
        children = list(el)
        if children:
            children[-1].tail = (children[-1].tail or "") + " ("
        else:
            el.text = (el.text or "") + " ("
        code = etree.SubElement(el, "code")
        code.text = path
        code.tail = ")"
