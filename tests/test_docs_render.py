"""The built site's formulas are typeset in a browser without network access.

The site ships MathJax itself (``mkdocs_mathjax.py`` copies it from the ``django-static-mathjax`` package of
the ``docs`` extra). These tests build the site, serve it on the loopback interface and load pages in headless
Chromium with every host name but 127.0.0.1 unresolvable, so a renderer fetched from a CDN would fail. The DOM
after the page's scripts ran must hold MathJax's output for every formula, no TeX error, and no raw TeX left
between the ``\\(``/``\\[`` delimiters.

Skipped, with the reason, where mkdocs or a Chromium binary (Debian's ``chromium``; or set
``HARDNEG_CHROMIUM`` to a binary) is not installed.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Pages with math from Markdown (spec) and from docstrings (the reference's API page).
PAGES = ("spec/index.html", "gradient/index.html", "api/hardneg/index.html")


def _chromium():
    names = [os.environ.get("HARDNEG_CHROMIUM", "")] + ["chromium", "chromium-browser", "google-chrome",
                                                          "google-chrome-stable"]
    return next((path for name in names if name and (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip("mkdocs / mkdocstrings are not installed (pip install -e '.[docs]')")
    if _chromium() is None:
        pytest.skip("no Chromium binary found (apt-get install chromium, or set HARDNEG_CHROMIUM)")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium with no host but 127.0.0.1 reachable."""
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root (CI)
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no CDN, no network
        # Virtual time runs the page's timers and promises to completion, however slow the machine is.
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "</html>" in proc.stdout, f"chromium failed on {url}:\n{proc.stderr[-3000:]}"
    return proc.stdout


class _MathScan(HTMLParser):
    """Per ``arithmatex`` element: did MathJax typeset it, its TeX errors, and text left outside MathJax's output."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                      "wbr"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # open tags: (tag, is_arithmatex)
        self.formulas = []  # dicts: typeset, errors, raw

    def _inside(self):
        return next((f for f in reversed(self.formulas) if f["open"]), None)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        is_math = "arithmatex" in classes
        if is_math:
            self.formulas.append({"open": True, "typeset": False, "errors": 0, "raw": "", "depth": len(self.stack)})
        formula = self._inside()
        if formula is not None and not is_math:
            if tag == "mjx-container":
                formula["typeset"] = True
            if tag == "mjx-merror" or dict(attrs).get("data-mjx-error"):
                formula["errors"] += 1
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID or tag not in self.stack:
            return
        while self.stack:
            top = self.stack.pop()
            formula = self._inside()
            if formula is not None and formula["depth"] == len(self.stack):
                formula["open"] = False
            if top == tag:
                break

    def handle_data(self, data):
        formula = self._inside()
        if formula is not None and "mjx-container" not in self.stack:
            formula["raw"] += data


def _source_formulas(html: str) -> int:
    return html.count('class="arithmatex"')


@pytest.mark.parametrize("page", PAGES)
def test_formulas_are_typeset_offline(site, page, tmp_path):
    out, base = site
    static = (out / page).read_text(encoding="utf-8")
    n = _source_formulas(static)
    assert n > 0, f"{page} has no formulas: the page list of this test is out of date"
    scan = _MathScan()
    scan.feed(_rendered_dom(f"{base}/{page[: -len('index.html')]}", tmp_path / "profile"))
    formulas = scan.formulas
    assert len(formulas) == n, f"{page}: {n} formulas in the HTML, {len(formulas)} in the rendered DOM"
    untypeset = [f["raw"].strip()[:80] for f in formulas if not f["typeset"]]
    assert untypeset == [], f"{page}: formulas shown as raw TeX, not typeset by MathJax: {untypeset[:5]}"
    leftover = [f["raw"].strip()[:80] for f in formulas if f["raw"].strip()]
    assert leftover == [], f"{page}: TeX text left beside MathJax's output: {leftover[:5]}"
    errors = sum(f["errors"] for f in formulas)
    assert errors == 0, f"{page}: {errors} formulas with TeX errors (unknown macro, unbalanced braces, ...)"

