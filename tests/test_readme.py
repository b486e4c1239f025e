"""README.md stays true: its commands are the ones CI runs, its signature and option list match the code.

(Its Python blocks are run by tests/test_docs.py, each in a fresh interpreter.)
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import hardneg
from hardneg.backends import FUNCTION_BACKENDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BACKENDS = tuple(b.package for b in FUNCTION_BACKENDS)


def _bash_blocks() -> list:
    return re.findall(r"^```bash\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def _command(comment: str) -> str:
    """The command line that follows ``# <comment>`` in a bash block of the README."""
    for block in _bash_blocks():
        lines = block.splitlines()
        for i, line in enumerate(lines[:-1]):
            if line.startswith("#") and comment in line:
                return lines[i + 1].strip()
    raise AssertionError(f"no README bash block with a '# ...{comment}...' line")


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = _command("install and run the tests")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in [line.strip() for line in ci.splitlines()], (test_cmd, ci)


def test_readme_commands_name_existing_extras():
    tomllib = pytest.importorskip("tomllib")
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"])
    for comment in ("install and run the main command", "install and run the tests"):
        cmd = _command(comment)
        (spec,) = re.findall(r'pip install -e "\.\[([^\]]*)\]"', cmd)
        assert set(spec.split(",")) <= extras, (cmd, extras)


def test_readme_starts_in_the_checkout():
    first = _bash_blocks()[0]
    assert "git clone" in first and re.search(r"&& cd \S+", first), first


def _readme_signature() -> ast.arguments:
    m = re.search(r"`(hcl_loss\(z1, z2, \*,.*?\))`", README, flags=re.DOTALL)
    assert m, "README lists the full hcl_loss signature in backticks"
    text = " ".join(m.group(1).split())
    return ast.parse(f"def {text}: pass").body[0].args


def test_readme_signature_is_the_reference_signature():
    args = _readme_signature()
    readme = {a.arg: ast.literal_eval(d) for a, d in zip(args.kwonlyargs, args.kw_defaults)}
    params = inspect.signature(hardneg.hcl_loss).parameters.values()
    reference = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert [a.arg for a in args.args] == ["z1", "z2"]
    assert list(readme.items()) == list(reference.items())


def _backend_keywords(package: str) -> list:
    """Keyword-only parameter names of ``<package>.hcl_loss``, read from the sources (no framework import)."""
    for path in sorted((ROOT / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "hcl_loss":
                return [a.arg for a in node.args.kwonlyargs]
    raise AssertionError(f"{package} defines no hcl_loss")


@pytest.mark.parametrize("package", BACKENDS)
def test_readme_lists_every_backend_only_option(package):
    common = {a.arg for a in _readme_signature().kwonlyargs}
    extras = [k for k in _backend_keywords(package) if k not in common]
    assert extras, f"{package}: expected backend options such as memory_budget"
    assert [k for k in extras if f"`{k}`" not in README] == []
