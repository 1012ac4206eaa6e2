"""The README is a front page a newcomer reads in five minutes (issue 21): at most 10,000
characters, no link that leaves the repository, and every Python code block runs from an empty
temporary folder (embedded data only). The ``console`` blocks are the two make commands, which
need the repository itself (``.ci/run`` runs ``make test``; ``make demo`` is run by CI's
``tests/test_workflow_lecture.py`` through the same entry point)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


def test_readme_is_short():
    assert len(README) <= 10_000, len(README)


def test_no_link_leaves_the_repository():
    assert not re.search(r"https?://|www\.|ftp://|mailto:", README, flags=re.I)
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    assert targets  # the docs links, the picture, the licence
    for t in targets:
        path = (ROOT / t.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), t


def test_blocks_are_python_or_the_two_commands():
    assert len(PYTHON) == 4  # one LMM, one GLMM, one Bayesian and one power example
    console = [code for lang, code in BLOCKS if lang == "console"]
    assert [ln.split()[:2] for c in console for ln in c.splitlines()] == [
        ["make", "demo"], ["make", "test"]]
    assert {lang for lang, _ in BLOCKS} == {"python", "console"}


BLOCK_IDS = ["lmm", "glmm", "bayes", "power"]


@pytest.mark.parametrize("k", range(len(PYTHON)), ids=BLOCK_IDS[: len(PYTHON)])
def test_python_block_runs_from_a_temporary_folder(tmp_path, k):
    script = tmp_path / "block.py"
    script.write_text(PYTHON[k])
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip()  # each block prints its results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.py"]  # and writes nothing
