"""The package: one importable name (``twolevel``), imports that run one way between the stages,
and a wheel that installs and runs beside a user's own ``models.py`` and ``data/`` folder."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import twolevel as tl

ROOT = Path(__file__).resolve().parents[1]
# repository folder → the module name it has inside the twolevel namespace
FOLDERS = {"twolevel": "twolevel", "data": "twolevel.data", "models": "twolevel.models",
           "workflows": "twolevel.workflows"}
LECTURE = "g1rscore ~ 1 + famsesc + (1 + famsesc | schid)"

# Stages of twolevel.models, lowest first: a module may import (at module level) only from its
# own subpackage or from a lower rank. data is below all of models; workflows above.
MODEL_RANK = {"rformat": 0, "native": 0, "pvalues": 0, "fit_base": 0, "design": 0, "lmm": 1,
              "glmm": 2, "bayes": 3, "inference": 3, "survey": 3, "tables": 4, "power": 4,
              "versions": 5}


# the Bayesian builder modules: the only ones that import PyMC / PyTensor
PYMC_BUILDERS = {"twolevel.models.bayes.pymc_model", "twolevel.models.bayes.pymc_glmm",
                 "twolevel.models.bayes.pymc_multi"}


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    out = {}
    for folder, pkg in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def _imports(f: Path, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``f`` (relative imports are banned by ruff).
    ``if TYPE_CHECKING:`` blocks are skipped: they never run."""
    tree = ast.parse(f.read_text())
    found = []

    def visit(nodes, depth):
        for n in nodes:
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                continue
            if isinstance(n, ast.Import):
                found.extend((a.name, n.lineno) for a in n.names)
            elif isinstance(n, ast.ImportFrom) and n.module:
                found.append((n.module, n.lineno))
            if top_level_only and isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(n, field, []) or [], depth + 1)

    visit(tree.body, 0)
    return found


def _layer(mod: str) -> str:
    """data, models or workflows; the façade (twolevel/__init__.py, __main__.py) otherwise."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in {"data", "models", "workflows"} else "facade"


def test_public_namespace():
    for name in ("lmer", "anova", "confint", "fit_bayes", "load_data", "center", "group_ols",
                 "LmerFit", "BayesFit", "GroupOLS", "AnovaResult"):
        assert callable(getattr(tl, name)), name
    # every public name resolves to the object its module defines, and the TYPE_CHECKING block
    # (what editors and type checkers see) imports each of them from that module
    for name in tl.__all__:
        assert getattr(tl, name) is getattr(importlib.import_module(tl._API[name]), name), name
    init = ast.parse(Path(tl.__file__).read_text())
    static = {}
    for node in ast.walk(init):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in node.body:
                if isinstance(imp, ast.ImportFrom):
                    static.update({a.name: imp.module for a in imp.names})
    assert static == dict(tl._API)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tl.nope  # noqa: B018


def test_internal_imports_name_twolevel():
    bad = [f"{f.relative_to(ROOT)}:{line} imports {m}" for f in _modules().values()
           for m, line in _imports(f, top_level_only=False)
           if m.split(".")[0] in {"data", "models", "workflows"}]
    assert not bad, "imports must name twolevel.…: " + "; ".join(bad)


def test_imports_run_one_way():
    """data ← models ← workflows everywhere (lazy imports included); between the stages of
    models, module-level imports go only to a lower stage; PyMC/PyTensor only in the Bayesian
    builder modules; matplotlib only in workflows."""
    order = {"data": 0, "models": 1, "workflows": 2, "facade": 3}
    bad = []
    for mod, f in _modules().items():
        src = _layer(mod)
        for m, line in _imports(f, top_level_only=False):
            where = f"{f.relative_to(ROOT)}:{line} imports {m}"
            root = m.split(".")[0]
            if root in {"pymc", "pytensor"} and mod not in PYMC_BUILDERS:
                bad.append(where + " (only the PyMC builders models/bayes/pymc_*.py import PyMC)")
            if root == "matplotlib" and src != "workflows" and src != "facade":
                bad.append(where + " (only workflows/ draws plots)")
            if not m.startswith("twolevel.") or src == "facade":
                continue
            if order[_layer(m)] > order[src]:
                bad.append(where + " (upward: data ← models ← workflows)")
        if src != "models" or mod.count(".") < 2:
            continue
        sub = mod.split(".")[2]
        for m, line in _imports(f, top_level_only=True):
            if not m.startswith("twolevel.models.") or m.count(".") < 2:
                continue
            tsub = m.split(".")[2]
            if tsub != sub and MODEL_RANK[tsub] >= MODEL_RANK[sub]:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {m} "
                           f"(models.{sub} may not import models.{tsub} at module level)")
    assert not bad, "\n".join(bad)


def test_layout_limits():
    """models/ has a few modules directly under it; no module of the package is over ~600 lines;
    every module opens with a docstring."""
    direct = [f for f in (ROOT / "models").glob("*.py") if f.name != "__init__.py"]
    assert len(direct) <= 8, direct
    long = {str(f.relative_to(ROOT)): n for f in _modules().values()
            if (n := len(f.read_text().splitlines())) > 620}
    assert not long, long
    undocumented = [str(f.relative_to(ROOT)) for f in _modules().values()
                    if ast.get_docstring(ast.parse(f.read_text())) is None]
    assert not undocumented, undocumented


def test_declared_packages_match_folders():
    """pyproject.toml lists every package folder (a missing one would be absent from the wheel)."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(cfg["packages"])
    on_disk = {m for m, f in _modules().items() if f.name == "__init__.py"}
    assert declared == on_disk


# ----------------------------------------------------------------------------- wheel and sdist


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` of this checkout: the sdist, then the wheel built from the unpacked
    sdist (so the sdist is shown to build, and no leftover ``build/`` folder of the checkout leaks
    into the wheel); without build isolation (the build backend, setuptools, is a test
    dependency, so no download is needed)."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                        str(ROOT)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_wheel_has_only_twolevel(dist):
    (whl,) = dist.glob("twolevel-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"twolevel", f"{whl.name.split('-')[0]}-{whl.name.split('-')[1]}.dist-info"}
    for must in ("twolevel/__init__.py", "twolevel/__main__.py", "twolevel/data/ecls_k_like.csv",
                 "twolevel/models/lmm/lmer.py", "twolevel/workflows/lecture/run.py"):
        assert must in names, must
    (sdist,) = dist.glob("twolevel-*.tar.gz")
    import tarfile

    members = tarfile.open(sdist).getnames()
    assert any(m.endswith("/models/lmm/lmer.py") for m in members)
    assert any(m.endswith("/data/ecls_k_like.csv") for m in members)


def _setup_kernels() -> list[tuple[str, str]]:
    """(module, source) of every kernel in setup.py's KERNELS list (read, not executed)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Kernel":
            out.append((node.args[0].value, node.args[1].value))
    return out


@pytest.mark.slow
def test_sdist_has_every_tracked_c_file_and_the_wheel_every_kernel(dist):
    """The sdist carries every C file git tracks (and setup.py); the wheel is tagged for this
    platform and carries a compiled library of every kernel in setup.py (on x86-64 also the
    AVX2 and AVX-512 builds), and no C source."""
    import tarfile

    tracked = subprocess.run(["git", "ls-files", "*.c"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked and {src for _, src in _setup_kernels()} == set(tracked)
    (sdist,) = dist.glob("twolevel-*.tar.gz")
    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    missing = [c for c in tracked + ["setup.py"] if c not in members]
    assert not missing, missing
    (whl,) = dist.glob("twolevel-*.whl")
    assert not whl.name.endswith("-none-any.whl"), whl.name  # platform-tagged
    names = zipfile.ZipFile(whl).namelist()
    assert not [n for n in names if n.endswith(".c")]
    import platform

    variants = ("", "_avx2", "_avx512") if platform.machine() in {"x86_64", "AMD64"} else ("",)
    for module, _ in _setup_kernels():
        path = module.replace(".", "/")
        for v in variants if module != "twolevel.models._cpu" else ("",):
            assert any(n.startswith(path + v + ".") and n.endswith((".so", ".pyd"))
                       for n in names), path + v


_ACCEPT = """
import json, os, sys, warnings
import models
import twolevel as tl
from twolevel.models.native import NumbaKernelWarning
from twolevel.models.versions import kernel_report
warnings.simplefilter("error", NumbaKernelWarning)  # a numba fallback would warn: fail instead
warnings.filterwarnings("ignore", "NUTS fit of")  # the short run's diagnostic gate: not the point
assert models.MY_MODEL
d = tl.load_data("lecture")
g = tl.glmer("g1below ~ 1 + famsesc + (1 + famsesc | schid)", d, family="binomial")
b = tl.fit_bayes("g1rscore ~ 1 + famsesc + (1 + famsesc | schid)", d, progress=False,
                 settings=tl.SamplerSettings(chains=2, draws=300, tune=300))
s = d[d.schid.isin(sorted(d.schid.unique())[:60])]  # the integrated GLMM sampler's kernel (cagq)
i = tl.fit_bayes("g1below ~ 1 + famsesc + (1 | schid)", s, family="binomial", progress=False,
                 settings=tl.SamplerSettings(chains=1, draws=50, tune=50))
tl.show_versions()
r = kernel_report()
print(json.dumps({"glmer": g.problem.route, "bayes": b.sampler, "integrated": i.sampler,
                  "report": r["kernels"],
                  "path": r["vector_path"], "deviance": g.minus2loglik}))
"""


@pytest.mark.slow
def test_wheel_without_a_compiler_runs_compiled_kernels_and_writes_no_cache(dist, tmp_path):
    """The issue's acceptance check: the wheel in a fresh virtual environment, a PATH with no C
    compiler, a folder holding the user's ``models.py``: a glmer fit, a fit_bayes fit and an
    integrated binary fit_bayes fit on the lecture data run on the compiled kernels
    (``tl.show_versions()`` says so), and nothing is written under TWOLEVEL_CACHE_DIR (an empty
    folder) or the user's folder."""
    import shutil

    py, env = _fresh_venv(dist, tmp_path)
    nocc = tmp_path / "bin-without-cc"
    nocc.mkdir()
    env["PATH"] = f"{py.parent}{os.pathsep}{nocc}"
    assert all(shutil.which(c, path=env["PATH"]) is None for c in ("cc", "gcc", "clang"))
    cache = tmp_path / "cache"
    cache.mkdir()
    env |= {"TWOLEVEL_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("TWOLEVEL_KERNELS", None)
    env.pop("TWOLEVEL_KERNEL_BASELINE", None)
    proj = _user_project(tmp_path)
    before = sorted(p.name for p in proj.rglob("*"))
    r = subprocess.run([py, "-c", _ACCEPT], cwd=proj, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["glmer"] == "c"
    assert "compiled from C" in out["bayes"], out["bayes"]
    assert "integrated out by adaptive Gauss-Hermite quadrature" in out["integrated"]
    assert out["report"]["glmer"] == "compiled" and out["report"]["bayes_collapsed"] == "compiled"
    assert out["path"] in {"avx512", "avx2", "baseline"}
    assert "kernels.glmer           compiled" in r.stdout
    assert out["deviance"] == pytest.approx(12716.64, rel=1e-5)
    assert not list(cache.rglob("*")), list(cache.rglob("*"))
    assert sorted(p.name for p in proj.rglob("*")) == before


def _user_project(tmp: Path) -> Path:
    """A user's project folder with its own ``models.py`` and ``data/`` (the common layout that
    used to shadow the package's generic top-level names)."""
    proj = tmp / "project"
    (proj / "data").mkdir(parents=True)
    (proj / "models.py").write_text("MY_MODEL = 'the user owns this module'\n")
    (proj / "data" / "scores.csv").write_text("y,x\n1,2\n")
    return proj


_SNIPPET = ("import models, twolevel as tl; assert models.MY_MODEL; "
            f"print(tl.lmer('{LECTURE}', tl.load_data('lecture')).fixef().to_json())")


def _check_fixef(stdout: str) -> None:
    got = json.loads(stdout.strip().splitlines()[-1])
    assert got["(Intercept)"] == pytest.approx(94.92368755, abs=1e-6)
    assert got["famsesc"] == pytest.approx(7.65008008, abs=1e-6)


PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def _fresh_venv(dist: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A new virtual environment holding only the wheel (``--no-deps``); its dependencies come
    from this environment's site-packages through a ``.pth`` line (no download, and the editable
    install's finder is not activated there: .pth files are read only in site directories).
    Returns (its python, an environment without PYTHONPATH)."""
    (whl,) = dist.glob("twolevel-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", PURELIB], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                        "--no-deps", "--disable-pip-version-check", str(whl)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return py, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.slow
def test_wheel_in_fresh_venv_beside_user_models(dist, tmp_path):
    """The wheel installed into a new virtual environment works from a folder holding the user's
    own ``models.py`` and ``data/``: ``import twolevel``, ``twolevel fit``, ``python -m twolevel``.

    The new environment gets only the wheel (``--no-deps``); its dependencies come from this
    environment's site-packages through a ``.pth`` line (no download, and the editable install's
    finder is not activated there: .pth files are read only in site directories)."""
    py, env = _fresh_venv(dist, tmp_path)
    venv = py.parent.parent
    site = Path(subprocess.run([py, "-c", PURELIB], capture_output=True, text=True,
                               check=True).stdout.strip())
    proj = _user_project(tmp_path)
    r = subprocess.run([py, "-c", "import twolevel, pathlib; print(twolevel.__file__)"],
                       cwd=proj, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(site), r.stdout  # the wheel's copy, not ours
    r = subprocess.run([py, "-c", _SNIPPET], cwd=proj, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    _check_fixef(r.stdout)
    twolevel_cmd = venv / "bin" / "twolevel"
    r = subprocess.run([twolevel_cmd, "fit", "lecture", LECTURE, "--json"], cwd=proj,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["fixef"]["famsesc"] == pytest.approx(7.65008008, abs=1e-6)
    r = subprocess.run([py, "-m", "twolevel", "--help"], cwd=proj, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0 and "lecture" in r.stdout


def test_editable_install_beside_user_models(tmp_path):
    """The same from the project's own (editable) environment."""
    proj = _user_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", _SNIPPET], cwd=proj, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    _check_fixef(r.stdout)
    r = subprocess.run([sys.executable, "-m", "twolevel", "fit", "lecture", LECTURE, "--json"],
                       cwd=proj, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fixef"]["(Intercept)"] == pytest.approx(94.92368755, abs=1e-6)
