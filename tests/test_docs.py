"""The documentation site builds strictly, the citation metadata is right, and the documented code runs.

- The site builds with ``mkdocs build --strict``: no broken link or anchor, no page outside the nav, no
  unresolved cross-reference, every API object collected (skipped where mkdocs is not installed). It loads no
  script or stylesheet from the network (MathJax ships with it: ``mkdocs_mathjax.py``;
  ``tests/test_docs_render.py`` checks in a browser that the formulas are typeset).
- CITATION.cff is valid YAML, cites both papers, and carries the package's version.
- Every fenced ``python`` block of README.md and of every page under docs/ (found automatically, so a new page's
  blocks are run without registering it) is a complete program: it runs, as pasted, in a fresh interpreter
  started in the repository's root, and prints no NaN. A block is skipped only when a framework it imports
  (torch, jax, optax, tensorflow, keras) is not installed — never because a hardneg module is missing or
  broken: that is a failure.
- **Not-to-run blocks.** A block that cannot run as pasted (a template naming the reader's own module, an
  excerpt of generated output, a signature) is marked by an HTML comment on the line right before its fence,
  which the rendered page does not show::

      <!-- norun: a template: mypackage.losses stands for your own port -->
      ```python
      ...

  The reason is required and is reported as the block's skip reason. Use it sparingly: prefer a complete
  example, or a ``text`` fence for what is not Python to run. Long-running or multi-host code belongs in a
  ``text`` or ``bash`` fence too.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, Optional

import pytest

import hardneg

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Third-party frameworks a documentation block may need; a block whose framework is absent is skipped.
FRAMEWORKS = ("torch", "jax", "optax", "tensorflow", "keras", "sentence_transformers", "datasets")
# Markdown files whose python blocks run: README.md and every page of the site.
PAGES = [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL
)
_NORUN = re.compile(r"^[ \t]*<!--\s*norun:(?P<reason>.*?)-->[ \t]*$")


class Block(NamedTuple):
    name: str  # "docs/backends/torch.md:42" (the fence's line)
    code: str
    norun: Optional[str]  # the reason given in a preceding <!-- norun: ... --> comment, if any


def _page_blocks(path: Path):
    """The fenced python blocks of a Markdown file, with their not-to-run reasons."""
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(ROOT).as_posix()
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group("lang") not in ("python", "py"):
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: max(0, m.start() - 1)].rsplit("\n", 1)[-1]  # the line right above the fence
        norun = _NORUN.match(before)
        indent = len(m.group("indent"))
        code = "\n".join(ln[indent:] for ln in m.group("body").splitlines())
        blocks.append(Block(f"{rel}:{line}", code, norun.group("reason").strip() if norun else None))
    return blocks


def _imported_roots(code: str) -> set:
    roots = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


BLOCKS = [block for page in PAGES for block in _page_blocks(page)]


def test_blocks_are_found_everywhere():
    # The discovery itself: README, the quick start and each backend page have blocks to run.
    pages = {b.name.rsplit(":", 1)[0] for b in BLOCKS if b.norun is None}
    assert {"README.md", "docs/quickstart.md", "docs/backends/torch.md", "docs/backends/jax.md",
            "docs/backends/tensorflow.md"} <= pages


def test_norun_markers_give_a_reason_and_precede_a_python_block():
    marked = {b.name for b in BLOCKS if b.norun is not None}
    assert [b.name for b in BLOCKS if b.norun == ""] == [], "a <!-- norun: --> marker needs a reason"
    stray = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if _NORUN.match(line) and f"{page.relative_to(ROOT).as_posix()}:{i + 2}" not in marked:
                stray.append(f"{page.relative_to(ROOT).as_posix()}:{i + 1}")
    assert stray == [], f"norun markers not directly above a python fence: {stray}"


def test_every_framework_of_the_quickstart_has_a_block():
    # The quick start promises PyTorch, JAX with optax, and TensorFlow/Keras; a lost block would pass silently.
    used = set().union(*(_imported_roots(b.code) for b in BLOCKS if b.name.startswith("docs/quickstart.md")))
    assert {"hardneg", "hardneg_torch", "hardneg_jax", "optax", "hardneg_tf", "keras"} <= used


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_documented_code_runs(block):
    if block.norun is not None:
        pytest.skip(f"{block.name} is marked norun: {block.norun}")
    try:
        compile(block.code, block.name, "exec")
    except SyntaxError as exc:
        pytest.fail(f"{block.name} is not valid Python ({exc}); fence it as text, or mark it <!-- norun: why -->")
    missing = sorted(m for m in _imported_roots(block.code) & set(FRAMEWORKS) if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"{block.name} needs {', '.join(missing)}, which is not installed")
    env = dict(os.environ, JAX_PLATFORMS="cpu", KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", block.code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{block.name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert "nan" not in re.findall(r"[a-z]+", proc.stdout.lower()), f"{block.name} printed a NaN:\n{proc.stdout}"


def _documented_signature(text: str, where: str):
    """[(name, default or <required>)] of the first ``hcl_loss(z1, z2, *, ...)`` written out in ``text``."""
    start = text.find("hcl_loss(z1, z2, *,")
    assert start >= 0, f"{where} does not write out the signature hcl_loss(z1, z2, *, ...)"
    depth, end = 0, start
    for end in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0 and text[end] == ")":
            break
    sig = " ".join(text[start : end + 1].replace("`", "").split())
    fn = ast.parse(f"def {sig}: pass").body[0].args
    required = object()
    params = [(a.arg, required) for a in fn.args]
    params += [(a.arg, required if d is None else ast.literal_eval(d)) for a, d in zip(fn.kwonlyargs, fn.kw_defaults)]
    return params, required


@pytest.mark.parametrize("page", ["docs/spec.md", "README.md", "docs/index.md"])
def test_written_signature_is_the_reference_signature(page):
    # The signature written in the spec's section 1 and in README is the reference's: names, order, defaults.
    params, required = _documented_signature((ROOT / page).read_text(encoding="utf-8"), page)
    sig = inspect.signature(hardneg.hcl_loss).parameters.values()
    want = [(p.name, required if p.default is inspect.Parameter.empty else p.default) for p in sig]
    assert params == want, f"{page} writes the signature differently from hardneg.hcl_loss"


def test_overview_lists_every_backend_only_option():
    # docs/index.md names the keyword-only options each backend adds to the common signature.
    common = set(inspect.signature(hardneg.hcl_loss).parameters)
    page = (DOCS / "index.md").read_text(encoding="utf-8")
    missing = []
    for pkg in ("hardneg_torch", "hardneg_jax", "hardneg_tf"):
        tree = ast.parse((ROOT / pkg / "loss.py").read_text(encoding="utf-8"))
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "hcl_loss")
        missing += [f"{pkg}: {a.arg}" for a in fn.args.kwonlyargs if a.arg not in common and f"`{a.arg}`" not in page]
    assert missing == [], f"docs/index.md does not name these backend-only options: {missing}"


# Classes whose every constructor parameter must be described in the class docstring (NumPy style), read from
# the sources without importing the frameworks.
# hardneg_tf/keras.py re-exports the Keras classes of hardneg_keras/loss.py (one implementation for every backend).
DOCUMENTED_CLASSES = (("hardneg_torch/module.py", "HCLLoss"), ("hardneg_keras/loss.py", "HCLLoss"),
                      ("hardneg_keras/loss.py", "LearnableTemperature"),
                      ("hardneg_torch/sentence_transformers.py", "HardNegativeRankingLoss"),
                      ("hardneg_torch/sentence_transformers.py", "CachedHardNegativeRankingLoss"))


def _numpy_section(doc: str, title: str) -> dict:
    """{parameter name: description} of a NumPy-style docstring section; ``a, b : type`` lines share one."""
    lines = inspect.cleandoc(doc).splitlines()
    out, names, in_section = {}, [], False
    for i, line in enumerate(lines):
        underline = i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip())
        if underline and line.strip():
            in_section = line.strip() == title
            continue
        if not in_section or re.fullmatch(r"-{3,}", line.strip()):
            continue
        if line and not line[0].isspace():
            names = [n.strip() for n in line.split(" : ")[0].split(",") if n.strip()]
            for n in names:
                out[n] = ""
        elif line.strip():
            for n in names:
                out[n] = (out[n] + " " + line.strip()).strip()
    return out


@pytest.mark.parametrize("path, cls", DOCUMENTED_CLASSES, ids=[p for p, _ in DOCUMENTED_CLASSES])
def test_every_constructor_parameter_is_described(path, cls):
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    params = [a.arg for a in init.args.args[1:] + init.args.kwonlyargs]
    params += [f"*{a.arg}" for a in [init.args.vararg] if a] + [f"**{a.arg}" for a in [init.args.kwarg] if a]
    described = _numpy_section(ast.get_docstring(node) or "", "Parameters")
    missing = [p for p in params if p not in described]
    assert missing == [], f"{path}: {cls} parameters absent from its docstring's Parameters section: {missing}"
    empty = [p for p in params if len(described[p].split()) < 3]
    assert empty == [], f"{path}: {cls} parameters without a description (a sentence under the name): {empty}"
    unknown = [p for p in described if p not in params]
    assert unknown == [], f"{path}: {cls} docstring describes parameters it does not take: {unknown}"
    # "a, b : float" entries render on the API page with the first name's type and default for all of them.
    section = re.search(r"^Parameters\n-+\n(.*?)(?:^\w[\w ]*\n-+\n|\Z)", inspect.cleandoc(ast.get_docstring(node)),
                        re.MULTILINE | re.DOTALL).group(1)
    grouped = re.findall(r"^(\w+(?:, *\w+)+)", section, re.MULTILINE)
    assert grouped == [], f"{path}: {cls} documents parameters in groups (one entry per parameter): {grouped}"


def test_numpy_section_parser():
    doc = """Summary.

    Parameters
    ----------
    a, b : float
        Shared text
        on two lines.
    c : int
    d
        Untyped.

    Returns
    -------
    e : float
        Not a parameter.
    """
    assert _numpy_section(doc, "Parameters") == {"a": "Shared text on two lines.", "b": "Shared text on two lines.",
                                                 "c": "", "d": "Untyped."}


PACKAGES = ("hardneg", "conformance", "hardneg_torch", "hardneg_jax", "hardneg_tf")
_TOKEN = re.compile(r"\{\{\s*[\w.]+\s*\}\}")


def _template_tokens_in_sources() -> list:
    return [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if _TOKEN.search(p.read_text(encoding="utf-8"))]


def test_no_public_docstring_keeps_a_template_token():
    # Shared docstring text may be filled in at import time from tokens such as {{hcl_loss.parameters}}
    # (STYLE.md); then no public __doc__ may still hold one. Without such a mechanism there is nothing to check.
    if not (ROOT / "hardneg" / "_docs.py").exists() and not _template_tokens_in_sources():
        pytest.skip("no docstring template mechanism (hardneg/_docs.py or {{token}}s in the sources) in this checkout")
    import importlib

    left, checked = [], 0
    for pkg in PACKAGES:
        framework = {"hardneg_torch": "torch", "hardneg_jax": "jax", "hardneg_tf": "tensorflow"}.get(pkg)
        if framework and importlib.util.find_spec(framework) is None:
            continue
        module = importlib.import_module(pkg)
        objects = [(pkg, module)] + [(f"{pkg}.{n}", getattr(module, n)) for n in getattr(module, "__all__", [])]
        for name, obj in list(objects):
            if inspect.isclass(obj):
                objects += [(f"{name}.{m}", v) for m, v in vars(obj).items()
                            if not m.startswith("_") or m == "__init__"]
        for name, obj in objects:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                checked += 1
                if "{{" in doc:
                    left.append(name)
    assert checked > 0
    assert left == [], f"public docstrings with unexpanded template tokens: {left}"


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
    # Paths to documentation pages in docstrings are links on the API pages ("docs/backends/torch.md is the guide").
    torch_api = (site / "api" / "hardneg_torch" / "index.html").read_text(encoding="utf-8")
    assert '<a href="../../backends/torch/">docs/backends/torch.md</a>' in torch_api
    unlinked = {str(p.relative_to(site)): hits for p in (site / "api").rglob("*.html") if (hits := _unlinked_paths(p))}
    assert unlinked == {}, f"paths to documentation pages shown as plain text: {unlinked}"
    # Offline: MathJax is part of the site, and no page loads a script or stylesheet from elsewhere.
    assert (site / "javascripts" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert 'src="../javascripts/mathjax/tex-mml-chtml.js"' in spec
    remote = re.compile(r'<script[^>]*\ssrc="(?:https?:)?//|<link[^>]*\shref="(?:https?:)?//[^"]*"[^>]*stylesheet'
                        r'|<link[^>]*stylesheet[^>]*\shref="(?:https?:)?//')
    online = sorted(str(page.relative_to(site)) for page in site.rglob("*.html")
                    if remote.search(page.read_text(encoding="utf-8")))
    assert online == [], f"pages that load a script or stylesheet from the network: {online[:5]}"


def _unlinked_paths(page: Path) -> list:
    """Mentions of ``docs/<page>.md`` in the page's prose that are not links (code is exempt)."""
    html = page.read_text(encoding="utf-8")
    body = html[html.find("<article") : html.find("</article>")]
    body = re.sub(r"<a\s.*?</a>|<pre.*?</pre>|<code.*?</code>", "", body, flags=re.DOTALL)
    text = re.sub(r"<[^>]+>", "", body)
    return [text[max(0, m.start() - 40) : m.end()] for m in re.finditer(r"docs/[\w/-]+\.md", text)]


def test_mathjax_hook_ships_script_fonts_extensions_and_license(monkeypatch):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    monkeypatch.syspath_prepend(str(ROOT))
    import mkdocs_mathjax
    from mkdocs.exceptions import PluginError

    if importlib.util.find_spec("mathjax") is None:
        with pytest.raises(PluginError, match="django-static-mathjax"):
            mkdocs_mathjax.mathjax_files()
        pytest.skip("django-static-mathjax is not installed (pip install -e '.[docs]')")
    dest = {d for d, _ in mkdocs_mathjax.mathjax_files()}
    base = "javascripts/mathjax/"
    assert {base + "tex-mml-chtml.js", base + "LICENSE", base + "input/tex/extensions/boldsymbol.js",
            base + "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"} <= dest
    # without the package the build stops with a message naming it, rather than shipping a site without math
    monkeypatch.setattr(mkdocs_mathjax.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PluginError, match="django-static-mathjax"):
        mkdocs_mathjax.mathjax_files()


def test_docstring_paths_become_links(monkeypatch):
    pytest.importorskip("griffe", reason="griffe (mkdocstrings) is not installed (pip install -e '.[docs]')")
    monkeypatch.syspath_prepend(str(ROOT))
    from mkdocs_griffe import rst_to_markdown

    linked = "[docs/backends/torch.md](../backends/torch.md) is the guide."
    assert rst_to_markdown("docs/backends/torch.md is the guide.") == linked
    assert rst_to_markdown("(see docs/spec.md §8)") == "(see [docs/spec.md](../spec.md) §8)"
    for unchanged in ("``docs/spec.md``", "`docs/spec.md`", "[spec](../spec.md)", "a/docs/spec.md", "docs/spec.mdx"):
        assert rst_to_markdown(unchanged) == unchanged


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


def test_shared_docstring_tokens_expand_with_the_tokens_indentation():
    from hardneg._docs import TEXTS, expand

    doc = "Summary.\n\n    Parameters\n    ----------\n    x : int\n        {{hcl_loss.labels}}\n        More.\n"
    got = expand(doc)
    assert got == doc.replace("{{hcl_loss.labels}}", TEXTS["hcl_loss.labels"])
    math = expand("S.\n\n    {{hcl_loss.math}}\n")
    # every line of a multi-line text is indented like the token; blank lines stay empty
    assert all(line.startswith("    ") or line == "" for line in math.split("\n")[2:])
    assert "    .. math::" in math and "\n\n" in math
    with pytest.raises(KeyError, match=r"unknown docstring token \{\{hcl_loss.nope\}\}"):
        expand("    {{hcl_loss.nope}}\n")
    assert expand(None) is None


def test_every_backend_hcl_loss_docstring_carries_the_shared_math_and_references():
    import importlib

    from hardneg._docs import TEXTS

    for pkg in ("hardneg", "hardneg_torch", "hardneg_jax", "hardneg_tf"):
        framework = {"hardneg_torch": "torch", "hardneg_jax": "jax", "hardneg_tf": "tensorflow"}.get(pkg)
        if framework and importlib.util.find_spec(framework) is None:
            continue
        doc = inspect.cleandoc(importlib.import_module(pkg).hcl_loss.__doc__)
        for key in ("hcl_loss.math", "hcl_loss.references", "hcl_loss.clamp", "hcl_loss.negative_labels"):
            assert TEXTS[key] in doc, (pkg, key)
