"""The API reference (issue 21): every name of ``tl.__all__`` has a numpydoc docstring with
Parameters and Returns sections (functions) and an Examples section whose doctest runs. The
names in ``GAPS`` do not have them yet; the test fails when one of them gains them (remove it
from the set) so the list can only shrink. The reference notes the tests cite are files in the
repository."""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
from pathlib import Path

import pytest

import twolevel as tl

ROOT = Path(__file__).resolve().parents[1]

GAPS: dict[str, set[str]] = {}  # name → sections still missing (none left)


def _sections(name: str) -> set[str]:
    obj = getattr(tl, name)
    doc = "\n" + (inspect.getdoc(obj) or "")
    want = {"Examples"} if inspect.isclass(obj) else {"Parameters", "Returns", "Examples"}
    return {s for s in want if not re.search(rf"\n{s}\n-{{3,}}", doc)}


@pytest.mark.parametrize("name", tl.__all__)
def test_docstring_sections(name):
    assert _sections(name) == GAPS.get(name, set())


def _example_cases():
    for n in tl.__all__:
        if "Examples" in GAPS.get(n, set()):
            continue
        sampled = tl._API[n].startswith("twolevel.models.bayes") and not n[0].isupper()
        yield pytest.param(n, marks=pytest.mark.slow) if sampled else n


@pytest.mark.parametrize("name", list(_example_cases()))
def test_examples_run(name):
    obj = getattr(tl, name)
    globs = dict(vars(importlib.import_module(tl._API[name])))  # as pytest --doctest-modules
    tests = doctest.DocTestFinder(recurse=False).find(obj, f"twolevel.{name}", globs=globs)
    assert tests and tests[0].examples, f"{name} has no doctest"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in {name}"


def test_cited_notes_are_in_the_repository():
    cited = set()
    for f in (ROOT / "tests").glob("*.py"):
        cited |= set(re.findall(r"([\w-]+\.md) §", f.read_text(encoding="utf-8")))
    assert cited, "no citation found"
    for name in cited:
        assert (ROOT / "docs" / "notes" / name).exists(), name
    assert not re.search(r"\b(spec|notes) §", "".join(
        f.read_text(encoding="utf-8") for f in (ROOT / "tests").glob("test_*.py")
        if f.name != "test_api_docs.py"))
