"""The book as a reader meets it: every page opened in headless Chromium (Debian's chromium and chromium-driver).

For each page of the table of contents: it loads with its title, its math is rendered by MathJax (no raw TeX left in
the text), its images load, a chapter shows its code outputs and a Colab link to its own notebook on ``main``, and
no local link is broken. A full-page screenshot of each page is written to ``_build/screenshots/``.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, toc_files

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = ROOT / "_build" / "screenshots"
COLAB = "https://colab.research.google.com/github/tpconv-lite/tpconv-lite/blob/main/{page}.ipynb"
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|(?<![\w$])\$[^$\s][^$\n]{0,200}?\$(?![\w$])")

# The text of the article with code, outputs and scripts removed: what a reader reads as prose.
PROSE_JS = """
const article = document.querySelector('article') || document.body;
const copy = article.cloneNode(true);
copy.querySelectorAll('pre, code, script, style, mjx-container, .cell_output, .MathJax').forEach(e => e.remove());
return copy.innerText;
"""


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test: `make test` installs chromium when it runs as root)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(built_book: Path) -> Iterator[str]:
    """Serve the built book on a loopback port."""
    handler = functools.partial(QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output readable
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not (CHROMIUM and CHROMEDRIVER):
        _skip_or_fail("chromium and chromedriver are not installed (Debian packages chromium, chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _chapter_title(page: str) -> str | None:
    """The `# N. Title` heading of a chapter notebook, or None for a page that is not a notebook."""
    notebook = ROOT / f"{page}.ipynb"
    if not notebook.exists():
        return None
    first = nbformat.read(notebook, as_version=4).cells[0].source.splitlines()[0]
    return first.lstrip("# ").strip().replace("'", "’")  # Sphinx's smart quotes turn ' into ’


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url.split("#")[0], timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("page", toc_files())
def test_page_as_a_reader_sees_it(page: str, server: str, browser) -> None:
    url = f"{server}/{page}.html"
    assert _status(url) == 200, f"{url} does not load"
    browser.get(url)

    # Title: the browser tab and the page heading name the chapter.
    heading = browser.find_element("css selector", "article h1").text.replace("#", "").strip()
    assert heading, f"{page}: no h1 heading"
    assert heading in browser.title, f"{page}: tab title {browser.title!r} does not name {heading!r}"
    expected = _chapter_title(page)
    if expected is not None:
        assert heading == expected, f"{page}: heading {heading!r}, notebook title {expected!r}"

    # Math: MathJax ran, and no raw TeX is left in the prose.
    browser.set_script_timeout(60)
    typeset = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (!window.MathJax || !MathJax.startup) { done(-1); return; }"
        "MathJax.startup.promise.then(() => done(document.querySelectorAll('mjx-container').length));"
    )
    has_math = bool(browser.find_elements("css selector", ".math, span.math, div.math"))
    if has_math:
        assert typeset > 0, f"{page}: the page has math but MathJax rendered none ({typeset})"
    prose = browser.execute_script(PROSE_JS)
    raw = RAW_TEX.findall(prose)
    assert not raw, f"{page}: raw TeX left in the text: {raw[:5]}"

    # Figures: every image loads.
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img')).map(i => [i.src, i.complete && i.naturalWidth > 0]);"
    )
    broken = [src for src, ok in images if not ok]
    assert not broken, f"{page}: images that did not load: {broken}"

    if expected is not None:  # a chapter
        assert images, f"{page}: a chapter without a single figure"
        outputs = browser.find_elements("css selector", ".cell_output")
        assert outputs, f"{page}: no code outputs rendered"
        links = [a.get_attribute("href") for a in browser.find_elements("css selector", "a[href*='colab.research']")]
        assert COLAB.format(page=page) in links, f"{page}: no Colab link to {page}.ipynb on main (found {links})"

    # Links inside the book are not broken.
    hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
    local = sorted({h.split("#")[0] for h in hrefs if h.startswith(server)})
    missing = [h for h in local if _status(h) != 200]
    assert not missing, f"{page}: broken local links: {missing}"

    # A full-page screenshot, to look at.
    height = browser.execute_script("return document.documentElement.scrollHeight;")
    browser.set_window_size(1280, min(max(height, 800), 16000))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / f"{page.replace('/', '__')}.png"))
    browser.set_window_size(1280, 1600)
