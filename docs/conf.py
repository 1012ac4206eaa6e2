"""Sphinx configuration of twolevel's documentation site (``make docs``).

The API reference is generated here, one page per name of ``twolevel.__all__`` (``docs/api/``,
rewritten on every build), from the numpydoc docstrings (Sphinx's napoleon reads their sections).
Tutorials are notebooks (``.ipynb`` or MyST text notebooks) executed during the build by myst-nb;
with ``TWOLEVEL_DOCS_QUICK=1`` (the default of ``make docs``) they sample short chains.
Markdown pages dropped into ``docs/`` are picked up by the glob toctree of ``index.md``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import twolevel as tl

HERE = Path(__file__).resolve().parent

project = "twolevel"
author = "the twolevel authors"
copyright = "2026, the twolevel authors"
release = version = tl.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_nb"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "notes", "**/.ipynb_checkpoints", "jupyter_execute"]
html_theme = "pydata_sphinx_theme"
html_title = "twolevel"
html_static_path = []
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_custom_sections = [("Fields", "params_style"), ("Warns", "params_style")]
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("TWOLEVEL_DOCS_EXECUTE", "force")  # "off": no execution
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

os.environ.setdefault("TWOLEVEL_DOCS_QUICK", "1")
if os.environ["TWOLEVEL_DOCS_QUICK"] == "1":
    os.environ.setdefault("TWOLEVEL_TUTORIAL_QUICK", "1")  # docs/tutorials/lecture.ipynb's switch
os.environ.setdefault("MPLBACKEND", "Agg")

GROUPS = {  # section of the API index → module prefixes
    "Data": ("twolevel.data",),
    "Design and statistics": ("twolevel.models.design",),
    "Linear mixed models": ("twolevel.models.lmm",),
    "Generalized linear mixed models": ("twolevel.models.glmm",),
    "Inference on a fit": ("twolevel.models.inference",),
    "Bayesian models": ("twolevel.models.bayes",),
    "Survey data": ("twolevel.models.survey",),
    "Planning a study": ("twolevel.models.power",),
    "Tables": ("twolevel.models.tables",),
    "Other": ("twolevel",),  # a module not listed above
}


def write_api_pages() -> None:
    """docs/api/<name>.rst for every public name, and docs/api/index.rst listing them."""
    out = HERE / "api"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.rst"):
        old.unlink()
    sections: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name in tl.__all__:
        obj = getattr(tl, name)
        kind = "autoclass" if inspect.isclass(obj) else "autofunction"
        members = inspect.isclass(obj) and not issubclass(obj, Exception)
        extra = "\n   :members:\n" if members else ""
        title = f"twolevel.{name}"
        (out / f"{name}.rst").write_text(
            f"{title}\n{'=' * len(title)}\n\n.. {kind}:: twolevel.{name}{extra}\n")
        group = next(g for g, pre in GROUPS.items() if tl._API[name].startswith(pre))
        sections[group].append(name)
    lines = ["API reference", "=============", "",
             "Every public name of ``twolevel`` (``import twolevel as tl``), by stage.", ""]
    for group, names in sections.items():
        if not names:
            continue
        lines += [group, "-" * len(group), "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   {n}" for n in names] + [""]
    (out / "index.rst").write_text("\n".join(lines))


write_api_pages()
