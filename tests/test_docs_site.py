"""The docs site (mkdocs.yml): its generated pages are current, and it builds with --strict.

* docs/reference/api/*.md is what scripts/api_pages.py writes for the modules on disk now;
* docs/reference/configuration.md is what scripts/config_reference.py renders from the CLI's
  parser now (every shipped config parsed as ``lit-scsdpo fit --config ...``, ~15-30 s);
* ``mkdocs build --strict`` of the whole site succeeds (when mkdocs is installed: the ``docs``
  extra, which ``make setup`` installs);
* the site's hook turns links to repository files into text and still fails the strict build
  on a link to a missing file or page, or to a missing anchor.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import api_pages  # noqa: E402
import config_reference  # noqa: E402

REGENERATE = "regenerate with `make docs-reference` (python scripts/api_pages.py --write; " \
             "python scripts/config_reference.py --write)"
HAS_MKDOCS = all(importlib.util.find_spec(m) is not None for m in ("mkdocs", "material", "mkdocstrings_handlers"))


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


def test_api_pages_are_current():
    problems = api_pages.stale()
    assert not problems, f"docs/reference/api is stale ({'; '.join(problems)}): {REGENERATE}"


def test_internal_modules_exist():
    """A module listed as internal (no API page) that no longer exists is a stale entry."""
    on_disk = {p.stem for p in (ROOT / "lit_scsdpo").glob("*.py")} | \
              {p.parent.name for p in (ROOT / "lit_scsdpo").glob("*/__init__.py")}
    assert set(api_pages.INTERNAL) <= on_disk, sorted(set(api_pages.INTERNAL) - on_disk)


def test_every_shipped_config_is_in_the_reference():
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")}
    missing = sorted(shipped - config_reference.shipped_files())
    assert not missing, f"add these configs to LAUNCHES in scripts/config_reference.py, then {REGENERATE}: {missing}"


def test_configuration_reference_is_current():
    page = config_reference.render()
    current = config_reference.OUT.read_text(encoding="utf-8") if config_reference.OUT.exists() else ""
    assert str(ROOT) not in page  # nothing of this checkout's location
    for key in ("model.init_args.model_name_or_path", "data.questions_per_step", "trainer.max_epochs"):
        assert f"| `{key}` |" in page
    assert page == current, f"docs/reference/configuration.md is stale: {REGENERATE}"


@pytest.mark.skipif(not HAS_MKDOCS, reason="the docs extra is not installed: pip install -e '.[docs]'")
def test_site_builds_strict(tmp_path):
    result = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "api" / "losses" / "index.html").is_file()


def _small_site(tmp_path: Path, index: str) -> Path:
    """A site of two pages in a folder laid out like the repository, with the real hook."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text("a: 1\n")
    (tmp_path / "README.md").write_text("# readme\n")
    (tmp_path / "docs" / "index.md").write_text(index)
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Part {#part}\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        "site_name: t\n"
        f"hooks: [{(ROOT / 'scripts' / 'mkdocs_hooks.py').as_posix()}]\n"
        "validation: {links: {not_found: warn, anchors: warn, unrecognized_links: warn}}\n"
        "markdown_extensions: [attr_list, toc]\n"
        "nav: [index.md, other.md]\n")
    return config


@pytest.mark.skipif(not HAS_MKDOCS, reason="the docs extra is not installed: pip install -e '.[docs]'")
def test_repository_links_become_text(tmp_path):
    config = _small_site(tmp_path, "# Home\n\nSee [the readme](../README.md), [`configs/x.yaml`](../configs/x.yaml) "
                                   "and [a part](other.md#part).\n")
    result = _mkdocs(config, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert '<span class="repo-path" title="README.md">the readme (<code>README.md</code>)</span>' in html
    assert '<span class="repo-path" title="configs/x.yaml"><code>configs/x.yaml</code></span>' in html
    assert 'href="other/#part"' in html


@pytest.mark.skipif(not HAS_MKDOCS, reason="the docs extra is not installed: pip install -e '.[docs]'")
@pytest.mark.parametrize("link, message", [
    ("../configs/missing.yaml", "the repository has no 'configs/missing.yaml'"),
    ("missing.md", "is not found among documentation files"),
    ("other.md#nowhere", "does not contain an anchor '#nowhere'"),
])
def test_broken_links_fail_the_strict_build(tmp_path, link, message):
    config = _small_site(tmp_path, f"# Home\n\n[a link]({link})\n")
    result = _mkdocs(config, tmp_path / "site")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
