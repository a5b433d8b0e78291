"""The documentation site builds strictly, works offline and opens in a real browser.

``mkdocs build --strict`` (mkdocs.yml: Material theme, mkdocstrings for the API pages) fails on a broken link, a
missing page or anchor, and an API reference that cannot be resolved. The built pages load no asset from the
network (``theme.font: false``, no CDN). Headless Chromium (Debian ``chromium``, as tests/test_html.py uses) opens
the home page and finds its title and the navigation. Nothing in the README, the sources or the docs points to a
design file the repository does not contain.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from browser import find_browser

ROOT = Path(__file__).resolve().parents[1]


def _mkdocs_available() -> bool:
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built by ``mkdocs build --strict`` into a temporary folder."""
    if not _mkdocs_available():
        if os.environ.get("CI"):
            pytest.fail("mkdocs, mkdocs-material or mkdocstrings[python] is missing in CI: pip install -e '.[docs]'")
        pytest.skip("the docs tools are not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return out


class _Assets(HTMLParser):
    """The URLs a page loads by itself: scripts, stylesheets, images, icons, frames, media."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed") and a.get("src"):
            self.urls.append(a["src"] or "")
        if tag == "link" and a.get("href") and (a.get("rel") or "") in ("stylesheet", "icon", "preload", "modulepreload"):
            self.urls.append(a["href"] or "")
        if tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def test_site_builds_with_every_page(site: Path) -> None:
    """Every page of the navigation was built, the API pages hold their objects."""
    nav_pages = re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    assert len(nav_pages) >= 25, nav_pages
    for page in nav_pages:
        assert (site / page.replace(".md", ".html")).is_file(), f"{page} was not built"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("tagood.create", "tagood.FeatureSet", "tagood.ood_metrics", "tagood.TagoodError"):
        assert f'id="{name}"' in api, f"{name} is not documented on the API page"
    assert 'id="tagood.metrics.ood_metrics"' in (site / "api" / "metrics.html").read_text(encoding="utf-8")


def test_site_loads_nothing_from_the_network(site: Path) -> None:
    """No page loads a script, stylesheet, font or image from http(s): the site renders offline."""
    remote = []
    for page in site.rglob("*.html"):
        p = _Assets()
        p.feed(page.read_text(encoding="utf-8"))
        remote += [f"{page.relative_to(site)}: {u}" for u in p.urls if re.match(r"^(https?:)?//", u)]
    for css in site.rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="replace")
        remote += [f"{css.relative_to(site)}: {u}" for u in re.findall(r"@import\s+(?:url\()?['\"]?(https?://[^'\")]+)", text)]
        remote += [f"{css.relative_to(site)}: {u}" for u in re.findall(r"url\(['\"]?(https?://[^'\")]+)", text)]
    assert not remote, "assets loaded from the network:\n" + "\n".join(remote[:20])
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")


_PROBE = """<script>
window.addEventListener('load', () => {
  const nav = document.querySelector('nav.md-nav--primary');
  const links = nav ? [...nav.querySelectorAll('.md-nav__link')].map(a => a.textContent.trim()).filter(t => t) : [];
  const header = document.querySelector('header.md-header');
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({
    title: document.title,
    h1: (document.querySelector('article h1') || {}).textContent || '',
    links,
    headerColor: header ? getComputedStyle(header).backgroundColor : '',
    headerVisible: !!(header && header.getBoundingClientRect().height > 0),
  });
  document.body.appendChild(pre);
});
</script>"""


def test_home_page_in_headless_chromium(site: Path, tmp_path: Path) -> None:
    """Chromium opens the built home page, with every host unresolvable: the title, the heading, the styled header
    and the navigation with every section are there."""
    browser = find_browser()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium in CI (scripts/setup.sh installs it)")
        pytest.skip("no Chromium here (apt-get install chromium)")
    page = site / "index.html"
    probe = site / "index-probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--allow-file-access-from-files", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
            "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"]
    try:
        dom = subprocess.run([*args, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180,
                             check=False).stdout
    finally:
        probe.unlink()
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    got = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert got["title"].startswith("tagood"), got
    assert got["h1"].replace("\u00b6", "").strip() == "tagood", got  # the heading without its permalink sign
    for section in ("Getting started", "Guides", "Methods", "Benchmarks and results", "Performance", "Concepts",
                    "API reference"):
        assert section in got["links"], (section, got["links"])
    assert got["headerVisible"] and got["headerColor"] not in ("", "rgba(0, 0, 0, 0)", "transparent"), got


def _design_refs(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"DESIGN(\.md|\s+section|\s+sec\.|\s+§)", text)]


def test_nothing_points_to_a_design_file_outside_the_repository() -> None:
    """The contracts live in the docs: no README, source or docs file refers to DESIGN.md or a "DESIGN section"."""
    found = []
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "src").rglob("*.py"),
             *(ROOT / "src").rglob("*.toml"), *(ROOT / "docs").rglob("*.md")]
    for f in files:
        if f.is_file():
            found += [f"{f.relative_to(ROOT)}: {r}" for r in _design_refs(f.read_text(encoding="utf-8", errors="replace"))]
    assert not found, "references to a file the repository does not contain:\n" + "\n".join(found)
    assert _design_refs("see DESIGN section 3") and _design_refs("(DESIGN.md)")  # the pattern itself works
