"""MkDocs hook: ship MathJax with the built site, so that the formulas render offline.

The docs' math is marked up by ``pymdownx.arithmatex`` (generic mode) and typeset in the reader's browser by
MathJax 3. Instead of loading MathJax from a CDN, this hook takes it from an installed Python distribution,
``django-static-mathjax`` (MathJax 3.2.2, Apache-2.0, no dependencies; it is in the ``docs`` extra), and adds
the few files a page needs to the site under ``javascripts/mathjax/``:

- ``tex-mml-chtml.js``: the TeX input, the CommonHTML output and the loader in one file (``mkdocs.yml``
  lists it in ``extra_javascript``);
- ``input/tex/extensions/*.js``: the TeX packages that MathJax loads on demand (``autoload``), e.g.
  ``\\boldsymbol``;
- ``output/chtml/fonts/woff-v2/*.woff``: the math fonts;
- ``LICENSE``.

MathJax finds these beside its own script (its ``[mathjax]`` path is the directory of ``tex-mml-chtml.js``), so
the site needs no network access in the browser, and building it downloads nothing either. About 2 MB of the
package's 35 MB are copied.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

#: Where the files go in the built site (``extra_javascript`` in mkdocs.yml points here).
DEST = "javascripts/mathjax"
#: The files of MathJax's ``es5`` folder that the site needs, as glob patterns.
PATTERNS = ("tex-mml-chtml.js", "input/tex/extensions/*.js", "output/chtml/fonts/woff-v2/*.woff")


def mathjax_dir() -> Path:
    """MathJax's ``es5`` folder inside the installed ``django-static-mathjax`` distribution."""
    spec = importlib.util.find_spec("mathjax")
    es5 = None
    if spec is not None and spec.submodule_search_locations:
        es5 = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if es5 is None or not (es5 / "tex-mml-chtml.js").is_file():
        raise PluginError(
            "MathJax is not installed: the docs ship it from the django-static-mathjax package "
            "(pip install -e '.[docs]')"
        )
    return es5


def mathjax_files() -> list:
    """(path inside the site, absolute source path) of every MathJax file the site ships."""
    es5 = mathjax_dir()
    out = []
    for pattern in PATTERNS:
        for path in sorted(es5.glob(pattern)):
            out.append((f"{DEST}/{path.relative_to(es5).as_posix()}", path))
    license_file = es5.parent / "LICENSE"
    if license_file.is_file():
        out.append((f"{DEST}/LICENSE", license_file))
    return out


def on_files(files, config, **kwargs):
    for dest, src in mathjax_files():
        files.append(File.generated(config, dest, abs_src_path=str(src)))
    return files
