"""The release artefacts: what a user gets from ``pip install hardneg`` rather than from this checkout.

- ``python -m build`` makes an sdist and, from that sdist, a wheel, and ``twine check --strict`` passes both.
- The wheel holds every file of every package in the source tree (modules, sub-packages, the golden vectors),
  found by walking the tree, so a module added later is covered without touching this test; nothing else
  (no tests) is shipped, and its metadata carries this version and extras that do not force CPU builds.
- Installed (not editable) into a fresh virtual environment and run from a folder outside the checkout,
  ``hardneg --version`` prints the package and spec versions and ``hardneg verify --backend torch`` passes.
- ``hardneg verify --target mymodule:fn`` imports ``mymodule`` from the current folder through the console
  script, as ``python -m hardneg verify`` does.

The fresh environment reuses the frameworks already installed for this test run (a ``.pth`` line naming this
interpreter's site-packages, which does not activate the editable install found there), so nothing is
downloaded except what ``python -m build`` needs for its isolated build environment (setuptools).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path
from types import SimpleNamespace

import pytest

import hardneg

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Top-level folders with an __init__.py that are deliberately not shipped.
NOT_SHIPPED = {"tests", "benchmarks"}
_SKIP_PARTS = {".git", ".venv", "build", "dist", "site", "__pycache__", ".hypothesis", ".pytest_cache"}


def _source_files() -> list:
    """Paths (relative to ROOT) of the working tree's files: tracked and new ones, without ignored ones."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return [f for f in files if (ROOT / f).is_file() and not _SKIP_PARTS & set(Path(f).parts)
            and not any(part.endswith(".egg-info") for part in Path(f).parts) and not f.endswith(".pyc")]


def _shipped_packages(files) -> set:
    """Top-level package folders of the source tree (an __init__.py at their top) that the wheel must hold."""
    return {Path(f).parts[0] for f in files if len(Path(f).parts) == 2 and Path(f).name == "__init__.py"} - NOT_SHIPPED


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def source_files():
    return _source_files()


@pytest.fixture(scope="module")
def dist(tmp_path_factory, source_files):
    """sdist and wheel built from a copy of the working tree (the build writes nothing into the checkout)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install -e '.[test]')")
    tmp = tmp_path_factory.mktemp("release")
    src = tmp / "src"
    for f in source_files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    out = tmp / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(src)])  # the wheel is built from the sdist
    (sdist,) = out.glob("hardneg-*.tar.gz")
    (wheel,) = out.glob("hardneg-*.whl")
    return sdist, wheel


def test_release_artefacts_carry_this_version_and_pass_twine_check(dist):
    if importlib.util.find_spec("twine") is None:
        pytest.skip("the 'twine' package is not installed (pip install -e '.[test]')")
    sdist, wheel = dist
    assert sdist.name == f"hardneg-{hardneg.__version__}.tar.gz"
    assert wheel.name == f"hardneg-{hardneg.__version__}-py3-none-any.whl"
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_holds_every_package_file_of_the_source_tree(dist, source_files):
    _, wheel = dist
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
    packages = _shipped_packages(source_files)
    assert {"hardneg", "hardneg_torch", "hardneg_jax", "hardneg_tf", "conformance"} <= packages
    expected = {f for f in source_files if Path(f).parts[0] in packages}
    assert any(f.startswith("conformance/vectors/") and f.endswith(".json") for f in expected)
    assert sorted(expected - shipped) == [], "files of the source packages missing from the wheel"
    dist_info = f"hardneg-{hardneg.__version__}.dist-info/"
    extra = sorted(f for f in shipped - expected if not f.startswith(dist_info))
    assert extra == [], "the wheel ships files that are not part of a package (e.g. tests)"
    assert f"{dist_info}licenses/LICENSE" in shipped


def test_sdist_holds_the_sources_of_the_wheel_and_the_license(dist, source_files):
    sdist, _ = dist
    prefix = f"hardneg-{hardneg.__version__}/"
    with tarfile.open(sdist) as tf:
        names = {n[len(prefix):] for n in tf.getnames() if n.startswith(prefix)}
    packages = _shipped_packages(source_files)
    missing = sorted(f for f in source_files if Path(f).parts[0] in packages and f not in names)
    assert missing == []
    assert {"pyproject.toml", "README.md", "LICENSE"} <= names


def test_extras_respect_gpu_builds(dist):
    """Only the `tf-cpu` extra names a CPU-only build; `tf`, `jax`, `torch` and `all` are met by GPU builds."""
    _, wheel = dist
    with zipfile.ZipFile(wheel) as zf:
        meta = Parser().parsestr(zf.read(f"hardneg-{hardneg.__version__}.dist-info/METADATA").decode())
    assert meta["Version"] == hardneg.__version__
    extras = set(meta.get_all("Provides-Extra"))
    assert {"torch", "jax", "tf", "tf-cpu", "keras", "sentence-transformers", "verify", "bench", "reproduce", "all",
            "test", "docs"} <= extras
    requires = meta.get_all("Requires-Dist")
    cpu_only = [r for r in requires if "tensorflow-cpu" in r or "jax[cpu]" in r.replace(" ", "")]
    assert cpu_only and all('extra == "tf-cpu"' in r for r in cpu_only), cpu_only
    assert any(r.startswith("tensorflow>=") and 'extra == "tf"' in r for r in requires)
    assert any(r.startswith("jax>=") and 'extra == "jax"' in r for r in requires)
    all_line = [r for r in requires if 'extra == "all"' in r]
    assert all_line and not any("tf" in r.split(";")[0] for r in all_line), all_line


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    """A fresh venv holding the wheel (not editable); frameworks come from this interpreter's site-packages."""
    _, wheel = dist
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # Plain path lines: the folders join sys.path after the venv's own site-packages, and their .pth files
    # (the checkout's editable finder among them) are not executed.
    reuse = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_reuse_frameworks.pth").write_text("".join(f"{p}\n" for p in reuse))
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "--quiet",
          str(wheel)])
    workdir = tmp_path_factory.mktemp("elsewhere")  # outside the checkout: the checkout cannot be imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return SimpleNamespace(dir=env_dir, python=py, site=site, workdir=workdir, env=env)


def _script(env_dir: Path, name: str) -> str:
    return str(env_dir / ("Scripts" if os.name == "nt" else "bin") / name)


def test_installed_wheel_is_what_runs(installed, source_files):
    packages = sorted(_shipped_packages(source_files) | {"hardneg.bench", "hardneg.reproduce"})
    # find_spec locates a package without running it (a backend's framework may be absent here)
    code = "import importlib.util\n" + "".join(f"print(importlib.util.find_spec({p!r}).origin)\n" for p in packages)
    files = _run([str(installed.python), "-c", code], cwd=installed.workdir, env=installed.env).stdout.split()
    assert len(files) == len(packages)
    assert all(Path(f).resolve().is_relative_to(installed.site.resolve()) for f in files), files


def test_installed_console_script_prints_package_and_spec_versions(installed):
    proc = _run([_script(installed.dir, "hardneg"), "--version"], cwd=installed.workdir, env=installed.env)
    assert proc.stdout.strip() == f"hardneg {hardneg.__version__} (spec {hardneg.SPEC_VERSION})"


def test_installed_verify_passes_on_torch(installed):
    pytest.importorskip("torch")
    pytest.importorskip("hypothesis")
    proc = subprocess.run([_script(installed.dir, "hardneg"), "verify", "--backend", "torch", "--max-examples", "3"],
                          cwd=installed.workdir, env=installed.env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("torch "))
    assert row.split()[-1] == "PASS" and "PASS in" in proc.stdout


_PORT = """import hardneg


def my_hcl_loss(z1, z2, **kwargs):
    return hardneg.hcl_loss(z1, z2, **kwargs)
"""


def _verify_target_from_cwd(script: str, cwd: Path, env) -> subprocess.CompletedProcess:
    (cwd / "my_hcl_port.py").write_text(_PORT)
    return subprocess.run([script, "verify", "--target", "my_hcl_port:my_hcl_loss", "--framework", "numpy",
                           "--max-examples", "2"], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_console_script_imports_a_target_from_the_current_folder(tmp_path):
    pytest.importorskip("hypothesis")
    script = shutil.which("hardneg", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the hardneg console script is not installed next to this interpreter (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = _verify_target_from_cwd(script, tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "my_hcl_port:my_hcl_loss" in proc.stdout and "PASS in" in proc.stdout


def test_installed_console_script_imports_a_target_from_the_current_folder(installed):
    pytest.importorskip("hypothesis")
    proc = _verify_target_from_cwd(_script(installed.dir, "hardneg"), installed.workdir, installed.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "PASS in" in proc.stdout
