"""mkdocs hook: leave out the API page of a package that is not in this checkout yet.

An API page (``docs/api/*.md``) renders packages through ``::: package.object`` directives. While a package
is still being written its directory does not exist, and mkdocstrings would fail the build. This hook drops
such a page from the nav and from the site, and nothing else: a link or a cross-reference to the dropped
page, or to any object of the missing package, is still reported and still fails ``mkdocs build --strict``,
and once the package directory exists its page is built — any object it cannot collect then fails the build.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("mkdocs.hooks.api_pages")

_DIRECTIVE = re.compile(r"^:::\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_skipped: set = set()


def _package_present(root: str, package: str) -> bool:
    return os.path.isfile(os.path.join(root, package, "__init__.py")) or os.path.isfile(
        os.path.join(root, package + ".py")
    )


def _prune(nav, skipped):
    """The nav without entries that point at a skipped page (empty sections are dropped too)."""
    out = []
    for item in nav:
        if isinstance(item, str):
            if item not in skipped:
                out.append(item)
        elif isinstance(item, dict):
            pruned = {}
            for title, target in item.items():
                if isinstance(target, list):
                    target = _prune(target, skipped)
                    if target:
                        pruned[title] = target
                elif target not in skipped:
                    pruned[title] = target
            if pruned:
                out.append(pruned)
        else:  # pragma: no cover - mkdocs only produces str/dict/list entries
            out.append(item)
    return out


def on_config(config):
    root = os.path.dirname(os.path.abspath(config.config_file_path))
    api_dir = os.path.join(config.docs_dir, "api")
    _skipped.clear()
    if os.path.isdir(api_dir):
        for name in sorted(os.listdir(api_dir)):
            if not name.endswith(".md"):
                continue
            with open(os.path.join(api_dir, name), encoding="utf-8") as fh:
                packages = {ident.split(".")[0] for ident in _DIRECTIVE.findall(fh.read())}
            missing = sorted(p for p in packages if not _package_present(root, p))
            if missing:
                _skipped.add(f"api/{name}")
                log.info("API page api/%s left out: package %s not in this checkout yet", name, ", ".join(missing))
    if _skipped and config.nav:
        config.nav = _prune(config.nav, _skipped)
    return config


def on_files(files, config):
    for page in _skipped:
        f = files.get_file_from_path(page)
        if f is not None:
            files.remove(f)
    return files
