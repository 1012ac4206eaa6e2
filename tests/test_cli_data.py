"""The ``lecture`` and ``ols`` subcommands (issue 2): output, files written, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from twolevel.workflows.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_lecture_command(tmp_path, capsys):
    """The data description and the first 20 schools' OLS are printed before the workflow runs;
    the full per-school table is in the report (tests/test_workflow_lecture.py tests the rest)."""
    out_dir = tmp_path / "lec"
    code, out, err = run_cli(capsys, "lecture", "--quick", "--out", str(out_dir))
    assert code == 0 and "Traceback" not in err
    assert (
        "N = 11,091 students, J = 742 schools; students per school min 10, mean 14.95, max 25"
        in out
    )
    assert "group-mean centering over 742 groups" in out
    assert "B0_hat = (Intercept), B1_hat = famsesc" in out
    assert "  1002 " in out and "  1039 " in out and "  1040 " not in out  # first 20 schools
    assert "... 722 more groups" in out
    assert "[10/10] report" in out
    table = pd.read_csv(out_dir / "tables" / "per_school_ols.csv")
    assert len(table) == 742 and table["n_j"].sum() == 11_091
    assert list(table.columns[:5]) == ["schid", "n_j", "df_resid", "B0_hat", "B1_hat"]
    assert [p.name for p in tmp_path.iterdir()] == ["lec"]  # no temp folders left


def test_ols_builtin_and_csv(tmp_path, capsys):
    dest = tmp_path / "o" / "hsb.csv"
    code, out, err = run_cli(capsys, "ols", "hsb", "--rows", "1", "--csv", str(dest))
    assert code == 0 and err == ""
    assert "   1224    9.72    2.51" in out
    t = pd.read_csv(dest)
    assert len(t) == 160
    assert t.loc[t.school == 1224, "B1_hat"].item() == pytest.approx(2.50858170331, abs=1e-9)


def test_ols_user_file_with_missing_values_reports_deletion(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("g,y,x\n1,1,2\n1,2,\n1,2,5\n2,3,inf\n2,5,1\n2,6,3\n1,2,3\n2,1,1.5\n")
    code, out, err = run_cli(capsys, "ols", str(path), "--y", "y", "--x", "x", "--group", "g")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == (
        f"note: 2 of 8 row(s) of file '{path}' removed because of missing or non-finite values "
        "in x (listwise deletion, as lme4's na.omit)"
    )
    assert "(6 rows, 2 groups;" in out


def test_ols_formula_form(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "ols", "sleepstudy", "--formula", "Reaction ~ Days",
                           "--group", "Subject", "--rows", "0")
    assert code == 0 and "     372  " in out and "more groups" not in out


BAD_CASES = {
    "missing file": (None, "does not exist; give the path of a CSV or Parquet file"),
    "unreadable": (b"g,y,x\n\xff\xfe\x00,1,2\n", "as CSV: 'utf-8' codec can't decode byte 0xff"),
    "missing column": (b"g,y,z\n1,1,2\n2,2,3\n", "column 'x' is not in file"),
    "non-numeric": (b"g,y,x\n1,1,2\n1,2,abc\n2,3,4\n", "data row 2: 'abc'"),
    "single group": (b"g,y,x\n1,1,2\n1,2,3\n1,3,5\n", "has only 1 group (g = 1)"),
    "empty": (b"", "is empty; give a table with a header row and data rows"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_ols_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    content, expected = BAD_CASES[case]
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_bytes(content)
    dest = tmp_path / "out" / "t.csv"
    code, out, err = run_cli(capsys, "ols", str(path), "--y", "y", "--x", "x", "--group", "g",
                             "--csv", str(dest))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("twolevel ols: error: ")
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_one_line_and_leaves_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "lecture", "--out", str(blocker / "sub"))
    assert code == 2 and len(err.splitlines()) == 1
    assert f"cannot write '{blocker / 'sub'}': '{blocker}' is a file, not a folder" in err
    # the destination is an existing folder: the temp file is written, the rename fails
    (tmp_path / "o" / "t.csv").mkdir(parents=True)
    code, _, err = run_cli(capsys, "ols", "hsb", "--csv", str(tmp_path / "o" / "t.csv"))
    assert code == 2 and "cannot write" in err and "choose another output path" in err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["t.csv"]


def test_console_script_exit_status_and_stderr(tmp_path):
    """The real command line (a subprocess): exit 2, one stderr line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "twolevel.workflows.cli", "ols", str(tmp_path / "nope.csv"),
         "--y", "y", "--x", "x", "--group", "g"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"twolevel ols: error: file '{tmp_path / 'nope.csv'}' does not exist; give the path of a "
        "CSV or Parquet file\n"
    )
