"""The documentation site builds strictly, the citation metadata is right, and the documented code runs.

- The site builds with ``mkdocs build --strict``: no broken link or anchor, no page outside the nav, no
  unresolved cross-reference, every API object collected (skipped where mkdocs is not installed).
- CITATION.cff is valid YAML, cites both papers, and carries the package's version.
- Every Python block of the quick start (and of the gradient and hyper-parameter pages, which check
  themselves against the reference) runs in a fresh interpreter. A block is skipped only when a framework it
  imports (torch, jax, optax, tensorflow, keras) is not installed — never because a hardneg module is missing
  or broken: that is a failure.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hardneg

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Third-party frameworks a documentation block may need; a block whose framework is absent is skipped.
FRAMEWORKS = ("torch", "jax", "optax", "tensorflow", "keras")
# Pages whose Python blocks are complete programs.
RUNNABLE_PAGES = ("quickstart.md", "gradient.md", "hyperparameters.md")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)


def _python_blocks(page: str):
    """(id, code) for each fenced python block of ``docs/<page>``, named after the heading above it."""
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        headings = re.findall(r"^#+ (.+)$", text[: m.start()], re.MULTILINE)
        indent = len(m.group("indent"))
        code = "\n".join(line[indent:] for line in m.group("body").splitlines())
        blocks.append((f"{page}:{headings[-1] if headings else 'top'}", code))
    return blocks


def _imported_roots(code: str) -> set:
    roots = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


BLOCKS = [block for page in RUNNABLE_PAGES for block in _python_blocks(page)]


def test_every_framework_of_the_quickstart_has_a_block():
    # The quick start promises PyTorch, JAX with optax, and TensorFlow/Keras; a lost block would pass silently.
    used = set().union(*(_imported_roots(code) for name, code in BLOCKS if name.startswith("quickstart.md")))
    assert {"hardneg", "hardneg_torch", "hardneg_jax", "optax", "hardneg_tf", "keras"} <= used


@pytest.mark.parametrize("name, code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_documented_code_runs(name, code):
    missing = sorted(m for m in _imported_roots(code) & set(FRAMEWORKS) if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}, which is not installed")
    env = dict(os.environ, JAX_PLATFORMS="cpu", KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert "nan" not in proc.stdout.lower(), f"{name} printed a NaN:\n{proc.stdout}"


def test_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip("mkdocs / mkdocstrings are not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    spec = (site / "spec" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in spec  # the spec's math is marked up for MathJax, not left as raw $...$
    api = (site / "api" / "hardneg" / "index.html").read_text(encoding="utf-8")
    assert 'id="hardneg.hcl_loss_and_grad"' in api  # the reference's API rendered from its docstrings
    assert ":math:`" not in api and ".. math::" not in api  # reStructuredText rendered, not shown verbatim
    unrendered = {str(page.relative_to(site)): hits for page in site.rglob("*.html") if (hits := _stray_dollars(page))}
    assert unrendered == {}, "math delimiters left as text (e.g. $$ inside a paragraph or list item line)"


def _stray_dollars(page: Path) -> list:
    """Snippets of the page's prose that still contain '$': math that arithmatex did not pick up."""
    html = page.read_text(encoding="utf-8")
    start, end = html.find("<article"), html.find("</article>")
    if start < 0:
        return []
    body = html[start:end]
    body = re.sub(r'<(span|div) class="arithmatex">.*?</\1>', "", body, flags=re.DOTALL)
    body = re.sub(r"<pre.*?</pre>|<code.*?</code>", "", body, flags=re.DOTALL)
    text = re.sub(r"<[^>]+>", "", body)
    return [text[max(0, m.start() - 60) : m.start() + 20] for m in re.finditer(r"\$", text)]


def test_citation_cff_cites_both_papers_and_this_version():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert str(cff["version"]) == hardneg.__version__
    refs = {ref["title"]: ref for ref in cff["references"]}
    assert set(refs) == {"Contrastive Learning with Hard Negative Samples", "Debiased Contrastive Learning"}
    assert refs["Contrastive Learning with Hard Negative Samples"]["doi"] == "10.48550/arXiv.2010.04592"
    assert refs["Debiased Contrastive Learning"]["doi"] == "10.48550/arXiv.2007.00224"
    assert [a["family-names"] for a in refs["Contrastive Learning with Hard Negative Samples"]["authors"]] == [
        "Robinson",
        "Chuang",
        "Sra",
        "Jegelka",
    ]
    citing = (DOCS / "citing.md").read_text(encoding="utf-8")
    assert "2010.04592" in citing and "2007.00224" in citing and f"Version {hardneg.__version__}" in citing


def test_installation_page_names_every_extra():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    page = (DOCS / "installation.md").read_text(encoding="utf-8")
    assert [e for e in extras if f"| `{e}` |" not in page] == []
