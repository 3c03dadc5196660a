"""The API reference pages of the docs site, one per public module of ``lit_scsdpo``.

    python scripts/api_pages.py --write   # (re)write docs/reference/api/*.md
    python scripts/api_pages.py --check   # exit 1 when they are stale
    make docs-reference                   # this and scripts/config_reference.py

The modules are found on disk (nothing is imported): every module and sub-package directly
under ``lit_scsdpo/`` except the internal ones in ``INTERNAL``. A module gets a page with its
mkdocstrings directive (``::: lit_scsdpo.losses``); a package gets one page with its own
docstring, then one section per submodule. mkdocstrings reads the source with griffe (static
analysis), so building the pages needs none of the package's dependencies. The site's hook
(``scripts/mkdocs_hooks.py``) puts every page of ``docs/reference/api/`` in the navigation.
"""

from __future__ import annotations

import argparse
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lit_scsdpo"
OUT = ROOT / "docs" / "reference" / "api"
COMMAND = "make docs-reference"

#: modules that get no page: no API a user calls or subclasses
INTERNAL = {
    "assets": "the shipped model files",
    "chat": "chat rendering used by the DataModule and the teacher",
    "entry": "the console script's front door (the CLI is lit_scsdpo.cli)",
    "host_memory": "the allocator setting the CLI applies",
    "layout": "the token layout shared by the sampler and the batches",
    "tiny": "the tiny test model builder (tests, scripts/build_tiny_asset.py)",
}


def _submodules(path: Path, prefix: str) -> list[str]:
    """Every module under the package folder ``path``, depth first, sorted by name."""
    names: list[str] = []
    for info in sorted(pkgutil.iter_modules([str(path)]), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        name = f"{prefix}.{info.name}"
        names.append(name)
        if info.ispkg:
            names.extend(_submodules(path / info.name, name))
    return names


def public_modules() -> list[tuple[str, bool]]:
    """``(short name, is a package)`` of each module that gets a page, sorted by name."""
    found = []
    for info in pkgutil.iter_modules([str(ROOT / PACKAGE)]):
        if info.name.startswith("_") or info.name in INTERNAL:
            continue
        found.append((info.name, info.ispkg))
    return sorted(found)


def page_of(module: str) -> str | None:
    """The API page (path under docs/) that documents ``module`` (dotted name), if any."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    top = parts[1]
    if top not in {name for name, _ in public_modules()}:
        return None
    return f"reference/api/{top}.md"


def render_page(name: str, is_package: bool) -> str:
    full = f"{PACKAGE}.{name}"
    lines = [f"# `{full}`", "", f"::: {full}"]
    if not is_package:
        return "\n".join(lines) + "\n"
    lines += ["    options:", "      members: false", ""]
    for sub in _submodules(ROOT / PACKAGE / name, full):
        lines += [f"::: {sub}", "    options:", "      show_root_heading: true", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_index(modules: list[tuple[str, bool]]) -> str:
    lines = [
        "# API reference",
        "",
        f"Generated from the docstrings of `{PACKAGE}` (the pages list by `scripts/api_pages.py`;",
        f"regenerate with `{COMMAND}`). The top-level names `{PACKAGE}.GRPO`, `{PACKAGE}.SDPO`,",
        f"`{PACKAGE}.RolloutDataModule`, ... are re-exports of the classes documented here.",
        "",
    ]
    for name, is_package in modules:
        kind = "package" if is_package else "module"
        lines.append(f"* [`{PACKAGE}.{name}`]({name}.md) ({kind})")
    return "\n".join(lines) + "\n"


def expected_pages() -> dict[str, str]:
    """File name under docs/reference/api -> content."""
    modules = public_modules()
    pages = {f"{name}.md": render_page(name, is_package) for name, is_package in modules}
    pages["index.md"] = render_index(modules)
    return pages


def stale(out: Path = OUT) -> list[str]:
    """What differs between ``out`` and the pages generated now (empty: up to date)."""
    pages = expected_pages()
    present = {p.name for p in out.glob("*.md")} if out.is_dir() else set()
    problems = [f"missing {name}" for name in sorted(set(pages) - present)]
    problems += [f"not a public module any more: {name}" for name in sorted(present - set(pages))]
    problems += [f"outdated {name}" for name in sorted(set(pages) & present)
                 if (out / name).read_text(encoding="utf-8") != pages[name]]
    return problems


def write(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pages = expected_pages()
    for old in out.glob("*.md"):
        if old.name not in pages:
            old.unlink()
    for name, text in pages.items():
        (out / name).write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write docs/reference/api/*.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when the pages are stale")
    args = ap.parse_args(argv)
    if args.write:
        write()
        print(f"wrote {len(expected_pages())} pages to {OUT.relative_to(ROOT)}")
        return 0
    problems = stale()
    for line in problems:
        print(f"{OUT.relative_to(ROOT)}: {line}", file=sys.stderr)
    if problems:
        print(f"regenerate with: {COMMAND}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
